"""TensorFlow Serving warmup requests, written beside the exported model.

TF Serving replays `assets.extra/tf_serving_warmup_requests` (a TFRecord file
of `PredictionLog` protos) when it loads a version, so the first real request
does not pay for graph initialization.
"""

import os
from typing import Dict, List, Sequence

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2

from components.config import PipelineConfig


def request_inputs(config: PipelineConfig, raw_spec,
                   example: tf.train.Example) -> Dict[str, np.ndarray]:
  """Build the `serving_default` inputs of one raw example, batch of one."""
  inputs = {}
  feature_map = example.features.feature
  for feature in config.features:
    dtype = raw_spec[feature.name].dtype
    entry = feature_map[feature.name]
    if dtype == tf.string:
      values = [v for v in entry.bytes_list.value]
    elif dtype == tf.int64:
      values = list(entry.int64_list.value)
    else:
      values = list(entry.float_list.value)
    if feature.type == 'id_sequence':
      inputs[feature.name] = np.array([values or [b'']], dtype=object)
    else:
      default = b'' if dtype == tf.string else 0
      inputs[feature.name] = np.array(values[:1] or [default],
                                      dtype=object if dtype == tf.string
                                      else dtype.as_numpy_dtype)
  return inputs


def write_warmup_requests(path: str, config: PipelineConfig, raw_spec,
                          serialized_examples: Sequence[bytes]) -> List[str]:
  """Write one `serving_default` PredictRequest per raw example."""
  tf.io.gfile.makedirs(os.path.dirname(path))
  with tf.io.TFRecordWriter(path) as writer:
    for serialized in serialized_examples:
      example = tf.train.Example.FromString(serialized)
      request = predict_pb2.PredictRequest(
          model_spec=model_pb2.ModelSpec(name=config.model_name,
                                         signature_name='serving_default'))
      for name, value in request_inputs(config, raw_spec, example).items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
      log = prediction_log_pb2.PredictionLog(
          predict_log=prediction_log_pb2.PredictLog(request=request))
      writer.write(log.SerializeToString())
  return [path]
