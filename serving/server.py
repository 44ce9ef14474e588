"""A local model server that speaks TensorFlow Serving's REST and gRPC APIs.

It takes `tensorflow_model_server`'s flags, so the same command line starts
either one:

  python -m serving.server --port=8500 --rest_api_port=8501 \\
      --model_name=amazon_fine_food --model_base_path=/abs/serving_models/amazon_fine_food

or `--model_config_file=models.config` (a `ModelServerConfig` text proto)
in place of the two model flags. Models run through `SavedModelSession`: a
`tf.compat.v1` session over the MetaGraphDef, fed and fetched by signature
tensor names, the way TF Serving runs them. Both servers bind 127.0.0.1
unless `--grpc_host` or `--rest_api_host` sets another address.
"""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=wrong-import-position
import argparse
import logging
import signal
import sys
import threading
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  Registers the tf-text ops of the graph.

from serving import batching
from serving import grpc_service
from serving import model_manager
from serving import monitoring
from serving import rest
from serving.model_manager import ModelManager, ServableVersion


class Predictor:
  """State shared by the REST and gRPC front ends: models, batching, metrics."""

  def __init__(self, manager: ModelManager, metrics: monitoring.ServerMetrics,
               batcher: Optional[batching.BatchScheduler] = None):
    self.manager = manager
    self.metrics = metrics
    self.batcher = batcher

  def run(self, servable: ServableVersion, signature_name: str,
          inputs: Dict[str, np.ndarray],
          output_keys: Optional[List[str]] = None) -> Dict[str, np.ndarray]:
    if self.batcher is not None:
      return self.batcher.run(servable, signature_name, inputs, output_keys)
    return servable.run(signature_name, inputs, output_keys)


class ModelServer:
  """The manager, the optional batcher and both front ends, started together.

  Args:
    models: the models to serve.
    grpc_address: (host, port) for gRPC; port 0 binds a free port.
    rest_address: (host, port) for REST, or None to serve gRPC only.
    poll_wait_seconds: seconds between scans of the base paths.
    batching_parameters: batch concurrent predicts with these, or None.
    prometheus: where metrics are exported on the REST port.
    max_body_bytes: REST request bodies above this get 413.
    enable_warmup: replay each version's warmup requests before serving it.
    session_config: TensorFlow session options for every version (thread
      pools); None for TensorFlow's defaults.
  """

  def __init__(self, models: List[model_manager.ModelConfig],
               grpc_address=('127.0.0.1', 8500),
               rest_address=None, poll_wait_seconds: float = 1,
               batching_parameters: Optional[
                   batching.BatchingParameters] = None,
               prometheus: Optional[monitoring.PrometheusConfig] = None,
               max_body_bytes: int = rest.DEFAULT_MAX_BODY_BYTES,
               enable_warmup: bool = True,
               session_config: Optional[tf.compat.v1.ConfigProto] = None):
    self.metrics = monitoring.ServerMetrics()
    self.manager = ModelManager(models, poll_wait_seconds, self.metrics,
                                enable_warmup, session_config)
    batcher = (batching.BatchScheduler(batching_parameters, self.metrics)
               if batching_parameters else None)
    self.predictor = Predictor(self.manager, self.metrics, batcher)
    self._grpc_address = grpc_address
    self._rest_address = rest_address
    self._prometheus = prometheus or monitoring.PrometheusConfig()
    self._max_body_bytes = max_body_bytes
    self._grpc_server = None
    self._rest_server = None
    self.grpc_port: Optional[int] = None
    self.rest_port: Optional[int] = None

  def start(self) -> None:
    """Load the current versions, then open the gRPC and REST ports."""
    for model in self.manager.models.values():
      logging.info('Serving model %s from %s with version policy %s',
                   model.name, model.base_path, model.policy)
    self.manager.start()
    host, port = self._grpc_address
    self._grpc_server, self.grpc_port = grpc_service.start_grpc_server(
        self.predictor, host, port)
    logging.info('Running gRPC ModelServer at %s:%d', host, self.grpc_port)
    if self._rest_address:
      host, port = self._rest_address
      self._rest_server, _ = rest.start_rest_server(
          self.predictor, host, port, self._max_body_bytes, self._prometheus)
      self.rest_port = self._rest_server.server_address[1]
      logging.info('Exporting HTTP/REST API at %s:%d', host, self.rest_port)
      if self._prometheus.enable:
        logging.info('Prometheus metrics at http://%s:%d%s', host,
                     self.rest_port, self._prometheus.path)
    elif self._prometheus.enable:
      logging.warning('Prometheus metrics are enabled but not exported: '
                      'they are served on the REST port; set '
                      '--rest_api_port.')

  def stop(self, grace_seconds: float = 5) -> None:
    """Stop accepting requests, let in-flight ones finish, unload models."""
    logging.info('Shutting down the model server')
    if self._rest_server:
      self._rest_server.shutdown()
      self._rest_server.server_close()
    if self._grpc_server:
      self._grpc_server.stop(grace_seconds).wait()
    if self.predictor.batcher:
      self.predictor.batcher.stop()
    self.manager.stop()
    logging.info('Model server stopped')


