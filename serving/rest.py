"""TF Serving's REST API on the standard library's threading HTTP server.

  GET  /v1/models/<name>[/versions/<v> | /labels/<l>]             status
  GET  /v1/models/<name>[/versions/<v> | /labels/<l>]/metadata    metadata
  POST /v1/models/<name>[/versions/<v> | /labels/<l>]:predict     predict
  GET  <prometheus path>                    metrics, when monitoring is on

Errors are `{"error": "..."}` with the HTTP code TF Serving maps each gRPC
status code to. `:classify` and `:regress` return 501 Not Implemented.
"""

import http
import http.server
import json
import logging
import re
import threading
import time
import urllib.parse
from typing import Any, Dict, Optional, Tuple

import grpc
from google.protobuf import json_format

from serving import grpc_service
from serving import monitoring
from serving import tensor_codec
from serving.model_manager import DEFAULT_SIGNATURE
from serving.tensor_codec import ServingError

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024

_PATH = re.compile(
    r'^/v1/models/(?P<name>[^/:]+)'
    r'(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?'
    r'(?:(?P<metadata>/metadata)|:(?P<verb>[A-Za-z]+))?$')

# TF Serving's mapping from canonical status codes to HTTP codes.
_HTTP_CODES = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


class HttpError(Exception):
  """An error returned with an HTTP code that has no gRPC status (405, 413)."""

  def __init__(self, http_code: int, message: str,
               headers: Optional[Dict[str, str]] = None):
    super().__init__(message)
    self.http_code = http_code
    self.message = message
    self.headers = headers or {}


def _parse_version(text: Optional[str]) -> Optional[int]:
  if text is None:
    return None
  if not text.isdigit():
    raise tensor_codec.invalid_argument(
        f'Version {text!r} in the URL is not an integer; use '
        '/versions/<number>.')
  return int(text)


def _status_json(manager, name, version, label) -> Dict[str, Any]:
  response = grpc_service.model_status_response(manager, name, version,
                                                label)
  return json_format.MessageToDict(response, preserving_proto_field_name=True,
                                   always_print_fields_with_no_presence=True)


def _metadata_json(manager, name, version, label) -> Dict[str, Any]:
  with manager.acquire(name, version, label) as servable:
    signature_map = grpc_service.signature_def_map(servable.signatures)
    served_version = servable.version
  return {
      'model_spec': {'name': name, 'signature_name': '',
                     'version': str(served_version)},
      'metadata': {'signature_def': json_format.MessageToDict(
          signature_map, preserving_proto_field_name=True)},
  }


def _parse_body(body: bytes) -> Dict[str, Any]:
  try:
    request = json.loads(body)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise tensor_codec.invalid_argument(
        f'Malformed JSON in the request body: {e}.') from e
  if not isinstance(request, dict):
    raise tensor_codec.invalid_argument(
        'The request body must be a JSON object with "instances" or '
        f'"inputs", got {tensor_codec.json_type_name(request)}.')
  has_rows, has_columns = 'instances' in request, 'inputs' in request
  if has_rows == has_columns:
    raise tensor_codec.invalid_argument(
        'The request body needs exactly one of "instances" (row format) or '
        f'"inputs" (columnar format); it has keys {sorted(request)}.')
  signature_name = request.get('signature_name', DEFAULT_SIGNATURE)
  if not isinstance(signature_name, str):
    raise tensor_codec.invalid_argument(
        '"signature_name" must be a string, got '
        f'{tensor_codec.json_type_name(signature_name)}.')
  return request


def _predict_json(predictor, name, version, label, body: bytes,
                  request_info: Dict[str, str]) -> Dict[str, Any]:
  """Run a :predict body; note its signature name in `request_info`."""
  request = _parse_body(body)
  signature_name = request.get('signature_name') or DEFAULT_SIGNATURE
  request_info['signature_name'] = signature_name
  with predictor.manager.acquire(name, version, label) as servable:
    signature = servable.signature(signature_name)
    if 'instances' in request:
      inputs = tensor_codec.rows_to_arrays(request['instances'],
                                           signature_name, signature)
    else:
      inputs = tensor_codec.columns_to_arrays(request['inputs'],
                                              signature_name, signature)
    outputs = predictor.run(servable, signature_name, inputs)
  if 'instances' in request:
    return {'predictions': tensor_codec.arrays_to_rows(outputs)}
  return {'outputs': tensor_codec.arrays_to_columns(outputs)}


