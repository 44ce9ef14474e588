"""Checks that an exported graph runs where TensorFlow Serving runs it."""

import json
import subprocess
import sys
from typing import List

_UNREGISTERED_OPS_SCRIPT = '''
import json
import os
import sys

os.environ['TF_USE_LEGACY_KERAS'] = '1'
os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'
import tensorflow
if sys.argv[1] == 'text':
  import tensorflow_text
from tensorflow.python.framework import op_def_registry

ops = json.loads(sys.stdin.read())
print(json.dumps(sorted(op for op in ops if op_def_registry.get(op) is None)))
'''


def unregistered_ops(ops: List[str], with_text: bool) -> List[str]:
  """List the ops that a fresh interpreter does not register.

  Args:
    ops: op type names.
    with_text: import tensorflow_text after tensorflow.

  Returns:
    The unknown op type names, sorted.
  """
  result = subprocess.run(
      [sys.executable, '-c', _UNREGISTERED_OPS_SCRIPT,
       'text' if with_text else 'core'],
      input=json.dumps(sorted(ops)), capture_output=True, text=True,
      check=False, timeout=300)
  assert result.returncode == 0, (
      f'the op registry check failed with code {result.returncode}: '
      f'{result.stderr[-2000:]}')
  return json.loads(result.stdout.strip().splitlines()[-1])
