"""Pusher: copies a blessed SavedModel into the serving folder as a version.

The layout is TensorFlow Serving's: `<serving_dir>/<model_name>/<version>/`.
The model is first copied to a hidden folder beside the versions, then
renamed into place, so a server polling the folder never loads half a model.
A failed copy leaves the served versions untouched.
"""

import argparse
import json
import logging
import os
import posixpath
import shutil
import sys
import tempfile
import uuid
from typing import List, NamedTuple, Optional

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

PUSH_RESULT_FILE = 'push.json'
MODELS_CONFIG_FILE = 'models.config'
# Mount point of the serving folder inside the TF Serving container of
# deploy/docker-compose.yml and deploy/kubernetes.yaml.
DEFAULT_CONTAINER_BASE_PATH = '/models'
# Serve only the newest version; TF Serving loads it before unloading the
# previous one, so a push causes no gap in service.
DEFAULT_NUM_VERSIONS = 1


class PusherResult(NamedTuple):
  """The push outcome: `version`, `path` and `models_config` are None when
  nothing moved."""
  pushed: bool
  version: Optional[int]
  path: Optional[str]
  reason: str
  models_config: Optional[str] = None


def existing_versions(model_base: str) -> List[int]:
  if not os.path.isdir(model_base):
    return []
  return sorted(int(name) for name in os.listdir(model_base)
                if name.isdigit())


def push_model(model_dir: str, serving_dir: str, model_name: str) -> str:
  """Copy `model_dir` to the next version of `model_name`; return its path.

  Raises:
    FileNotFoundError: `model_dir` has no saved_model.pb.
    FileExistsError: another pusher took the same version meanwhile.
  """
  if not os.path.isfile(os.path.join(model_dir, 'saved_model.pb')):
    raise FileNotFoundError(f'No SavedModel at {model_dir}: saved_model.pb '
                            'is missing; rerun the Trainer.')
  model_base = os.path.join(serving_dir, model_name)
  os.makedirs(model_base, exist_ok=True)
  versions = existing_versions(model_base)
  version = versions[-1] + 1 if versions else 1
  staging = os.path.join(model_base, f'.staging-{version}-{uuid.uuid4().hex}')
  target = os.path.join(model_base, str(version))
  try:
    shutil.copytree(model_dir, staging)
    if os.path.exists(target):
      raise FileExistsError(f'Version {version} of {model_name} appeared in '
                            f'{model_base} during the push; push again.')
    os.rename(staging, target)
  finally:
    if os.path.isdir(staging):
      shutil.rmtree(staging, ignore_errors=True)
  return target


def served_model_names(serving_dir: str) -> List[str]:
  """Model folders of `serving_dir` that hold at least one version."""
  if not os.path.isdir(serving_dir):
    return []
  return sorted(
      name for name in os.listdir(serving_dir)
      if not name.startswith('.') and existing_versions(
          os.path.join(serving_dir, name)))


def _previous_entries(path: str) -> dict:
  """name -> ModelConfig of an existing models.config, or {} if unreadable."""
  if not os.path.isfile(path):
    return {}
  config = model_server_config_pb2.ModelServerConfig()
  try:
    with open(path, encoding='utf-8') as f:
      text_format.Parse(f.read(), config)
  except text_format.ParseError as e:
    logging.warning('Pusher: %s is not a valid ModelServerConfig (%s); '
                    'rewriting it from the model folders.', path, e)
    return {}
  return {model.name: model for model in config.model_config_list.config}


