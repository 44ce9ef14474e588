"""Tests of the local TF-Serving-compatible model server, end to end.

A module fixture trains a small model once on the bundled Amazon fine-food
sample (two epochs, up to the Trainer) and lays it out as TF Serving's
version folders. One server runs as a subprocess from its command line
(`python -m serving.server` with a models.config and a monitoring config);
the version-switch and batching tests run `ModelServer` in this process on
their own base paths. Every server binds 127.0.0.1. Predictions are compared
with the same SavedModel run in-process through `SavedModelSession`, for
exact float32 equality.
"""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import base64
import concurrent.futures
import dataclasses
import http.client
import json
import logging
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tensorflow_serving.apis import status_pb2

import pipeline
from components import trainer
from components.config import load_config
from serving import batching
from serving import model_manager
from serving import monitoring
from serving import tensor_codec
from serving.saved_model_session import SavedModelSession
from serving import server as server_lib
from serving.server import ModelServer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AMAZON_CONFIG = os.path.join(REPO_ROOT, 'configs', 'amazon_fine_food.yaml')
MODEL = 'amazon_fine_food'
HOST = '127.0.0.1'
MAX_BODY_BYTES = 64 * 1024
METRICS_PATH = '/monitoring/prometheus/metrics'
STARTUP_SECONDS = 120

# Rows with ASCII, accents, CJK, emoji and empty strings.
SUMMARIES = ['Great tea', 'Stale and bitter', 'très bon', '好喝的茶', '',
             'Meh 🙂', 'would not buy again', 'ok']
TEXTS = ['Smooth, fragrant, arrived fast. Will buy again.',
         'The bag was open and the crackers tasted old.',
         'Un café très doux, parfait le matin.',
         '这个茶很好喝，我很喜欢。', '', 'It is fine I guess.',
         'Terrible packaging and the dog would not eat it.',
         'Average product for the price.']
PRODUCTS = ['B001E4KFG0', 'B00813GRG4', 'B000LQOCH0', 'B000UA0QIQ', '',
            'B006K2ZZ7K', 'B000E7L2R4', 'unknown-product']


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind((HOST, 0))
    return sock.getsockname()[1]


def _copy_version(source: str, base_path: str, version: int,
                  corrupt: bool = False) -> str:
  """Copy a version folder in atomically, the way the Pusher does."""
  staging = os.path.join(base_path, f'.staging-{version}')
  shutil.copytree(source, staging)
  if corrupt:
    with open(os.path.join(staging, 'saved_model.pb'), 'wb') as f:
      f.write(b'this is not a SavedModel proto' * 10)
  target = os.path.join(base_path, str(version))
  os.rename(staging, target)
  return target


def _wait_for(condition, timeout: float, what: str):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    value = condition()
    if value:
      return value
    time.sleep(0.1)
  raise AssertionError(f'timed out after {timeout} s waiting for {what}')


# Clients ----------------------------------------------------------------------


def _http(port: int, method: str, path: str, body: Optional[bytes] = None,
          headers: Optional[Dict[str, str]] = None
          ) -> Tuple[int, Dict[str, str], bytes]:
  connection = http.client.HTTPConnection(HOST, port, timeout=60)
  try:
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    return response.status, dict(response.getheaders()), response.read()
  finally:
    connection.close()


def _rest(port: int, method: str, path: str, payload: Any = None
          ) -> Tuple[int, Any]:
  body = None if payload is None else json.dumps(payload).encode('utf-8')
  status, _, data = _http(port, method, path, body)
  return status, json.loads(data)


def _predict_rest(port: int, payload: Any, path_suffix: str = ''
                  ) -> Tuple[int, Any]:
  return _rest(port, 'POST', f'/v1/models/{MODEL}{path_suffix}:predict',
               payload)


def _rows(indices) -> List[Dict[str, str]]:
  return [{'summary': SUMMARIES[i], 'text': TEXTS[i],
           'product_id': PRODUCTS[i]} for i in indices]


def _arrays(indices) -> Dict[str, np.ndarray]:
  columns = {'summary': SUMMARIES, 'text': TEXTS, 'product_id': PRODUCTS}
  return {name: np.array([values[i].encode('utf-8') for i in indices],
                         dtype=object)
          for name, values in columns.items()}


def _predict_request(indices, version: Optional[int] = None,
                     signature_name: str = '') -> predict_pb2.PredictRequest:
  request = predict_pb2.PredictRequest()
  request.model_spec.name = MODEL
  request.model_spec.signature_name = signature_name
  if version is not None:
    request.model_spec.version.value = version
  for name, value in _arrays(indices).items():
    request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
  return request


class Stubs(NamedTuple):
  channel: grpc.Channel
  prediction: prediction_service_pb2_grpc.PredictionServiceStub
  model: model_service_pb2_grpc.ModelServiceStub


def _stubs(port: int) -> Stubs:
  channel = grpc.insecure_channel(f'{HOST}:{port}')
  return Stubs(channel,
               prediction_service_pb2_grpc.PredictionServiceStub(channel),
               model_service_pb2_grpc.ModelServiceStub(channel))


def _status_request(version: Optional[int] = None):
  request = get_model_status_pb2.GetModelStatusRequest()
  request.model_spec.name = MODEL
  if version is not None:
    request.model_spec.version.value = version
  return request


