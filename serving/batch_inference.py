"""Batch inference over files with Beam's RunInference and a pushed model.

  python pipeline.py infer --model-dir serving_models/amazon_fine_food/1 \\
      --input reviews.csv --output predictions.jsonl

Inputs:
  csv, jsonl: one row per record, carrying the raw feature columns that the
              model's `serving_default` signature takes. A CSV file has a
              header, and its quoted fields may span lines. An id-list
              input is a JSON list in JSON Lines and whitespace-separated
              ids in CSV.
  tfrecord:   serialized raw `tf.Example` protos (gzip when the file name ends
              in .gz), fed to the `from_examples` signature.
  snapshot:   a data snapshot in its dataset's own format (with `--config`):
              read by the config's adapter, as ExampleGen reads it, and each
              example's raw features fed to `serving_default`. Label columns
              are read but not used.

Outputs (JSON Lines, in no particular order):
  <output>:                one prediction per valid row: `row` (file:number;
                           the record number, 1-based, with a CSV header as
                           record 1; for a snapshot, `example <example_id>`),
                           `id` from an id column or null, and
                           per task its `label` and `probabilities` in class
                           order.
  <output>.rejected.jsonl: every other row with `row`, `reason` and the raw
                           input, so rows in = predictions + rejected
                           (`.jsonl` is dropped from <output> first).

The model is loaded once per worker with `SavedModelSession`, the way TF
Serving loads it, and each batch runs as one session call. A batch the graph
rejects is rerun row by row, so one bad row is rejected with TensorFlow's
message and the others still get predictions.
"""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

# pylint: disable=wrong-import-position
import csv
import json
import logging
from typing import (Any, Dict, Iterable, Iterator, List, NamedTuple, Optional,
                    Sequence, Tuple)

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference import base as inference_base
from tensorflow.core.protobuf import saved_model_pb2

from components import beam_options
from serving import client as serving_client
from serving import tensor_codec

FORMATS = ('csv', 'jsonl', 'tfrecord')
# Input read through a pipeline config's dataset adapter.
SNAPSHOT = 'snapshot'
RAW_SIGNATURE = 'serving_default'
EXAMPLES_SIGNATURE = 'from_examples'
# Columns taken, in this order, as a row's id in the prediction output.
ID_COLUMNS = ('example_id', 'id', 'Id')
REJECTED_SUFFIX = '.rejected.jsonl'
DEFAULT_MIN_BATCH = 1
DEFAULT_MAX_BATCH = 256
_REJECTED_TAG = 'rejected'
_METRICS_NAMESPACE = 'mtlrec.batch_inference'


class InputSpec(NamedTuple):
  """One signature input: its dtype and rank (2 for an id list)."""
  dtype: tf.DType
  rank: int


class InferenceCounts(NamedTuple):
  """Rows read, predicted and rejected; `rows == predicted + rejected`."""
  rows: int
  predicted: int
  rejected: int
  output_path: str
  rejected_path: str


def rejected_path_for(output_path: str) -> str:
  """`preds.jsonl` -> `preds.rejected.jsonl`; other names get the suffix."""
  stem = output_path[:-len('.jsonl')] if output_path.endswith(
      '.jsonl') else output_path
  return stem + REJECTED_SUFFIX


def infer_format(input_path: str) -> str:
  """Return the input format for a file name, e.g. `x.csv` -> 'csv'."""
  name = input_path.lower()
  if name.endswith('.gz'):
    name = name[:-len('.gz')]
  for suffix, input_format in (('.csv', 'csv'), ('.jsonl', 'jsonl'),
                               ('.json', 'jsonl'), ('.tfrecord', 'tfrecord'),
                               ('.tfrecords', 'tfrecord')):
    if name.endswith(suffix):
      return input_format
  raise ValueError(f'Cannot tell the format of {input_path} from its name; '
                   f'pass --format, one of {", ".join(FORMATS)}.')


