"""REST and gRPC clients for TensorFlow Serving, and a command line over them.

Both clients speak TF Serving's own wire formats, so they work unchanged
against `tensorflow_model_server` and against the local server in this
package:

  REST: `POST /v1/models/<name>[/versions/<v>]:predict` with the columnar
        `inputs` format; strings that are not valid UTF-8 travel as
        `{"b64": ...}`. `GET /v1/models/<name>[...]` and `.../metadata`.
  gRPC: `PredictionService.Predict` with TensorProtos encoded as
        `tf.make_tensor_proto` encodes them,
        `PredictionService.GetModelMetadata`, `ModelService.GetModelStatus`.

`predict` takes a dict of lists, one entry per request row, and returns a
dict of numpy arrays. String outputs come back as `bytes` from both clients.
Ragged string lists (an id history) are padded with '' to a rectangle, the
padding the model's `serving_default` signature expects.

  python -m serving.client predict --model amazon_fine_food \\
      --text "Great coffee" --summary "Love it" --rest http://127.0.0.1:8501
"""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=wrong-import-position
import argparse
import base64
import http
import http.client
import json
import logging
import random
import sys
import threading
import time
import urllib.parse
from typing import (Any, Callable, Dict, List, Mapping, Optional, Sequence,
                    Tuple)

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from serving import tensor_codec

DEFAULT_GRPC_TARGET = '127.0.0.1:8500'
DEFAULT_REST_URL = 'http://127.0.0.1:8501'
DEFAULT_SIGNATURE = 'serving_default'
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_ATTEMPTS = 4
# Retry delays are drawn below 100 ms, 200 ms, 400 ms (full jitter). That is
# long enough for a restarting server to open its port, and short enough that
# a caller notices a dead server within a second.
DEFAULT_BACKOFF_S = 0.1
MAX_BACKOFF_S = 2.0
# gRPC's default receive limit is 4 MiB, which a batch of long reviews can
# exceed.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# HTTP status -> canonical error code, the usual mapping between the two.
# A 400 can also stand for FAILED_PRECONDITION or OUT_OF_RANGE, but it is
# reported as INVALID_ARGUMENT.
_HTTP_TO_CODE = {
    400: 'INVALID_ARGUMENT', 401: 'UNAUTHENTICATED', 403: 'PERMISSION_DENIED',
    404: 'NOT_FOUND', 409: 'ABORTED', 429: 'RESOURCE_EXHAUSTED',
    499: 'CANCELLED', 500: 'INTERNAL', 501: 'UNIMPLEMENTED',
    503: 'UNAVAILABLE', 504: 'DEADLINE_EXCEEDED',
}


_LOGGER = logging.getLogger(__name__)


class ServingError(Exception):
  """A request the model server rejected or could not serve.

  Attributes:
    code: the canonical error code name, e.g. 'NOT_FOUND', 'UNAVAILABLE'.
    message: the server's error message, or the transport error.
    target: the server address the request went to.
    http_status: the REST reply's HTTP status, None for gRPC and transport
      errors.
  """

  def __init__(self, code: str, message: str, target: str = '',
               http_status: Optional[int] = None):
    self.code = code
    self.message = message
    self.target = target
    self.http_status = http_status
    where = f' from {target}' if target else ''
    super().__init__(f'{code}{where}: {message}')


# ----------------------------------------------------------------------------
# Request tensors
# ----------------------------------------------------------------------------


def _is_sequence(value: Any) -> bool:
  return isinstance(value, (list, tuple, np.ndarray))


def pad_rows(rows: Sequence[Any], pad_value: Any = '') -> List[Any]:
  """Pad a list of lists with `pad_value` to the longest row.

  Rows that are not lists are returned unchanged, so a plain column passes
  through. A mix of lists and scalars raises ValueError.
  """
  rows = list(rows)
  nested = [_is_sequence(row) for row in rows]
  if not any(nested):
    return rows
  if not all(nested):
    raise ValueError('A feature mixes lists and single values across rows; '
                     'send every row as a list (an id history) or none.')
  width = max((len(row) for row in rows), default=0)
  return [list(row) + [pad_value] * (width - len(row)) for row in rows]


def _at_least_one_column(values: Sequence[Any]) -> Sequence[Any]:
  """Replace every row with [''] when all rows are empty lists.

  The padded width is then 1 instead of 0.
  """
  if values and all(_is_sequence(v) and not len(v) for v in values):
    return [['']] * len(values)
  return values


def _to_bytes(value: Any) -> bytes:
  if isinstance(value, bytes):
    return value
  if isinstance(value, str):
    return value.encode('utf-8')
  raise TypeError(f'Expected a string, got {type(value).__name__} {value!r}.')


