"""ExampleGen: read a data snapshot into split, serialized tf.Examples.

A dataset adapter turns the snapshot into raw example dicts. This component
assigns each example to a split, serializes it as a `tf.train.Example` and
writes, under its output directory, the layout TFX's ExampleGen writes:

  Split-train/data_tfrecord-*.gz       gzipped TFRecords, one split per folder
  Split-validation/data_tfrecord-*.gz
  Split-eval/data_tfrecord-*.gz
  feature_types.json                   raw feature name -> string|int|float|string_list
  rejected/rejected-*.jsonl            one JSON object per input row not read
  counts.json                          rows read and rejected per file, examples per split

Splits are deterministic. An example whose `split.time_key` feature is set (a
nonzero int) is split by time: the earliest examples go to train, the next
`validation_fraction` to validation and the last `eval_fraction` to eval.
Examples with equal times always land in the same split, so an impression's
shown stories never straddle two splits. Every other example is split by a
fingerprint of its `split.hash_key` feature.
"""

import os

os.environ['TF_USE_LEGACY_KERAS'] = '1'

import hashlib
import json
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from absl import logging
import apache_beam as beam
import tensorflow as tf

from components import beam_options
from components.adapters import amazon_fine_food
from components.adapters import base
from components.adapters import generic
from components.adapters import mind
from components.adapters import movielens
from components.config import HistoryConfig, PipelineConfig

TRAIN = 'train'
VALIDATION = 'validation'
EVAL = 'eval'
SPLITS = (TRAIN, VALIDATION, EVAL)

SPLIT_DIR_PREFIX = 'Split-'
TFRECORD_PREFIX = 'data_tfrecord'
FEATURE_TYPES_FILE = 'feature_types.json'
COUNTS_FILE = 'counts.json'
REJECTED_DIR = 'rejected'
REJECTED_PREFIX = 'rejected'

# Beam writes the counts here, and run_example_gen merges them into
# COUNTS_FILE and then deletes the folder.
_COUNT_PARTS_DIR = 'count_parts'


ADAPTERS = {
    adapter.name: adapter for adapter in (
        amazon_fine_food.AmazonFineFoodAdapter,
        mind.MindAdapter,
        movielens.MovieLensAdapter,
        generic.GenericAdapter,
    )
}


class ExampleGenResult(NamedTuple):
  """Paths, feature types and counts that run_example_gen wrote.

  Attributes:
    output_dir: the component's output directory.
    split_dirs: split name -> folder of its `data_tfrecord-*.gz` files.
    feature_types: raw feature name -> `string`, `int`, `float` or
      `string_list`.
    counts: the contents of counts.json.
    rejected_dir: folder of the `rejected-*.jsonl` files.
  """
  output_dir: str
  split_dirs: Dict[str, str]
  feature_types: Dict[str, str]
  counts: Dict[str, Any]
  rejected_dir: str


def get_adapter(config: PipelineConfig, data_path: str) -> base.DatasetAdapter:
  """Return the adapter that `config.data.adapter` names, set up for the data."""
  adapter_class = ADAPTERS.get(config.data.adapter)
  if adapter_class is None:
    raise ValueError(
        f'Unknown data.adapter {config.data.adapter!r} in '
        f'{config.source_path}; valid adapters are {sorted(ADAPTERS)}.')
  return adapter_class(config, data_path)


def split_dir(output_dir: str, split: str) -> str:
  """Return the folder that contains one split's TFRecord files."""
  return os.path.join(output_dir, SPLIT_DIR_PREFIX + split)


