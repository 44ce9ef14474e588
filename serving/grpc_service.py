"""TF Serving's gRPC services: PredictionService and ModelService.

`Predict` and `GetModelMetadata` of `tensorflow.serving.PredictionService`,
and `GetModelStatus` of `tensorflow.serving.ModelService`. Classify, Regress,
MultiInference and HandleReloadConfigRequest are not implemented and return
UNIMPLEMENTED (the generated base classes do that).
"""

import concurrent.futures
import logging
import time
from typing import Optional, Tuple

import grpc
from google.protobuf import wrappers_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tensorflow_serving.apis import status_pb2

from serving import tensor_codec
from serving.model_manager import DEFAULT_SIGNATURE, ModelManager
from serving.tensor_codec import ServingError

SIGNATURE_DEF_FIELD = 'signature_def'
# TF Serving lifts gRPC's 4 MiB default message limit to the int32 maximum.
MAX_MESSAGE_BYTES = 2**31 - 1

_ERROR_CODES = status_pb2.StatusProto.DESCRIPTOR.fields_by_name[
    'error_code'].enum_type


def version_from_spec(spec: model_pb2.ModelSpec
                      ) -> Tuple[Optional[int], Optional[str]]:
  """Return the (version, label) a ModelSpec requests; (None, None): latest."""
  choice = spec.WhichOneof('version_choice')
  if choice == 'version':
    return spec.version.value, None
  if choice == 'version_label':
    return None, spec.version_label
  return None, None


def model_status_response(manager: ModelManager, name: str,
                          version: Optional[int] = None,
                          label: Optional[str] = None
                          ) -> get_model_status_pb2.GetModelStatusResponse:
  """GetModelStatusResponse for a model, or one version of it.

  Raises:
    ServingError: NOT_FOUND when the model or version is unknown.
  """
  response = get_model_status_pb2.GetModelStatusResponse()
  for number, status in manager.version_status(name, version, label):
    entry = response.model_version_status.add(
        version=number,
        state=get_model_status_pb2.ModelVersionStatus.State.Value(
            status.state))
    entry.status.error_code = _ERROR_CODES.values_by_name[
        status.error_code].number
    entry.status.error_message = status.error_message
  return response


def signature_def_map(signatures) -> get_model_metadata_pb2.SignatureDefMap:
  """Copy a version's signatures into TF Serving's SignatureDefMap."""
  signature_map = get_model_metadata_pb2.SignatureDefMap()
  for key, signature in signatures.items():
    signature_map.signature_def[key].CopyFrom(signature)
  return signature_map


class _Tracker:
  """Times one RPC and counts it by its final status."""

  def __init__(self, metrics, model_name: str, api: str):
    self._metrics = metrics
    self._started = time.monotonic()
    self.model_name = model_name
    self.signature_name = ''
    self.api = api

  def finish(self, status: str) -> None:
    self._metrics.record_request(
        self.model_name, self.signature_name, self.api, 'GRPC', status,
        (time.monotonic() - self._started) * 1e6)