def to_numpy(values: Sequence[Any], dtype: Optional[tf.DType]) -> np.ndarray:
  """Convert one feature's rows to the array the signature input expects.

  Args:
    values: one entry per row; an entry is a list for a 2-D input.
    dtype: the signature input's dtype, or None to infer it from the values.

  Returns:
    An object array of bytes for strings, else a numeric array of `dtype`.
  """
  if isinstance(values, np.ndarray) and dtype is None:
    return values
  rows = pad_rows(values, '' if dtype in (None, tf.string) else 0)
  if dtype is None:
    flat = np.asarray(rows, dtype=object).ravel()
    is_string = len(flat) and isinstance(flat[0], (str, bytes))
    dtype = tf.string if is_string else None
  if dtype == tf.string:
    array = np.asarray(rows, dtype=object)
    return np.vectorize(_to_bytes, otypes=[object])(array) if array.size \
        else array
  if dtype is None:
    return np.asarray(rows)
  return np.asarray(rows, dtype=dtype.as_numpy_dtype)


def _json_value(value: Any) -> Any:
  """Convert a tensor element to TF Serving's REST JSON form."""
  if isinstance(value, np.ndarray):
    return [_json_value(v) for v in value]
  if isinstance(value, bytes):
    try:
      return value.decode('utf-8')
    except UnicodeDecodeError:
      return {'b64': base64.b64encode(value).decode('ascii')}
  if isinstance(value, np.generic):
    return value.item()
  return value


def _from_json_value(value: Any) -> Any:
  if isinstance(value, list):
    return [_from_json_value(v) for v in value]
  if isinstance(value, dict) and set(value) == {'b64'}:
    return base64.b64decode(value['b64'])
  if isinstance(value, str):
    return value.encode('utf-8')
  return value


# ----------------------------------------------------------------------------
# Retries
# ----------------------------------------------------------------------------


def _backoff_delays(max_attempts: int, base_s: float):
  """Exponential delays with full jitter between attempts."""
  for attempt in range(max_attempts - 1):
    yield random.uniform(0, min(MAX_BACKOFF_S, base_s * 2**attempt))


def _describe_error(error: Exception) -> str:
  """Return one line for a transport error; gRPC's own str() spans many."""
  if isinstance(error, grpc.RpcError) and hasattr(error, 'code'):
    return f'{error.code().name}: {error.details()}'
  return str(error)


def _with_retries(call: Callable[[], Any], retryable: Callable[[Exception],
                                                                bool],
                  max_attempts: int, backoff_s: float, operation: str) -> Any:
  delays = _backoff_delays(max_attempts, backoff_s)
  attempt = 1
  while True:
    try:
      return call()
    except Exception as e:  # pylint: disable=broad-except
      if not retryable(e):
        raise
      delay = next(delays, None)
      if delay is None:
        raise
      _LOGGER.warning('%s failed (attempt %d of %d): %s. Retrying in '
                      '%.2f s.', operation, attempt, max_attempts,
                      _describe_error(e), delay)
      attempt += 1
      time.sleep(delay)


# ----------------------------------------------------------------------------
# Clients
# ----------------------------------------------------------------------------


