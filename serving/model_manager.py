"""Loads, serves and unloads model versions from TF Serving's folder layout.

Each model has a base path with one folder per version, named by an int64
(a millisecond timestamp is valid). Hidden folders (the Pusher stages into
`.staging-*`) and non-integer names are ignored. A poll thread rescans the
base paths; a new version is loaded into its own `SavedModelSession`,
warmed up with `assets.extra/tf_serving_warmup_requests` and only then
served. Versions outside the version policy are unloaded after that, so
some version serves at every moment. A version that fails to load is reported
as END with its error, and the versions loaded before it keep serving. It is
retried only when its files change.

Requests hold a reference to the version they run on. The served set is an
immutable dict swapped under a lock, and an unloaded version's session is
closed when its last in-flight request releases it.
"""

import contextlib
import dataclasses
import logging
import os
import re
import threading
import time
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving import tensor_codec
from serving.monitoring import ServerMetrics
from serving.saved_model_session import SavedModelSession
from serving.tensor_codec import ServingError

WARMUP_PATH = os.path.join('assets.extra', 'tf_serving_warmup_requests')
# TF Serving replays at most this many warmup records per version.
MAX_WARMUP_RECORDS = 1000
DEFAULT_SIGNATURE = 'serving_default'
_VERSION_NAME = re.compile(r'^[0-9]+$')
_INT64_MAX = 2**63 - 1

START, LOADING, AVAILABLE, UNLOADING, END = (
    'START', 'LOADING', 'AVAILABLE', 'UNLOADING', 'END')


# Config -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
  """TF Serving's `ServableVersionPolicy`: latest N, all, or specific."""
  kind: str = 'latest'
  num_versions: int = 1
  versions: Tuple[int, ...] = ()

  def select(self, versions: List[int]) -> List[int]:
    """Pick the versions to serve out of the loadable ones on disk."""
    ordered = sorted(versions, reverse=True)
    if self.kind == 'all':
      return ordered
    if self.kind == 'specific':
      return [v for v in ordered if v in self.versions]
    return ordered[:self.num_versions]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """One model to serve: its name, base path, version policy and labels."""
  name: str
  base_path: str
  policy: VersionPolicy = VersionPolicy()
  labels: Mapping[str, int] = dataclasses.field(default_factory=dict)


def _policy_from_proto(proto, name: str) -> VersionPolicy:
  choice = proto.WhichOneof('policy_choice')
  if choice == 'all':
    return VersionPolicy('all')
  if choice == 'specific':
    if not proto.specific.versions:
      raise ValueError(f'Model {name!r}: model_version_policy.specific lists '
                       'no versions; list at least one.')
    return VersionPolicy('specific', versions=tuple(proto.specific.versions))
  if choice == 'latest':
    # TF Serving treats an unset or zero num_versions as 1.
    return VersionPolicy('latest', max(1, proto.latest.num_versions))
  return VersionPolicy()


def load_model_config_file(path: str) -> List[ModelConfig]:
  """Parse `--model_config_file`, a `ModelServerConfig` text proto.

  Raises:
    ValueError: the file does not parse, lists no models, repeats a name, or
      uses a feature this server lacks (custom_model_config, a platform other
      than tensorflow).
  """
  with open(path, encoding='utf-8') as f:
    text = f.read()
  config = model_server_config_pb2.ModelServerConfig()
  try:
    text_format.Parse(text, config)
  except text_format.ParseError as e:
    raise ValueError(f'Invalid ModelServerConfig text proto in {path}: '
                     f'{e}') from e
  if config.WhichOneof('config') != 'model_config_list':
    raise ValueError(f'{path} has no model_config_list; only '
                     'model_config_list is supported.')
  models = []
  for entry in config.model_config_list.config:
    if not entry.name or not entry.base_path:
      raise ValueError(f'A model in {path} lacks name or base_path: '
                       f'{text_format.MessageToString(entry, as_one_line=True)}')
    if entry.model_platform not in ('', 'tensorflow'):
      raise ValueError(f'Model {entry.name!r} in {path} has model_platform '
                       f'{entry.model_platform!r}; only "tensorflow" is '
                       'supported.')
    base_path = entry.base_path
    if not os.path.isabs(base_path):
      base_path = os.path.join(os.path.dirname(os.path.abspath(path)),
                               base_path)
    models.append(ModelConfig(
        entry.name, base_path,
        _policy_from_proto(entry.model_version_policy, entry.name),
        dict(entry.version_labels)))
  names = [model.name for model in models]
  if not names:
    raise ValueError(f'{path} lists no models.')
  duplicates = sorted({name for name in names if names.count(name) > 1})
  if duplicates:
    raise ValueError(f'{path} names models {duplicates} more than once.')
  return models


