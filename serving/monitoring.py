"""Server metrics in the Prometheus text exposition format.

Metric names follow TF Serving's (`:tensorflow:serving:request_count`, ...),
so dashboards written for `tensorflow_model_server` read this server too.
Latencies are in microseconds, as TF Serving reports them.
"""

import dataclasses
import logging
import threading
from typing import Dict, List, Optional, Sequence, Tuple

from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory
from google.protobuf import text_format

DEFAULT_PATH = '/monitoring/prometheus/metrics'
CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8'

REQUEST_COUNT = ':tensorflow:serving:request_count'
REQUEST_LATENCY = ':tensorflow:serving:request_latency'
LOAD_ATTEMPT_COUNT = ':tensorflow:cc:saved_model:load_attempt_count'
LOAD_LATENCY = ':tensorflow:cc:saved_model:load_latency'
BATCH_SIZE = ':tensorflow:serving:batching_session:processed_batch_size'

# Bucket upper bounds in microseconds: 10 us to about 100 s, x2 per step.
LATENCY_BUCKETS_US = tuple(10 * 2**i for i in range(24))
BATCH_SIZE_BUCKETS = tuple(2**i for i in range(14))

_LabelKey = Tuple[Tuple[str, str], ...]


def _label_key(labels: Dict[str, str]) -> _LabelKey:
  return tuple(sorted((name, str(value)) for name, value in labels.items()))


def _format_labels(key: _LabelKey, extra: Sequence[Tuple[str, str]] = ()) -> str:
  pairs = list(key) + list(extra)
  if not pairs:
    return ''
  escaped = (value.replace('\\', '\\\\').replace('"', '\\"').replace('\n', '\\n')
             for _, value in pairs)
  return '{' + ','.join(f'{name}="{value}"'
                        for (name, _), value in zip(pairs, escaped)) + '}'


class Counter:
  """A monotonically increasing count per label set."""

  def __init__(self, name: str, help_text: str):
    self.name = name
    self.help_text = help_text
    self._lock = threading.Lock()
    self._values: Dict[_LabelKey, float] = {}

  def inc(self, labels: Dict[str, str], amount: float = 1) -> None:
    key = _label_key(labels)
    with self._lock:
      self._values[key] = self._values.get(key, 0) + amount

  def render(self) -> List[str]:
    lines = [f'# HELP {self.name} {self.help_text}',
             f'# TYPE {self.name} counter']
    with self._lock:
      for key, value in sorted(self._values.items()):
        lines.append(f'{self.name}{_format_labels(key)} {value:g}')
    return lines


class Histogram:
  """Cumulative bucket counts, sum and count per label set."""

  def __init__(self, name: str, help_text: str, buckets: Sequence[float]):
    self.name = name
    self.help_text = help_text
    self._buckets = tuple(buckets)
    self._lock = threading.Lock()
    self._values: Dict[_LabelKey, List[float]] = {}

  def observe(self, labels: Dict[str, str], value: float) -> None:
    key = _label_key(labels)
    with self._lock:
      # Per-bucket counts, then the sum and the count.
      entry = self._values.setdefault(key, [0] * (len(self._buckets) + 2))
      for index, bound in enumerate(self._buckets):
        if value <= bound:
          entry[index] += 1
      entry[-2] += value
      entry[-1] += 1

  def render(self) -> List[str]:
    lines = [f'# HELP {self.name} {self.help_text}',
             f'# TYPE {self.name} histogram']
    with self._lock:
      for key, entry in sorted(self._values.items()):
        for bound, count in zip(self._buckets, entry):
          labels = _format_labels(key, [('le', f'{bound:g}')])
          lines.append(f'{self.name}_bucket{labels} {count}')
        labels = _format_labels(key, [('le', '+Inf')])
        lines.append(f'{self.name}_bucket{labels} {entry[-1]}')
        lines.append(f'{self.name}_sum{_format_labels(key)} {entry[-2]:g}')
        lines.append(f'{self.name}_count{_format_labels(key)} {entry[-1]}')
    return lines