class RestHandler(http.server.BaseHTTPRequestHandler):
  """Handles one HTTP request; `self.server` carries the shared state."""

  protocol_version = 'HTTP/1.1'
  server_version = 'mtlrec-model-server'
  # A reply is written as headers, then body. With Nagle's algorithm on, the
  # body of a reply on a kept-alive connection waits for the client's
  # delayed ACK of the headers, up to about 40 ms on Linux.
  disable_nagle_algorithm = True

  # Routing ------------------------------------------------------------------

  def do_GET(self):  # pylint: disable=invalid-name
    self._handle('GET')

  def do_POST(self):  # pylint: disable=invalid-name
    self._handle('POST')

  def do_PUT(self):  # pylint: disable=invalid-name
    self._handle('PUT')

  def do_DELETE(self):  # pylint: disable=invalid-name
    self._handle('DELETE')

  def do_PATCH(self):  # pylint: disable=invalid-name
    self._handle('PATCH')

  def _handle(self, method: str) -> None:
    self._body_done = False
    path = urllib.parse.urlsplit(self.path).path
    prometheus = self.server.prometheus
    if prometheus.enable and path == prometheus.path:
      self._serve_metrics(method)
      return
    match = _PATH.match(path)
    if not match:
      self._discard_body()
      self._send_json(404, {'error': f'Malformed request: {method} {path} '
                            'is not a TF Serving REST path; use '
                            '/v1/models/<name>[/versions/<v>][:predict | '
                            '/metadata].'})
      return
    self._serve_model_request(method, path, match)

  def _serve_model_request(self, method: str, path: str,
                           match: re.Match) -> None:
    name = urllib.parse.unquote(match['name'])
    label = urllib.parse.unquote(match['label']) if match['label'] else None
    verb = match['verb']
    api = f'{verb}' if verb else ('get_model_metadata' if match['metadata']
                                  else 'get_model_status')
    started = time.monotonic()
    request_info = {'signature_name': ''}
    try:
      version = _parse_version(match['version'])
      if verb:
        payload = self._serve_verb(method, verb, name, version, label,
                                   request_info)
      else:
        self._require_method(method, 'GET', path)
        getter = _metadata_json if match['metadata'] else _status_json
        payload = getter(self.server.predictor.manager, name, version, label)
    except (ServingError, HttpError) as e:
      error = e
    except Exception as e:  # pylint: disable=broad-except
      # A bug must cost one request, not the server.
      logging.exception('REST %s %s failed unexpectedly', method, path)
      error = ServingError(grpc.StatusCode.INTERNAL,
                           f'{type(e).__name__}: {e}')
    else:
      error = None

    # Counted before the response goes out, so a client that scrapes the
    # metrics right after its response finds its own request counted.
    status = 'OK' if error is None else _error_status(error)
    self.server.predictor.metrics.record_request(
        name, request_info['signature_name'], api, 'REST', status,
        (time.monotonic() - started) * 1e6)
    if error is None:
      self._send_json(200, payload)
    else:
      self._send_error(method, path, error)

  def _serve_verb(self, method, verb, name, version, label, request_info):
    path = self.path
    if verb not in ('predict', 'classify', 'regress'):
      self._discard_body()
      raise tensor_codec.invalid_argument(
          f'Unknown method :{verb} in {path}; use :predict.')
    self._require_method(method, 'POST', path)
    body = self._read_body()
    if verb != 'predict':
      raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                         f':{verb} is not implemented by this server; use '
                         ':predict.')
    return _predict_json(self.server.predictor, name, version, label, body,
                         request_info)

  def _require_method(self, method: str, allowed: str, path: str) -> None:
    if method != allowed:
      self._discard_body()
      raise HttpError(405, f'Method {method} is not allowed on {path}; use '
                      f'{allowed}.', {'Allow': allowed})

  def _serve_metrics(self, method: str) -> None:
    if method != 'GET':
      self._discard_body()
      self._send_json(405, {'error': f'Method {method} is not allowed on '
                            f'{self.server.prometheus.path}; use GET.'},
                      {'Allow': 'GET'})
      return
    body = self.server.predictor.metrics.render().encode('utf-8')
    self._send(200, body, monitoring.CONTENT_TYPE)

  # Bodies -------------------------------------------------------------------

  def _content_length(self) -> Optional[int]:
    text = self.headers.get('Content-Length')
    if text is None:
      return None
    if not text.isdigit():
      self.close_connection = True
      raise tensor_codec.invalid_argument(
          f'Invalid Content-Length header {text!r}.')
    return int(text)

  def _read_body(self) -> bytes:
    if self.headers.get('Transfer-Encoding', '').lower() == 'chunked':
      self.close_connection = True
      raise HttpError(411, 'Chunked request bodies are not supported; send '
                      'a Content-Length header.')
    length = self._content_length()
    if length is None:
      raise HttpError(411, 'The request has no Content-Length header; send '
                      'one with the JSON body.')
    limit = self.server.max_body_bytes
    if length > limit:
      # The body stays unread, so the connection cannot be reused.
      self.close_connection = True
      raise HttpError(413, f'The request body has {length} bytes, more than '
                      f'the limit of {limit}; split the batch or raise '
                      '--rest_api_max_body_bytes.')
    self._body_done = True
    return self.rfile.read(length)

  def _discard_body(self) -> None:
    """Drain a body the request will not use, so keep-alive stays in sync."""
    if self._body_done:
      return
    self._body_done = True
    try:
      length = self._content_length()
    except ServingError:
      return
    if not length:
      return
    if length > self.server.max_body_bytes:
      self.close_connection = True
      return
    self.rfile.read(length)

  # Responses ----------------------------------------------------------------

  def _send_error(self, method: str, path: str, error) -> None:
    """Write an error response and log it."""
    if isinstance(error, HttpError):
      http_code, headers = error.http_code, error.headers
    else:
      http_code, headers = _HTTP_CODES.get(error.code, 500), {}
    self._discard_body()
    logging.warning('REST %s %s from %s failed with %d %s: %s', method, path,
                    self.client_address[0], http_code, _error_status(error),
                    error.message)
    self._send_json(http_code, {'error': error.message}, headers)

  def _send_json(self, http_code: int, payload: Any,
                 headers: Optional[Dict[str, str]] = None) -> None:
    # NaN and Infinity are written bare, as TF Serving writes them.
    body = json.dumps(payload, ensure_ascii=False).encode('utf-8')
    self._send(http_code, body, 'application/json', headers)

  def _send(self, http_code: int, body: bytes, content_type: str,
            headers: Optional[Dict[str, str]] = None) -> None:
    self.send_response(http_code)
    self.send_header('Content-Type', content_type)
    self.send_header('Content-Length', str(len(body)))
    for key, value in (headers or {}).items():
      self.send_header(key, value)
    if self.close_connection:
      self.send_header('Connection', 'close')
    self.end_headers()
    self.wfile.write(body)

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    # The access log goes to logging at DEBUG, not to stderr.
    logging.debug('REST %s %s', self.address_string(), format % args)