def _states(stubs: Stubs) -> Dict[int, Tuple[str, str, str]]:
  response = stubs.model.GetModelStatus(_status_request(), timeout=30)
  state_name = get_model_status_pb2.ModelVersionStatus.State.Name
  error_name = status_pb2.StatusProto.DESCRIPTOR.fields_by_name[
      'error_code'].enum_type.values_by_number
  return {entry.version: (state_name(entry.state),
                          error_name[entry.status.error_code].name,
                          entry.status.error_message)
          for entry in response.model_version_status}


def _assert_outputs_equal(actual: Dict[str, np.ndarray],
                          expected: Dict[str, np.ndarray]) -> None:
  assert sorted(actual) == sorted(expected)
  for key, value in expected.items():
    got = np.asarray(actual[key])
    assert got.dtype == value.dtype, f'{key}: {got.dtype} != {value.dtype}'
    assert got.shape == value.shape, f'{key}: {got.shape} != {value.shape}'
    assert np.array_equal(got, value), f'{key}: {got} != {value}'


def _rest_rows_to_arrays(predictions: List[Dict[str, Any]],
                         reference: Dict[str, np.ndarray]
                         ) -> Dict[str, np.ndarray]:
  """Decode REST rows with the reference's dtypes (float32, strings)."""
  arrays = {}
  for key, value in reference.items():
    column = [row[key] for row in predictions]
    if value.dtype == object:
      arrays[key] = np.array([text.encode('utf-8') for text in column],
                             dtype=object)
    else:
      arrays[key] = np.array(column, dtype=value.dtype)
  return arrays


# Fixtures ---------------------------------------------------------------------


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory) -> str:
  """Train two epochs on the bundled sample; return the exported SavedModel."""
  base = tmp_path_factory.mktemp('server_model')
  config = load_config(AMAZON_CONFIG)
  config = dataclasses.replace(
      config, trainer=dataclasses.replace(config.trainer, epochs=2))
  summary = pipeline.run_pipeline(config, None, str(base / 'root'),
                                  str(base / 'serving'), [], until='trainer')
  (trainer_run,) = [c for c in summary['components']
                    if c['component'] == 'trainer']
  path = os.path.join(trainer_run['output_dir'], trainer.SERVING_MODEL_DIR)
  assert os.path.isfile(os.path.join(path, model_manager.WARMUP_PATH))
  return path


@pytest.fixture(scope='module')
def reference(model_dir):
  """The model run in-process: (session, outputs for all rows)."""
  session = SavedModelSession(model_dir)
  outputs = session.run(_arrays(range(len(SUMMARIES))))
  yield session, outputs
  session.close()


class ServerProcess(NamedTuple):
  process: subprocess.Popen
  grpc_port: int
  rest_port: int
  log_path: str
  base_path: str

  def log(self) -> str:
    with open(self.log_path, encoding='utf-8') as f:
      return f.read()


@pytest.fixture(scope='module')
def server(model_dir, tmp_path_factory):
  """`python -m serving.server` from the command line, on version 1."""
  base = tmp_path_factory.mktemp('cli_server')
  base_path = base / 'models' / MODEL
  base_path.mkdir(parents=True)
  _copy_version(model_dir, str(base_path), 1)
  (base / 'models.config').write_text(
      'model_config_list {\n'
      f'  config {{ name: "{MODEL}" base_path: "{base_path}"\n'
      '    model_platform: "tensorflow"\n'
      '    model_version_policy { latest { num_versions: 1 } }\n'
      '    version_labels { key: "stable" value: 1 } }\n'
      '}\n')
  (base / 'monitoring.config').write_text(
      f'prometheus_config {{ enable: true path: "{METRICS_PATH}" }}\n')
  grpc_port, rest_port = _free_port(), _free_port()
  log_path = str(base / 'server.log')
  with open(log_path, 'w', encoding='utf-8') as log:
    process = subprocess.Popen(
        [sys.executable, '-m', 'serving.server', f'--port={grpc_port}',
         f'--rest_api_port={rest_port}',
         f'--model_config_file={base / "models.config"}',
         f'--monitoring_config_file={base / "monitoring.config"}',
         f'--rest_api_max_body_bytes={MAX_BODY_BYTES}',
         '--file_system_poll_wait_seconds=1'],
        cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
  running = ServerProcess(process, grpc_port, rest_port, log_path,
                          str(base_path))
  try:
    _wait_for(lambda: process.poll() is not None
              or 'Exporting HTTP/REST API' in running.log(),
              STARTUP_SECONDS, 'the server to start')
    assert process.poll() is None, running.log()
    yield running
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()


@pytest.fixture(scope='module')
def stubs(server):
  client = _stubs(server.grpc_port)
  yield client
  client.channel.close()


@pytest.fixture()
def in_process_server(model_dir, tmp_path):
  """Start a `ModelServer` in this process on a fresh base path."""
  started = []

  def start(batching_parameters=None, poll_wait_seconds=0.1,
            session_config=None):
    base_path = tmp_path / f'models{len(started)}' / MODEL
    base_path.mkdir(parents=True)
    _copy_version(model_dir, str(base_path), 1)
    model_server = ModelServer(
        [model_manager.ModelConfig(MODEL, str(base_path))],
        grpc_address=(HOST, 0), rest_address=(HOST, 0),
        poll_wait_seconds=poll_wait_seconds,
        batching_parameters=batching_parameters,
        session_config=session_config)
    model_server.start()
    started.append(model_server)
    return model_server, str(base_path)

  yield start
  for model_server in started:
    model_server.stop(grace_seconds=1)


# Predictions ------------------------------------------------------------------


def test_rest_row_format_matches_session(server, reference):
  _, expected = reference
  status, body = _predict_rest(server.rest_port,
                               {'instances': _rows(range(len(SUMMARIES)))})
  assert status == 200, body
  _assert_outputs_equal(_rest_rows_to_arrays(body['predictions'], expected),
                        expected)


def test_rest_columnar_format_matches_session(server, reference):
  _, expected = reference
  columns = {'summary': SUMMARIES, 'text': TEXTS, 'product_id': PRODUCTS}
  status, body = _predict_rest(
      server.rest_port, {'inputs': columns,
                         'signature_name': 'serving_default'})
  assert status == 200, body
  outputs = body['outputs']
  for key, value in expected.items():
    if value.dtype == object:
      assert [v.decode('utf-8') for v in value] == outputs[key]
    else:
      got = np.array(outputs[key], dtype=np.float32)
      assert np.array_equal(got, value), key


def test_rest_version_and_label_paths(server, reference):
  _, expected = reference
  for suffix in ('/versions/1', '/labels/stable'):
    status, body = _predict_rest(server.rest_port,
                                 {'instances': _rows([2])}, suffix)
    assert status == 200, (suffix, body)
    assert body['predictions'][0]['rating_label'] == (
        expected['rating_label'][2].decode('utf-8'))


def test_rest_b64_strings_and_from_examples(server, reference):
  session, _ = reference
  examples = []
  for i in range(3):
    feature = {name: tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[values[i].encode('utf-8')])) for name, values in
               (('summary', SUMMARIES), ('text', TEXTS),
                ('product_id', PRODUCTS))}
    examples.append(tf.train.Example(features=tf.train.Features(
        feature=feature)).SerializeToString())
  expected = session.run({'examples': np.array(examples, dtype=object)},
                         'from_examples')
  payload = {'signature_name': 'from_examples',
             'instances': [{'b64': base64.b64encode(e).decode('ascii')}
                           for e in examples]}
  status, body = _predict_rest(server.rest_port, payload)
  assert status == 200, body
  _assert_outputs_equal(_rest_rows_to_arrays(body['predictions'], expected),
                        expected)


