"""Builds the multi-task model from a config and the transform output.

Inputs are the transformed features; the graph is: token Embedding -> text
trunk, joined with id embeddings, id-sequence means and numbers -> shared
dense layers (hard sharing) -> one softmax head per task.
"""

from typing import Dict, List, Optional, Sequence

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


def _id_representations(inputs, config, tft_output, regularizer
                        ) -> Dict[str, tf.Tensor]:
  """Embed categorical ids and mean-pool id sequences, by feature name.

  Features that name the same vocabulary share one Embedding layer, so a
  news id in a click history and the candidate news id get the same vector.
  """
  embeddings = {}
  representations = {}
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
      representations[feature.name] = layer(
          inputs[features.id_feature(feature.name)])
    else:
      ids = inputs[features.id_sequence_feature(feature.name)]
      representations[feature.name] = MaskedMean(
          name=f'{feature.name}_mean')(layer(ids), ids)
  return representations


def _dense_stack(x, units: Sequence[int], dropout: float, regularizer,
                 prefix: str):
  for index, size in enumerate(units):
    x = tf.keras.layers.Dense(size, activation='relu',
                              kernel_regularizer=regularizer,
                              name=f'{prefix}_dense_{index}')(x)
    x = tf.keras.layers.Dropout(dropout, name=f'{prefix}_dropout_{index}')(x)
  return x


def _concat(parts: List[tf.Tensor], name: str) -> tf.Tensor:
  return (tf.keras.layers.Concatenate(name=name)(parts) if len(parts) > 1
          else parts[0])


def tower_inputs(config: PipelineConfig, tower: str) -> List[str]:
  """Return the transformed input names of one retrieval tower.

  `tower` is `query` or `candidate`. Text features share one `TOKENS` input,
  which is listed once.
  """
  task = config.retrieval_task
  names = task.query_features if tower == 'query' else task.candidate_features
  result = []
  for name in names:
    feature = config.feature(name)
    if feature.type == 'text':
      if features.TOKENS not in result:
        result.append(features.TOKENS)
    elif feature.type == 'categorical':
      result.append(features.id_feature(name))
    elif feature.type == 'id_sequence':
      result.append(features.id_sequence_feature(name))
    else:
      result.append(features.numeric_feature(name))
  return result


def build_model(config: PipelineConfig, tft_output: tft.TFTransformOutput,
                class_weights: Optional[Dict[str, List[float]]] = None,
                candidate_probabilities: Optional[Sequence[float]] = None
                ) -> MultiTaskModel:
  """Build the (uncompiled) multi-task model.

  Without a retrieval task, every feature feeds one shared trunk. With one,
  the query features and the candidate features first go through their own
  towers, whose outputs are the retrieval embeddings. The shared trunk then
  reads both towers' inputs and embeddings, and the other heads read the
  trunk.

  Args:
    config: the pipeline config.
    tft_output: the transform output, for vocabulary sizes.
    class_weights: per softmax task, one weight per class.
    candidate_probabilities: for a retrieval task with `logq_correction`,
      each candidate id's share of the train pairs.
  """
  regularizer = (tf.keras.regularizers.l2(config.trainer.l2)
                 if config.trainer.l2 > 0 else None)
  inputs = model_inputs(config)

  representations = {}
  if features.TOKENS in inputs:
    token_ids = (tft_output.vocabulary_size_by_name(features.TOKEN_VOCABULARY)
                 + config.text.oov_buckets + features.FIRST_TOKEN_ID)
    text = build_text_trunk(inputs[features.TOKENS], token_ids,
                            config.text.max_tokens, config.model, regularizer)
    for feature in config.features_of_type('text'):
      representations[feature.name] = text
  representations.update(
      _id_representations(inputs, config, tft_output, regularizer))
  for feature in config.features_of_type('numeric'):
    representations[feature.name] = tf.keras.layers.Reshape(
        (1,), name=f'{feature.name}_column')(
            inputs[features.numeric_feature(feature.name)])

  def parts_of(names):
    parts = []
    for name in names:
      # Text features share one representation, so add it only once.
      if not any(part is representations[name] for part in parts):
        parts.append(representations[name])
    return parts

  outputs = {}
  retrieval = config.retrieval_task
  if retrieval is None:
    # Text first, then ids, then numbers.
    order = ([f.name for f in config.features_of_type('text')] +
             [f.name for f in config.features
              if f.type in ('categorical', 'id_sequence')] +
             [f.name for f in config.features_of_type('numeric')])
    trunk_parts = parts_of(order)
  else:
    query_parts = parts_of(retrieval.query_features)
    candidate_parts = parts_of(retrieval.candidate_features)
    towers = {}
    for tower, parts in (('query', query_parts),
                         ('candidate', candidate_parts)):
      hidden = _dense_stack(_concat(parts, f'{tower}_concat'),
                            config.model.hidden_units, config.model.dropout,
                            regularizer, tower)
      if retrieval.normalize_embeddings:
        hidden = tf.keras.layers.Dense(
            retrieval.embedding_dim, kernel_regularizer=regularizer,
            name=f'{tower}_projection')(hidden)
        towers[tower] = tf.keras.layers.UnitNormalization(
            name=features.tower_output(retrieval.name, tower))(hidden)
      else:
        towers[tower] = tf.keras.layers.Dense(
            retrieval.embedding_dim, kernel_regularizer=regularizer,
            name=features.tower_output(retrieval.name, tower))(hidden)
      outputs[features.tower_output(retrieval.name, tower)] = towers[tower]
    trunk_parts = query_parts + candidate_parts + [towers['query'],
                                                   towers['candidate']]

  shared = _dense_stack(_concat(trunk_parts, 'shared_concat'),
                        config.model.hidden_units, config.model.dropout,
                        regularizer, 'shared')
  for task in config.tasks:
    if task.type == 'retrieval':
      continue
    outputs[task.name] = tf.keras.layers.Dense(
        num_classes(config, tft_output, task.name),
        activation='sigmoid' if task.type == 'multilabel' else 'softmax',
        kernel_regularizer=regularizer, name=task.name)(shared)

  return MultiTaskModel(
      inputs=inputs, outputs=outputs,
      tasks={task.name: task for task in config.tasks},
      class_weights=class_weights,
      candidate_probabilities=candidate_probabilities,
      name=f'{config.model_name}_multitask')