def _error_status(error) -> str:
  """Return the status name that the metrics count an error under."""
  if isinstance(error, HttpError):
    return http.HTTPStatus(error.http_code).name
  return error.code.name


class RestServer(http.server.ThreadingHTTPServer):
  """The HTTP server with the predictor, limits and monitoring config."""

  daemon_threads = True
  # The listen backlog. socketserver's default of 5 drops connection
  # attempts under a few dozen concurrent clients, and Linux retries a
  # dropped attempt only after 1 s, which showed up as a 1 s p99.
  request_queue_size = 128

  def __init__(self, address, predictor, max_body_bytes: int,
               prometheus: monitoring.PrometheusConfig):
    self.predictor = predictor
    self.max_body_bytes = max_body_bytes
    self.prometheus = prometheus
    super().__init__(address, RestHandler)


def start_rest_server(predictor, host: str, port: int,
                      max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                      prometheus: Optional[monitoring.PrometheusConfig] = None
                      ) -> Tuple[RestServer, threading.Thread]:
  """Bind the REST server and serve it from a background thread.

  Raises:
    OSError: the address cannot be bound.
  """
  server = RestServer((host, port), predictor, max_body_bytes,
                      prometheus or monitoring.PrometheusConfig())
  thread = threading.Thread(target=server.serve_forever, name='rest-server',
                            daemon=True)
  thread.start()
  return server, thread
