"""Exports the serving SavedModel: raw features in, per-task labels out.

Signatures (each a small function with one job):
  serving_default:    raw features as JSON-friendly tensors, batch first. An id
                      list (a history) arrives padded with empty strings.
  from_examples:      serialized raw `tf.Example` protos.
  transform_features: serialized raw `tf.Example` protos -> the transformed
                      features the model reads, for checking train/serve skew.
Each prediction signature returns, per task, `<task>_probabilities`
[batch, classes] and `<task>_label` [batch], the decoded class string.

Tokenization and vocabulary lookups run inside the graph (the tf.Transform
layer), so the exported graph holds only TensorFlow core and tensorflow-text
ops and needs no Python to run.
"""

import os
from typing import Dict, List, Optional, Sequence

import tensorflow as tf
import tensorflow_transform as tft

from components.config import PipelineConfig
from models import features
from models import recommend
from models.builder import class_names
from models.preprocessing import label_keys
from serving import warmup

WARMUP_FILE = os.path.join('assets.extra', 'tf_serving_warmup_requests')


def serving_feature_names(config: PipelineConfig) -> List[str]:
  """Raw features a prediction request carries, in config order."""
  return [feature.name for feature in config.features]


def _serving_input_spec(config: PipelineConfig,
                        raw_spec) -> Dict[str, tf.TensorSpec]:
  specs = {}
  for feature in config.features:
    dtype = raw_spec[feature.name].dtype
    shape = [None, None] if feature.type == 'id_sequence' else [None]
    specs[feature.name] = tf.TensorSpec(shape, dtype, name=feature.name)
  return specs


class ServingModule(tf.Module):
  """Tracks the model, the transform layer and the class names for export."""

  def __init__(self, model: tf.keras.Model,
               tft_output: tft.TFTransformOutput, config: PipelineConfig):
    super().__init__()
    self.model = model
    self.tft_layer = tft_output.transform_features_layer()
    self._task_names = [task.name for task in config.tasks
                        if task.type != 'retrieval']
    self._retrieval = config.retrieval_task
    self._multilabel = {task.name for task in config.tasks
                        if task.type == 'multilabel'}
    self._classes = {
        task: tf.constant(class_names(config, tft_output, task))
        for task in self._task_names
    }
    raw_spec = tft_output.raw_feature_spec()
    labels = set(label_keys(config))
    self._request_spec = {name: spec for name, spec in raw_spec.items()
                          if name in serving_feature_names(config)
                          and name not in labels}
    self._raw_spec = raw_spec
    self._input_names = list(model.input_names)

  def predict_transformed(self, transformed):
    inputs = {name: transformed[name] for name in self._input_names}
    probabilities = self.model(inputs, training=False)
    outputs = {}
    for task in self._task_names:
      task_probabilities = tf.cast(probabilities[task], tf.float32)
      outputs[features.probabilities_output(task)] = task_probabilities
      if task in self._multilabel:
        # The classes at or above 0.5, joined by '|'.
        chosen = tf.ragged.boolean_mask(
            tf.broadcast_to(self._classes[task], tf.shape(task_probabilities)),
            task_probabilities >= 0.5)
        outputs[features.label_output(task)] = tf.strings.reduce_join(
            chosen, axis=1, separator='|')
      else:
        outputs[features.label_output(task)] = tf.gather(
            self._classes[task], tf.argmax(task_probabilities, axis=-1))
    if self._retrieval is not None:
      # The affinity of each example's own query and candidate.
      name = self._retrieval.name
      outputs[features.score_output(name)] = tf.reduce_sum(
          tf.cast(probabilities[features.tower_output(name, 'query')],
                  tf.float32) *
          tf.cast(probabilities[features.tower_output(name, 'candidate')],
                  tf.float32), axis=1)
    return outputs

  def predict_raw(self, raw_features):
    return self.predict_transformed(self.tft_layer(raw_features))


def _to_raw_features(inputs: Dict[str, tf.Tensor],
                     config: PipelineConfig) -> Dict[str, tf.Tensor]:
  """Dense request tensors -> the raw tensors the transform layer expects."""
  raw = {}
  for feature in config.features:
    value = inputs[feature.name]
    if feature.type == 'id_sequence':
      # Padding is the empty string; from_dense drops it.
      value = tf.sparse.from_dense(value)
    raw[feature.name] = value
  return raw


def _serving_default_signature(module: ServingModule, config: PipelineConfig,
                               raw_spec):

  @tf.function(input_signature=[_serving_input_spec(config, raw_spec)])
  def serve(inputs):
    return module.predict_raw(_to_raw_features(inputs, config))

  return serve


def _from_examples_signature(module: ServingModule):

  @tf.function(input_signature=[
      tf.TensorSpec([None], tf.string, name='examples')])
  def serve_examples(examples):
    raw = tf.io.parse_example(examples, module._request_spec)
    return module.predict_raw(raw)

  return serve_examples


def _transform_features_signature(module: ServingModule):

  @tf.function(input_signature=[
      tf.TensorSpec([None], tf.string, name='examples')])
  def transform_features(examples):
    raw = tf.io.parse_example(examples, module._raw_spec)
    return module.tft_layer(raw)

  return transform_features


def export_serving_model(model: tf.keras.Model,
                         tft_output: tft.TFTransformOutput,
                         config: PipelineConfig, export_dir: str,
                         warmup_examples: Optional[Sequence[bytes]] = None,
                         catalogue: Optional[recommend.Catalogue] = None
                         ) -> str:
  """Save the SavedModel with its signatures and warmup requests.

  Args:
    model: the trained model over transformed features.
    tft_output: the transform graph the model was trained with.
    config: the pipeline config.
    export_dir: the SavedModel folder to write.
    warmup_examples: serialized raw examples to replay as warmup requests.
    catalogue: the candidates that `recommend` and `rank` score; needed when
      the config serves either.

  Returns:
    `export_dir`.
  """
  module = ServingModule(model, tft_output, config)
  raw_spec = tft_output.raw_feature_spec()
  signatures = {
      'serving_default': _serving_default_signature(module, config, raw_spec),
      'from_examples': _from_examples_signature(module),
      'transform_features': _transform_features_signature(module),
  }
  if recommend.serves_rank(config) or recommend.serves_recommend(config):
    if catalogue is None:
      raise ValueError('The config serves `rank` or `recommend`, which need '
                       'the candidate catalogue.')
    module.recommender = recommend.RecommendModule(
        model, tft_output, module.tft_layer, config, catalogue)
    if recommend.serves_recommend(config):
      signatures['recommend'] = recommend.recommend_signature(
          module.recommender, config, raw_spec)
    if recommend.serves_rank(config):
      signatures['rank'] = recommend.rank_signature(
          module.recommender, config, raw_spec)
  tf.saved_model.save(module, export_dir, signatures=signatures)
  if warmup_examples:
    warmup.write_warmup_requests(
        os.path.join(export_dir, WARMUP_FILE), config, raw_spec,
        warmup_examples)
  return export_dir
