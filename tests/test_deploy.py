"""The TF Serving deployment files in deploy/ and the Pusher's models.config.

TF Serving parses its config files strictly (an unknown field stops the
server), so each file is parsed here as the proto TF Serving reads it as.
tensorflow-serving-api ships `ModelServerConfig` but not `BatchingParameters`
or `MonitoringConfig`; those are declared below with TF Serving's field
names, numbers and types (session_bundle_config.proto and
monitoring_config.proto).
"""

import os
import re
from typing import Dict, List

import pytest
import yaml
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory
from google.protobuf import text_format
from google.protobuf import wrappers_pb2  # noqa: F401  Registers Int64Value.
from tensorflow_serving.config import model_server_config_pb2

from components import pusher

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY_DIR = os.path.join(REPO_ROOT, 'deploy')
COMPOSE_FILE = os.path.join(DEPLOY_DIR, 'docker-compose.yml')
KUBERNETES_FILE = os.path.join(DEPLOY_DIR, 'kubernetes.yaml')
CONFIG_FILES = ('batching.config', 'monitoring.config')
GRPC_PORT = 8500
REST_PORT = 8501
# A pinned GPU release tag such as 2.20.0-gpu: no `latest`, no nightly.
GPU_TAG = re.compile(r'^tensorflow/serving:\d+\.\d+\.\d+-gpu$')

# proto field types and labels (descriptor.proto).
_OPTIONAL, _REPEATED = 1, 3
_BOOL, _STRING, _MESSAGE, _INT64 = 8, 9, 11, 3
_INT64_VALUE = '.google.protobuf.Int64Value'
_STRING_VALUE = '.google.protobuf.StringValue'


def _message_classes():
  """BatchingParameters and MonitoringConfig with TF Serving's fields."""
  pool = descriptor_pool.DescriptorPool()
  wrappers = descriptor_pb2.FileDescriptorProto()
  wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
  pool.Add(wrappers)

  file_proto = descriptor_pb2.FileDescriptorProto(
      name='tests/tf_serving_configs.proto', package='tensorflow.serving',
      syntax='proto3', dependency=['google/protobuf/wrappers.proto'])
  batching = file_proto.message_type.add(name='BatchingParameters')
  for number, name, type_name in (
      (1, 'max_batch_size', _INT64_VALUE),
      (2, 'batch_timeout_micros', _INT64_VALUE),
      (3, 'max_enqueued_batches', _INT64_VALUE),
      (4, 'num_batch_threads', _INT64_VALUE),
      (5, 'thread_pool_name', _STRING_VALUE)):
    batching.field.add(name=name, number=number, label=_OPTIONAL,
                       type=_MESSAGE, type_name=type_name)
  batching.field.add(name='allowed_batch_sizes', number=6, label=_REPEATED,
                     type=_INT64)
  batching.field.add(name='pad_variable_length_inputs', number=7,
                     label=_OPTIONAL, type=_BOOL)

  prometheus = file_proto.message_type.add(name='PrometheusConfig')
  prometheus.field.add(name='enable', number=1, label=_OPTIONAL, type=_BOOL)
  prometheus.field.add(name='path', number=2, label=_OPTIONAL, type=_STRING)
  monitoring = file_proto.message_type.add(name='MonitoringConfig')
  monitoring.field.add(name='prometheus_config', number=1, label=_OPTIONAL,
                       type=_MESSAGE,
                       type_name='.tensorflow.serving.PrometheusConfig')

  pool.Add(file_proto)
  return (message_factory.GetMessageClass(
      pool.FindMessageTypeByName('tensorflow.serving.BatchingParameters')),
          message_factory.GetMessageClass(
              pool.FindMessageTypeByName(
                  'tensorflow.serving.MonitoringConfig')))


BatchingParameters, MonitoringConfig = _message_classes()


def _parse(text: str, message_class):
  message = message_class()
  text_format.Parse(text, message)
  return message


def _read(name: str) -> str:
  with open(os.path.join(DEPLOY_DIR, name), encoding='utf-8') as f:
    return f.read()


def _flags(args: List[str]) -> Dict[str, str]:
  flags = {}
  for arg in args:
    name, _, value = arg.partition('=')
    flags[name] = value
  return flags


@pytest.fixture(scope='module')
def compose() -> dict:
  with open(COMPOSE_FILE, encoding='utf-8') as f:
    return yaml.safe_load(f)


@pytest.fixture(scope='module')
def kubernetes() -> Dict[str, dict]:
  with open(KUBERNETES_FILE, encoding='utf-8') as f:
    return {doc['kind']: doc for doc in yaml.safe_load_all(f) if doc}


@pytest.fixture(scope='module')
def compose_flags(compose) -> Dict[str, str]:
  return _flags(compose['services']['tfserving']['command'])


@pytest.fixture(scope='module')
def serving_container(kubernetes) -> dict:
  return kubernetes['Deployment']['spec']['template']['spec']['containers'][0]


