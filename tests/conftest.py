"""Shared pytest setup: the environment, the import path and data fixtures."""

import os
import sys

# tensorflow_recommenders and tensorflow_transform need Keras 2, which
# TensorFlow picks only when this is set before its first import.
os.environ['TF_USE_LEGACY_KERAS'] = '1'

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)


@pytest.fixture(scope='session')
def data_dir() -> str:
  """The folder of the test datasets: $MTLREC_DATA_DIR, else the default below."""
  path = os.environ.get('MTLREC_DATA_DIR',
                        os.path.join(REPO_ROOT, '..', 'shared', 'data'))
  path = os.path.normpath(path)
  if not os.path.isdir(path):
    pytest.skip(f'Test data folder {path} not found; set MTLREC_DATA_DIR to '
                'the folder with mind-sample/.')
  return path