def _parse_bool(text: str) -> bool:
  value = text.strip().lower()
  if value in ('1', 'true', 'yes'):
    return True
  if value in ('0', 'false', 'no'):
    return False
  raise argparse.ArgumentTypeError(f'expected true or false, got {text!r}')


def _parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m serving.server',
      description='Serve SavedModels over TF Serving\'s REST and gRPC APIs. '
      'Flags match tensorflow_model_server\'s.')
  parser.add_argument('--port', type=int, default=8500,
                      help='gRPC port (0 binds a free port).')
  parser.add_argument('--grpc_host', default='127.0.0.1',
                      help='Address the gRPC server binds.')
  parser.add_argument('--rest_api_port', type=int, default=0,
                      help='REST port; 0 (the default) disables REST.')
  parser.add_argument('--rest_api_host', default='127.0.0.1',
                      help='Address the REST server binds.')
  parser.add_argument('--rest_api_max_body_bytes', type=int,
                      default=rest.DEFAULT_MAX_BODY_BYTES,
                      help='REST request bodies above this many bytes get '
                      '413 Payload Too Large.')
  parser.add_argument('--model_name', default='default',
                      help='Name of the model served from --model_base_path.')
  parser.add_argument('--model_base_path', default='',
                      help='Folder with one subfolder per model version.')
  parser.add_argument('--model_config_file', default='',
                      help='ModelServerConfig text proto listing the models; '
                      'replaces --model_name and --model_base_path.')
  parser.add_argument('--file_system_poll_wait_seconds', type=float,
                      default=1,
                      help='Seconds between scans for new versions; 0 scans '
                      'once at start.')
  parser.add_argument('--enable_batching', type=_parse_bool, nargs='?',
                      const=True, default=False,
                      help='Batch concurrent predict requests.')
  parser.add_argument('--batching_parameters_file', default='',
                      help='BatchingParameters text proto (max_batch_size, '
                      'batch_timeout_micros, max_enqueued_batches, '
                      'num_batch_threads).')
  parser.add_argument('--enable_model_warmup', type=_parse_bool, nargs='?',
                      const=True, default=True,
                      help='Replay assets.extra/tf_serving_warmup_requests '
                      'before serving a version.')
  parser.add_argument('--tensorflow_session_parallelism', type=int,
                      default=0,
                      help='Threads of both TensorFlow session pools, '
                      'inter-op and intra-op; 0 lets TensorFlow choose. '
                      'Ignored when either flag below is set.')
  parser.add_argument('--tensorflow_intra_op_parallelism', type=int,
                      default=0,
                      help='Threads that parallelize one op, such as a '
                      'matrix multiply; 0 lets TensorFlow choose.')
  parser.add_argument('--tensorflow_inter_op_parallelism', type=int,
                      default=0,
                      help='Threads that run independent ops of a session '
                      'run at once; 0 lets TensorFlow choose.')
  parser.add_argument('--monitoring_config_file', default='',
                      help='MonitoringConfig text proto; prometheus_config '
                      'exports metrics on the REST port.')
  args = parser.parse_args(argv)
  for name in ('tensorflow_session_parallelism',
               'tensorflow_intra_op_parallelism',
               'tensorflow_inter_op_parallelism'):
    if getattr(args, name) < 0:
      parser.error(f'--{name} must be 0 (TensorFlow chooses) or a thread '
                   f'count, got {getattr(args, name)}.')
  if (args.tensorflow_session_parallelism and
      args.tensorflow_intra_op_parallelism and
      args.tensorflow_inter_op_parallelism):
    parser.error('set either --tensorflow_session_parallelism or '
                 '--tensorflow_intra_op_parallelism and '
                 '--tensorflow_inter_op_parallelism, not all three.')
  if bool(args.model_config_file) == bool(args.model_base_path):
    parser.error('set exactly one of --model_base_path (with --model_name) '
                 'or --model_config_file.')
  return args