def read_signature_inputs(model_dir: str,
                          signature_name: str) -> Dict[str, InputSpec]:
  """Read a signature's inputs from saved_model.pb, without loading it.

  Raises:
    FileNotFoundError: `model_dir` has no saved_model.pb.
    KeyError: the model has no such signature.
  """
  path = os.path.join(model_dir, 'saved_model.pb')
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(
        f'No SavedModel at {model_dir}: saved_model.pb is missing. Pass a '
        'version folder, e.g. serving_models/<model_name>/<version>.')
  saved_model = saved_model_pb2.SavedModel()
  with tf.io.gfile.GFile(path, 'rb') as f:
    saved_model.ParseFromString(f.read())
  for meta_graph in saved_model.meta_graphs:
    if 'serve' in meta_graph.meta_info_def.tags:
      signatures = meta_graph.signature_def
      if signature_name not in signatures:
        raise KeyError(f'Signature {signature_name!r} not found in '
                       f'{model_dir}; it has {sorted(signatures)}.')
      return {name: InputSpec(tf.dtypes.as_dtype(tensor.dtype),
                              len(tensor.tensor_shape.dim))
              for name, tensor in signatures[signature_name].inputs.items()}
  raise KeyError(f'{model_dir} has no MetaGraph tagged "serve".')


# ----------------------------------------------------------------------------
# Reading rows
# ----------------------------------------------------------------------------


def _row_key(path: str, number: int) -> str:
  return f'{os.path.basename(path)}:{number}'


def _rejection(key: str, reason: str, raw: Any) -> Dict[str, Any]:
  """Build a rejected-rows record: the row key, the reason and the input."""
  return {'row': key, 'reason': reason, 'input': _jsonable(raw)}


def _rejected(key: str, reason: str, raw: Any) -> beam.pvalue.TaggedOutput:
  return beam.pvalue.TaggedOutput(_REJECTED_TAG, _rejection(key, reason, raw))


def _has_undecodable(values: Sequence[str]) -> bool:
  """Check for invalid UTF-8 bytes that `surrogateescape` decoding kept."""
  return any('\udc80' <= ch <= '\udcff' for value in values for ch in value)


def _read_csv(readable_file) -> Iterator[Any]:
  """(row key, dict row) per CSV record, or a tagged rejection per bad one.

  The whole file goes through one `csv` reader because a quoted field may
  span lines, which a line-splitting source would cut apart. Lines decode
  with `surrogateescape`, so a record with invalid UTF-8 is rejected alone.
  """
  path = readable_file.metadata.path
  with readable_file.open() as raw:
    lines = (line.decode('utf-8', errors='surrogateescape') for line in raw)
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
      return
    number = 1
    try:
      for number, values in enumerate(reader, start=2):
        key = _row_key(path, number)
        if _has_undecodable(values):
          yield _rejected(key, 'undecodable: not valid UTF-8', values)
        elif len(values) != len(header):
          yield _rejected(
              key, f'expected {len(header)} CSV fields (the header\'s), got '
              f'{len(values)}', values)
        else:
          yield key, dict(zip(header, values))
    except csv.Error as e:
      # NOTE: the csv reader cannot resume after a malformed record, so the
      # rest of the file is reported as one rejected record.
      key = _row_key(path, number + 1)
      yield _rejected(key, f'undecodable CSV from this record on: {e}', '')


def _read_jsonl(readable_file) -> Iterator[Tuple[str, Any]]:
  path = readable_file.metadata.path
  with readable_file.open() as raw:
    for number, line in enumerate(raw, start=1):
      key = _row_key(path, number)
      if not line.strip():
        yield _rejected(key, 'empty line', line)
        continue
      try:
        row = json.loads(line.decode('utf-8'))
      except (UnicodeDecodeError, ValueError) as e:
        yield _rejected(key, f'undecodable: invalid JSON: {e}', line)
        continue
      if not isinstance(row, dict):
        yield _rejected(key, 'wrong type: expected a JSON object, got '
                        f'{type(row).__name__}', line)
        continue
      yield key, row