def test_grpc_predict_matches_session(server, stubs, reference):
  _, expected = reference
  response = stubs.prediction.Predict(
      _predict_request(range(len(SUMMARIES))), timeout=60)
  assert response.model_spec.name == MODEL
  assert response.model_spec.version.value == 1
  assert response.model_spec.signature_name == 'serving_default'
  _assert_outputs_equal(
      {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()},
      expected)


def test_grpc_output_filter(server, stubs, reference):
  _, expected = reference
  request = _predict_request([0, 1], version=1)
  request.output_filter.extend(['sentiment_label', 'rating_probabilities'])
  response = stubs.prediction.Predict(request, timeout=60)
  assert sorted(response.outputs) == ['rating_probabilities',
                                      'sentiment_label']
  assert np.array_equal(tf.make_ndarray(response.outputs[
      'rating_probabilities']), expected['rating_probabilities'][:2])


def test_float_json_round_trips_float32():
  values = np.random.default_rng(0).random(2000, dtype=np.float32)
  values = np.concatenate([values, np.float32([1e-38, 3.4e38, 0.1, 1 / 3])])
  decoded = json.loads(json.dumps(tensor_codec.array_to_json('p', values)))
  assert np.array_equal(np.array(decoded, dtype=np.float32), values)


def test_invalid_utf8_output_is_b64():
  values = np.array([b'ok', b'\xff\xfe'], dtype=object)
  assert tensor_codec.array_to_json('label', values) == [
      'ok', {'b64': base64.b64encode(b'\xff\xfe').decode('ascii')}]
  assert tensor_codec.array_to_json('image_bytes', values[:1]) == [
      {'b64': base64.b64encode(b'ok').decode('ascii')}]


# Status and metadata ----------------------------------------------------------


@pytest.mark.parametrize('array', [
    np.array([[0.1, 0.2, 0.7], [1.0, 0.0, 0.0]], dtype=np.float32),
    np.array([2.5], dtype=np.float64),
    np.array([3, -1, 7], dtype=np.int32),
    np.array([[2**40, -5]], dtype=np.int64),
    np.array([[b'positive', b'\xff\xfe'], [b'', b'neutral']], dtype=object),
    np.array([], dtype=np.float32),
    np.zeros((0, 3), dtype=object),
    np.array(1.5, dtype=np.float32),
    np.array([True, False]),
    np.array([0.5], dtype=np.float16),
], ids=['float32', 'float64', 'int32', 'int64', 'bytes', 'empty-float',
        'empty-bytes', 'scalar', 'bool', 'float16'])
def test_tensor_proto_codec_matches_tensorflow(array):
  expected = tf.make_tensor_proto(array)

  encoded = tensor_codec.array_to_tensor_proto(array)
  decoded = tensor_codec.tensor_proto_to_ndarray(expected)

  assert encoded.SerializeToString() == expected.SerializeToString()
  reference = tf.make_ndarray(expected)
  assert decoded.dtype == reference.dtype
  assert decoded.shape == reference.shape
  assert decoded.tolist() == reference.tolist()


def test_tensor_proto_decoding_of_value_fields():
  # Protos written with repeated value fields, as other clients write them,
  # and a single string that fills the whole shape.
  floats = tf.make_tensor_proto([0.25, 0.5], dtype=tf.float32)
  floats.ClearField('tensor_content')
  floats.float_val.extend([0.25, 0.5])
  filled = tf.make_tensor_proto([b'x'], dtype=tf.string)
  filled.tensor_shape.dim[0].size = 3

  assert tensor_codec.tensor_proto_to_ndarray(floats).tolist() == [0.25, 0.5]
  assert tensor_codec.tensor_proto_to_ndarray(filled).tolist() == [
      b'x', b'x', b'x']