def _serve(metrics, method: str, api: str, spec: model_pb2.ModelSpec,
           context, handler):
  """Run `handler(tracker)`; count the call and turn errors into statuses."""
  tracker = _Tracker(metrics, spec.name, api)
  try:
    response = handler(tracker)
  except ServingError as e:
    error = e
  except Exception as e:  # pylint: disable=broad-except
    # A bug must cost one request, not the server thread.
    logging.exception('gRPC %s for %s failed unexpectedly', method,
                      _describe(spec))
    error = ServingError(grpc.StatusCode.INTERNAL,
                         f'{type(e).__name__}: {e}')
  else:
    tracker.finish('OK')
    return response
  tracker.finish(error.code.name)
  logging.warning('gRPC %s for %s failed with %s: %s', method,
                  _describe(spec), error.code.name, error.message)
  context.abort(error.code, error.message)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
  """Predict and GetModelMetadata over the models the manager serves."""

  def __init__(self, predictor):
    self._predictor = predictor
    self._manager: ModelManager = predictor.manager

  def Predict(self, request: predict_pb2.PredictRequest, context):
    return _serve(self._predictor.metrics, 'Predict', 'predict',
                  request.model_spec, context,
                  lambda tracker: self._predict(request, tracker))

  def _predict(self, request, tracker) -> predict_pb2.PredictResponse:
    spec = request.model_spec
    version, label = version_from_spec(spec)
    signature_name = spec.signature_name or DEFAULT_SIGNATURE
    tracker.signature_name = signature_name
    with self._manager.acquire(spec.name, version, label) as servable:
      signature = servable.signature(signature_name)
      inputs = tensor_codec.tensor_protos_to_arrays(
          request.inputs, signature_name, signature)
      output_keys = list(request.output_filter) or None
      unknown = sorted(set(output_keys or ()) - set(signature.outputs))
      if unknown:
        raise tensor_codec.invalid_argument(
            f'output_filter names unknown output(s) {unknown}; signature '
            f'{signature_name!r} has {sorted(signature.outputs)}.')
      outputs = self._predictor.run(servable, signature_name, inputs,
                                    output_keys)
      response = predict_pb2.PredictResponse(model_spec=model_pb2.ModelSpec(
          name=spec.name, signature_name=signature_name,
          version=wrappers_pb2.Int64Value(value=servable.version)))
      for key, value in outputs.items():
        response.outputs[key].CopyFrom(
            tensor_codec.array_to_tensor_proto(value))
    return response

  def GetModelMetadata(self, request, context):
    return _serve(self._predictor.metrics, 'GetModelMetadata',
                  'get_model_metadata', request.model_spec, context,
                  lambda tracker: self._metadata(request))

  def _metadata(self, request):
    fields = list(request.metadata_field)
    if not fields:
      raise tensor_codec.invalid_argument(
          'GetModelMetadataRequest lists no metadata_field; ask for '
          f'"{SIGNATURE_DEF_FIELD}".')
    unsupported = sorted(set(fields) - {SIGNATURE_DEF_FIELD})
    if unsupported:
      raise tensor_codec.invalid_argument(
          f'Metadata field(s) {unsupported} are not supported; only '
          f'"{SIGNATURE_DEF_FIELD}" is.')
    spec = request.model_spec
    version, label = version_from_spec(spec)
    with self._manager.acquire(spec.name, version, label) as servable:
      response = get_model_metadata_pb2.GetModelMetadataResponse(
          model_spec=model_pb2.ModelSpec(
              name=spec.name,
              version=wrappers_pb2.Int64Value(value=servable.version)))
      response.metadata[SIGNATURE_DEF_FIELD].Pack(
          signature_def_map(servable.signatures))
    return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
  """GetModelStatus; HandleReloadConfigRequest stays UNIMPLEMENTED."""

  def __init__(self, predictor):
    self._predictor = predictor

  def GetModelStatus(self, request, context):
    spec = request.model_spec
    version, label = version_from_spec(spec)
    return _serve(self._predictor.metrics, 'GetModelStatus',
                  'get_model_status', spec, context,
                  lambda tracker: model_status_response(
                      self._predictor.manager, spec.name, version, label))


def _describe(spec: model_pb2.ModelSpec) -> str:
  version, label = version_from_spec(spec)
  text = f'model {spec.name!r}'
  if version is not None:
    text += f' version {version}'
  if label:
    text += f' label {label!r}'
  return text


def start_grpc_server(predictor, host: str, port: int,
                      max_workers: int = 16) -> Tuple[grpc.Server, int]:
  """Start the gRPC server; return it and the port it bound.

  Raises:
    RuntimeError: the address cannot be bound.
  """
  server = grpc.server(
      concurrent.futures.ThreadPoolExecutor(max_workers=max_workers,
                                            thread_name_prefix='grpc'),
      options=[('grpc.max_send_message_length', MAX_MESSAGE_BYTES),
               ('grpc.max_receive_message_length', MAX_MESSAGE_BYTES),
               ('grpc.so_reuseport', 0)])
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
      PredictionServicer(predictor), server)
  model_service_pb2_grpc.add_ModelServiceServicer_to_server(
      ModelServicer(predictor), server)
  address = f'{host}:{port}'
  try:
    bound = server.add_insecure_port(address)
  except RuntimeError as e:
    raise RuntimeError(f'Cannot bind the gRPC server to {address}: {e}; '
                       'choose another --port.') from e
  if not bound:
    raise RuntimeError(f'Cannot bind the gRPC server to {address}; choose '
                       'another --port.')
  server.start()
  return server, bound
