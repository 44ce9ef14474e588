"""The REST and gRPC clients against the local model server and small mocks.

The server runs as `python -m serving.server` in a subprocess on 127.0.0.1
with free ports and serves a real pushed model. Its predictions must equal a
`SavedModelSession` run of the same rows. Retries and error decoding are
checked against a stub HTTP server and a closed port.
"""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import http.server
import json
import logging
import threading

import numpy as np
import pytest
import tensorflow as tf

import serving_fixtures
from serving import client as serving_client
from serving.client import GrpcClient, RestClient, ServingError
from serving.saved_model_session import SavedModelSession

pytest.importorskip('serving.server')

MODEL = serving_fixtures.MODEL_NAME
# REST carries floats as decimal JSON numbers, which a server may round.
# The gRPC path carries float32 bits and compares exactly.
REST_TOLERANCE = 1e-6
ROWS = {
    'summary': ['Great coffee', 'Stale and bitter', ''],
    'text': ['I love this coffee, fresh and rich.',
             'Arrived stale. Would not buy again.', 'ok'],
    'product_id': ['B001E4KFG0', 'B00813GRG4', ''],
}


_free_port = serving_fixtures.free_port


@pytest.fixture(scope='module')
def serving_dir(tmp_path_factory) -> str:
  return serving_fixtures.pushed_serving_dir(tmp_path_factory)


@pytest.fixture(scope='module')
def server(serving_dir, tmp_path_factory):
  """(grpc target, rest url) of a running `python -m serving.server`."""
  log_path = tmp_path_factory.mktemp('server') / 'server.log'
  with serving_fixtures.running_server(
      MODEL, os.path.join(serving_dir, MODEL), log_path) as targets:
    yield targets


@pytest.fixture(scope='module')
def expected(serving_dir):
  """The rows' outputs from a direct SavedModelSession run."""
  session = SavedModelSession(os.path.join(serving_dir, MODEL, '1'))
  inputs = {name: np.array([v.encode() for v in values], dtype=object)
            for name, values in ROWS.items()}
  outputs = session.run(inputs)
  session.close()
  return outputs


@pytest.fixture(params=['grpc', 'rest'])
def client(request, server):
  with serving_fixtures.connected_client(request.param, server,
                                         MODEL) as made:
    yield made


def test_predict_matches_session(client, expected):
  outputs = client.predict(ROWS)

  assert set(outputs) == set(expected)
  for name, values in expected.items():
    if values.dtype == object:
      assert outputs[name].tolist() == values.tolist(), name
    else:
      assert outputs[name].dtype == np.float32, name
      tolerance = 0 if isinstance(client, GrpcClient) else REST_TOLERANCE
      np.testing.assert_allclose(outputs[name], values, rtol=0,
                                 atol=tolerance, err_msg=name)


def test_predict_with_version(client, expected):
  outputs = client.predict(ROWS, version=1)

  assert outputs['sentiment_label'].tolist() == \
      expected['sentiment_label'].tolist()


def _serialized_examples():
  examples = []
  for row in range(len(ROWS['text'])):
    feature = {name: tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[values[row].encode()])) for name, values in ROWS.items()}
    examples.append(tf.train.Example(features=tf.train.Features(
        feature=feature)).SerializeToString())
  return examples


def test_from_examples_matches_session(client, expected):
  # Serialized protos are binary, so REST sends them as {"b64": ...}.
  outputs = client.predict({'examples': _serialized_examples()},
                           signature_name='from_examples')

  assert outputs['rating_label'].tolist() == expected['rating_label'].tolist()
  np.testing.assert_allclose(outputs['rating_probabilities'],
                             expected['rating_probabilities'], rtol=0,
                             atol=REST_TOLERANCE)