def _graph_error_message(build, value) -> str:
  """Return TensorFlow's message for a graph that fails on `value`."""
  graph = tf.Graph()
  with graph.as_default():
    placeholder = tf.compat.v1.placeholder(tf.int32, shape=None)
    fetch = build(placeholder)
  with tf.compat.v1.Session(graph=graph) as session:
    with pytest.raises(tf.errors.OpError) as raised:
      session.run(fetch, {placeholder: value})
  return raised.value.message


def test_op_error_keeps_assertion_value():
  message = _graph_error_message(
      lambda k: tf.debugging.assert_less_equal(
          k, tf.constant(100), message='k must be at most 100'), 200)

  assert '{{node' in message
  assert tensor_codec.op_error_message(message) == (
      'k must be at most 100 (got 200)')
  assert tensor_codec.op_error_message(
      'Graph execution error:\n\nassertion failed: [k must be at most 100] '
      '[Condition x <= y did not hold element-wise:] [x (Max:0) = ] [200] '
      '[y (Const_1:0) = ] [100]\n\t [[{{node assert_less_equal/Assert}}]]'
  ) == 'k must be at most 100 (got 200)'


def test_op_error_drops_node_lines():
  message = _graph_error_message(lambda values: tf.reshape(values, [2]),
                                 [1, 2, 3])

  cleaned = tensor_codec.op_error_message(message)
  assert 'Input to reshape is a tensor with 3 values' in cleaned
  assert '{{node' not in cleaned


def test_rest_status_json(server):
  expected = {'model_version_status': [{
      'version': '1', 'state': 'AVAILABLE',
      'status': {'error_code': 'OK', 'error_message': ''}}]}
  for path in (f'/v1/models/{MODEL}', f'/v1/models/{MODEL}/versions/1',
               f'/v1/models/{MODEL}/labels/stable'):
    status, body = _rest(server.rest_port, 'GET', path)
    assert status == 200, (path, body)
    assert body == expected, path


def test_rest_metadata_json(server, reference):
  session, _ = reference
  status, body = _rest(server.rest_port, 'GET',
                       f'/v1/models/{MODEL}/metadata')
  assert status == 200, body
  assert body['model_spec'] == {'name': MODEL, 'signature_name': '',
                                'version': '1'}
  signature_map = get_model_metadata_pb2.SignatureDefMap()
  for key, signature in session.signatures.items():
    signature_map.signature_def[key].CopyFrom(signature)
  assert body['metadata']['signature_def'] == json_format.MessageToDict(
      signature_map, preserving_proto_field_name=True)
  inputs = body['metadata']['signature_def']['signature_def'][
      'serving_default']['inputs']
  assert inputs['summary']['dtype'] == 'DT_STRING'
  assert inputs['summary']['tensor_shape'] == {'dim': [{'size': '-1'}]}


def test_grpc_metadata_and_status(server, stubs, reference):
  session, _ = reference
  request = get_model_metadata_pb2.GetModelMetadataRequest()
  request.model_spec.name = MODEL
  request.metadata_field.append('signature_def')
  response = stubs.prediction.GetModelMetadata(request, timeout=30)
  assert response.model_spec.version.value == 1
  signature_map = get_model_metadata_pb2.SignatureDefMap()
  assert response.metadata['signature_def'].Unpack(signature_map)
  assert dict(signature_map.signature_def) == session.signatures

  status = stubs.model.GetModelStatus(_status_request(1), timeout=30)
  (entry,) = status.model_version_status
  assert entry.version == 1
  assert entry.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
  assert entry.status.error_code == 0
  assert entry.status.error_message == ''


# Errors -----------------------------------------------------------------------

GOOD_ROW = _rows([0])[0]
PREDICT = f'/v1/models/{MODEL}:predict'