# Versions ---------------------------------------------------------------------


class ServableVersion:
  """One loaded version: its session, signatures and in-flight references."""

  def __init__(self, name: str, version: int, path: str,
               session_config: Optional[tf.compat.v1.ConfigProto] = None):
    self.name = name
    self.version = version
    self.path = path
    self.session = SavedModelSession(path, config=session_config)
    self.signatures: Dict[str, meta_graph_pb2.SignatureDef] = (
        self.session.signatures)
    self._lock = threading.Lock()
    self._references = 0
    self._retired = False
    self._closed = False

  def signature(self, signature_name: str) -> meta_graph_pb2.SignatureDef:
    """Look up a signature; INVALID_ARGUMENT when the model lacks it."""
    signature = self.signatures.get(signature_name or DEFAULT_SIGNATURE)
    if signature is None:
      raise tensor_codec.invalid_argument(
          f'Signature {signature_name!r} not found in model {self.name!r} '
          f'version {self.version}; it has '
          f'{sorted(s for s in self.signatures if not s.startswith("__"))}.')
    return signature

  def run(self, signature_name: str, inputs: Mapping[str, np.ndarray],
          output_keys: Optional[List[str]] = None) -> Dict[str, np.ndarray]:
    """Run a signature; session errors become ServingErrors with TF's code."""
    try:
      return self.session.run(inputs, signature_name or DEFAULT_SIGNATURE,
                              output_keys)
    except tf.errors.OpError as e:
      raise ServingError(tensor_codec.status_code_from_number(e.error_code),
                         tensor_codec.op_error_message(e.message)) from e
    except (TypeError, ValueError) as e:
      raise tensor_codec.invalid_argument(str(e)) from e

  def acquire(self) -> None:
    with self._lock:
      self._references += 1

  def release(self) -> None:
    with self._lock:
      self._references -= 1
      close = self._retired and not self._references
    if close:
      self._close()

  def retire(self) -> None:
    """Close the session now, or when the last in-flight request ends."""
    with self._lock:
      self._retired = True
      close = not self._references
    if close:
      self._close()

  def _close(self) -> None:
    with self._lock:
      if self._closed:
        return
      self._closed = True
    self.session.close()
    logging.info('Unloaded model %s version %d from %s', self.name,
                 self.version, self.path)


@dataclasses.dataclass(frozen=True)
class VersionStatus:
  """A version's state and, after a failed load, its error."""
  state: str
  error_code: str = 'OK'
  error_message: str = ''


def _files_fingerprint(path: str) -> Tuple:
  """Sizes and mtimes of a version's graph and variables index."""
  stamps = []
  for name in ('saved_model.pb', os.path.join('variables',
                                              'variables.index')):
    try:
      stat = os.stat(os.path.join(path, name))
      stamps.append((name, stat.st_size, stat.st_mtime_ns))
    except OSError:
      stamps.append((name, None, None))
  return tuple(stamps)


def list_versions(base_path: str) -> Dict[int, str]:
  """Version number -> folder, for the integer-named folders of a base path."""
  try:
    names = os.listdir(base_path)
  except OSError as e:
    logging.warning('Cannot list model base path %s: %s', base_path, e)
    return {}
  versions = {}
  for name in sorted(names):
    path = os.path.join(base_path, name)
    if not _VERSION_NAME.match(name) or not os.path.isdir(path):
      continue
    version = int(name)
    if version > _INT64_MAX:
      logging.warning('Ignoring version folder %s: the number is beyond '
                      'int64.', path)
      continue
    if version in versions:
      logging.warning('Ignoring version folder %s: %s has the same version '
                      'number.', path, versions[version])
      continue
    versions[version] = path
  return versions


def run_warmup(servable: ServableVersion) -> int:
  """Replay the version's warmup PredictRequests; return how many ran.

  Raises:
    ServingError or ValueError: a record is not a predict log or fails; the
      version is then not served, as in TF Serving.
  """
  path = os.path.join(servable.path, WARMUP_PATH)
  if not os.path.isfile(path):
    return 0
  count = 0
  for record in tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS):
    log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
    if log.WhichOneof('log_type') != 'predict_log':
      raise ValueError(
          f'Warmup record {count} in {path} is a '
          f'{log.WhichOneof("log_type")}; only predict_log records are '
          'supported.')
    request = log.predict_log.request
    signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    signature = servable.signature(signature_name)
    inputs = tensor_codec.tensor_protos_to_arrays(request.inputs,
                                                  signature_name, signature)
    servable.run(signature_name, inputs, list(request.output_filter) or None)
    count += 1
  return count