def run_example_gen(config: PipelineConfig, data_path: str, output_dir: str,
                    beam_args: Optional[List[str]] = None) -> ExampleGenResult:
  """Read the snapshot at `data_path` and write split tf.Examples.

  Args:
    config: the pipeline config; `data` picks the adapter and `split` the
      split.
    data_path: the snapshot, as `config.resolve_data_path` returns it.
    output_dir: the folder to write to; outputs of an earlier run there are
      replaced.
    beam_args: Beam pipeline options, passed through unchanged. Defaults to
      Beam's local FnApiRunner in in-memory mode.

  Returns:
    The paths written, the feature types and the counts.

  Raises:
    FileNotFoundError: when no input file is found at `data_path`.
    ValueError: when the config names a feature that the adapter does not
      write, or when more than `data.max_rejected_fraction` of the input rows
      are rejected. The rejected rows are written first.
  """
  adapter = get_adapter(config, data_path)
  feature_types = output_feature_types(config, adapter)
  _check_config_features(config, feature_types, adapter.name)
  input_files = adapter.input_files()
  if not input_files:
    raise FileNotFoundError(
        f'No input files for the {adapter.name} adapter at {data_path}; '
        'check data.path in the config and --data-dir.')
  logging.info('ExampleGen: reading %d file(s) with the %s adapter: %s',
               len(input_files), adapter.name, input_files)

  _remove_previous_outputs(output_dir)
  options = beam_options.pipeline_options(beam_args)
  with beam.Pipeline(options=options) as pipeline:
    _build_pipeline(pipeline, adapter, config, feature_types, output_dir)

  return _finish(config, feature_types, output_dir)


def output_feature_types(config: PipelineConfig,
                         adapter: base.DatasetAdapter) -> Dict[str, str]:
  """Return the adapter's feature types plus the history feature, if any.

  Raises:
    ValueError: the history name is already an adapter feature, or a feature
      the history needs is missing or has the wrong type.
  """
  feature_types = adapter.feature_types()
  history = config.history
  if history is None:
    return feature_types
  if history.name in feature_types:
    raise ValueError(
        f'{config.source_path}: history.name {history.name!r} is already a '
        f'feature of the {adapter.name} adapter; give the history another '
        'name.')
  needed = {history.user_key: (base.STRING,), history.item_key: (base.STRING,),
            history.time_key: (base.INT, base.FLOAT)}
  for key, types in needed.items():
    if feature_types.get(key) not in types:
      raise ValueError(
          f'{config.source_path}: history needs feature {key!r} of type '
          f'{" or ".join(types)}, but the {adapter.name} adapter writes '
          f'{feature_types.get(key, "no such feature")!r}.')
  feature_types[history.name] = base.STRING_LIST
  return feature_types


def _check_config_features(config: PipelineConfig,
                           feature_types: Dict[str, str],
                           adapter_name: str) -> None:
  """Fail early when the config reads a feature the adapter does not write."""
  required = [f.name for f in config.features]
  required += [t.label for t in config.tasks]
  required += [k for k in (config.split.hash_key, config.split.time_key) if k]
  missing = sorted(set(required) - set(feature_types))
  if missing:
    raise ValueError(
        f'{config.source_path} uses feature(s) {missing} that the '
        f'{adapter_name} adapter does not write; it writes '
        f'{sorted(feature_types)}.')
  time_key = config.split.time_key
  if time_key and feature_types[time_key] != base.INT:
    raise ValueError(
        f'{config.source_path}: split.time_key {time_key!r} has type '
        f'{feature_types[time_key]!r}, but a time must be an int.')


def _remove_previous_outputs(output_dir: str) -> None:
  # Shard counts can differ between runs, so stale shards would otherwise
  # match the data_tfrecord-*.gz pattern next to the new ones.
  stale = [split_dir(output_dir, s) for s in SPLITS]
  stale += [os.path.join(output_dir, d)
            for d in (REJECTED_DIR, _COUNT_PARTS_DIR, COUNTS_FILE,
                      FEATURE_TYPES_FILE)]
  for path in stale:
    if tf.io.gfile.isdir(path):
      tf.io.gfile.rmtree(path)
    elif tf.io.gfile.exists(path):
      tf.io.gfile.remove(path)
  tf.io.gfile.makedirs(output_dir)