def _read_tfrecord(readable_file) -> Iterator[Tuple[str, Any]]:
  path = readable_file.metadata.path
  compression = 'GZIP' if path.endswith('.gz') else ''
  dataset = tf.data.TFRecordDataset(path, compression_type=compression)
  number = 0
  try:
    for number, record in enumerate(dataset.as_numpy_iterator(), start=1):
      yield _row_key(path, number), record
  except tf.errors.DataLossError as e:
    key = _row_key(path, number + 1)
    yield _rejected(key, f'undecodable: corrupt TFRecord from this record '
                    f'on: {e.message}', '')


_READERS = {'csv': _read_csv, 'jsonl': _read_jsonl,
            'tfrecord': _read_tfrecord}


# ----------------------------------------------------------------------------
# Validating rows
# ----------------------------------------------------------------------------


def _row_id(row: Dict[str, Any]) -> Optional[str]:
  for column in ID_COLUMNS:
    if column in row and row[column] not in (None, ''):
      return str(row[column])
  return None


def _scalar(value: Any, spec: InputSpec, from_csv: bool) -> Any:
  """Convert one scalar input value, or raise ValueError naming the type."""
  if spec.dtype == tf.string:
    if not isinstance(value, str):
      raise ValueError(f'expected a string, got {type(value).__name__}')
    return value.encode('utf-8')
  if isinstance(value, bool) or (not from_csv and
                                 not isinstance(value, (int, float))):
    raise ValueError(f'expected a number, got {type(value).__name__}')
  try:
    number = float(value)
  except ValueError as e:
    raise ValueError(f'expected a number, got {value!r}') from e
  if spec.dtype.is_integer:
    if not number.is_integer():
      raise ValueError(f'expected an integer, got {value!r}')
    return int(number)
  return number


def _id_list(value: Any, spec: InputSpec, from_csv: bool) -> List[Any]:
  if from_csv:
    value = value.split()
  if not isinstance(value, list):
    raise ValueError(f'expected a list, got {type(value).__name__}')
  return [_scalar(item, InputSpec(spec.dtype, 1), from_csv)
          for item in value]


def validate_row(row: Dict[str, Any], specs: Dict[str, InputSpec],
                 from_csv: bool) -> Dict[str, Any]:
  """Convert one raw row to the signature's inputs.

  Raises:
    ValueError: a column is missing, null or of the wrong type. The message
      names every such column.
  """
  missing = sorted(name for name in specs
                   if name not in row or row[name] is None)
  if missing:
    raise ValueError(f'missing columns {missing}')
  inputs, errors = {}, []
  for name, spec in specs.items():
    try:
      if spec.rank > 1:
        inputs[name] = _id_list(row[name], spec, from_csv)
      else:
        inputs[name] = _scalar(row[name], spec, from_csv)
    except ValueError as e:
      errors.append(f'column {name!r}: {e}')
  if errors:
    raise ValueError('wrong types: ' + '; '.join(errors))
  return inputs


class _ValidateRow(beam.DoFn):
  """Turn (key, raw row) into (key, element), or a tagged rejection."""

  def __init__(self, specs: Dict[str, InputSpec], input_format: str):
    self._specs = specs
    self._format = input_format

  def process(self, keyed_row):
    key, row = keyed_row
    if self._format == 'tfrecord':
      try:
        example = tf.train.Example.FromString(row)
      except Exception as e:  # pylint: disable=broad-except
        # protobuf raises DecodeError, whose module differs by backend.
        yield _rejected(key, f'undecodable: not a serialized tf.Example: {e}',
                        '')
        return
      yield key, {'id': _example_id(example), 'inputs': row}
      return
    try:
      inputs = validate_row(row, self._specs, self._format == 'csv')
    except ValueError as e:
      yield _rejected(key, str(e), row)
      return
    yield key, {'id': _row_id(row), 'inputs': inputs}


def _example_id(example: tf.train.Example) -> Optional[str]:
  features = example.features.feature
  for column in ID_COLUMNS:
    if column in features:
      values = features[column]
      for value in (list(values.bytes_list.value) +
                    list(values.int64_list.value)):
        return value.decode('utf-8', 'replace') if isinstance(
            value, bytes) else str(value)
  return None


# ----------------------------------------------------------------------------
# Inference
# ----------------------------------------------------------------------------