class _Client:
  """Base of both clients: the shared interface and the metadata cache."""

  target: str

  def __init__(self, model_name: str):
    if not model_name:
      raise ValueError('model_name is required: the name the server serves '
                       "the model under, such as 'amazon_fine_food'.")
    self.model_name = model_name
    self._signatures: Dict[Optional[int], Dict[str, Any]] = {}

  def metadata(self, version: Optional[int] = None) -> Dict[str, Any]:
    raise NotImplementedError

  def model_status(self, version: Optional[int] = None) -> List[dict]:
    raise NotImplementedError

  def predict(self, features: Mapping[str, Sequence[Any]],
              signature_name: str = DEFAULT_SIGNATURE,
              version: Optional[int] = None) -> Dict[str, np.ndarray]:
    raise NotImplementedError

  def _with_empty_inputs(self, query: Mapping[str, Sequence[Any]],
                         signature_name: str,
                         version: Optional[int]) -> Dict[str, Any]:
    """Add the query inputs that `query` leaves out, as empty values.

    An empty value is '' for a string, 0 for a number and [''] for an id
    list, which the model reads as a missing feature.
    """
    if not query:
      raise ServingError(
          'INVALID_ARGUMENT', f'The {signature_name} query has no features; '
          'pass at least one, such as the user id.', self.target)
    rows = len(next(iter(query.values())))
    dtypes = self.input_dtypes(signature_name, version)
    ranks = _input_ranks(self.signature(signature_name, version))
    features = {name: _at_least_one_column(values)
                for name, values in query.items()}
    for name, dtype in sorted(dtypes.items()):
      if name not in features and name not in ('k', 'exclude', 'candidates'):
        features[name] = [_empty_value(dtype, ranks.get(name, 1))] * rows
    return features

  def recommend(self, query: Mapping[str, Sequence[Any]], k: int,
                exclude: Optional[Sequence[Sequence[str]]] = None,
                version: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Request the top-k candidate ids, titles and scores per query row.

    Args:
      query: the raw query features as a dict of lists, one entry per row
        (ids are strings, a history is a list of ids per row). Query inputs
        left out are sent empty: '' for a string, 0 for a number, [''] for
        an id list.
      k: how many candidates each row gets, at most the model's max_k.
      exclude: per row, ids that must not be returned.
      version: a model version; the latest when None.

    Returns:
      `item_ids`, `titles` and `scores` [rows, k], and `source` [rows]
      (`model`, or `popularity` for a user the model does not know).
    """
    features = self._with_empty_inputs(query, 'recommend', version)
    rows = len(next(iter(query.values())))
    features['k'] = [k] * rows
    exclude = [list(e) for e in exclude] if exclude else [[]] * rows
    # One empty string keeps the padded width at least one.
    features['exclude'] = [e or [''] for e in exclude]
    return self.predict(features, signature_name='recommend', version=version)

  def rank(self, query: Mapping[str, Sequence[Any]],
           candidates: Sequence[Sequence[str]],
           version: Optional[int] = None) -> np.ndarray:
    """Score each candidate id of each query row with the `rank` signature.

    Returns [rows, candidates] scores. Padding ('') scores 0.
    """
    features = self._with_empty_inputs(query, 'rank', version)
    features['candidates'] = [list(c) for c in candidates]
    return self.predict(features, signature_name='rank',
                        version=version)['scores']

  def signature(self, signature_name: str = DEFAULT_SIGNATURE,
                version: Optional[int] = None) -> Dict[str, Any]:
    """Return the signature def, as a JSON dict, from the server's metadata.

    Raises:
      ServingError: NOT_FOUND when the model has no such signature.
    """
    if version not in self._signatures:
      self._signatures[version] = self.metadata(version)['metadata'][
          'signature_def']['signature_def']
    signatures = self._signatures[version]
    if signature_name not in signatures:
      raise ServingError(
          'NOT_FOUND', f'Model {self.model_name} has no signature '
          f'{signature_name!r}; it has '
          f'{sorted(s for s in signatures if not s.startswith("__"))}.',
          self.target)
    return signatures[signature_name]

  def input_dtypes(self, signature_name: str = DEFAULT_SIGNATURE,
                   version: Optional[int] = None) -> Dict[str, tf.DType]:
    inputs = self.signature(signature_name, version).get('inputs', {})
    return {name: tf.dtypes.as_dtype(_dtype_enum(spec['dtype']))
            for name, spec in inputs.items()}

  def output_dtypes(self, signature_name: str = DEFAULT_SIGNATURE,
                    version: Optional[int] = None) -> Dict[str, tf.DType]:
    outputs = self.signature(signature_name, version).get('outputs', {})
    return {name: tf.dtypes.as_dtype(_dtype_enum(spec['dtype']))
            for name, spec in outputs.items()}

  def _request_arrays(self, features, signature_name, version):
    dtypes = self.input_dtypes(signature_name, version)
    unknown = sorted(set(features) - set(dtypes))
    if unknown:
      raise ServingError(
          'INVALID_ARGUMENT', f'Features {unknown} are not inputs of '
          f'signature {signature_name!r}; it takes {sorted(dtypes)}.',
          self.target)
    arrays = {}
    for name, values in features.items():
      if isinstance(values, (str, bytes)):
        raise ServingError(
            'INVALID_ARGUMENT', f'Feature {name!r} is the string '
            f'{values[:40]!r}, not a list with one value per row; pass '
            f'[{values[:40]!r}] for one row.', self.target)
      try:
        arrays[name] = to_numpy(values, dtypes[name])
      except (TypeError, ValueError) as e:
        raise ServingError(
            'INVALID_ARGUMENT', f'Feature {name!r} does not convert to '
            f'{dtypes[name].name}: {e}', self.target) from e
    return arrays


def _dtype_enum(dtype: Any) -> int:
  """Convert a metadata dtype, an enum name ('DT_FLOAT') or number, to int."""
  if isinstance(dtype, int):
    return dtype
  return types_pb2.DataType.Value(dtype)


class GrpcClient(_Client):
  """TF Serving's gRPC API: Predict, GetModelMetadata, GetModelStatus.

  Args:
    target: host:port of the gRPC endpoint.
    model_name: the served model's name.
    timeout_s: deadline of each call, in seconds.
    max_attempts: calls per request when the server is UNAVAILABLE.
    backoff_s: first retry delay, doubled each retry (with jitter).
  """

  def __init__(self, target: str = DEFAULT_GRPC_TARGET,
               model_name: str = '', timeout_s: float = DEFAULT_TIMEOUT_S,
               max_attempts: int = DEFAULT_MAX_ATTEMPTS,
               backoff_s: float = DEFAULT_BACKOFF_S):
    super().__init__(model_name)
    if '://' in target:
      raise ValueError(f'Invalid gRPC target {target!r}: use host:port, '
                       'without a scheme.')
    self.target = target
    self.timeout_s = timeout_s
    self.max_attempts = max_attempts
    self.backoff_s = backoff_s
    self._lock = threading.Lock()
    self._open()

  def _open(self) -> None:
    self._channel = grpc.insecure_channel(self.target, options=[
        ('grpc.max_receive_message_length', MAX_MESSAGE_BYTES),
        ('grpc.max_send_message_length', MAX_MESSAGE_BYTES),
    ])
    self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(
        self._channel)
    self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
    self._closed = False

  def close(self) -> None:
    """Close the channel; the next call opens a new one."""
    with self._lock:
      self._closed = True
      self._channel.close()

  def _reopen_if_closed(self) -> None:
    with self._lock:
      if self._closed:
        self._open()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def _call(self, service: str, request, operation: str):
    """Call `operation` of the stub named `service`, with retries."""
    self._reopen_if_closed()
    method = getattr(getattr(self, service), operation)

    def retryable(error: Exception) -> bool:
      return (isinstance(error, grpc.RpcError) and
              error.code() == grpc.StatusCode.UNAVAILABLE)

    try:
      return _with_retries(lambda: method(request, timeout=self.timeout_s),
                           retryable, self.max_attempts, self.backoff_s,
                           f'{operation} to {self.target}')
    except grpc.RpcError as e:
      raise ServingError(e.code().name, e.details() or str(e),
                         self.target) from e

  def _model_spec(self, spec, version, signature_name=None):
    spec.name = self.model_name
    if version is not None:
      spec.version.value = int(version)
    if signature_name:
      spec.signature_name = signature_name

  def metadata(self, version: Optional[int] = None) -> Dict[str, Any]:
    """GetModelMetadata for `signature_def`, as TF Serving's REST JSON."""
    request = get_model_metadata_pb2.GetModelMetadataRequest(
        metadata_field=['signature_def'])
    self._model_spec(request.model_spec, version)
    response = self._call('_predictions', request,
                          'GetModelMetadata')
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata['signature_def'].Unpack(signatures)
    # Snake-case field names, as TF Serving's REST metadata writes them.
    return {
        'model_spec': json_format.MessageToDict(
            response.model_spec, preserving_proto_field_name=True),
        'metadata': {'signature_def': json_format.MessageToDict(
            signatures, preserving_proto_field_name=True)},
    }

  def model_status(self, version: Optional[int] = None) -> List[dict]:
    """GetModelStatus: one dict per version (version, state, status)."""
    request = get_model_status_pb2.GetModelStatusRequest()
    self._model_spec(request.model_spec, version)
    response = self._call('_models', request,
                          'GetModelStatus')
    return [_status_dict(status) for status in response.model_version_status]

  def predict(self, features: Mapping[str, Sequence[Any]],
              signature_name: str = DEFAULT_SIGNATURE,
              version: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Predict on a batch of rows; returns each output tensor as numpy.

    Raises:
      ServingError: the server rejected the request (the code and message
        are the server's) or stayed UNAVAILABLE through every retry.
    """
    arrays = self._request_arrays(features, signature_name, version)
    request = predict_pb2.PredictRequest()
    self._model_spec(request.model_spec, version, signature_name)
    for name, array in arrays.items():
      request.inputs[name].CopyFrom(tensor_codec.array_to_tensor_proto(array))
    response = self._call('_predictions', request, 'Predict')
    return {name: tensor_codec.tensor_proto_to_ndarray(tensor)
            for name, tensor in response.outputs.items()}


def _status_dict(status) -> dict:
  """Convert a ModelVersionStatus to TF Serving's REST status JSON."""
  codes = status.status.DESCRIPTOR.fields_by_name['error_code'].enum_type
  return {
      'version': int(status.version),
      'state': get_model_status_pb2.ModelVersionStatus.State.Name(
          status.state),
      'status': {'error_code': codes.values_by_number[
          status.status.error_code].name,
                 'error_message': status.status.error_message},
  }


class RestClient(_Client):
  """TF Serving's REST API: `:predict`, model status and `/metadata`.

  Args:
    base_url: scheme, host and port, e.g. http://127.0.0.1:8501.
    model_name: the served model's name.
    timeout_s: socket timeout of each request, in seconds.
    max_attempts: requests per call on connection errors and HTTP 503.
    backoff_s: first retry delay, doubled each retry (with jitter).
  """

  def __init__(self, base_url: str = DEFAULT_REST_URL, model_name: str = '',
               timeout_s: float = DEFAULT_TIMEOUT_S,
               max_attempts: int = DEFAULT_MAX_ATTEMPTS,
               backoff_s: float = DEFAULT_BACKOFF_S):
    super().__init__(model_name)
    if '://' not in base_url:
      base_url = 'http://' + base_url
    self.target = base_url.rstrip('/')
    parsed = urllib.parse.urlsplit(self.target)
    if parsed.scheme not in ('http', 'https') or not parsed.hostname:
      raise ValueError(f'Invalid REST URL {base_url!r}: use host:port, '
                       'http://host:port or https://host:port.')
    self._connection_class = (http.client.HTTPSConnection
                              if parsed.scheme == 'https' else
                              http.client.HTTPConnection)
    self._netloc = parsed.netloc
    self._path_prefix = parsed.path
    self.timeout_s = timeout_s
    self.max_attempts = max_attempts
    self.backoff_s = backoff_s
    # One keep-alive connection per thread: http.client connections are not
    # thread-safe, and a new TCP connection per request costs the server a
    # thread start and the client a handshake.
    self._local = threading.local()
    self._connections: List[http.client.HTTPConnection] = []
    self._connections_lock = threading.Lock()
    # Bumped by close(), so that a thread drops a connection made before.
    self._generation = 0

  def close(self) -> None:
    """Close the keep-alive connections of every thread."""
    with self._connections_lock:
      connections, self._connections = self._connections, []
      self._generation += 1
    for connection in connections:
      connection.close()

  def _connection(self) -> Tuple[http.client.HTTPConnection, bool]:
    """This thread's connection, and whether it served a request before."""
    connection = getattr(self._local, 'connection', None)
    if (connection is not None and
        self._local.generation == self._generation):
      return connection, True
    connection = self._connection_class(self._netloc, timeout=self.timeout_s)
    with self._connections_lock:
      self._connections.append(connection)
      self._local.connection = connection
      self._local.generation = self._generation
    return connection, False

  def _drop_connection(self) -> None:
    connection = getattr(self._local, 'connection', None)
    self._local.connection = None
    if connection is not None:
      connection.close()
      with self._connections_lock:
        if connection in self._connections:
          self._connections.remove(connection)

  def _exchange(self, method: str, path: str, data: Optional[bytes],
                headers: Dict[str, str]) -> Tuple[int, bytes]:
    """Send one request on this thread's connection; return status and body.

    A kept-alive connection that the server closed after its last request
    fails on first use, so the request is sent once more on a new one.
    """
    while True:
      connection, reused = self._connection()
      try:
        connection.request(method, path, body=data, headers=headers)
        reply = connection.getresponse()
        body = reply.read()
      except (http.client.RemoteDisconnected, BrokenPipeError,
              ConnectionResetError) as e:
        self._drop_connection()
        if reused:
          continue
        raise ConnectionError(f'the server closed the connection: {e}') \
            from e
      except (OSError, http.client.HTTPException):
        self._drop_connection()
        raise
      if reply.will_close:
        self._drop_connection()
      return reply.status, body

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def _model_url(self, version: Optional[int]) -> str:
    url = f'{self.target}/v1/models/{self.model_name}'
    if version is not None:
      url += f'/versions/{int(version)}'
    return url

  def _request(self, url: str, body: Optional[dict] = None) -> Any:
    data = None if body is None else json.dumps(body).encode('utf-8')
    headers = {'Content-Type': 'application/json'} if data else {}
    method = 'POST' if data else 'GET'
    path = self._path_prefix + url[len(self.target):]

    def send():
      status, reply = self._exchange(method, path, data, headers)
      if status // 100 != 2:
        raise _http_error(status, reply, self.target)
      return json.loads(reply.decode('utf-8'))

    def retryable(error: Exception) -> bool:
      if isinstance(error, ServingError):
        return error.http_status == 503
      return isinstance(error, ConnectionError)

    try:
      return _with_retries(send, retryable, self.max_attempts,
                           self.backoff_s, f'{method} {url}')
    except TimeoutError as e:
      raise ServingError('DEADLINE_EXCEEDED', f'{url}: no reply within '
                         f'{self.timeout_s} s ({e}).', self.target) from e
    except ConnectionError as e:
      raise ServingError('UNAVAILABLE', f'Cannot reach {url}: {e}. Check '
                         'that the server runs and the port is its REST '
                         'port.', self.target) from e
    except http.client.BadStatusLine as e:
      raise ServingError('UNAVAILABLE', f'{url}: the reply starts with '
                         f'{str(e)[:20]!r}, which is not HTTP/1.x. Check '
                         'that the port is the REST port, not the gRPC '
                         'port.', self.target) from e
    except (OSError, http.client.HTTPException) as e:
      raise ServingError('UNAVAILABLE', f'{url}: {e}', self.target) from e

  def metadata(self, version: Optional[int] = None) -> Dict[str, Any]:
    """GET .../metadata: the model spec and its signature defs."""
    return self._request(self._model_url(version) + '/metadata')

  def model_status(self, version: Optional[int] = None) -> List[dict]:
    """GET /v1/models/<name>: one dict per version (version, state, status)."""
    reply = self._request(self._model_url(version))
    statuses = []
    for status in reply.get('model_version_status', []):
      status = dict(status)
      status['version'] = int(status['version'])
      statuses.append(status)
    return statuses

  def predict(self, features: Mapping[str, Sequence[Any]],
              signature_name: str = DEFAULT_SIGNATURE,
              version: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Predict on a batch of rows; returns each output tensor as numpy.

    Raises:
      ServingError: the server rejected the request (the code and message
        are the server's) or stayed unreachable through every retry.
    """
    arrays = self._request_arrays(features, signature_name, version)
    body = {'signature_name': signature_name,
            'inputs': {name: _json_value(array)
                       for name, array in arrays.items()}}
    reply = self._request(self._model_url(version) + ':predict', body)
    if 'outputs' not in reply:
      raise ServingError('INTERNAL', 'The predict reply has no "outputs": '
                         f'{str(reply)[:200]}', self.target)
    outputs = reply['outputs']
    dtypes = self.output_dtypes(signature_name, version)
    if not isinstance(outputs, dict):
      # TF Serving drops the name when a signature has one output.
      outputs = {next(iter(dtypes), 'output'): outputs}
    return {name: _output_array(value, dtypes.get(name))
            for name, value in outputs.items()}


def _output_array(value: Any, dtype: Optional[tf.DType]) -> np.ndarray:
  value = _from_json_value(value)
  if dtype == tf.string:
    return np.asarray(value, dtype=object)
  if dtype is not None:
    return np.asarray(value, dtype=dtype.as_numpy_dtype)
  return np.asarray(value)


def _http_error(status: int, reply: bytes, target: str) -> ServingError:
  """Build a ServingError from TF Serving's `{"error": "..."}` reply."""
  body = reply.decode('utf-8', errors='replace')
  try:
    message = json.loads(body).get('error', body)
  except (ValueError, AttributeError):
    message = body or http.HTTPStatus(status).phrase
  code = _HTTP_TO_CODE.get(status, f'HTTP_{status}')
  return ServingError(code, message, target, http_status=status)


def make_client(grpc_target: Optional[str] = None,
                rest_url: Optional[str] = None, model_name: str = '',
                **kwargs) -> _Client:
  """Create a GrpcClient for `grpc_target`, else a RestClient."""
  if grpc_target:
    return GrpcClient(grpc_target, model_name, **kwargs)
  return RestClient(rest_url or DEFAULT_REST_URL, model_name, **kwargs)


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------


def _empty_value(dtype: tf.DType, rank: int) -> Any:
  value = '' if dtype == tf.string else 0
  return [value] if rank > 1 else value


def _parse_value(text: str, dtype: tf.DType, rank: int) -> Any:
  """Parse a --feature value. A 2-D string input takes whitespace-separated
  ids."""
  if rank > 1:
    if ',' in text:
      spaced = ' '.join(part.strip() for part in text.split(','))
      raise SystemExit(
          f'error: invalid id list {text!r}: separate the ids with spaces, '
          f'not commas, e.g. {spaced!r}.')
    return text.split()
  if dtype == tf.string:
    return text
  try:
    return float(text) if dtype.is_floating else int(text)
  except ValueError as e:
    raise SystemExit(f'error: feature value {text!r} is not a valid '
                     f'{dtype.name}.') from e


def _input_ranks(signature: Dict[str, Any]) -> Dict[str, int]:
  ranks = {}
  for name, spec in signature.get('inputs', {}).items():
    shape = spec.get('tensor_shape', {})
    ranks[name] = len(shape.get('dim', []))
  return ranks


def _cli_features(args, client: _Client) -> Dict[str, List[Any]]:
  """Build one request row from --text, --summary and --feature.

  Inputs that none of them set are sent empty.
  """
  signature = client.signature(args.signature, args.version)
  dtypes = client.input_dtypes(args.signature, args.version)
  ranks = _input_ranks(signature)
  values = {}
  for name, value in (('text', args.text), ('summary', args.summary)):
    if value is not None:
      values[name] = value
  for item in args.feature or []:
    if '=' not in item:
      raise SystemExit(f'error: --feature {item!r} must be name=value.')
    name, value = item.split('=', 1)
    values[name] = value
  unknown = sorted(set(values) - set(dtypes))
  if unknown:
    raise SystemExit(f'error: {unknown} are not inputs of signature '
                     f'{args.signature!r}; it takes {sorted(dtypes)}.')
  if not values and getattr(args, 'command', '') == 'predict':
    raise SystemExit(f'error: missing input: signature {args.signature!r} '
                     f'takes {sorted(dtypes)}, so pass --text, --summary or '
                     '--feature name=value.')
  features, defaulted = {}, []
  for name, dtype in sorted(dtypes.items()):
    if name in values:
      features[name] = [_parse_value(values[name], dtype, ranks.get(name, 1))]
    else:
      features[name] = [_empty_value(dtype, ranks.get(name, 1))]
      defaulted.append(name)
  if getattr(args, 'command', '') in ('recommend', 'rank'):
    # --k, --exclude and --candidates set these inputs, so they need no note.
    defaulted = [n for n in defaulted
                 if n not in ('k', 'exclude', 'candidates')]
  if defaulted:
    print(f'note: sending empty values for {defaulted}; pass them with '
          '--feature name=value.', file=sys.stderr)
  return features


def format_predictions(outputs: Mapping[str, np.ndarray]) -> str:
  """Format each task's decoded label and class probabilities per row."""
  lines = []
  tasks = sorted(name[:-len('_label')] for name in outputs
                 if name.endswith('_label'))
  for row in range(len(next(iter(outputs.values()), []))):
    for task in tasks:
      label = outputs[f'{task}_label'][row]
      label = label.decode('utf-8', 'replace') if isinstance(
          label, bytes) else str(label)
      probabilities = outputs.get(f'{task}_probabilities')
      probabilities_text = '' if probabilities is None else ' '.join(
          f'{p:.4f}' for p in probabilities[row])
      lines.append(f'{task:<12} {label:<14} [{probabilities_text}]')
  others = sorted(set(outputs) - {f'{t}_label' for t in tasks} -
                  {f'{t}_probabilities' for t in tasks})
  for name in others:
    lines.append(f'{name}: {outputs[name].tolist()}')
  return '\n'.join(lines)


def format_recommendations(outputs: Mapping[str, np.ndarray]) -> str:
  """Format a header line per query row, then one line per recommended id.

  The header names the source of the ranking. Each id line shows the rank,
  id, score and title.
  """
  lines = []
  for row in range(len(outputs['item_ids'])):
    source = outputs['source'][row]
    source = source.decode('utf-8') if isinstance(source, bytes) else source
    lines.append(f'# row {row}: ranked by the {source}')
    for rank, (item, title, score) in enumerate(zip(
        outputs['item_ids'][row], outputs['titles'][row],
        outputs['scores'][row]), start=1):
      item = item.decode('utf-8') if isinstance(item, bytes) else item
      title = title.decode('utf-8') if isinstance(title, bytes) else title
      lines.append(f'{rank:>3}  {item:<10} {score:>9.4f}  {title}')
  return '\n'.join(lines)


def format_ranking(outputs: Mapping[str, np.ndarray]) -> str:
  """Format each row's candidates best first: rank, id and score."""
  lines = []
  for row, (candidates, scores) in enumerate(zip(outputs['candidates'],
                                                 outputs['scores'])):
    lines.append(f'# row {row}: {len(candidates)} candidates, best first')
    order = sorted(range(len(candidates)), key=lambda i: -float(scores[i]))
    for rank, index in enumerate(order, start=1):
      lines.append(f'{rank:>3}  {candidates[index]:<10} '
                   f'{float(scores[index]):>9.4f}')
  return '\n'.join(lines)


def _parse_args(argv: Optional[List[str]]):
  parser = argparse.ArgumentParser(
      prog='python -m serving.client',
      description='Query a TensorFlow Serving model server (REST or gRPC).')
  commands = parser.add_subparsers(dest='command', required=True)
  for name, help_text in (
      ('predict', 'Predict one row and print each task\'s label and '
       'probabilities (in class order).'),
      ('recommend', 'Print the top-k candidates for one query (the '
       '`recommend` signature of a model with a retrieval task).'),
      ('rank', 'Score the given candidate ids for one query (the `rank` '
       'signature) and print them best first.'),
      ('status', 'Print the state of each loaded version.'),
      ('metadata', 'Print the signatures\' inputs and outputs.')):
    command = commands.add_parser(name, help=help_text)
    command.add_argument('--model', required=True, help='Served model name.')
    command.add_argument('--version', type=int, default=None,
                         help='Model version (default: the server\'s '
                         'latest).')
    target = command.add_mutually_exclusive_group()
    target.add_argument('--grpc', metavar='HOST:PORT', default=None,
                        help='gRPC endpoint, e.g. '
                        f'{DEFAULT_GRPC_TARGET}.')
    target.add_argument('--rest', metavar='URL', default=None,
                        help=f'REST endpoint (default {DEFAULT_REST_URL}).')
    command.add_argument('--timeout', type=float, default=DEFAULT_TIMEOUT_S,
                         help='Per-request timeout in seconds.')
    if name == 'recommend':
      command.add_argument('--feature', action='append', metavar='NAME=VALUE',
                           help='A query feature, e.g. user_id=42 or '
                           'history="50 172 133". Repeat the option for '
                           'more features.')
      command.add_argument('--k', type=int, default=10,
                           help='Number of candidates to return, at most '
                           'the model\'s max_k.')
      command.add_argument('--exclude', default='',
                           help='Whitespace-separated candidate ids to '
                           'exclude from the results.')
      command.add_argument('--json', action='store_true',
                           help='Print the raw outputs as JSON.')
      command.set_defaults(signature='recommend', text=None, summary=None)
    if name == 'rank':
      command.add_argument('--feature', action='append', metavar='NAME=VALUE',
                           help='A query feature, e.g. user_id=42 or '
                           'history="N55189 N42782". Repeat the option for '
                           'more features.')
      command.add_argument('--candidates', required=True,
                           help='Whitespace-separated candidate ids to '
                           'score, e.g. "N55689 N35729".')
      command.add_argument('--json', action='store_true',
                           help='Print the raw scores as JSON.')
      command.set_defaults(signature='rank', text=None, summary=None)
    if name == 'predict':
      command.add_argument('--text', default=None, help='The review text.')
      command.add_argument('--summary', default=None,
                           help='The review summary.')
      command.add_argument('--feature', action='append', metavar='NAME=VALUE',
                           help='Any signature input; repeat for more. An '
                           'id list is whitespace-separated.')
      command.add_argument('--signature', default=DEFAULT_SIGNATURE,
                           help='Signature to run.')
      command.add_argument('--json', action='store_true',
                           help='Print the raw outputs as JSON.')
  return parser.parse_args(argv)


def _print_outputs(outputs: Mapping[str, np.ndarray], as_json: bool,
                   formatter: Callable[[Mapping[str, np.ndarray]], str]
                   ) -> None:
  """Print the raw outputs as JSON, or the text that `formatter` makes."""
  if as_json:
    print(json.dumps({name: _json_value(np.asarray(value))
                      for name, value in outputs.items()}, indent=2))
  else:
    print(formatter(outputs))


def main(argv: Optional[List[str]] = None) -> int:
  logging.basicConfig(level=logging.WARNING,
                      format='%(levelname)s %(message)s')
  args = _parse_args(argv)
  try:
    client = make_client(args.grpc, args.rest, args.model,
                         timeout_s=args.timeout)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  try:
    if args.command == 'status':
      print(json.dumps(client.model_status(args.version), indent=2))
    elif args.command == 'metadata':
      print(json.dumps(client.metadata(args.version), indent=2))
    elif args.command == 'recommend':
      features = _cli_features(args, client)
      query = {name: value for name, value in features.items()
               if name not in ('k', 'exclude')}
      exclude = _parse_value(args.exclude, tf.string, 2)
      outputs = client.recommend(query, args.k, [exclude], args.version)
      _print_outputs(outputs, args.json, format_recommendations)
    elif args.command == 'rank':
      candidates = _parse_value(args.candidates, tf.string, 2)
      if not candidates:
        raise SystemExit('error: --candidates is empty; pass one or more '
                         'space-separated candidate ids.')
      features = _cli_features(args, client)
      query = {name: value for name, value in features.items()
               if name != 'candidates'}
      scores = client.rank(query, [candidates], args.version)
      _print_outputs({'candidates': np.array([candidates], dtype=object),
                      'scores': scores}, args.json, format_ranking)
    else:
      outputs = client.predict(_cli_features(args, client), args.signature,
                               args.version)
      _print_outputs(outputs, args.json, format_predictions)
  except ServingError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  finally:
    client.close()
  return 0


if __name__ == '__main__':
  sys.exit(main())
