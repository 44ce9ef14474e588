"""Pusher: copies a blessed SavedModel into the serving folder as a version.

The layout is TensorFlow Serving's: `<serving_dir>/<model_name>/<version>/`.
The model is first copied to a hidden folder beside the versions, then
renamed into place, so a server polling the folder never loads half a model.
A failed copy leaves the served versions untouched.
"""

import json
import logging
import os
import shutil
import uuid
from typing import List, NamedTuple, Optional

PUSH_RESULT_FILE = 'push.json'


class PusherResult(NamedTuple):
  """The push outcome: `version` and `path` are None when nothing moved."""
  pushed: bool
  version: Optional[int]
  path: Optional[str]
  reason: str


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


def run_pusher(model_dir: str, blessed: bool, reasons: List[str],
               serving_dir: str, model_name: str,
               output_dir: str) -> PusherResult:
  """Push the model when blessed, and record the outcome in `push.json`."""
  if blessed:
    path = push_model(model_dir, serving_dir, model_name)
    version = int(os.path.basename(path))
    result = PusherResult(True, version, path,
                          f'pushed {model_name} version {version} to {path}')
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
