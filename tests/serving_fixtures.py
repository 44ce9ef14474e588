"""A pushed Amazon fine-food model for the serving tests, trained once.

The client, batch-inference and deploy tests need a real pushed SavedModel,
not its metrics, so the model trains for two epochs on the bundled sample and
is pushed without the Evaluator. It is built once per pytest session under
the session's base temp folder and shared by every module that uses it.
"""

import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import time

import pytest

import pipeline
from components import pusher
from components import trainer
from components.config import load_config
from serving.client import GrpcClient, RestClient, ServingError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AMAZON_CONFIG = os.path.join(REPO_ROOT, 'configs', 'amazon_fine_food.yaml')
MODEL_NAME = 'amazon_fine_food'


def pushed_serving_dir(tmp_path_factory) -> str:
  """The serving folder holding `amazon_fine_food/1` and its models.config."""
  root = tmp_path_factory.getbasetemp() / 'pushed_amazon_fine_food'
  serving_dir = str(root / 'models')
  version_dir = os.path.join(serving_dir, MODEL_NAME, '1')
  if os.path.isfile(os.path.join(version_dir, 'saved_model.pb')):
    return serving_dir

  config = load_config(AMAZON_CONFIG)
  config = dataclasses.replace(config, trainer=dataclasses.replace(
      config.trainer, epochs=2))
  summary = pipeline.run_pipeline(config, None, str(root / 'runs'),
                                  serving_dir, [], until='trainer')
  trainer_dir = next(c['output_dir'] for c in summary['components']
                     if c['component'] == 'trainer')
  model_dir = os.path.join(trainer_dir, trainer.SERVING_MODEL_DIR)
  pusher.run_pusher(model_dir, True, [], serving_dir, MODEL_NAME,
                    str(root / 'pusher'))
  return serving_dir


SERVER_START_TIMEOUT_S = 120


def free_port() -> int:
  """An ephemeral TCP port on 127.0.0.1 that is free right now."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def wait_until_available(client, process, model_name: str) -> None:
  """Poll the model's status until a version is AVAILABLE.

  Raises:
    RuntimeError: the server process exited.
    TimeoutError: no version was AVAILABLE within SERVER_START_TIMEOUT_S.
  """
  deadline = time.monotonic() + SERVER_START_TIMEOUT_S
  while time.monotonic() < deadline:
    if process.poll() is not None:
      raise RuntimeError(f'serving.server exited with {process.returncode}.')
    try:
      if any(s['state'] == 'AVAILABLE' for s in client.model_status()):
        return
    except ServingError:
      pass
    time.sleep(0.5)
  raise TimeoutError(f'{model_name} not AVAILABLE after '
                     f'{SERVER_START_TIMEOUT_S} s.')


@contextlib.contextmanager
def running_server(model_name: str, model_base_path: str, log_path):
  """Run `python -m serving.server` on free ports; yield (grpc, rest) targets.

  The server's output goes to `log_path`, whose tail is in the failure
  message when the server does not come up.
  """
  grpc_port, rest_port = free_port(), free_port()
  with open(log_path, 'w', encoding='utf-8') as log:
    process = subprocess.Popen(
        [sys.executable, '-m', 'serving.server', f'--port={grpc_port}',
         f'--rest_api_port={rest_port}', f'--model_name={model_name}',
         f'--model_base_path={model_base_path}'],
        cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
        env=dict(os.environ, TF_USE_LEGACY_KERAS='1'))
    rest_url = f'http://127.0.0.1:{rest_port}'
    try:
      try:
        wait_until_available(RestClient(rest_url, model_name, max_attempts=1),
                             process, model_name)
      except (RuntimeError, TimeoutError) as e:
        log.flush()
        with open(log_path, encoding='utf-8') as f:
          pytest.fail(f'{e} Server log:\n{f.read()[-3000:]}')
      yield f'127.0.0.1:{grpc_port}', rest_url
    finally:
      process.terminate()
      process.wait(timeout=30)


@contextlib.contextmanager
def connected_client(protocol: str, targets, model_name: str):
  """Yield a `grpc` or `rest` client of the server at (grpc, rest) targets."""
  grpc_target, rest_url = targets
  client = (GrpcClient(grpc_target, model_name) if protocol == 'grpc'
            else RestClient(rest_url, model_name))
  try:
    yield client
  finally:
    client.close()