# ---------------------------------------------------------------------------
# Config files
# ---------------------------------------------------------------------------


def test_batching_config_parses():
  parameters = _parse(_read('batching.config'), BatchingParameters)

  assert parameters.max_batch_size.value >= 1
  assert parameters.num_batch_threads.value >= 1
  # TF Serving requires increasing sizes ending at max_batch_size.
  sizes = list(parameters.allowed_batch_sizes)
  assert sizes == sorted(sizes)
  assert sizes[-1] == parameters.max_batch_size.value


def test_monitoring_config_parses():
  config = _parse(_read('monitoring.config'), MonitoringConfig)

  assert config.prometheus_config.enable
  assert config.prometheus_config.path.startswith('/')


def test_example_models_config_parses():
  config = _parse(_read('models.config'),
                  model_server_config_pb2.ModelServerConfig)

  assert [m.name for m in config.model_config_list.config] == [
      'amazon_fine_food']


def test_local_server_reads_deploy_configs():
  batching = pytest.importorskip('serving.batching')
  monitoring = pytest.importorskip('serving.monitoring')

  parameters = batching.load_batching_parameters(
      os.path.join(DEPLOY_DIR, 'batching.config'))
  prometheus = monitoring.load_monitoring_config(
      os.path.join(DEPLOY_DIR, 'monitoring.config'))

  assert parameters.max_batch_size == 64
  assert prometheus.enable


# ---------------------------------------------------------------------------
# docker compose
# ---------------------------------------------------------------------------


def test_compose_image_pinned_gpu(compose):
  assert GPU_TAG.match(compose['services']['tfserving']['image'])


def test_compose_ports_match_flags(compose, compose_flags):
  ports = compose['services']['tfserving']['ports']
  container_ports = {int(str(p).rsplit(':', 1)[1]) for p in ports}

  assert int(compose_flags['--port']) == GRPC_PORT
  assert int(compose_flags['--rest_api_port']) == REST_PORT
  assert container_ports == {GRPC_PORT, REST_PORT}


def test_compose_flags_name_mounted_files(compose, compose_flags):
  mounts = {}
  for volume in compose['services']['tfserving']['volumes']:
    # SOURCE:TARGET[:MODE], where SOURCE may hold ${VAR:-default}.
    source, target = re.fullmatch(r'(.+):(/[^:]*)(?::ro|:rw)?',
                                  volume).groups()
    mounts[target] = source

  for name in CONFIG_FILES:
    target = f'/config/{name}'
    assert target in compose_flags.values(), name
    assert mounts[target] == f'./{name}'
    assert os.path.isfile(os.path.join(DEPLOY_DIR, name))
  # models.config is the Pusher's, inside the mounted serving folder.
  assert compose_flags['--model_config_file'] == '/models/models.config'
  assert '/models' in mounts


def test_compose_batching_and_polling_on(compose_flags):
  assert compose_flags['--enable_batching'] == 'true'
  assert int(compose_flags['--file_system_poll_wait_seconds']) > 0
  assert int(compose_flags['--model_config_file_poll_wait_seconds']) > 0


def test_compose_reserves_gpu(compose):
  devices = compose['services']['tfserving']['deploy']['resources'][
      'reservations']['devices']

  assert devices[0]['driver'] == 'nvidia'
  assert 'gpu' in devices[0]['capabilities']


def test_prometheus_scrapes_monitoring_path(compose):
  config = _parse(_read('monitoring.config'), MonitoringConfig)
  with open(os.path.join(DEPLOY_DIR, 'prometheus.yml'),
            encoding='utf-8') as f:
    scrape = yaml.safe_load(f)['scrape_configs'][0]

  assert scrape['metrics_path'] == config.prometheus_config.path
  assert scrape['static_configs'][0]['targets'] == [
      f'tfserving:{REST_PORT}']
  assert 'prometheus' in compose['services']


# ---------------------------------------------------------------------------
# Kubernetes
# ---------------------------------------------------------------------------


def test_kubernetes_has_all_objects(kubernetes):
  assert set(kubernetes) == {'ConfigMap', 'PersistentVolumeClaim',
                             'Deployment', 'Service'}


def test_kubernetes_matches_compose(serving_container, compose,
                                    compose_flags):
  assert serving_container['image'] == compose['services']['tfserving'][
      'image']
  assert _flags(serving_container['args']) == compose_flags


def test_kubernetes_configmap_equals_files(kubernetes):
  data = kubernetes['ConfigMap']['data']

  assert _parse(data['batching.config'], BatchingParameters) == _parse(
      _read('batching.config'), BatchingParameters)
  assert _parse(data['monitoring.config'], MonitoringConfig) == _parse(
      _read('monitoring.config'), MonitoringConfig)