class SavedModelHandler(inference_base.ModelHandler):
  """Runs a signature of a pushed SavedModel on batches of rows.

  Each element is `{'id': ..., 'inputs': ...}` where `inputs` is a dict of
  raw feature values (`serving_default`) or one serialized tf.Example
  (`from_examples`). The inference result is a dict of per-row outputs, or
  `{'error': message}` for a row the graph rejects.
  """

  def __init__(self, model_dir: str, signature_name: str,
               min_batch_size: int = DEFAULT_MIN_BATCH,
               max_batch_size: int = DEFAULT_MAX_BATCH):
    super().__init__()
    self._model_dir = model_dir
    self._signature_name = signature_name
    self._batch_kwargs = {'min_batch_size': min_batch_size,
                          'max_batch_size': max_batch_size}

  def load_model(self):
    # Imported here so the pipeline-building process needs no tf-text ops.
    from serving.saved_model_session import SavedModelSession  # pylint: disable=g-import-not-at-top
    logging.info('Loading %s for batch inference.', self._model_dir)
    return SavedModelSession(self._model_dir)

  def batch_elements_kwargs(self):
    return self._batch_kwargs

  def run_inference(self, batch: Sequence[Dict[str, Any]], model,
                    inference_args=None
                    ) -> Iterable[inference_base.PredictionResult]:
    try:
      outputs = self._run(batch, model)
    except tf.errors.OpError as e:
      if len(batch) == 1:
        message = tensor_codec.op_error_message(e.message)
        return [inference_base.PredictionResult(batch[0],
                                                {'error': message})]
      # Rerun row by row so that only the rows the graph rejects fail.
      return [result for element in batch
              for result in self.run_inference([element], model)]
    return [inference_base.PredictionResult(
        element, {name: values[i] for name, values in outputs.items()})
            for i, element in enumerate(batch)]

  def _run(self, batch, model) -> Dict[str, np.ndarray]:
    if self._signature_name == EXAMPLES_SIGNATURE:
      examples = np.array([element['inputs'] for element in batch],
                          dtype=object)
      return model.run({'examples': examples}, self._signature_name)
    signature = model.signatures[self._signature_name]
    feed = {}
    for name, tensor in signature.inputs.items():
      dtype = tf.dtypes.as_dtype(tensor.dtype)
      values = [element['inputs'][name] for element in batch]
      feed[name] = serving_client.to_numpy(values, dtype)
    return model.run(feed, self._signature_name)

  def get_metrics_namespace(self) -> str:
    return _METRICS_NAMESPACE


def _prediction_row(keyed_result) -> Dict[str, Any]:
  """Format (key, PredictionResult) as a prediction or a rejected row."""
  key, result = keyed_result
  outputs = result.inference
  if 'error' in outputs:
    return {'row': key, 'reason': f'inference failed: {outputs["error"]}',
            'input': _jsonable(result.example['inputs'])}
  tasks = {}
  for name, value in sorted(outputs.items()):
    for suffix, field in (('_label', 'label'),
                          ('_probabilities', 'probabilities')):
      if name.endswith(suffix):
        tasks.setdefault(name[:-len(suffix)], {})[field] = _jsonable(value)
  return {'row': key, 'id': result.example['id'], 'predictions': tasks}


def _jsonable(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple, np.ndarray)):
    return [_jsonable(v) for v in value]
  if isinstance(value, bytes):
    return value.decode('utf-8', errors='replace')
  if isinstance(value, str) and _has_undecodable([value]):
    # Beam's coders reject the lone surrogates `surrogateescape` leaves.
    return value.encode('utf-8', 'surrogateescape').decode('utf-8', 'replace')
  if isinstance(value, np.generic):
    # float(np.float32) is the same number as a double, so it round-trips.
    return value.item()
  return value


def _is_rejection(row: Dict[str, Any]) -> bool:
  return 'reason' in row


# ----------------------------------------------------------------------------
# Pipeline
# ----------------------------------------------------------------------------