def test_non_utf8_text_predicts(server):
  grpc_target, rest_url = server
  rows = dict(ROWS, summary=[b'caf\xe9', b'\xff', b''])

  with GrpcClient(grpc_target, MODEL) as grpc_client:
    over_grpc = grpc_client.predict(rows)
  over_rest = RestClient(rest_url, MODEL).predict(rows)

  assert over_rest['rating_label'].tolist() == \
      over_grpc['rating_label'].tolist()
  np.testing.assert_allclose(over_rest['rating_probabilities'],
                             over_grpc['rating_probabilities'], rtol=0,
                             atol=REST_TOLERANCE)


def test_model_status_available(client):
  statuses = client.model_status()

  assert [s['version'] for s in statuses] == [1]
  assert statuses[0]['state'] == 'AVAILABLE'
  assert statuses[0]['status']['error_code'] == 'OK'


def test_metadata_lists_signature_inputs(client):
  signature = client.signature('serving_default')

  assert set(signature['inputs']) == {'summary', 'text', 'product_id'}
  assert 'sentiment_probabilities' in signature['outputs']
  assert client.input_dtypes()['text'].name == 'string'


def test_unknown_model_not_found(server, client):
  client.model_name = 'no_such_model'

  with pytest.raises(ServingError) as error:
    client.model_status()

  assert error.value.code == 'NOT_FOUND'
  assert 'no_such_model' in error.value.message


def test_unknown_signature_not_found(client):
  with pytest.raises(ServingError) as error:
    client.predict(ROWS, signature_name='nope')

  assert error.value.code == 'NOT_FOUND'
  assert "'nope'" in error.value.message
  assert "'serving_default'" in error.value.message
  assert '__saved_model_init_op' not in error.value.message


def test_unknown_feature_invalid_argument(client):
  with pytest.raises(ServingError) as error:
    client.predict(dict(ROWS, colour=['red'] * 3))

  assert error.value.code == 'INVALID_ARGUMENT'
  assert 'colour' in error.value.message


def test_wrong_feature_type_invalid_argument(client):
  with pytest.raises(ServingError) as error:
    client.predict(dict(ROWS, summary=[1, 2, 3]))

  assert error.value.code == 'INVALID_ARGUMENT'
  assert "'summary'" in error.value.message


def test_missing_feature_server_error(client):
  rows = {'text': ROWS['text']}

  with pytest.raises(ServingError) as error:
    client.predict(rows)

  assert error.value.code == 'INVALID_ARGUMENT'
  assert error.value.message


def test_cli_predict_prints_tasks(server, capsys):
  _, rest_url = server

  status = serving_client.main(['predict', '--model', MODEL, '--text',
                                'Fresh and rich', '--summary', 'Great',
                                '--rest', rest_url])

  out = capsys.readouterr().out
  assert status == 0
  for task in ('sentiment', 'rating', 'helpful'):
    assert task in out


def test_cli_predict_without_inputs_fails(server):
  _, rest_url = server

  with pytest.raises(SystemExit) as raised:
    serving_client.main(['predict', '--model', MODEL, '--rest', rest_url])

  assert str(raised.value.code) == (
      "error: missing input: signature 'serving_default' takes "
      "['product_id', 'summary', 'text'], so pass --text, --summary or "
      '--feature name=value.')


def test_cli_id_list_with_commas_fails():
  with pytest.raises(SystemExit) as raised:
    serving_client._parse_value('50,172, 133', tf.string, 2)  # pylint: disable=protected-access

  assert str(raised.value.code) == (
      "error: invalid id list '50,172, 133': separate the ids with spaces, "
      "not commas, e.g. '50 172 133'.")
  assert serving_client._parse_value('50 172  133', tf.string, 2) == [  # pylint: disable=protected-access
      '50', '172', '133']


def test_cli_status_unknown_model(server, capsys):
  grpc_target, _ = server

  status = serving_client.main(['status', '--model', 'no_such_model',
                                '--grpc', grpc_target])

  assert status == 1
  assert 'NOT_FOUND' in capsys.readouterr().err