REST_ERRORS = [
    # (case, method, path, body, HTTP code, text in the error)
    ('malformed json', 'POST', PREDICT, b'{"instances": [', 400,
     'Malformed JSON'),
    ('body not object', 'POST', PREDICT, b'[1, 2]', 400, 'JSON object'),
    ('no instances or inputs', 'POST', PREDICT, b'{"rows": []}', 400,
     '"instances"'),
    ('both formats', 'POST', PREDICT,
     json.dumps({'instances': [GOOD_ROW], 'inputs': {}}).encode(), 400,
     'exactly one'),
    ('number for string', 'POST', PREDICT,
     json.dumps({'instances': [dict(GOOD_ROW, summary=5)]}).encode(), 400,
     "Input 'summary' expects strings"),
    ('missing input', 'POST', PREDICT,
     json.dumps({'instances': [{'summary': 'a', 'text': 'b'}]}).encode(),
     400, "['product_id']"),
    ('unknown input', 'POST', PREDICT,
     json.dumps({'instances': [dict(GOOD_ROW, stars='5')]}).encode(), 400,
     "['stars']"),
    ('unequal columns', 'POST', PREDICT,
     json.dumps({'inputs': {'summary': ['a', 'b'], 'text': ['c'],
                            'product_id': ['d']}}).encode(), 400,
     'different batch sizes'),
    ('ragged rows', 'POST', PREDICT,
     json.dumps({'inputs': {'summary': [['a'], 'b'], 'text': ['c', 'd'],
                            'product_id': ['e', 'f']}}).encode(), 400,
     'ragged'),
    ('wrong rank', 'POST', PREDICT,
     json.dumps({'inputs': {'summary': [['a']], 'text': [['c']],
                            'product_id': [['e']]}}).encode(), 400,
     'rank-1'),
    ('empty instances', 'POST', PREDICT, b'{"instances": []}', 400,
     'empty'),
    ('unknown signature', 'POST', PREDICT,
     json.dumps({'signature_name': 'classify_me',
                 'instances': [GOOD_ROW]}).encode(), 400, "'classify_me'"),
    ('unknown model', 'POST', '/v1/models/no_such_model:predict',
     json.dumps({'instances': [GOOD_ROW]}).encode(), 404, "'no_such_model'"),
    ('unknown version', 'POST', f'/v1/models/{MODEL}/versions/7:predict',
     json.dumps({'instances': [GOOD_ROW]}).encode(), 404, 'Version 7'),
    ('unknown label', 'POST', f'/v1/models/{MODEL}/labels/canary:predict',
     json.dumps({'instances': [GOOD_ROW]}).encode(), 400, "'canary'"),
    ('non-integer version', 'GET', f'/v1/models/{MODEL}/versions/latest',
     None, 400, "'latest'"),
    ('status of unknown version', 'GET', f'/v1/models/{MODEL}/versions/9',
     None, 404, 'Version 9'),
    ('metadata of unknown model', 'GET', '/v1/models/nope/metadata', None,
     404, "'nope'"),
    ('oversize body', 'POST', PREDICT,
     json.dumps({'instances': [dict(GOOD_ROW, text='x' * MAX_BODY_BYTES)]}
                ).encode(), 413, str(MAX_BODY_BYTES)),
    ('get on predict', 'GET', PREDICT, None, 405, 'use POST'),
    ('post on status', 'POST', f'/v1/models/{MODEL}', b'{}', 405, 'use GET'),
    ('delete on status', 'DELETE', f'/v1/models/{MODEL}', None, 405,
     'use GET'),
    ('classify verb', 'POST', f'/v1/models/{MODEL}:classify',
     json.dumps({'examples': []}).encode(), 501, ':predict'),
    ('unknown path', 'GET', '/v2/anything', None, 404, '/v1/models/<name>'),
]


@pytest.mark.parametrize('case, method, path, body, code, text', REST_ERRORS,
                         ids=[case[0] for case in REST_ERRORS])
def test_rest_error(server, reference, case, method, path, body, code, text):
  del case
  status, headers, data = _http(server.rest_port, method, path, body)
  assert status == code, data
  error = json.loads(data)
  assert list(error) == ['error']
  assert text in error['error']
  if code == 405:
    assert headers.get('Allow') in ('GET', 'POST')

  _, expected = reference
  status, body = _predict_rest(server.rest_port, {'instances': _rows([1])})
  assert status == 200, body
  assert body['predictions'][0]['sentiment_label'] == (
      expected['sentiment_label'][1].decode('utf-8'))


def _grpc_error_cases():
  unknown_model = _predict_request([0])
  unknown_model.model_spec.name = 'no_such_model'
  missing_input = _predict_request([0])
  del missing_input.inputs['text']
  wrong_dtype = _predict_request([0])
  wrong_dtype.inputs['summary'].CopyFrom(
      tf.make_tensor_proto(np.array([1.5], dtype=np.float32)))
  bad_filter = _predict_request([0])
  bad_filter.output_filter.append('stars')
  unequal = _predict_request([0])
  unequal.inputs['summary'].CopyFrom(tf.make_tensor_proto(
      np.array([b'a', b'b'], dtype=object)))
  return [
      ('unknown model', unknown_model, grpc.StatusCode.NOT_FOUND,
       "'no_such_model'"),
      ('unknown version', _predict_request([0], version=5),
       grpc.StatusCode.NOT_FOUND, 'Version 5'),
      ('unknown signature', _predict_request([0], signature_name='nope'),
       grpc.StatusCode.INVALID_ARGUMENT, "'nope'"),
      ('missing input', missing_input, grpc.StatusCode.INVALID_ARGUMENT,
       "['text']"),
      ('wrong dtype', wrong_dtype, grpc.StatusCode.INVALID_ARGUMENT,
       'DT_FLOAT'),
      ('unknown output filter', bad_filter,
       grpc.StatusCode.INVALID_ARGUMENT, "['stars']"),
      ('unequal batch', unequal, grpc.StatusCode.INVALID_ARGUMENT,
       'different batch sizes'),
  ]


GRPC_ERRORS = _grpc_error_cases()


@pytest.mark.parametrize('case, request_proto, code, text', GRPC_ERRORS,
                         ids=[case[0] for case in GRPC_ERRORS])
def test_grpc_error(server, stubs, case, request_proto, code, text):
  del case
  with pytest.raises(grpc.RpcError) as raised:
    stubs.prediction.Predict(request_proto, timeout=30)
  assert raised.value.code() == code
  assert text in raised.value.details()
  response = stubs.prediction.Predict(_predict_request([3]), timeout=30)
  assert response.model_spec.version.value == 1


