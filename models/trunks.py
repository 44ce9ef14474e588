"""Shared text trunks: token ids to one vector per example.

Each trunk starts from a token Embedding with `mask_zero=True`, so padding
never reaches the encoder, and returns a [batch, dim] tensor.
"""

import tensorflow as tf

from components.config import ModelConfig


class PositionEmbedding(tf.keras.layers.Layer):
  """Adds a learned embedding of each position and keeps the padding mask."""

  def __init__(self, max_length: int, **kwargs):
    super().__init__(**kwargs)
    self.max_length = max_length
    self.supports_masking = True

  def build(self, input_shape):
    self.position_embeddings = self.add_weight(
        name='position_embeddings',
        shape=(self.max_length, int(input_shape[-1])),
        initializer=tf.keras.initializers.RandomNormal(stddev=0.02))
    super().build(input_shape)

  def call(self, inputs):
    length = tf.shape(inputs)[1]
    return inputs + self.position_embeddings[tf.newaxis, :length, :]

  def compute_mask(self, inputs, mask=None):
    return mask

  def get_config(self):
    return {**super().get_config(), 'max_length': self.max_length}


def _transformer_block(x, config: ModelConfig, regularizer, index: int):
  """Apply one post-norm encoder block: self-attention, then a feed-forward net."""
  dim = config.embedding_dim
  attention = tf.keras.layers.MultiHeadAttention(
      num_heads=config.transformer_heads,
      key_dim=max(dim // config.transformer_heads, 1),
      dropout=config.dropout,
      kernel_regularizer=regularizer,
      name=f'encoder_{index}_attention')(x, x)
  x = tf.keras.layers.LayerNormalization(name=f'encoder_{index}_norm_1')(
      tf.keras.layers.Add()([x, attention]))
  hidden = tf.keras.layers.Dense(
      config.transformer_ff_dim, activation='relu',
      kernel_regularizer=regularizer, name=f'encoder_{index}_ff_1')(x)
  hidden = tf.keras.layers.Dense(
      dim, kernel_regularizer=regularizer,
      name=f'encoder_{index}_ff_2')(hidden)
  hidden = tf.keras.layers.Dropout(config.dropout)(hidden)
  return tf.keras.layers.LayerNormalization(name=f'encoder_{index}_norm_2')(
      tf.keras.layers.Add()([x, hidden]))


def build_text_trunk(tokens: tf.Tensor, vocabulary_size: int,
                     max_tokens: int, config: ModelConfig,
                     regularizer) -> tf.Tensor:
  """Encode [batch, max_tokens] token ids into [batch, dim].

  Args:
    tokens: int64 token ids, 0 for padding.
    vocabulary_size: number of token ids, reserved ids included.
    max_tokens: the sequence length.
    config: trunk type and sizes.
    regularizer: the L2 regularizer for every kernel.

  Returns:
    The text representation.
  """
  embedded = tf.keras.layers.Embedding(
      vocabulary_size, config.embedding_dim, mask_zero=True,
      embeddings_regularizer=regularizer, name='token_embedding')(tokens)

  if config.trunk == 'lstm':
    return tf.keras.layers.LSTM(
        config.units, kernel_regularizer=regularizer,
        name='text_lstm')(embedded)
  if config.trunk == 'bilstm':
    return tf.keras.layers.Bidirectional(
        tf.keras.layers.LSTM(config.units, kernel_regularizer=regularizer),
        name='text_bilstm')(embedded)

  x = PositionEmbedding(max_tokens, name='position_embedding')(embedded)
  for index in range(config.transformer_layers):
    x = _transformer_block(x, config, regularizer, index)
  return tf.keras.layers.GlobalAveragePooling1D(name='text_pool')(x)