def test_string_feature_invalid_argument(client):
  with pytest.raises(ServingError) as error:
    client.predict({'text': 'Bad', 'summary': ['Meh'], 'product_id': ['B0']})

  assert error.value.code == 'INVALID_ARGUMENT'
  assert "Feature 'text' is the string 'Bad'" in error.value.message


def test_grpc_client_reopens_after_close(server, expected):
  grpc_client = GrpcClient(server[0], MODEL)
  first = grpc_client.predict(ROWS)
  grpc_client.close()

  second = grpc_client.predict(ROWS)
  grpc_client.close()

  for name, value in expected.items():
    assert np.array_equal(first[name], value), name
    assert np.array_equal(second[name], value), name


@pytest.mark.parametrize('flag,address,text', [
    ('--rest', 'ftp://127.0.0.1:1', "Invalid REST URL 'ftp://127.0.0.1:1'"),
    ('--grpc', 'http://127.0.0.1:1', "Invalid gRPC target 'http://127.0.0.1:1'"),
])
def test_cli_invalid_address(capsys, flag, address, text):
  status = serving_client.main(['status', '--model', MODEL, flag, address])

  assert status == 2
  assert text in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Retries and error decoding, against a stub server and a closed port.
# ---------------------------------------------------------------------------


class _FlakyHandler(http.server.BaseHTTPRequestHandler):
  """Stub that replies 503 to the first `failures` requests, then 200."""
  failures = 2
  seen = 0

  def do_GET(self):  # pylint: disable=invalid-name
    type(self).seen += 1
    if self.path.startswith('/v1/models/missing'):
      self._reply(404, {'error': "Servable not found for request: "
                                 "Latest(missing)"})
    elif type(self).seen <= type(self).failures:
      self._reply(503, {'error': 'Server is loading'})
    else:
      self._reply(200, {'model_version_status': [
          {'version': '3', 'state': 'AVAILABLE',
           'status': {'error_code': 'OK', 'error_message': ''}}]})

  def _reply(self, code, body):
    data = json.dumps(body).encode()
    self.send_response(code)
    self.send_header('Content-Type', 'application/json')
    self.send_header('Content-Length', str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def log_message(self, *args):
    pass


@pytest.fixture
def flaky_server():
  _FlakyHandler.seen = 0
  stub = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _FlakyHandler)
  thread = threading.Thread(target=stub.serve_forever, daemon=True)
  thread.start()
  yield f'http://127.0.0.1:{stub.server_address[1]}'
  stub.shutdown()
  stub.server_close()


def test_rest_retries_503(flaky_server):
  rest = RestClient(flaky_server, 'm', max_attempts=3, backoff_s=0.01)

  statuses = rest.model_status()

  assert _FlakyHandler.seen == 3
  assert statuses[0]['version'] == 3


def test_rest_gives_up_after_attempts(flaky_server):
  rest = RestClient(flaky_server, 'm', max_attempts=2, backoff_s=0.01)

  with pytest.raises(ServingError) as error:
    rest.model_status()

  assert error.value.code == 'UNAVAILABLE'
  assert error.value.message == 'Server is loading'
  assert _FlakyHandler.seen == 2


def test_rest_404_names_server_message(flaky_server):
  rest = RestClient(flaky_server, 'missing', max_attempts=3, backoff_s=0.01)

  with pytest.raises(ServingError) as error:
    rest.model_status()

  assert error.value.code == 'NOT_FOUND'
  assert 'Latest(missing)' in error.value.message
  assert _FlakyHandler.seen == 1


def test_rest_closed_port_unavailable():
  rest = RestClient(f'http://127.0.0.1:{_free_port()}', 'm', max_attempts=2,
                    backoff_s=0.01)

  with pytest.raises(ServingError) as error:
    rest.model_status()

  assert error.value.code == 'UNAVAILABLE'