def _build_pipeline(pipeline: beam.Pipeline, adapter: base.DatasetAdapter,
                    config: PipelineConfig, feature_types: Dict[str, str],
                    output_dir: str) -> None:
  read = adapter.read(pipeline)
  splits = _split_examples(read.examples, config)
  if config.history:
    splits = add_train_histories(splits, config.history)

  count_parts = []
  for split, examples in zip(SPLITS, splits):
    name = split.capitalize()
    _ = (examples
         | f'Serialize{name}Examples' >> beam.Map(_to_tf_example_bytes,
                                                  feature_types)
         | f'Write{name}Split' >> beam.io.WriteToTFRecord(
             os.path.join(split_dir(output_dir, split), TFRECORD_PREFIX),
             file_name_suffix='.gz',
             compression_type=beam.io.filesystem.CompressionTypes.GZIP))
    count_parts.append(
        examples
        | f'Count{name}Examples' >> beam.combiners.Count.Globally()
        | f'Key{name}Count' >> beam.Map(lambda n, s=split: ('examples', s, n)))

  _ = (read.rejected
       | 'FormatRejectedRows' >> beam.Map(json.dumps, ensure_ascii=False,
                                          sort_keys=True)
       | 'WriteRejectedRows' >> beam.io.WriteToText(
           os.path.join(output_dir, REJECTED_DIR, REJECTED_PREFIX),
           file_name_suffix='.jsonl'))
  count_parts.append(
      read.rejected
      | 'KeyRejectedBySource' >> beam.Map(lambda r: (r['source'], 1))
      | 'CountRejectedPerFile' >> beam.CombinePerKey(sum)
      | 'KeyRejectedCount' >> beam.Map(lambda kv: ('rejected_rows', *kv)))
  count_parts.append(
      read.input_rows
      | 'CountInputRowsPerFile' >> beam.CombinePerKey(sum)
      | 'KeyInputRowCount' >> beam.Map(lambda kv: ('input_rows', *kv)))

  _ = (count_parts
       | 'FlattenCounts' >> beam.Flatten()
       | 'FormatCounts' >> beam.Map(json.dumps)
       | 'WriteCounts' >> beam.io.WriteToText(
           os.path.join(output_dir, _COUNT_PARTS_DIR, 'counts'),
           file_name_suffix='.jsonl', num_shards=1))


def _split_examples(examples: beam.PCollection,
                    config: PipelineConfig) -> Tuple[beam.PCollection, ...]:
  """Partition examples into (train, validation, eval)."""
  split = config.split
  cutoffs = None
  if split.time_key:
    cutoffs = beam.pvalue.AsSingleton(
        examples
        | 'ExtractTimes' >> beam.FlatMap(_time_of, split.time_key)
        | 'CountExamplesPerTime' >> beam.combiners.Count.PerElement()
        | 'CollectTimeHistogram' >> beam.combiners.ToList()
        | 'ComputeTimeCutoffs' >> beam.Map(
            _time_cutoffs, split.validation_fraction, split.eval_fraction))
  return tuple(examples
               | 'SplitExamples' >> beam.Partition(
                   _split_index, len(SPLITS), split.hash_key, split.time_key,
                   split.validation_fraction, split.eval_fraction, cutoffs))


def add_train_histories(splits: Sequence[beam.PCollection],
                        history: HistoryConfig) -> Tuple[beam.PCollection, ...]:
  """Give each example its user's train-split items as `history.name`.

  Only train interactions are grouped into histories, so no validation or
  eval interaction can reach a model input.
  """
  user_items = (
      splits[SPLITS.index(TRAIN)]
      | 'KeyTrainItemsByUser' >> beam.FlatMap(_user_item, history)
      | 'GroupTrainItemsByUser' >> beam.GroupByKey()
      | 'OrderTrainItems' >> beam.MapTuple(
          lambda user, items: (user, [item for _, item in sorted(items)])))
  with_histories = []
  for split, examples in zip(SPLITS, splits):
    name = split.capitalize()
    with_histories.append(
        {'items': user_items,
         'examples': examples | f'Key{name}ByUser' >> beam.Map(
             lambda e: (e[history.user_key], e))}
        | f'JoinHistories{name}' >> beam.CoGroupByKey()
        | f'AddHistories{name}' >> beam.FlatMap(
            _with_history, history, split == TRAIN))
  return tuple(with_histories)