def build_models_config(serving_dir: str,
                        base_path: str = DEFAULT_CONTAINER_BASE_PATH,
                        previous: Optional[dict] = None
                        ) -> model_server_config_pb2.ModelServerConfig:
  """Build a ModelServerConfig with one entry per model folder in `serving_dir`.

  Args:
    serving_dir: the folder of `<model_name>/<version>/` SavedModels.
    base_path: the path of `serving_dir` on the model server's file system.
    previous: entries of the config being replaced. Their version policy
      and version labels are kept, so an operator's pin survives a push.
  """
  previous = previous or {}
  config = model_server_config_pb2.ModelServerConfig()
  for name in served_model_names(serving_dir):
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = posixpath.join(base_path, name)
    model.model_platform = 'tensorflow'
    kept = previous.get(name)
    if kept is not None and kept.HasField('model_version_policy'):
      model.model_version_policy.CopyFrom(kept.model_version_policy)
    else:
      model.model_version_policy.latest.num_versions = DEFAULT_NUM_VERSIONS
    if kept is not None:
      for label, version in kept.version_labels.items():
        model.version_labels[label] = version
  return config


def write_models_config(serving_dir: str,
                        base_path: str = DEFAULT_CONTAINER_BASE_PATH) -> str:
  """Rewrite `<serving_dir>/models.config` atomically; return its path.

  TF Serving rereads the file every `--model_config_file_poll_wait_seconds`,
  so it is written beside the target and renamed over it.
  """
  path = os.path.join(serving_dir, MODELS_CONFIG_FILE)
  config = build_models_config(serving_dir, base_path,
                               _previous_entries(path))
  text = ('# Written by the mtlrec Pusher after each push: one entry per '
          'model folder.\n# Version policies and labels edited here are '
          'kept; other edits are not.\n' +
          text_format.MessageToString(config))
  os.makedirs(serving_dir, exist_ok=True)
  fd, staging = tempfile.mkstemp(prefix='.models.config-', dir=serving_dir)
  try:
    with os.fdopen(fd, 'w', encoding='utf-8') as f:
      f.write(text)
    # mkstemp creates the file readable by its owner only, and a model
    # server running as another user must read it.
    os.chmod(staging, 0o644)
    os.replace(staging, path)
  finally:
    if os.path.exists(staging):
      os.remove(staging)
  logging.info('Pusher: wrote %s with models %s under %s.', path,
               [model.name for model in config.model_config_list.config],
               base_path)
  return path


def run_pusher(model_dir: str, blessed: bool, reasons: List[str],
               serving_dir: str, model_name: str, output_dir: str,
               container_base_path: str = DEFAULT_CONTAINER_BASE_PATH
               ) -> PusherResult:
  """Push the model when blessed, and record the outcome in `push.json`.

  After a push, `<serving_dir>/models.config` lists every model folder with
  its `base_path` under `container_base_path`.
  """
  if blessed:
    path = push_model(model_dir, serving_dir, model_name)
    version = int(os.path.basename(path))
    models_config = write_models_config(serving_dir, container_base_path)
    result = PusherResult(True, version, path,
                          f'pushed {model_name} version {version} to {path}',
                          models_config)
  else:
    result = PusherResult(False, None, None,
                          'not pushed: the model was not blessed: ' +
                          ' '.join(reasons))
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, PUSH_RESULT_FILE), 'w',
            encoding='utf-8') as f:
    json.dump(result._asdict(), f, indent=2)
  logging.info('Pusher: %s', result.reason)
  return result


def main(argv: Optional[List[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m components.pusher',
      description='Rewrite <serving-dir>/models.config, the TF Serving model '
      'config the Pusher writes after each push.')
  parser.add_argument('--serving-dir', required=True,
                      help='Folder of <model_name>/<version>/ SavedModels.')
  parser.add_argument('--base-path', default=DEFAULT_CONTAINER_BASE_PATH,
                      help='Path of the serving folder on the model '
                      'server\'s file system (default %(default)s).')
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
  if not served_model_names(args.serving_dir):
    print(f'error: no <model_name>/<version>/ folders in {args.serving_dir}; '
          'run the pipeline to push a model first.', file=sys.stderr)
    return 2
  print(write_models_config(args.serving_dir, args.base_path))
  return 0


if __name__ == '__main__':
  sys.exit(main())
