"""The contract between a dataset adapter and ExampleGen.

An adapter turns one snapshot into raw examples: dicts from raw feature name to
value. Values are `str` for `string` features ('' when missing), `int`,
`float`, or `list` of `str` for `string_list` features ([] when missing).
Every example carries every feature that `feature_types()` lists.

Rows that cannot be read are not dropped: the adapter emits them on the
rejected output as `RejectedRow` dicts, so that each input row ends up either
in at least one example or in exactly one rejected row.
"""

import abc
from typing import Any, Dict, List, NamedTuple

import apache_beam as beam

from components.config import PipelineConfig

STRING = 'string'
INT = 'int'
FLOAT = 'float'
STRING_LIST = 'string_list'
RAW_TYPES = (STRING, INT, FLOAT, STRING_LIST)


def empty_example(feature_types: Dict[str, str]) -> Dict[str, Any]:
  """Build an example with every feature missing: '', [] or 0."""
  example = {}
  for name, feature_type in feature_types.items():
    if feature_type == STRING_LIST:
      example[name] = []
    elif feature_type == INT:
      example[name] = 0
    elif feature_type == FLOAT:
      example[name] = 0.0
    else:
      example[name] = ''
  return example


class AdapterOutput(NamedTuple):
  """Outputs of `DatasetAdapter.read`.

  Attributes:
    examples: raw example dicts.
    rejected: dicts with keys `source` (file path), `row` (1-based row or
      record number in that file), `reason` and `raw` (the row's text).
    input_rows: one `(source, count)` pair per input file, counting the rows
      read from it (accepted and rejected together).
  """
  examples: beam.PCollection
  rejected: beam.PCollection
  input_rows: beam.PCollection


class DatasetAdapter(abc.ABC):
  """Reads one dataset's snapshot into raw examples."""

  name: str = ''

  def __init__(self, config: PipelineConfig, data_path: str):
    self.config = config
    self.data_path = data_path

  @abc.abstractmethod
  def feature_types(self) -> Dict[str, str]:
    """Raw feature name -> one of RAW_TYPES, for every feature written."""

  @abc.abstractmethod
  def input_files(self) -> List[str]:
    """Return the files read, for fingerprinting the snapshot."""

  @abc.abstractmethod
  def read(self, pipeline: beam.Pipeline) -> AdapterOutput:
    """Add the read steps to `pipeline`."""
