"""Generic adapter: any CSV or JSON Lines data, described by the config.

The config's `data` section describes how to read it:
- `format`: `csv` (RFC 4180, header first) or `jsonl` (one JSON object per
  line).
- `columns`: raw feature name -> source column (a CSV header name or a JSON
  key).
- `types`: raw feature name -> `string` (the default), `int`, `float` or
  `string_list`. A `string_list` is space-separated in CSV and a JSON list in
  JSON Lines.

Each row becomes one example. A row with a missing column, a value that does
not parse as its type, invalid JSON or invalid UTF-8 is rejected. In JSON
Lines, null reads as '' for a `string` and [] for a `string_list`, and is
rejected for numbers.
"""

import json
import math
from typing import Any, Callable, Dict, Iterator, List, Optional

import apache_beam as beam

from components.adapters import base
from components.adapters import readers
from components.config import PipelineConfig

CSV = 'csv'
JSONL = 'jsonl'
FORMATS = (CSV, JSONL)


class GenericAdapter(base.DatasetAdapter):
  """Reads a CSV or JSON Lines file or glob as the config describes."""

  name = 'generic'

  def __init__(self, config: PipelineConfig, data_path: str):
    super().__init__(config, data_path)
    self._columns = dict(config.data.columns)
    self._types = _feature_types(config)

  def feature_types(self) -> Dict[str, str]:
    return dict(self._types)

  def input_files(self) -> List[str]:
    return readers.match_files(self.data_path)

  def read(self, pipeline: beam.Pipeline) -> base.AdapterOutput:
    if self.config.data.format == CSV:
      rows = readers.read_csv_rows(
          pipeline, self.data_path, 'Rows',
          _HeaderCheck(sorted(set(self._columns.values()))))
      parse_fn = _CsvRowParser(self._columns, self._types)
    else:
      rows = readers.read_text_lines(pipeline, self.data_path, 'Rows')
      parse_fn = _JsonLineParser(self._columns, self._types)

    parsed = readers.parse_rows(rows.rows, 'ParseRows', parse_fn)
    rejected = ((rows.rejected, parsed[readers.REJECTED])
                | 'FlattenRejectedRows' >> beam.Flatten())
    return base.AdapterOutput(parsed.parsed, rejected, rows.input_rows)


def _feature_types(config: PipelineConfig) -> Dict[str, str]:
  """Check the `data` section and return raw feature name -> type."""
  data, source = config.data, config.source_path
  if data.format not in FORMATS:
    raise ValueError(f'{source}: data.format must be one of {list(FORMATS)} '
                     f'for the generic adapter, got {data.format!r}.')
  if not data.columns:
    raise ValueError(f'{source}: the generic adapter needs data.columns, a '
                     'mapping from raw feature name to source column.')
  unknown = sorted(set(data.types) - set(data.columns))
  if unknown:
    raise ValueError(f'{source}: data.types names {unknown}, which are not '
                     f'in data.columns {sorted(data.columns)}.')
  types = {name: data.types.get(name, base.STRING) for name in data.columns}
  for name, raw_type in types.items():
    if raw_type not in base.RAW_TYPES:
      raise ValueError(f'{source}: data.types.{name} is {raw_type!r}; valid '
                       f'types are {list(base.RAW_TYPES)}.')
  return types


class _HeaderCheck:
  """Report the mapped columns that a CSV header lacks, or None."""

  def __init__(self, required_columns: List[str]):
    self._required = required_columns

  def __call__(self, header: List[str]) -> Optional[str]:
    missing = [c for c in self._required if c not in header]
    if not missing:
      return None
    return (f'Not read because the file header has no column(s) {missing} '
            f'that data.columns maps; the header is {header}.')


class _CsvRowParser:
  """Turn a CSV `Row` into one example."""

  def __init__(self, columns: Dict[str, str], types: Dict[str, str]):
    self._columns = columns
    self._types = types

  def __call__(self, row: readers.Row) -> Iterator[Dict[str, Any]]:
    example = {}
    for name, column in self._columns.items():
      example[name] = _parse_text(row.values[column], self._types[name],
                                  column)
    yield example


class _JsonLineParser:
  """Turn a JSON Lines `Row` into one example."""

  def __init__(self, columns: Dict[str, str], types: Dict[str, str]):
    self._columns = columns
    self._types = types

  def __call__(self, row: readers.Row) -> Iterator[Dict[str, Any]]:
    try:
      record = json.loads(row.raw)
    except json.JSONDecodeError as e:
      raise readers.InvalidRowError(f'The line is not valid JSON: {e}.') from e
    if not isinstance(record, dict):
      raise readers.InvalidRowError(
          f'The line is a JSON {type(record).__name__}, not an object.')

    example = {}
    for name, column in self._columns.items():
      if column not in record:
        raise readers.InvalidRowError(f'Column {column!r} is missing.')
      example[name] = _parse_json(record[column], self._types[name], column)
    yield example


def _parse_text(text: str, raw_type: str, column: str) -> Any:
  """Parse a CSV field as `raw_type`."""
  if raw_type == base.STRING:
    return text
  if raw_type == base.STRING_LIST:
    return text.split()
  if raw_type == base.INT:
    return readers.parse_int(text, column)
  return _parse_float(text, column)


def _parse_float(value: Any, column: str) -> float:
  try:
    number = float(value)
  except (TypeError, ValueError):
    number = math.nan
  if isinstance(value, bool) or not math.isfinite(number):
    raise readers.InvalidRowError(
        f'Column {column} is {readers.quote_value(value)}, not a finite '
        'number.')
  return number


def _parse_json(value: Any, raw_type: str, column: str) -> Any:
  """Parse a JSON value as `raw_type`."""
  parsers: Dict[str, Callable[[Any, str], Any]] = {
      base.STRING: _json_string,
      base.STRING_LIST: _json_string_list,
      base.INT: _json_int,
      base.FLOAT: _json_float,
  }
  return parsers[raw_type](value, column)


def _json_string(value: Any, column: str) -> str:
  if value is None:
    return ''
  if isinstance(value, str):
    return value
  # Numeric ids are common in JSON, so numbers read as their text. Bools,
  # lists and objects are rejected.
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return str(value)
  raise readers.InvalidRowError(
      f'Column {column} is {json.dumps(value)[:60]}, not a string.')


def _json_string_list(value: Any, column: str) -> List[str]:
  if value is None:
    return []
  if not isinstance(value, list):
    raise readers.InvalidRowError(
        f'Column {column} is {json.dumps(value)[:60]}, not a JSON list.')
  return [_json_string(item, column) for item in value]


def _json_int(value: Any, column: str) -> int:
  if isinstance(value, int) and not isinstance(value, bool):
    return value
  if isinstance(value, str):
    return readers.parse_int(value, column)
  raise readers.InvalidRowError(
      f'Column {column} is {json.dumps(value)[:60]}, not an integer.')


def _json_float(value: Any, column: str) -> float:
  if value is None:
    raise readers.InvalidRowError(f'Column {column} is null, not a number.')
  return _parse_float(value, column)