def test_grpc_metadata_errors(server, stubs):
  request = get_model_metadata_pb2.GetModelMetadataRequest()
  request.model_spec.name = MODEL
  with pytest.raises(grpc.RpcError) as raised:
    stubs.prediction.GetModelMetadata(request, timeout=30)
  assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
  request.metadata_field.append('graph')
  with pytest.raises(grpc.RpcError) as raised:
    stubs.prediction.GetModelMetadata(request, timeout=30)
  assert "['graph']" in raised.value.details()
  with pytest.raises(grpc.RpcError) as raised:
    stubs.model.GetModelStatus(_status_request(3), timeout=30)
  assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_rest_keep_alive_after_errors(server):
  connection = http.client.HTTPConnection(HOST, server.rest_port, timeout=30)
  try:
    for body in (b'{oops', b'{"instances": [{"summary": 1}]}',
                 json.dumps({'instances': _rows([0])}).encode()):
      connection.request('POST', PREDICT, body=body)
      response = connection.getresponse()
      response.read()
    assert response.status == 200
  finally:
    connection.close()


# Monitoring -------------------------------------------------------------------


def _metric_value(text: str, name: str, labels: Dict[str, str]) -> float:
  total = 0.0
  for line in text.splitlines():
    if not line.startswith(name + '{'):
      continue
    if all(f'{key}="{value}"' in line for key, value in labels.items()):
      total += float(line.rsplit(' ', 1)[1])
  return total


def test_prometheus_counts_requests(server):
  ok_labels = {'model_name': MODEL, 'API': 'predict', 'entrypoint': 'REST',
               'status': 'OK', 'signature_name': 'serving_default'}

  def scrape() -> str:
    status, headers, data = _http(server.rest_port, 'GET', METRICS_PATH)
    assert status == 200
    assert headers['Content-Type'].startswith('text/plain')
    return data.decode('utf-8')

  before = scrape()
  for _ in range(3):
    assert _predict_rest(server.rest_port,
                         {'instances': _rows([0])})[0] == 200
  _predict_rest(server.rest_port, {'instances': [{'summary': 1}]})
  after = scrape()

  count = monitoring.REQUEST_COUNT
  assert _metric_value(after, count, ok_labels) - _metric_value(
      before, count, ok_labels) == 3
  bad = dict(ok_labels, status='INVALID_ARGUMENT')
  assert _metric_value(after, count, bad) - _metric_value(
      before, count, bad) == 1
  assert _metric_value(after, monitoring.LOAD_ATTEMPT_COUNT,
                       {'status': 'success'}) >= 1
  assert f'# TYPE {monitoring.REQUEST_LATENCY} histogram' in after
  latency_labels = {'model_name': MODEL, 'API': 'predict',
                    'entrypoint': 'REST'}
  latency_count = monitoring.REQUEST_LATENCY + '_count'
  assert _metric_value(after, latency_count, latency_labels) - _metric_value(
      before, latency_count, latency_labels) == 4


# Versions ---------------------------------------------------------------------


def _send_continuously(port: int, stop: threading.Event,
                       served_versions: set, failures: list) -> int:
  """gRPC predicts until `stop`; record versions served and failures."""
  client = _stubs(port)
  count = 0
  try:
    while not stop.is_set():
      try:
        response = client.prediction.Predict(_predict_request([count % 8]),
                                             timeout=30)
        served_versions.add(response.model_spec.version.value)
      except grpc.RpcError as e:
        failures.append(f'{e.code()}: {e.details()}')
      count += 1
  finally:
    client.channel.close()
  return count


def test_new_version_corrupt_version_and_policy(in_process_server, model_dir,
                                                reference):
  model_server, base_path = in_process_server()
  client = _stubs(model_server.grpc_port)
  stop = threading.Event()
  served_versions, failures = set(), []
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    senders = [pool.submit(_send_continuously, model_server.grpc_port, stop,
                           served_versions, failures) for _ in range(2)]
    _wait_for(lambda: 1 in served_versions, 30, 'a first response')

    # Hidden and non-integer folders are not versions.
    os.makedirs(os.path.join(base_path, '.staging-99'))
    os.makedirs(os.path.join(base_path, 'notes'))
    _copy_version(model_dir, base_path, 2)
    _wait_for(lambda: _states(client).get(1, ('',))[0] == 'END', 60,
              'version 2 to replace version 1')
    _wait_for(lambda: 2 in served_versions, 30, 'a response from version 2')

    _copy_version(model_dir, base_path, 3, corrupt=True)
    _wait_for(lambda: _states(client).get(3, ('',))[0] == 'END', 60,
              'version 3 to fail')
    time.sleep(0.5)
    stop.set()
    sent = sum(sender.result() for sender in senders)

  assert failures == [], failures[:5]
  assert sent > 10
  assert served_versions == {1, 2}
  states = _states(client)
  assert sorted(states) == [1, 2, 3]
  assert states[2] == ('AVAILABLE', 'OK', '')
  assert states[1][0] == 'END'
  state, error_code, message = states[3]
  assert error_code != 'OK'
  assert message

  _, expected = reference
  response = client.prediction.Predict(_predict_request(range(8)),
                                       timeout=30)
  assert response.model_spec.version.value == 2
  assert np.array_equal(tf.make_ndarray(
      response.outputs['sentiment_probabilities']),
                        expected['sentiment_probabilities'])

  # A millisecond timestamp is a valid, newer version.
  timestamp = 1_700_000_000_000
  _copy_version(model_dir, base_path, timestamp)
  _wait_for(lambda: _states(client).get(timestamp, ('',))[0] == 'AVAILABLE',
            60, 'the timestamp version')
  response = client.prediction.Predict(_predict_request([0]), timeout=30)
  assert response.model_spec.version.value == timestamp
  client.channel.close()