# Manager ----------------------------------------------------------------------


class ModelManager:
  """Serves the versions of every configured model and polls for new ones.

  Args:
    models: the models to serve.
    poll_wait_seconds: seconds between scans of the base paths; 0 or less
      scans once at start.
    metrics: where load attempts are counted.
    enable_warmup: replay warmup requests before serving a version.
    session_config: the TensorFlow session options of every version, such
      as its thread pools; None for TensorFlow's defaults.
  """

  def __init__(self, models: List[ModelConfig], poll_wait_seconds: float = 1,
               metrics: Optional[ServerMetrics] = None,
               enable_warmup: bool = True,
               session_config: Optional[tf.compat.v1.ConfigProto] = None):
    self.models = {model.name: model for model in models}
    self._poll_wait_seconds = poll_wait_seconds
    self._metrics = metrics or ServerMetrics()
    self._enable_warmup = enable_warmup
    self._session_config = session_config
    self._lock = threading.Lock()
    # Replaced, never mutated, so readers need the lock only to take it.
    self._served: Dict[str, Dict[int, ServableVersion]] = {
        name: {} for name in self.models}
    self._status: Dict[str, Dict[int, VersionStatus]] = {
        name: {} for name in self.models}
    self._failed: Dict[Tuple[str, int], Tuple] = {}
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  def start(self) -> None:
    """Load what is on disk now, then poll in the background."""
    self.poll_once()
    if self._poll_wait_seconds > 0:
      self._thread = threading.Thread(target=self._poll_loop,
                                      name='version-poller', daemon=True)
      self._thread.start()

  def stop(self) -> None:
    """Stop polling and unload every version."""
    self._stop.set()
    if self._thread:
      self._thread.join()
    with self._lock:
      served, self._served = self._served, {name: {} for name in self.models}
    for versions in served.values():
      for servable in versions.values():
        servable.retire()

  def _poll_loop(self) -> None:
    while not self._stop.wait(self._poll_wait_seconds):
      try:
        self.poll_once()
      except Exception:  # pylint: disable=broad-except
        # The poller must outlive any one bad scan; the next scan retries.
        logging.exception('Version poll failed; retrying in %s s',
                          self._poll_wait_seconds)

  def poll_once(self) -> None:
    for model in self.models.values():
      self._sync_model(model)

  # Loading and unloading ------------------------------------------------------

  def _loadable(self, model: ModelConfig,
                on_disk: Dict[int, str]) -> List[int]:
    """On-disk versions, without those whose last load failed unchanged."""
    loadable = []
    for version, path in on_disk.items():
      failed = self._failed.get((model.name, version))
      if failed is not None and failed == _files_fingerprint(path):
        continue
      loadable.append(version)
    return loadable

  def _sync_model(self, model: ModelConfig) -> None:
    on_disk = list_versions(model.base_path)
    self._forget_removed(model.name, on_disk)
    while True:
      wanted = model.policy.select(self._loadable(model, on_disk))
      served = self._served[model.name]
      missing = [v for v in wanted if v not in served]
      if not missing:
        break
      # A failed load drops that version from `wanted`, so the loop picks
      # the next candidate (an older version) until the set settles.
      self._load(model.name, missing[0], on_disk[missing[0]])
    self._unload_unwanted(model.name, set(wanted))

  def _forget_removed(self, name: str, on_disk: Dict[int, str]) -> None:
    for key in [k for k in self._failed if k[0] == name]:
      if key[1] not in on_disk:
        del self._failed[key]
    with self._lock:
      status = {version: entry
                for version, entry in self._status[name].items()
                if version in on_disk or version in self._served[name]}
      self._status = {**self._status, name: status}

  def _set_status(self, name: str, version: int,
                  status: VersionStatus) -> None:
    with self._lock:
      model_status = {**self._status[name], version: status}
      self._status = {**self._status, name: model_status}

  def _load(self, name: str, version: int, path: str) -> None:
    logging.info('Loading model %s version %d from %s', name, version, path)
    self._set_status(name, version, VersionStatus(LOADING))
    fingerprint = _files_fingerprint(path)
    started = time.monotonic()
    servable = None
    try:
      servable = ServableVersion(name, version, path, self._session_config)
      if self._enable_warmup:
        count = run_warmup(servable)
        logging.info('Warmed up model %s version %d with %d request(s)',
                     name, version, count)
    except Exception as e:  # pylint: disable=broad-except
      # Anything a broken SavedModel raises must leave the served versions
      # alone; the error is reported through the version status.
      self._fail_load(name, version, path, fingerprint, servable, e, started)
      return
    self._metrics.record_load(path, True,
                              (time.monotonic() - started) * 1e6)
    with self._lock:
      served = {**self._served[name], version: servable}
      self._served = {**self._served, name: served}
    self._set_status(name, version, VersionStatus(AVAILABLE))
    logging.info('Serving model %s version %d (loaded in %.2f s)', name,
                 version, time.monotonic() - started)

  def _fail_load(self, name, version, path, fingerprint, servable, error,
                 started) -> None:
    if isinstance(error, tf.errors.OpError):
      code = tensor_codec.status_code_from_number(error.error_code)
      message = error.message
    elif isinstance(error, ServingError):
      code, message = error.code, error.message
    else:
      code, message = grpc.StatusCode.UNKNOWN, f'{type(error).__name__}: {error}'
    logging.error('Failed to load model %s version %d from %s: %s; the '
                  'versions loaded before keep serving. Replace the '
                  'version folder to retry.', name, version, path, message)
    if servable is not None:
      servable.retire()
    self._failed[(name, version)] = fingerprint
    self._metrics.record_load(path, False, (time.monotonic() - started) * 1e6)
    self._set_status(name, version, VersionStatus(END, code.name, message))

  def _unload_unwanted(self, name: str, wanted: set) -> None:
    with self._lock:
      current = self._served[name]
      unwanted = [s for v, s in current.items() if v not in wanted]
      if not unwanted:
        return
      kept = {v: s for v, s in current.items() if v in wanted}
      self._served = {**self._served, name: kept}
    for servable in unwanted:
      logging.info('Unloading model %s version %d (not in the version '
                   'policy any more)', name, servable.version)
      self._set_status(name, servable.version, VersionStatus(UNLOADING))
      servable.retire()
      self._set_status(name, servable.version, VersionStatus(END))

  # Requests -------------------------------------------------------------------

  def _resolve_version(self, name: str, version: Optional[int],
                       label: Optional[str]) -> Optional[int]:
    if label:
      labels = self.models[name].labels
      if label not in labels:
        raise tensor_codec.invalid_argument(
            f'Unrecognized version label {label!r} for model {name!r}; '
            f'known labels: {sorted(labels)}.')
      return labels[label]
    return version

  @contextlib.contextmanager
  def acquire(self, name: str, version: Optional[int] = None,
              label: Optional[str] = None) -> Iterator[ServableVersion]:
    """Hold a served version (the latest if none is named) for one request.

    Raises:
      ServingError: NOT_FOUND for an unknown model or a version not served,
        INVALID_ARGUMENT for an unknown label.
    """
    if name not in self.models:
      raise ServingError(grpc.StatusCode.NOT_FOUND,
                         f'Model {name!r} not found; this server serves '
                         f'{sorted(self.models)}.')
    version = self._resolve_version(name, version, label)
    with self._lock:
      versions = self._served[name]
      if version is None:
        servable = versions[max(versions)] if versions else None
      else:
        servable = versions.get(version)
      if servable is not None:
        servable.acquire()
    if servable is None:
      raise ServingError(grpc.StatusCode.NOT_FOUND,
                         self._not_served_message(name, version))
    try:
      yield servable
    finally:
      servable.release()

  def _not_served_message(self, name: str, version: Optional[int]) -> str:
    served = sorted(self._served[name])
    if version is None:
      return (f'Model {name!r} has no version being served yet; check that '
              f'{self.models[name].base_path} has a loadable version folder.')
    return (f'Version {version} of model {name!r} is not being served; '
            f'served versions: {served}.')

  def version_status(self, name: str, version: Optional[int] = None,
                     label: Optional[str] = None
                     ) -> List[Tuple[int, VersionStatus]]:
    """(version, status) pairs, newest first, as GetModelStatus lists them.

    Raises:
      ServingError: NOT_FOUND when the model or version is unknown.
    """
    if name not in self.models:
      raise ServingError(grpc.StatusCode.NOT_FOUND,
                         f'Model {name!r} not found; this server serves '
                         f'{sorted(self.models)}.')
    version = self._resolve_version(name, version, label)
    statuses = self._status[name]
    if version is not None:
      if version not in statuses:
        raise ServingError(
            grpc.StatusCode.NOT_FOUND,
            f'Version {version} of model {name!r} not found; known versions: '
            f'{sorted(statuses)}.')
      return [(version, statuses[version])]
    if not statuses:
      raise ServingError(
          grpc.StatusCode.NOT_FOUND,
          f'No versions of model {name!r} found under '
          f'{self.models[name].base_path}.')
    return sorted(statuses.items(), reverse=True)
