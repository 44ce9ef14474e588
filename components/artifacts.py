"""Artifact paths and small readers shared by the components."""

import glob
import hashlib
import os
from typing import Iterable, Iterator, List

import tensorflow as tf

SPLITS = ('train', 'validation', 'eval')


def split_dir(examples_dir: str, split: str) -> str:
  return os.path.join(examples_dir, f'Split-{split}')


def split_pattern(examples_dir: str, split: str) -> str:
  """Glob of the gzipped TFRecord files of one split."""
  return os.path.join(split_dir(examples_dir, split), '*.gz')


def split_files(examples_dir: str, split: str) -> List[str]:
  return sorted(glob.glob(split_pattern(examples_dir, split)))


def read_records(examples_dir: str, split: str) -> Iterator[bytes]:
  """Yield the serialized records of one split in a fixed file order."""
  files = split_files(examples_dir, split)
  if not files:
    return
  dataset = tf.data.TFRecordDataset(files, compression_type='GZIP')
  for record in dataset.as_numpy_iterator():
    yield record


def count_records(pattern: str) -> int:
  files = sorted(glob.glob(pattern))
  if not files:
    return 0
  dataset = tf.data.TFRecordDataset(files, compression_type='GZIP')
  return int(dataset.reduce(0, lambda count, _: count + 1).numpy())


def fingerprint_files(paths: Iterable[str]) -> str:
  """SHA-256 over the relative names and contents of files and folders."""
  digest = hashlib.sha256()
  for path in sorted(paths):
    if os.path.isdir(path):
      files = sorted(
          os.path.join(root, name)
          for root, _, names in os.walk(path) for name in names)
      base = path
    else:
      files = [path]
      base = os.path.dirname(path)
    for file_path in files:
      digest.update(os.path.relpath(file_path, base).encode('utf-8'))
      with open(file_path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
          digest.update(block)
  return digest.hexdigest()