def test_model_config_file_policies(tmp_path):
  config_path = tmp_path / 'models.config'
  config_path.write_text(
      'model_config_list {\n'
      '  config { name: "a" base_path: "/models/a"\n'
      '    model_version_policy { specific { versions: 2 versions: 5 } }\n'
      '    version_labels { key: "canary" value: 5 } }\n'
      '  config { name: "b" base_path: "relative/b"\n'
      '    model_version_policy { all {} } }\n'
      '  config { name: "c" base_path: "/models/c"\n'
      '    model_version_policy { latest { num_versions: 2 } } }\n'
      '  config { name: "d" base_path: "/models/d" }\n'
      '}\n')
  models = {m.name: m for m in model_manager.load_model_config_file(
      str(config_path))}
  on_disk = [1, 2, 3, 5, 1_700_000_000_000]
  assert models['a'].policy.select(on_disk) == [5, 2]
  assert models['a'].labels == {'canary': 5}
  assert models['b'].policy.select(on_disk) == sorted(on_disk, reverse=True)
  assert models['b'].base_path == str(tmp_path / 'relative' / 'b')
  assert models['c'].policy.select(on_disk) == [1_700_000_000_000, 5]
  assert models['d'].policy.select(on_disk) == [1_700_000_000_000]

  config_path.write_text('model_config_list { config { name: "a" } }')
  with pytest.raises(ValueError, match='base_path'):
    model_manager.load_model_config_file(str(config_path))


def test_list_versions_ignores_non_versions(tmp_path):
  for name in ('1', '20', '.staging-3', 'tmp', '4x', '9' * 20):
    (tmp_path / name).mkdir()
  (tmp_path / '7').write_text('a file, not a folder')
  assert sorted(model_manager.list_versions(str(tmp_path))) == [1, 20]


# Batching ---------------------------------------------------------------------


def test_batching_matches_unbatched(in_process_server, reference, tmp_path):
  parameters_path = tmp_path / 'batching.config'
  parameters_path.write_text(
      'max_batch_size { value: 8 }\n'
      'batch_timeout_micros { value: 50000 }\n'
      'max_enqueued_batches { value: 100 }\n'
      'num_batch_threads { value: 2 }\n'
      'pad_variable_length_inputs: true\n')
  parameters = batching.load_batching_parameters(str(parameters_path))
  assert parameters == batching.BatchingParameters(8, 50000, 100, 2)
  model_server, _ = in_process_server(batching_parameters=parameters,
                                      poll_wait_seconds=0)
  _, expected = reference
  client = _stubs(model_server.grpc_port)
  barrier = threading.Barrier(8)

  def predict(index: int) -> Dict[str, np.ndarray]:
    barrier.wait()
    response = client.prediction.Predict(_predict_request([index]),
                                         timeout=60)
    return {key: tf.make_ndarray(proto)
            for key, proto in response.outputs.items()}

  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    results = list(pool.map(predict, range(8)))
  for index, outputs in enumerate(results):
    _assert_outputs_equal(outputs, {key: value[index:index + 1]
                                    for key, value in expected.items()})
  text = model_server.metrics.render()
  assert _metric_value(text, monitoring.BATCH_SIZE + '_count',
                       {'model_name': MODEL}) < 8, 'no request was batched'

  status, body = _predict_rest(model_server.rest_port,
                               {'instances': _rows(range(8))})
  assert status == 200, body
  _assert_outputs_equal(_rest_rows_to_arrays(body['predictions'], expected),
                        expected)
  client.channel.close()


class _BlockingServable:
  """A servable whose first run waits for `release`; it records batch sizes.

  It replaces a model so that the test controls when the only batch
  thread is busy, which a real model's run time cannot do.
  """
  name = 'blocking'

  def __init__(self):
    self.release = threading.Event()
    self.started = threading.Event()
    self.batch_sizes: List[int] = []
    self._signature = meta_graph_pb2.SignatureDef()
    for key in ('x', 'y'):
      tensor = (self._signature.inputs if key == 'x' else
                self._signature.outputs)[key]
      tensor.dtype = types_pb2.DT_FLOAT
      tensor.tensor_shape.dim.add().size = -1

  def signature(self, name):
    del name
    return self._signature

  def run(self, signature_name, inputs, output_keys=None):
    del signature_name, output_keys
    self.batch_sizes.append(len(inputs['x']))
    self.started.set()
    self.release.wait(timeout=30)
    return {'y': inputs['x'] * 2}


def test_batch_grows_while_thread_busy():
  parameters = batching.BatchingParameters(
      max_batch_size=8, batch_timeout_micros=0, max_enqueued_batches=4,
      num_batch_threads=1)
  scheduler = batching.BatchScheduler(parameters)
  servable = _BlockingServable()

  def predict(value: float) -> np.ndarray:
    inputs = {'x': np.array([value], dtype=np.float32)}
    return scheduler.run(servable, 'serving_default', inputs)['y']

  with concurrent.futures.ThreadPoolExecutor(6) as pool:
    first = pool.submit(predict, 0.0)
    assert servable.started.wait(timeout=30)
    rest = [pool.submit(predict, float(value)) for value in range(1, 6)]
    # The five requests queue while the only batch thread runs the first.
    deadline = time.monotonic() + 30
    while (sum(task.size for queue in scheduler._queues.values()  # pylint: disable=protected-access
               for task in queue.pending) < 5 and
           time.monotonic() < deadline):
      time.sleep(0.01)
    servable.release.set()
    results = [first.result(timeout=30)] + [
        future.result(timeout=30) for future in rest]
  scheduler.stop()

  assert servable.batch_sizes == [1, 5]
  assert [result.tolist() for result in results] == [
      [2.0 * value] for value in range(6)]