class ServerMetrics:
  """The metrics this server exports."""

  def __init__(self):
    self.request_count = Counter(
        REQUEST_COUNT, 'The number of requests, by model, signature, API, '
        'entry point and status code.')
    self.request_latency = Histogram(
        REQUEST_LATENCY, 'Request latency in microseconds, by model, '
        'signature, API and entry point.', LATENCY_BUCKETS_US)
    self.load_attempt_count = Counter(
        LOAD_ATTEMPT_COUNT, 'The number of SavedModel load attempts, by '
        'model path and status (success or fail).')
    self.load_latency = Histogram(
        LOAD_LATENCY, 'SavedModel load and warmup latency in microseconds, by '
        'model path.', LATENCY_BUCKETS_US)
    self.batch_size = Histogram(
        BATCH_SIZE, 'Examples per batched session run, by model.',
        BATCH_SIZE_BUCKETS)

  def record_request(self, model_name: str, signature_name: str, api: str,
                     entrypoint: str, status: str, latency_us: float) -> None:
    labels = {'model_name': model_name, 'signature_name': signature_name,
              'API': api, 'entrypoint': entrypoint}
    self.request_count.inc(dict(labels, status=status))
    self.request_latency.observe(labels, latency_us)

  def record_load(self, model_path: str, success: bool,
                  latency_us: float) -> None:
    self.load_attempt_count.inc(
        {'model_path': model_path, 'status': 'success' if success else 'fail'})
    self.load_latency.observe({'model_path': model_path}, latency_us)

  def render(self) -> str:
    lines = []
    for metric in (self.request_count, self.request_latency,
                   self.load_attempt_count, self.load_latency,
                   self.batch_size):
      lines.extend(metric.render())
    return '\n'.join(lines) + '\n'


# Monitoring config ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PrometheusConfig:
  enable: bool = False
  path: str = DEFAULT_PATH


def _monitoring_config_class():
  """`MonitoringConfig`, from tensorflow-serving-api or built from its fields.

  tensorflow-serving-api 2.19 ships no `monitoring_config_pb2`, so the two
  messages are declared here with TF Serving's field names and numbers.
  """
  try:
    # pylint: disable=g-import-not-at-top
    from tensorflow_serving.config import monitoring_config_pb2
    return monitoring_config_pb2.MonitoringConfig
  except ImportError:
    pass
  file_proto = descriptor_pb2.FileDescriptorProto(
      name='mtlrec/monitoring_config.proto', package='mtlrec.serving',
      syntax='proto3')
  prometheus = file_proto.message_type.add(name='PrometheusConfig')
  prometheus.field.add(name='enable', number=1, type=8, label=1)  # bool
  prometheus.field.add(name='path', number=2, type=9, label=1)  # string
  monitoring = file_proto.message_type.add(name='MonitoringConfig')
  monitoring.field.add(name='prometheus_config', number=1, type=11, label=1,
                       type_name='.mtlrec.serving.PrometheusConfig')
  pool = descriptor_pool.DescriptorPool()
  pool.Add(file_proto)
  return message_factory.GetMessageClass(
      pool.FindMessageTypeByName('mtlrec.serving.MonitoringConfig'))


def load_monitoring_config(path: Optional[str]) -> PrometheusConfig:
  """Read `--monitoring_config_file` (a MonitoringConfig text proto).

  Raises:
    ValueError: the file is not a valid MonitoringConfig text proto.
  """
  if not path:
    return PrometheusConfig()
  with open(path, encoding='utf-8') as f:
    text = f.read()
  config = _monitoring_config_class()()
  try:
    text_format.Parse(text, config)
  except text_format.ParseError as e:
    raise ValueError(f'Invalid MonitoringConfig text proto in {path}: {e}. '
                     'Expected e.g. prometheus_config { enable: true }.') from e
  prometheus = config.prometheus_config
  result = PrometheusConfig(enable=prometheus.enable,
                            path=prometheus.path or DEFAULT_PATH)
  if not result.path.startswith('/'):
    raise ValueError(f'prometheus_config.path {result.path!r} in {path} must '
                     'start with "/".')
  logging.info('Monitoring config %s: Prometheus %s at %s', path,
               'enabled' if result.enable else 'disabled', result.path)
  return result
