"""Builds the multi-task model from a config and the transform output.

Inputs are the transformed features; the graph is: token Embedding -> text
trunk, joined with id embeddings, id-sequence means and numbers -> shared
dense layers (hard sharing) -> one softmax head per task.
"""

from typing import Dict, List, Optional

import tensorflow as tf
import tensorflow_transform as tft

from components.config import PipelineConfig
from models import features
from models.multitask import MultiTaskModel
from models.trunks import build_text_trunk


class MaskedMean(tf.keras.layers.Layer):
  """Mean of the embeddings of the non-padding ids of a sequence."""

  def call(self, embeddings, ids):
    mask = tf.cast(tf.not_equal(ids, features.MISSING_ID), embeddings.dtype)
    total = tf.reduce_sum(embeddings * mask[..., tf.newaxis], axis=1)
    count = tf.reduce_sum(mask, axis=1, keepdims=True)
    return tf.math.divide_no_nan(total, count)


def num_classes(config: PipelineConfig, tft_output: tft.TFTransformOutput,
                task_name: str) -> int:
  task = config.task(task_name)
  if task.classes:
    return len(task.classes)
  return tft_output.vocabulary_size_by_name(
      features.label_vocabulary(task_name))


def class_names(config: PipelineConfig, tft_output: tft.TFTransformOutput,
                task_name: str) -> List[str]:
  """Return the label strings of a task, in class-id order."""
  task = config.task(task_name)
  if task.classes:
    return list(task.classes)
  return [v.decode('utf-8') for v in tft_output.vocabulary_by_name(
      features.label_vocabulary(task_name))]


def id_vocabulary_size(config: PipelineConfig,
                       tft_output: tft.TFTransformOutput,
                       vocabulary_name: str) -> int:
  """Ids of a vocabulary: missing (0), the vocabulary, then OOV buckets."""
  buckets = max(f.oov_buckets for f in config.features
                if f.vocabulary_name == vocabulary_name and
                f.type in ('categorical', 'id_sequence'))
  size = tft_output.vocabulary_size_by_name(
      features.id_vocabulary(vocabulary_name))
  return 1 + size + buckets


def model_inputs(config: PipelineConfig) -> Dict[str, tf.keras.Input]:
  """Keras inputs named like the transformed features."""
  inputs = {}
  if config.features_of_type('text'):
    inputs[features.TOKENS] = tf.keras.Input(
        shape=(config.text.max_tokens,), dtype=tf.int64, name=features.TOKENS)
  for feature in config.features_of_type('categorical'):
    name = features.id_feature(feature.name)
    inputs[name] = tf.keras.Input(shape=(), dtype=tf.int64, name=name)
  for feature in config.features_of_type('id_sequence'):
    name = features.id_sequence_feature(feature.name)
    inputs[name] = tf.keras.Input(shape=(feature.max_length,), dtype=tf.int64,
                                  name=name)
  for feature in config.features_of_type('numeric'):
    name = features.numeric_feature(feature.name)
    inputs[name] = tf.keras.Input(shape=(), dtype=tf.float32, name=name)
  return inputs


def _id_representations(inputs, config, tft_output, regularizer):
  """Embed categorical ids and mean-pool id sequences.

  Features that name the same vocabulary share one Embedding layer, so a
  news id in a click history and the candidate news id get the same vector.
  """
  embeddings = {}
  parts = []
  for feature in config.features:
    if feature.type not in ('categorical', 'id_sequence'):
      continue
    vocabulary = feature.vocabulary_name
    if vocabulary not in embeddings:
      embeddings[vocabulary] = tf.keras.layers.Embedding(
          id_vocabulary_size(config, tft_output, vocabulary),
          config.model.id_embedding_dim,
          embeddings_regularizer=regularizer,
          name=f'{vocabulary}_embedding')
    layer = embeddings[vocabulary]
    if feature.type == 'categorical':
      parts.append(layer(inputs[features.id_feature(feature.name)]))
    else:
      ids = inputs[features.id_sequence_feature(feature.name)]
      parts.append(MaskedMean(name=f'{feature.name}_mean')(layer(ids), ids))
  return parts


def build_model(config: PipelineConfig, tft_output: tft.TFTransformOutput,
                class_weights: Optional[Dict[str, List[float]]] = None
                ) -> MultiTaskModel:
  """Build the (uncompiled) multi-task model."""
  regularizer = (tf.keras.regularizers.l2(config.trainer.l2)
                 if config.trainer.l2 > 0 else None)
  inputs = model_inputs(config)

  parts = []
  if features.TOKENS in inputs:
    token_ids = (tft_output.vocabulary_size_by_name(features.TOKEN_VOCABULARY)
                 + config.text.oov_buckets + features.FIRST_TOKEN_ID)
    parts.append(build_text_trunk(inputs[features.TOKENS], token_ids,
                                  config.text.max_tokens, config.model,
                                  regularizer))
  parts.extend(_id_representations(inputs, config, tft_output, regularizer))
  for feature in config.features_of_type('numeric'):
    parts.append(tf.keras.layers.Reshape((1,))(
        inputs[features.numeric_feature(feature.name)]))

  shared = (tf.keras.layers.Concatenate(name='shared_concat')(parts)
            if len(parts) > 1 else parts[0])
  for index, units in enumerate(config.model.hidden_units):
    shared = tf.keras.layers.Dense(
        units, activation='relu', kernel_regularizer=regularizer,
        name=f'shared_dense_{index}')(shared)
    shared = tf.keras.layers.Dropout(config.model.dropout)(shared)

  outputs = {}
  for task in config.tasks:
    outputs[task.name] = tf.keras.layers.Dense(
        num_classes(config, tft_output, task.name), activation='softmax',
        kernel_regularizer=regularizer, name=task.name)(shared)

  return MultiTaskModel(
      inputs=inputs, outputs=outputs,
      task_weights={task.name: task.weight for task in config.tasks},
      class_weights=class_weights,
      name=f'{config.model_name}_multitask')