def _user_item(example: Dict[str, Any], history: HistoryConfig):
  user, item = example[history.user_key], example[history.item_key]
  if user and item:
    yield user, (example[history.time_key], item)


def _with_history(joined, history: HistoryConfig, is_train: bool):
  """Attach the user's train items as each example's history.

  A train example's history leaves out the example's own item.
  """
  user, grouped = joined
  items = grouped['items'][0] if grouped['items'] else []
  for example in grouped['examples']:
    example = dict(example)
    own = example[history.item_key]
    values = [i for i in items if i != own] if is_train and own else items
    example[history.name] = values[-history.max_length:] if user else []
    yield example


def _time_of(example: Dict[str, Any], time_key: str) -> List[int]:
  time = example[time_key]
  return [time] if time else []


def _time_cutoffs(histogram: Sequence[Tuple[int, int]],
                  validation_fraction: float,
                  eval_fraction: float) -> Tuple[float, float]:
  """Compute the first validation time and the first eval time.

  The cut-offs are exact: one worker walks the sorted histogram of example
  counts per distinct time. ApproximateQuantiles would scale further, but its
  result depends on how the runner bundles the input, and then a rerun could
  move examples between splits. A time goes to the split in which its first
  example's rank falls, so equal times are never separated.

  Args:
    histogram: `(time, number of examples)` pairs, one per distinct time.
    validation_fraction: the share of timed examples for validation.
    eval_fraction: the share of the latest timed examples for eval.

  Returns:
    `(validation_start, eval_start)`; times below `validation_start` are
    train, times from `eval_start` on are eval. A split that gets no time has
    the cut-off infinity.
  """
  # NOTE: the histogram has one entry per distinct time value, so a snapshot
  # with tens of millions of distinct seconds needs coarser times here.
  total = sum(count for _, count in histogram)
  validation_rank = (1.0 - validation_fraction - eval_fraction) * total
  eval_rank = (1.0 - eval_fraction) * total
  validation_start = eval_start = float('inf')
  seen = 0
  for time, count in sorted(histogram):
    if validation_start == float('inf') and seen >= validation_rank:
      validation_start = time
    if eval_start == float('inf') and seen >= eval_rank:
      eval_start = time
    seen += count
  return validation_start, eval_start


def _split_index(example: Dict[str, Any], num_partitions: int, hash_key: str,
                 time_key: Optional[str], validation_fraction: float,
                 eval_fraction: float,
                 cutoffs: Optional[Tuple[float, float]]) -> int:
  del num_partitions  # Always len(SPLITS).
  time = example[time_key] if time_key else 0
  if time:
    validation_start, eval_start = cutoffs
    if time < validation_start:
      return SPLITS.index(TRAIN)
    return SPLITS.index(VALIDATION if time < eval_start else EVAL)

  position = _fingerprint_fraction(example[hash_key])
  if position < 1.0 - validation_fraction - eval_fraction:
    return SPLITS.index(TRAIN)
  return SPLITS.index(VALIDATION if position < 1.0 - eval_fraction else EVAL)


def _fingerprint_fraction(value: Any) -> float:
  """Map a value to [0, 1) by a fingerprint that is stable across processes.

  Python's hash() is salted per process, so it cannot be used here.
  """
  if isinstance(value, list):
    value = ' '.join(value)
  digest = hashlib.md5(str(value).encode('utf-8'), usedforsecurity=False)
  return int.from_bytes(digest.digest()[:8], 'big') / 2.0**64