def test_scheduler_stop_runs_queued():
  parameters = batching.BatchingParameters(
      max_batch_size=8, batch_timeout_micros=60_000_000,
      max_enqueued_batches=4, num_batch_threads=1)
  scheduler = batching.BatchScheduler(parameters)
  servable = _BlockingServable()
  servable.release.set()

  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    future = pool.submit(scheduler.run, servable, 'serving_default',
                         {'x': np.array([1.5, 2.5], dtype=np.float32)})
    deadline = time.monotonic() + 30
    while not scheduler._queues and time.monotonic() < deadline:  # pylint: disable=protected-access
      time.sleep(0.01)
    # The batch would wait a minute for more requests; stopping runs it now.
    scheduler.stop()
    assert future.result(timeout=30)['y'].tolist() == [3.0, 5.0]
  with pytest.raises(tensor_codec.ServingError, match='stopping'):
    scheduler.run(servable, 'serving_default',
                  {'x': np.array([1.0], dtype=np.float32)})


def test_batching_file_warns_on_unused_fields(tmp_path, caplog):
  path = tmp_path / 'batching.config'
  path.write_text('max_batch_size { value: 8 }\n'
                  '# batch_timeout_micros { value: 5 }\n'
                  'batch_timeout_micro { value: 1000 }\n'
                  'allowed_batch_sizes: 8\n')

  with caplog.at_level(logging.WARNING):
    parameters = batching.load_batching_parameters(str(path))

  assert parameters.max_batch_size == 8
  assert parameters.batch_timeout_micros == 0
  warned = sorted(record.args[0] for record in caplog.records
                  if 'is ignored' in record.getMessage())
  assert warned == ['allowed_batch_sizes', 'batch_timeout_micro']


def test_batch_padding_and_split():
  first = {'history': np.array([[b'a', b'b', b'c']], dtype=object),
           'text': np.array([b'x'], dtype=object)}
  second = {'history': np.array([[b'd'], [b'e']], dtype=object),
            'text': np.array([b'y', b'z'], dtype=object)}
  merged = batching.concatenate_inputs([first, second])
  assert merged['history'].tolist() == [[b'a', b'b', b'c'], [b'd', b'', b''],
                                        [b'e', b'', b'']]
  assert merged['text'].tolist() == [b'x', b'y', b'z']
  parts = batching.split_outputs({'p': np.arange(6).reshape(3, 2)}, [1, 2])
  assert parts[0]['p'].tolist() == [[0, 1]]
  assert parts[1]['p'].tolist() == [[2, 3], [4, 5]]


# Shutdown (last: it stops the module's server) --------------------------------


def test_sigterm_stops_cleanly(server):
  server.process.send_signal(signal.SIGTERM)
  assert server.process.wait(timeout=60) == 0, server.log()
  log = server.log()
  assert 'Received SIGTERM' in log
  assert 'Model server stopped' in log


# Session threads ------------------------------------------------------------


def _thread_flags(*flags: str) -> Optional[Tuple[int, int]]:
  args = server_lib._parse_args(['--model_base_path=/models/m', *flags])
  config = server_lib.session_config_from_args(args)
  if config is None:
    return None
  return (config.intra_op_parallelism_threads,
          config.inter_op_parallelism_threads)


def test_thread_flags_follow_tf_serving():
  assert _thread_flags() is None
  assert _thread_flags('--tensorflow_session_parallelism=2') == (2, 2)
  # Either pool's own flag sets both pools from their own flags.
  assert _thread_flags('--tensorflow_session_parallelism=4',
                       '--tensorflow_intra_op_parallelism=1') == (1, 0)
  assert _thread_flags('--tensorflow_inter_op_parallelism=3') == (0, 3)
  assert _thread_flags('--tensorflow_intra_op_parallelism=1',
                       '--tensorflow_inter_op_parallelism=2') == (1, 2)


@pytest.mark.parametrize('flags, message', [
    (['--tensorflow_session_parallelism=2',
      '--tensorflow_intra_op_parallelism=1',
      '--tensorflow_inter_op_parallelism=1'], 'not all three'),
    (['--tensorflow_intra_op_parallelism=-1'],
     '--tensorflow_intra_op_parallelism must be 0'),
])
def test_thread_flags_reject_bad_values(flags, message, capsys):
  with pytest.raises(SystemExit) as raised:
    server_lib._parse_args(['--model_base_path=/models/m', *flags])
  assert raised.value.code == 2
  assert message in capsys.readouterr().err


def test_thread_flags_reach_each_version(in_process_server, reference):
  config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=1,
                                    inter_op_parallelism_threads=2)
  model_server, _ = in_process_server(session_config=config)
  with model_server.manager.acquire(MODEL) as servable:
    # pylint: disable=protected-access
    used = servable.session._session._config
  assert used.intra_op_parallelism_threads == 1
  assert used.inter_op_parallelism_threads == 2
  _, expected = reference
  response = _stubs(model_server.grpc_port).prediction.Predict(
      _predict_request(range(len(SUMMARIES))), timeout=60)
  outputs = {key: tf.make_ndarray(proto)
             for key, proto in response.outputs.items()}
  for key, value in expected.items():
    if value.dtype.kind == 'f':
      np.testing.assert_allclose(outputs[key], value, rtol=1e-5, atol=1e-6)
    else:
      np.testing.assert_array_equal(outputs[key], value)
