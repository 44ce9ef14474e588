"""Beam steps shared by the dataset adapters: read files into numbered rows.

Each file is read from start to end by one worker. A quoted CSV field may
contain line breaks, so the file cannot be split at arbitrary newlines, and a
row's number is only known by counting from the top. The rows are reshuffled after reading, so the parsing that follows fans out over all
workers.

Bytes are decoded as UTF-8 here, not by Beam's text coders, so that a row with
invalid UTF-8 becomes a rejected row instead of failing the pipeline.
"""

import csv
import io
import logging
import re
from typing import (Any, Callable, Dict, Iterable, List, NamedTuple,
                    Optional, Sequence, Tuple)

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

# Tags of the side outputs of the read and parse steps.
REJECTED = 'rejected'
INPUT_ROWS = 'input_rows'

# Maximum length of a value quoted in a rejection reason.
_MAX_QUOTED_CHARS = 60

# Invalid UTF-8 bytes decoded with errors='surrogateescape' become these code
# points, so a decoded row can be checked for them and its original bytes
# recovered.
_ESCAPED_BYTES = re.compile('[\udc80-\udcff]')

_CONTROL_ESCAPES = str.maketrans({'\n': '\\n', '\r': '\\r', '\t': '\\t'})


class InvalidRowError(ValueError):
  """A row that cannot be read; the message is the rejection reason."""


class Row(NamedTuple):
  """One input row, numbered from 1 within its file.

  Attributes:
    source: the file path.
    row: 1-based row number. For CSV it counts records, header included, so it
      equals the line number unless an earlier quoted field spans lines.
    raw: the row's text without its line ending.
    values: for CSV, column name -> value; None for line-oriented files.
  """
  source: str
  row: int
  raw: str
  values: Optional[Dict[str, str]] = None


def rejected_row(source: str, row: int, reason: str, raw: str) -> Dict[str, Any]:
  """Build the rejected-row record that ExampleGen writes as one JSON line."""
  return {'source': source, 'row': row, 'reason': reason, 'raw': raw}


def quote_value(value: Any) -> str:
  """Quote `value` for a rejection reason, shortened and with bad bytes escaped."""
  text = _printable(str(value))
  if len(text) > _MAX_QUOTED_CHARS:
    text = text[:_MAX_QUOTED_CHARS] + '...'
  # Not repr(), which would double the backslash of each \xNN escape.
  return "'" + text.translate(_CONTROL_ESCAPES) + "'"


def match_files(pattern: str) -> List[str]:
  """Return the sorted paths that `pattern` (a path or a glob) matches."""
  results = FileSystems.match([pattern])
  return sorted(m.path for m in results[0].metadata_list)


def _printable(text: str) -> str:
  """Replace the escaped bytes of invalid UTF-8 by `\\xNN` escapes."""
  if not _ESCAPED_BYTES.search(text):
    return text
  data = text.encode('utf-8', errors='surrogateescape')
  return data.decode('utf-8', errors='backslashreplace')


def _check_utf8(header: Sequence[str], fields: Sequence[str]) -> None:
  for column, value in zip(header, fields):
    if _ESCAPED_BYTES.search(value):
      raise InvalidRowError(
          f'Column {column} is not valid UTF-8: {quote_value(value)}.')


class _ReadCsvRows(beam.DoFn):
  """Read whole CSV files (RFC 4180, header first) into `Row`s.

  Rows that cannot be split into the header's columns, or that hold invalid
  UTF-8, go to the REJECTED output. The count of data rows in each file goes
  to INPUT_ROWS as a `(path, count)` pair.
  """

  def __init__(self, header_check: Callable[[List[str]], Optional[str]]):
    self._header_check = header_check

  def process(self, readable_file: fileio.ReadableFile):
    path = readable_file.metadata.path
    consumed_lines = []

    def _tracked_lines(text_file):
      # csv.reader pulls one line at a time and yields a record as soon as it
      # ends, so the lines pulled since the last record are its raw text.
      for line in text_file:
        consumed_lines.append(line)
        yield line

    with readable_file.open(mime_type='application/octet-stream') as binary:
      text_file = io.TextIOWrapper(binary, encoding='utf-8-sig',
                                   errors='surrogateescape', newline='')
      reader = csv.reader(_tracked_lines(text_file), strict=True)
      header, header_error, data_rows = None, None, 0
      for row_number, fields, error in _numbered_records(reader):
        raw = _printable(''.join(consumed_lines).rstrip('\r\n'))
        consumed_lines.clear()
        if row_number == 1:
          header = fields
          header_error = (f'The header (row 1) is not valid CSV: {error}.'
                          if error else self._header_check(header))
          continue
        if not fields and error is None:
          continue  # A blank line is no record.
        data_rows += 1
        reason = (f'The row is not valid CSV: {error}.' if error else
                  header_error)
        yield _csv_row(path, row_number, raw, header, fields, reason)

    if header is None:
      logging.warning('%s has no header row and no data.', path)
    yield beam.pvalue.TaggedOutput(INPUT_ROWS, (path, data_rows))


def _numbered_records(reader) -> Iterable:
  """Yield (row number, fields, csv error or None) for each CSV record."""
  row_number = 0
  while True:
    try:
      fields = next(reader)
      error = None
    except StopIteration:
      return
    except csv.Error as e:
      # The reader resets after an error and resumes at the next line.
      fields, error = [], e
    row_number += 1
    yield row_number, fields, error


def _csv_row(path: str, row_number: int, raw: str, header: List[str],
             fields: List[str], reason: Optional[str]):
  """Return the `Row`, or a REJECTED output when there is a reason to."""
  if reason is None:
    try:
      return Row(path, row_number, raw, _csv_values(header, fields))
    except InvalidRowError as e:
      reason = str(e)
  return beam.pvalue.TaggedOutput(
      REJECTED, rejected_row(path, row_number, reason, raw))