def test_kubernetes_ports_and_gpu(serving_container, kubernetes):
  ports = {p['name']: p['containerPort'] for p in serving_container['ports']}
  service_ports = {p['name']: p['port']
                   for p in kubernetes['Service']['spec']['ports']}

  assert ports == {'grpc': GRPC_PORT, 'http': REST_PORT}
  assert service_ports == ports
  assert serving_container['resources']['limits']['nvidia.com/gpu'] == 1


def test_kubernetes_mounts_match_flags(serving_container):
  mounts = {m['mountPath'] for m in serving_container['volumeMounts']}
  flags = _flags(serving_container['args'])

  assert os.path.dirname(flags['--model_config_file']) in mounts
  assert os.path.dirname(flags['--batching_parameters_file']) in mounts


# ---------------------------------------------------------------------------
# The Pusher's models.config
# ---------------------------------------------------------------------------


def _fake_model(path: str) -> str:
  """A folder the Pusher accepts: it only checks for saved_model.pb."""
  os.makedirs(path)
  with open(os.path.join(path, 'saved_model.pb'), 'wb') as f:
    f.write(b'')
  return path


def _read_models_config(path: str):
  with open(path, encoding='utf-8') as f:
    return _parse(f.read(), model_server_config_pb2.ModelServerConfig)


def test_pusher_writes_models_config(tmp_path):
  serving_dir = str(tmp_path / 'serving')
  model = _fake_model(str(tmp_path / 'model'))

  pusher.run_pusher(model, True, [], serving_dir, 'news', str(tmp_path / 'a'))
  result = pusher.run_pusher(model, True, [], serving_dir, 'reviews',
                             str(tmp_path / 'b'))

  config = _read_models_config(result.models_config)
  entries = {m.name: m for m in config.model_config_list.config}
  pushed = sorted(name for name in os.listdir(serving_dir)
                  if os.path.isdir(os.path.join(serving_dir, name)))
  assert result.models_config == os.path.join(serving_dir, 'models.config')
  assert sorted(entries) == pushed == ['news', 'reviews']
  for name, entry in entries.items():
    assert entry.base_path == f'/models/{name}'
    assert entry.model_platform == 'tensorflow'
    assert entry.model_version_policy.latest.num_versions == 1


def test_pusher_base_path_configurable(tmp_path):
  serving_dir = str(tmp_path / 'serving')
  model = _fake_model(str(tmp_path / 'model'))

  result = pusher.run_pusher(model, True, [], serving_dir, 'news',
                             str(tmp_path / 'a'),
                             container_base_path='/mnt/models')

  config = _read_models_config(result.models_config)
  assert config.model_config_list.config[0].base_path == '/mnt/models/news'


def test_pusher_keeps_edited_policy(tmp_path):
  serving_dir = str(tmp_path / 'serving')
  model = _fake_model(str(tmp_path / 'model'))
  first = pusher.run_pusher(model, True, [], serving_dir, 'news',
                            str(tmp_path / 'a'))
  config = _read_models_config(first.models_config)
  entry = config.model_config_list.config[0]
  entry.model_version_policy.specific.versions.append(1)
  entry.version_labels['stable'] = 1
  with open(first.models_config, 'w', encoding='utf-8') as f:
    f.write(text_format.MessageToString(config))

  second = pusher.run_pusher(model, True, [], serving_dir, 'news',
                             str(tmp_path / 'b'))

  kept = _read_models_config(second.models_config).model_config_list.config[0]
  assert second.version == 2
  assert list(kept.model_version_policy.specific.versions) == [1]
  assert dict(kept.version_labels) == {'stable': 1}


def test_unblessed_push_leaves_config(tmp_path):
  serving_dir = str(tmp_path / 'serving')
  model = _fake_model(str(tmp_path / 'model'))

  result = pusher.run_pusher(model, False, ['worse'], serving_dir, 'news',
                             str(tmp_path / 'a'))

  assert result.models_config is None
  assert not os.path.exists(os.path.join(serving_dir, 'models.config'))


def test_models_config_cli_rewrites(tmp_path, capsys):
  serving_dir = str(tmp_path / 'serving')
  pusher.push_model(_fake_model(str(tmp_path / 'model')), serving_dir, 'news')

  status = pusher.main(['--serving-dir', serving_dir, '--base-path', '/srv'])

  config = _read_models_config(os.path.join(serving_dir, 'models.config'))
  assert status == 0
  assert config.model_config_list.config[0].base_path == '/srv/news'
  assert capsys.readouterr().out.strip().endswith('models.config')


def test_local_server_reads_pusher_config(tmp_path):
  model_manager = pytest.importorskip('serving.model_manager')
  serving_dir = str(tmp_path / 'serving')
  model = _fake_model(str(tmp_path / 'model'))
  result = pusher.run_pusher(model, True, [], serving_dir, 'news',
                             str(tmp_path / 'a'),
                             container_base_path=serving_dir)

  models = model_manager.load_model_config_file(result.models_config)

  assert [m.name for m in models] == ['news']
  assert models[0].base_path == os.path.join(serving_dir, 'news')