def _models_from_args(args) -> List[model_manager.ModelConfig]:
  if args.model_config_file:
    return model_manager.load_model_config_file(args.model_config_file)
  return [model_manager.ModelConfig(args.model_name,
                                    os.path.abspath(args.model_base_path))]


def session_config_from_args(args: argparse.Namespace
                             ) -> Optional[tf.compat.v1.ConfigProto]:
  """Return the session thread options the flags set, or None for defaults.

  As in TF Serving, setting either pool's own flag makes both pools follow
  their own flags and ignores --tensorflow_session_parallelism. Otherwise
  that flag sizes both pools.
  """
  intra = args.tensorflow_intra_op_parallelism
  inter = args.tensorflow_inter_op_parallelism
  if not intra and not inter:
    intra = inter = args.tensorflow_session_parallelism
  if not intra and not inter:
    return None
  return tf.compat.v1.ConfigProto(intra_op_parallelism_threads=intra,
                                  inter_op_parallelism_threads=inter)


def server_from_args(args: argparse.Namespace) -> ModelServer:
  """Build the server the flags describe.

  Raises:
    ValueError, OSError: a config file is missing or invalid.
  """
  batching_parameters = None
  if args.enable_batching:
    batching_parameters = batching.load_batching_parameters(
        args.batching_parameters_file)
  elif args.batching_parameters_file:
    logging.warning('--batching_parameters_file is ignored because '
                    '--enable_batching is off.')
  return ModelServer(
      _models_from_args(args),
      grpc_address=(args.grpc_host, args.port),
      rest_address=((args.rest_api_host, args.rest_api_port)
                    if args.rest_api_port else None),
      poll_wait_seconds=args.file_system_poll_wait_seconds,
      batching_parameters=batching_parameters,
      prometheus=monitoring.load_monitoring_config(
          args.monitoring_config_file),
      max_body_bytes=args.rest_api_max_body_bytes,
      enable_warmup=args.enable_model_warmup,
      session_config=session_config_from_args(args))


def main(argv: Optional[List[str]] = None) -> int:
  logging.basicConfig(level=logging.INFO,
                      format='%(asctime)s %(levelname)s %(message)s')
  args = _parse_args(argv)
  stop = threading.Event()

  def _on_signal(number, _frame):
    logging.info('Received %s', signal.Signals(number).name)
    stop.set()

  # Installed before loading, so a signal during a long load is not lost.
  signal.signal(signal.SIGTERM, _on_signal)
  signal.signal(signal.SIGINT, _on_signal)
  try:
    server = server_from_args(args)
    server.start()
  except (ValueError, OSError, RuntimeError) as e:
    logging.error('Model server failed to start: %s', e)
    return 1
  stop.wait()
  server.stop()
  return 0


if __name__ == '__main__':
  sys.exit(main())