def _read_files(pipeline: beam.Pipeline, input_path: str, input_format: str):
  """Read (key, row) pairs and rejected rows from CSV, JSONL or TFRecord."""
  parsed = (
      pipeline
      | 'MatchInputFiles' >> fileio.MatchFiles(input_path)
      | 'ReadInputFiles' >> fileio.ReadMatches()
      | 'ParseRows' >> beam.FlatMap(_READERS[input_format]).with_outputs(
          _REJECTED_TAG, main='rows'))
  return parsed.rows, parsed[_REJECTED_TAG]


def _keyed_example(example: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
  return f'example {example.get("example_id", "")}', example


def _snapshot_rejection(rejected: Dict[str, Any]) -> Dict[str, Any]:
  """Turn an adapter's rejected row into a rejected-rows record."""
  key = _row_key(rejected['source'], rejected['row'])
  return _rejection(key, rejected['reason'], rejected['raw'])


def _read_snapshot(pipeline: beam.Pipeline, adapter):
  """Read (key, example) pairs and rejected rows through an adapter."""
  output = adapter.read(pipeline)
  rows = output.examples | 'KeyExamples' >> beam.Map(_keyed_example)
  rejected = output.rejected | 'FormatSnapshotRejections' >> beam.Map(
      _snapshot_rejection)
  return rows, rejected


def build_pipeline(pipeline: beam.Pipeline, model_dir: str, input_path: str,
                   output_path: str, input_format: str,
                   specs: Dict[str, InputSpec], signature_name: str,
                   max_batch_size: int, adapter=None) -> None:
  """Add the read, validate, infer and write steps to `pipeline`.

  With `adapter` (a `DatasetAdapter`, for the 'snapshot' format), the rows
  are the examples it reads; `input_path` is then unused.
  """
  handler = inference_base.KeyedModelHandler(
      SavedModelHandler(model_dir, signature_name,
                        max_batch_size=max_batch_size))
  if input_format == SNAPSHOT:
    rows, unparsed = _read_snapshot(pipeline, adapter)
  else:
    rows, unparsed = _read_files(pipeline, input_path, input_format)
  rows = rows | 'CountRows' >> beam.Map(_CountElements('rows_read'))
  unparsed = unparsed | 'CountUnparsedRows' >> beam.Map(
      _CountElements('rows_read'))
  validated = rows | 'ValidateRows' >> beam.ParDo(
      _ValidateRow(specs, input_format)).with_outputs(_REJECTED_TAG,
                                                      main='valid')
  results = (
      validated.valid
      | 'RunInference' >> inference_base.RunInference(handler)
      | 'FormatPredictions' >> beam.Map(_prediction_row))
  predictions = results | 'KeepPredictions' >> beam.Filter(
      lambda row: not _is_rejection(row))
  failed = results | 'KeepFailedRows' >> beam.Filter(_is_rejection)
  rejected = ((unparsed, validated[_REJECTED_TAG], failed)
              | 'MergeRejectedRows' >> beam.Flatten())
  _ = (predictions
       | 'CountPredictions' >> beam.Map(_CountElements('predicted_rows'))
       | 'PredictionsToJson' >> beam.Map(json.dumps)
       | 'WritePredictions' >> beam.io.WriteToText(
           output_path, shard_name_template=''))
  _ = (rejected
       | 'CountRejected' >> beam.Map(_CountElements('rejected_rows'))
       | 'RejectedToJson' >> beam.Map(json.dumps)
       | 'WriteRejected' >> beam.io.WriteToText(
           rejected_path_for(output_path), shard_name_template=''))


def _snapshot_adapter(config_path: str, input_path: str):
  """Build the config's dataset adapter over `input_path`.

  Raises:
    FileNotFoundError: the adapter finds none of its input files there.
    ValueError: the config is invalid or names an unknown adapter.
  """
  # Imported here so that file inputs need no pipeline config code.
  from components import config as config_lib  # pylint: disable=g-import-not-at-top
  from components import example_gen  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(config_path)
  adapter = example_gen.get_adapter(config, input_path)
  try:
    files = adapter.input_files()
  except (FileNotFoundError, ValueError) as e:
    raise FileNotFoundError(
        f'Invalid {config.data.adapter} snapshot at {input_path} for '
        f'{config_path}: {e}') from e
  if not files:
    raise FileNotFoundError(f'Missing {config.data.adapter} input files at '
                            f'{input_path}; check the path.')
  return adapter


class _CountElements:
  """Pass-through map step that increments a Beam counter per element."""

  def __init__(self, name: str):
    self._name = name
    self._counter = None

  def __call__(self, element):
    if self._counter is None:
      self._counter = beam.metrics.Metrics.counter(_METRICS_NAMESPACE,
                                                   self._name)
    self._counter.inc()
    return element


def _counter_value(result, name: str) -> int:
  query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(
      _METRICS_NAMESPACE).with_name(name))
  return int(sum(c.committed or 0 for c in query['counters']))


