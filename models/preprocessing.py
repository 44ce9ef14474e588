"""The tf.Transform `preprocessing_fn`: raw features to model inputs.

The same graph runs on Beam over the training data and, traced into the
exported SavedModel, on every serving request, so training and serving see
identical features.
"""

import collections
from typing import Callable, Dict, List

import tensorflow as tf
import tensorflow_transform as tft

from components.config import FeatureConfig, PipelineConfig, TaskConfig
from models import features
from models.tokenization import tokenize


def _dense_strings(value) -> tf.Tensor:
  """Convert a FixedLenFeature([]) input to a [batch] string tensor."""
  if isinstance(value, tf.SparseTensor):
    value = tf.sparse.to_dense(value, default_value='')
    value = tf.squeeze(value, axis=1)
  return value


def _non_empty(values: tf.Tensor) -> tf.Tensor:
  return tf.boolean_mask(values, tf.not_equal(values, ''))


def _ragged_strings(value) -> tf.RaggedTensor:
  """Convert a list input to [batch, (values)] ragged strings without ''."""
  if isinstance(value, tf.SparseTensor):
    value = tf.RaggedTensor.from_sparse(value)
  elif not isinstance(value, tf.RaggedTensor):
    value = tf.RaggedTensor.from_tensor(value)
  return tf.ragged.boolean_mask(value, tf.not_equal(value, ''))


def _encode_text(inputs, config: PipelineConfig) -> tf.Tensor:
  """Tokenize the joined text features into [batch, max_tokens] ids."""
  text_config = config.text
  parts = [_dense_strings(inputs[f.name])
           for f in config.features_of_type('text')]
  joined = tf.strings.reduce_join(tf.stack(parts, axis=1), axis=1,
                                  separator=' \n ')
  tokens = tokenize(joined, text_config.normalization, text_config.lower_case,
                    text_config.cjk, text_config.ngram_size)
  tokens = tokens[:, :text_config.max_tokens - 1]

  ids = tft.compute_and_apply_vocabulary(
      tokens,
      top_k=text_config.top_k,
      frequency_threshold=text_config.frequency_threshold,
      num_oov_buckets=text_config.oov_buckets,
      vocab_filename=features.TOKEN_VOCABULARY)
  ids = ids + features.FIRST_TOKEN_ID
  batch_size = tf.shape(joined, out_type=tf.int64)[0]
  bos = tf.RaggedTensor.from_tensor(
      tf.fill([batch_size, 1], tf.constant(features.BOS_ID, tf.int64)))
  ids = tf.concat([bos, ids], axis=1)
  return ids.to_tensor(default_value=features.PAD_ID,
                       shape=[None, text_config.max_tokens])


def _id_vocabularies(inputs, config: PipelineConfig) -> Dict[str, tf.Tensor]:
  """Build one deferred vocabulary per vocabulary name over its features."""
  groups: Dict[str, List[FeatureConfig]] = collections.defaultdict(list)
  for feature in config.features:
    if feature.type in ('categorical', 'id_sequence'):
      groups[feature.vocabulary_name].append(feature)

  vocabularies = {}
  for name, group in sorted(groups.items()):
    # The feature named like the vocabulary sets its size, else the first.
    owner = next((f for f in group if f.name == name), group[0])
    values = []
    for feature in group:
      if feature.type == 'categorical':
        values.append(_non_empty(_dense_strings(inputs[feature.name])))
      else:
        values.append(_ragged_strings(inputs[feature.name]).flat_values)
    vocabularies[name] = tft.vocabulary(
        tf.concat(values, axis=0),
        top_k=owner.top_k,
        frequency_threshold=owner.frequency_threshold,
        vocab_filename=features.id_vocabulary(name))
  return vocabularies


def _apply_ids(values: tf.Tensor, vocabulary, oov_buckets: int) -> tf.Tensor:
  """Map strings to ids: 0 for '', 1.. for the vocabulary, then OOV buckets."""
  ids = tft.apply_vocabulary(values, vocabulary, num_oov_buckets=oov_buckets,
                             default_value=-1)
  ids = ids + 1
  return tf.where(tf.equal(values, ''),
                  tf.constant(features.MISSING_ID, tf.int64), ids)


def _encode_label(label: tf.Tensor, task: TaskConfig) -> tf.Tensor:
  """Map label strings to class ids, NO_LABEL for '' or an unknown value."""
  label = _dense_strings(label)
  if task.classes:
    classes = tf.constant(list(task.classes))
    matches = tf.equal(tf.expand_dims(label, 1), tf.expand_dims(classes, 0))
    index = tf.argmax(tf.cast(matches, tf.int64), axis=1)
    return tf.where(tf.reduce_any(matches, axis=1), index,
                    tf.constant(features.NO_LABEL, tf.int64))
  vocabulary = tft.vocabulary(
      _non_empty(label), vocab_filename=features.label_vocabulary(task.name))
  return tft.apply_vocabulary(label, vocabulary,
                              default_value=features.NO_LABEL)