def _to_tf_example_bytes(example: Dict[str, Any],
                         feature_types: Dict[str, str]) -> bytes:
  """Serialize a raw example dict as a tf.train.Example."""
  # Filling the proto in place skips building a tf.train.Feature per value,
  # which took over half of the serialization time on MIND examples.
  proto = tf.train.Example()
  feature_map = proto.features.feature
  for name, feature_type in feature_types.items():
    value = example[name]
    feature = feature_map[name]
    if feature_type == base.STRING:
      feature.bytes_list.value.append(value.encode('utf-8'))
    elif feature_type == base.INT:
      feature.int64_list.value.append(value)
    elif feature_type == base.FLOAT:
      feature.float_list.value.append(value)
    elif feature_type == base.STRING_LIST:
      # SetInParent keeps an empty list a bytes_list and not an unset kind.
      feature.bytes_list.SetInParent()
      feature.bytes_list.value.extend(v.encode('utf-8') for v in value)
    else:
      raise ValueError(f'Feature {name!r} has type {feature_type!r}; valid '
                       f'types are {list(base.RAW_TYPES)}.')
  return proto.SerializeToString()


def _finish(config: PipelineConfig, feature_types: Dict[str, str],
            output_dir: str) -> ExampleGenResult:
  """Write counts.json and feature_types.json, log, and check the threshold."""
  counts = _merge_count_parts(output_dir)
  _write_json(os.path.join(output_dir, COUNTS_FILE), counts)
  _write_json(os.path.join(output_dir, FEATURE_TYPES_FILE), feature_types)

  rejected_dir = os.path.join(output_dir, REJECTED_DIR)
  result = ExampleGenResult(
      output_dir=output_dir,
      split_dirs={s: split_dir(output_dir, s) for s in SPLITS},
      feature_types=feature_types,
      counts=counts,
      rejected_dir=rejected_dir)
  _log_counts(counts, output_dir)

  threshold = config.data.max_rejected_fraction
  fraction = counts['rejected_fraction']
  if fraction > threshold:
    rejected = sum(counts['rejected_rows'].values())
    total = sum(counts['input_rows'].values())
    raise ValueError(
        f'{rejected} of {total} input rows were rejected (rejected fraction '
        f'{fraction:.4f}), more than data.max_rejected_fraction={threshold} '
        f'allows. Each row and the reason is in {rejected_dir}; fix the data '
        'or raise the threshold in the config.')
  return result


def _merge_count_parts(output_dir: str) -> Dict[str, Any]:
  """Merge the count records the pipeline wrote into the counts.json dict."""
  parts_dir = os.path.join(output_dir, _COUNT_PARTS_DIR)
  counts = {'input_rows': {}, 'rejected_rows': {},
            'examples': {s: 0 for s in SPLITS}}
  for path in tf.io.gfile.glob(os.path.join(parts_dir, '*')):
    with tf.io.gfile.GFile(path) as f:
      for line in f:
        kind, key, value = json.loads(line)
        counts[kind][key] = counts[kind].get(key, 0) + value
  tf.io.gfile.rmtree(parts_dir)

  for source in counts['input_rows']:
    counts['rejected_rows'].setdefault(source, 0)
  counts['input_rows'] = dict(sorted(counts['input_rows'].items()))
  counts['rejected_rows'] = dict(sorted(counts['rejected_rows'].items()))
  total = sum(counts['input_rows'].values())
  rejected = sum(counts['rejected_rows'].values())
  if not total:
    logging.warning('ExampleGen: the input files %s have no data rows.',
                    sorted(counts['input_rows']))
  counts['rejected_fraction'] = rejected / total if total else 0.0
  return counts


def _write_json(path: str, value: Any) -> None:
  with tf.io.gfile.GFile(path, 'w') as f:
    f.write(json.dumps(value, indent=2, sort_keys=False) + '\n')


def _log_counts(counts: Dict[str, Any], output_dir: str) -> None:
  for source, rows in counts['input_rows'].items():
    logging.info('ExampleGen: read %d row(s) from %s, rejected %d.', rows,
                 source, counts['rejected_rows'][source])
  logging.info('ExampleGen: wrote %s examples to %s; rejected fraction %.4f.',
               counts['examples'], output_dir, counts['rejected_fraction'])