class _KeepAliveHandler(http.server.BaseHTTPRequestHandler):
  """HTTP/1.1 stub that counts connections and may drop each after a reply.

  With `drop_after_reply`, it closes the connection after every reply
  without saying so, as a server whose keep-alive timeout has passed does.
  """
  protocol_version = 'HTTP/1.1'
  connections = 0
  drop_after_reply = False

  def setup(self):
    type(self).connections += 1
    super().setup()

  def do_GET(self):  # pylint: disable=invalid-name
    data = json.dumps({'model_version_status': [
        {'version': '7', 'state': 'AVAILABLE',
         'status': {'error_code': 'OK', 'error_message': ''}}]}).encode()
    self.send_response(200)
    self.send_header('Content-Type', 'application/json')
    self.send_header('Content-Length', str(len(data)))
    self.end_headers()
    self.wfile.write(data)
    self.wfile.flush()
    if type(self).drop_after_reply:
      self.close_connection = True

  def log_message(self, *args):
    pass


@pytest.fixture(params=[False, True], ids=['kept', 'dropped'])
def keep_alive_server(request):
  _KeepAliveHandler.connections = 0
  _KeepAliveHandler.drop_after_reply = request.param
  stub = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _KeepAliveHandler)
  thread = threading.Thread(target=stub.serve_forever, daemon=True)
  thread.start()
  yield f'http://127.0.0.1:{stub.server_address[1]}', request.param
  stub.shutdown()
  stub.server_close()


def test_rest_connection_reuse_and_drop(keep_alive_server):
  url, dropped = keep_alive_server
  rest = RestClient(url, 'm', max_attempts=1)

  versions = [rest.model_status()[0]['version'] for _ in range(5)]
  rest.close()

  assert versions == [7] * 5
  # One connection for all five requests, or a new one after each drop;
  # max_attempts=1 shows that a dropped connection costs no attempt.
  assert _KeepAliveHandler.connections == (5 if dropped else 1)


def test_rest_connection_per_thread(server):
  rest = RestClient(server[1], MODEL)
  connections = []

  def predict_twice():
    for _ in range(2):
      rest.predict({name: values[:1] for name, values in ROWS.items()})
    connections.append(rest._local.connection)  # pylint: disable=protected-access

  threads = [threading.Thread(target=predict_twice) for _ in range(3)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  rest.close()

  assert len(connections) == 3
  assert len({id(connection) for connection in connections}) == 3
  assert all(connection.sock is None for connection in connections)
  # A closed client opens a new connection on its next request.
  outputs = rest.predict({name: values[:1] for name, values in ROWS.items()})
  assert rest._local.connection not in connections  # pylint: disable=protected-access
  assert all(len(value) == 1 for value in outputs.values())
  rest.close()


def test_rest_on_grpc_port_error(server):
  rest = RestClient(f'http://{server[0]}', MODEL, max_attempts=1)

  with pytest.raises(ServingError) as error:
    rest.model_status()

  assert error.value.code == 'UNAVAILABLE'
  assert 'not the gRPC port' in error.value.message
  assert '\x00' not in error.value.message


def test_grpc_closed_port_retries(caplog):
  target = f'127.0.0.1:{_free_port()}'

  with caplog.at_level(logging.WARNING):
    with GrpcClient(target, 'm', timeout_s=2, max_attempts=3,
                    backoff_s=0.01) as grpc_client:
      with pytest.raises(ServingError) as error:
        grpc_client.model_status()

  assert error.value.code == 'UNAVAILABLE'
  assert error.value.target == target
  retries = [r for r in caplog.records if 'Retrying' in r.getMessage()]
  assert len(retries) == 2


def test_pad_rows_pads_id_lists():
  assert serving_client.pad_rows([['a'], ['b', 'c'], []]) == [
      ['a', ''], ['b', 'c'], ['', '']]
  assert serving_client.pad_rows(['x', 'y']) == ['x', 'y']
  with pytest.raises(ValueError, match='mixes lists'):
    serving_client.pad_rows([['a'], 'b'])


def test_client_requires_model_name():
  with pytest.raises(ValueError, match='model_name is required'):
    RestClient('http://127.0.0.1:8501')