def _encode_retrieval_label(inputs, task: TaskConfig, config: PipelineConfig,
                            vocabularies) -> tf.Tensor:
  """Encode the candidate id of a query-candidate pair row, else NO_LABEL.

  The label uses the same vocabulary lookup as the candidate id feature, so
  a row's label and the candidate tower's input agree.
  """
  candidate = config.feature(task.candidate_id)
  ids = _apply_ids(_dense_strings(inputs[task.label]),
                   vocabularies[candidate.vocabulary_name],
                   candidate.oov_buckets)
  query = _dense_strings(inputs[task.query_key])
  is_pair = tf.logical_and(tf.not_equal(query, ''),
                           tf.not_equal(ids, features.MISSING_ID))
  return tf.where(is_pair, ids, tf.constant(features.NO_LABEL, tf.int64))


def _encode_multilabel(label, task: TaskConfig) -> tf.Tensor:
  """Encode a label list as multi-hot [batch, classes] floats.

  A row with an empty list gets NO_LABEL in every class.
  """
  values = _ragged_strings(label).to_tensor(default_value='')
  classes = tf.constant(list(task.classes))
  matches = tf.equal(values[:, :, tf.newaxis], classes[tf.newaxis, tf.newaxis])
  multi_hot = tf.cast(tf.reduce_any(matches, axis=1), tf.float32)
  # A list whose values are all unknown counts as unlabelled too.
  labelled = tf.reduce_any(tf.reduce_any(matches, axis=1), axis=1)
  return tf.where(labelled[:, tf.newaxis], multi_hot,
                  tf.fill(tf.shape(multi_hot), float(features.NO_LABEL)))


def _unlabel_where_set(label: tf.Tensor, marker) -> tf.Tensor:
  """Set the label to NO_LABEL in rows whose `marker` feature is set.

  A string marker is set when non-empty, and a number when nonzero.
  """
  marker = _dense_strings(marker)
  if marker.dtype == tf.string:
    is_set = tf.not_equal(marker, '')
  else:
    is_set = tf.not_equal(marker, 0)
  if label.shape.rank == 2:
    is_set = is_set[:, tf.newaxis]
  return tf.where(is_set, tf.cast(features.NO_LABEL, label.dtype) *
                  tf.ones_like(label), label)


def make_preprocessing_fn(config: PipelineConfig,
                          with_labels: bool = True) -> Callable:
  """Build the `preprocessing_fn` for a pipeline config.

  Args:
    config: the pipeline config; its features and tasks name the raw inputs.
    with_labels: also encode each task's label.

  Returns:
    A function from raw feature tensors to transformed feature tensors.
  """

  def preprocessing_fn(inputs):
    outputs = {}
    if config.features_of_type('text'):
      outputs[features.TOKENS] = _encode_text(inputs, config)

    vocabularies = _id_vocabularies(inputs, config)
    for feature in config.features_of_type('categorical'):
      outputs[features.id_feature(feature.name)] = _apply_ids(
          _dense_strings(inputs[feature.name]),
          vocabularies[feature.vocabulary_name], feature.oov_buckets)

    for feature in config.features_of_type('id_sequence'):
      # Histories are oldest first, so the most recent ids are kept.
      ids = _ragged_strings(inputs[feature.name])[:, -feature.max_length:]
      ids = ids.with_flat_values(_apply_ids(
          ids.flat_values, vocabularies[feature.vocabulary_name],
          feature.oov_buckets))
      outputs[features.id_sequence_feature(feature.name)] = ids.to_tensor(
          default_value=features.MISSING_ID, shape=[None, feature.max_length])

    for feature in config.features_of_type('numeric'):
      value = tf.cast(inputs[feature.name], tf.float32)
      value = tf.where(tf.math.is_nan(value), tf.zeros_like(value), value)
      outputs[features.numeric_feature(feature.name)] = tft.scale_to_z_score(
          value)

    if with_labels:
      for task in config.tasks:
        if task.type == 'retrieval':
          label = _encode_retrieval_label(inputs, task, config, vocabularies)
        elif task.type == 'multilabel':
          label = _encode_multilabel(inputs[task.label], task)
        else:
          label = _encode_label(inputs[task.label], task)
        if task.unlabelled_when_set:
          label = _unlabel_where_set(label, inputs[task.unlabelled_when_set])
        outputs[features.label_feature(task.name)] = label
    return outputs

  return preprocessing_fn


def label_keys(config: PipelineConfig) -> List[str]:
  """Return the raw label feature names, which serving requests omit.

  A retrieval task's label is its candidate id feature, which the candidate
  tower reads, so it is not one of them.
  """
  return sorted({task.label for task in config.tasks
                 if task.type != 'retrieval'})