def run_batch_inference(model_dir: str, input_path: str, output_path: str,
                        input_format: Optional[str] = None,
                        beam_args: Optional[List[str]] = None,
                        max_batch_size: int = DEFAULT_MAX_BATCH,
                        config_path: Optional[str] = None
                        ) -> InferenceCounts:
  """Predict every row of `input_path` and write the JSON Lines outputs.

  Args:
    model_dir: a pushed version folder, `<serving_dir>/<model>/<version>`.
    input_path: a file or glob (local or any Beam file system, e.g. gs://);
      with `config_path`, the data snapshot path its adapter reads (the
      resolved `data.path`: a file, glob or folder).
    output_path: the predictions file; rejected rows go beside it.
    input_format: 'csv', 'jsonl' or 'tfrecord'; by default from the name.
      Must be unset with `config_path`.
    beam_args: Beam pipeline options, e.g. `--runner DataflowRunner ...`.
    max_batch_size: maximum rows per session call.
    config_path: a pipeline config; read `input_path` with its dataset
      adapter, as ExampleGen does, so a raw snapshot needs no conversion.

  Returns:
    The row counts, read from the pipeline's Beam counters. For a snapshot,
    a row is an example the adapter made or a row it rejected.
  """
  if config_path:
    if input_format:
      raise ValueError(f'Invalid --format {input_format} with --config: the '
                       'config\'s adapter reads the snapshot, so omit '
                       '--format.')
    input_format = SNAPSHOT
  else:
    input_format = input_format or infer_format(input_path)
    if input_format not in FORMATS:
      raise ValueError(f'Unknown input format {input_format!r}; use one of '
                       f'{", ".join(FORMATS)}.')
  signature_name = (EXAMPLES_SIGNATURE if input_format == 'tfrecord'
                    else RAW_SIGNATURE)
  specs = read_signature_inputs(model_dir, signature_name)
  adapter = None
  if config_path:
    adapter = _snapshot_adapter(config_path, input_path)
  elif not FileSystems.match([input_path])[0].metadata_list:
    raise FileNotFoundError(f'No input file matches {input_path}; check '
                            'the path or glob.')
  logging.info('Batch inference: %s (%s) through %s of %s.', input_path,
               input_format, signature_name, model_dir)

  options = beam_options.pipeline_options(beam_args)
  pipeline = beam.Pipeline(options=options)
  build_pipeline(pipeline, model_dir, input_path, output_path, input_format,
                 specs, signature_name, max_batch_size, adapter)
  result = pipeline.run()
  result.wait_until_finish()

  counts = InferenceCounts(
      rows=_counter_value(result, 'rows_read'),
      predicted=_counter_value(result, 'predicted_rows'),
      rejected=_counter_value(result, 'rejected_rows'),
      output_path=output_path,
      rejected_path=rejected_path_for(output_path))
  logging.info('Batch inference: read %d rows, wrote %d predictions to %s '
               'and %d rejected rows to %s.', counts.rows, counts.predicted,
               counts.output_path, counts.rejected, counts.rejected_path)
  if counts.rows != counts.predicted + counts.rejected:
    logging.error('Batch inference lost rows: %d read, %d predicted, %d '
                  'rejected.', counts.rows, counts.predicted, counts.rejected)
  return counts