def _csv_values(header: List[str], fields: List[str]) -> Dict[str, str]:
  if len(fields) != len(header):
    raise InvalidRowError(
        f'The row has {len(fields)} columns but the header has '
        f'{len(header)}; check for an unquoted comma or a missing field.')
  _check_utf8(header, fields)
  return dict(zip(header, fields))


def decode_utf8(path: str, line: bytes) -> Tuple[str, Optional[str]]:
  """Decode one line as UTF-8.

  Returns:
    (text, None), or (the text with bad bytes escaped, the rejection reason).
  """
  del path  # The reason names no file; the rejected row records it.
  try:
    return line.decode('utf-8'), None
  except UnicodeDecodeError as e:
    raw = line.decode('utf-8', errors='backslashreplace')
    return raw, (f'The line is not valid UTF-8 (byte '
                 f'0x{line[e.start]:02x} at offset {e.start}): '
                 f'{quote_value(raw)}.')


class _ReadTextLines(beam.DoFn):
  """Read whole line-oriented files (TSV, JSON Lines) into `Row`s.

  Blank lines are skipped and not counted. A line that `decode` rejects goes
  to the REJECTED output with its reason. The count of other lines in each
  file goes to INPUT_ROWS as a `(path, count)` pair.
  """

  def __init__(self, decode: Callable[[str, bytes],
                                      Tuple[str, Optional[str]]]):
    super().__init__()
    self._decode = decode

  def process(self, readable_file: fileio.ReadableFile):
    path = readable_file.metadata.path
    rows = 0
    with readable_file.open(mime_type='application/octet-stream') as binary:
      for row_number, line in enumerate(binary, start=1):
        line = line.rstrip(b'\r\n')
        if not line.strip():
          continue
        rows += 1
        text, reason = self._decode(path, line)
        if reason is None:
          yield Row(path, row_number, text)
        else:
          yield beam.pvalue.TaggedOutput(
              REJECTED, rejected_row(path, row_number, reason, text))
    yield beam.pvalue.TaggedOutput(INPUT_ROWS, (path, rows))


def read_csv_rows(pipeline: beam.Pipeline, pattern: str, name: str,
                  header_check: Callable[[List[str]], Optional[str]]):
  """Add steps that read the CSV files matching `pattern` into `Row`s.

  Args:
    pipeline: the pipeline to add to.
    pattern: a file path or glob.
    name: the data's name in step labels, such as 'Reviews'.
    header_check: returns why a header cannot be read (every data row of that
      file is then rejected with this reason), or None when it is fine.

  Returns:
    A tagged output with `rows` (reshuffled), REJECTED and INPUT_ROWS.
  """
  outputs = (
      pipeline
      | f'Match{name}Files' >> fileio.MatchFiles(pattern)
      | f'Read{name}Files' >> fileio.ReadMatches()
      | f'Split{name}IntoRows' >> beam.ParDo(
          _ReadCsvRows(header_check)).with_outputs(
              REJECTED, INPUT_ROWS, main='rows'))
  return _reshuffle_rows(outputs, name)


def read_text_lines(pipeline: beam.Pipeline, pattern: str, name: str,
                    decode: Callable[[str, bytes], Tuple[str, Optional[str]]]
                    = decode_utf8):
  """Add steps that read the line-oriented files matching `pattern`.

  Args:
    pipeline: the pipeline to add to.
    pattern: a file path or glob.
    name: the data's name in step labels, such as 'Ratings'.
    decode: maps (path, line bytes) to (text, None), or to (text, reason)
      for a line to reject. Defaults to UTF-8.

  Returns:
    A tagged output with `rows` (reshuffled), REJECTED and INPUT_ROWS.
  """
  outputs = (
      pipeline
      | f'Match{name}Files' >> fileio.MatchFiles(pattern)
      | f'Read{name}Files' >> fileio.ReadMatches()
      | f'Split{name}IntoLines' >> beam.ParDo(_ReadTextLines(decode)).with_outputs(
          REJECTED, INPUT_ROWS, main='rows'))
  return _reshuffle_rows(outputs, name)


class _RowsOutput(NamedTuple):
  rows: beam.PCollection
  rejected: beam.PCollection
  input_rows: beam.PCollection


def _reshuffle_rows(outputs, name: str) -> _RowsOutput:
  rows = outputs.rows | f'Reshuffle{name}' >> beam.Reshuffle()
  return _RowsOutput(rows, outputs[REJECTED], outputs[INPUT_ROWS])


class _ParseRows(beam.DoFn):
  """Apply a parse function; an InvalidRowError it raises rejects the row."""

  def __init__(self, parse_fn: Callable[[Row], Iterable[Any]]):
    self._parse_fn = parse_fn

  def process(self, row: Row):
    try:
      outputs = list(self._parse_fn(row))
    except InvalidRowError as e:
      yield beam.pvalue.TaggedOutput(
          REJECTED, rejected_row(row.source, row.row, str(e), row.raw))
      return
    yield from outputs


def parse_rows(rows: beam.PCollection, label: str,
               parse_fn: Callable[[Row], Iterable[Any]]):
  """Apply `parse_fn` to each row: its outputs go to `parsed`, the rejects to
  REJECTED."""
  return rows | label >> beam.ParDo(_ParseRows(parse_fn)).with_outputs(
      REJECTED, main='parsed')


def parse_int(value: str, column: str) -> int:
  """Parse a decimal integer, or raise InvalidRowError naming the column."""
  text = value.strip()
  if not re.fullmatch(r'[+-]?[0-9]+', text):
    raise InvalidRowError(
        f'Column {column} is {quote_value(value)}, not an integer.')
  return int(text)
