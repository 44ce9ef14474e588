"""StatisticsGen: per-split feature statistics computed with Beam combiners.

The output is a `DatasetFeatureStatisticsList` proto with one dataset per split,
written as `statistics.pbtxt`, plus a readable `statistics.md`. SchemaGen infers
the schema from the train dataset, and ExampleValidator compares every split
against that schema and against the statistics of the previous run.

Statistics cover the features that the examples actually carry, so a feature
that `feature_types` lists but no example carries is absent from the output.
That absence is what the validator reports as a missing column.
"""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import logging
import math
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

import apache_beam as beam
import tensorflow as tf
from apache_beam.transforms import stats as beam_stats
from google.protobuf import text_format
from tensorflow.core.example import example_pb2
from tensorflow_metadata.proto.v0 import statistics_pb2

from components import artifacts
from components import beam_options
from components.adapters.base import FLOAT, INT, STRING, STRING_LIST
from components.config import PipelineConfig

STATISTICS_FILE = 'statistics.pbtxt'
STATISTICS_MARKDOWN_FILE = 'statistics.md'

# Names of the statistics that have no field of their own in the proto.
LABEL_DISTRIBUTION = 'label_distribution'
TOKEN_LENGTH_QUANTILES = 'token_length_quantiles'
UNIQUE = 'unique'

TOP_VALUES = 20
# 11 quantile points: the minimum, the nine deciles and the maximum.
NUM_QUANTILES = 11

# The value kinds of a `tf.train.Feature`.
_BYTES = 'bytes'
_INT = 'int'
_FLOAT = 'float'
_KIND_TO_STATS_TYPE = {
    _BYTES: statistics_pb2.FeatureNameStatistics.STRING,
    _INT: statistics_pb2.FeatureNameStatistics.INT,
    _FLOAT: statistics_pb2.FeatureNameStatistics.FLOAT,
}
_RAW_TYPE_TO_KIND = {STRING: _BYTES, STRING_LIST: _BYTES, INT: _INT,
                     FLOAT: _FLOAT}

# Keys of the quantile summaries, one per (split, feature, quantity).
_TOKEN_LENGTH = 'token_length'
_VALUE_COUNT = 'value_count'
_NUMERIC = 'numeric'



class _Observation(NamedTuple):
  """One feature of one example: its value kind and values ('' dropped)."""
  kind: Optional[str]
  values: Tuple[Any, ...]
  missing: bool


def run_statistics_gen(examples_dir: str, feature_types: Dict[str, str],
                       config: PipelineConfig, output_dir: str,
                       beam_args: Optional[List[str]] = None) -> str:
  """Compute statistics of every split of `examples_dir` on Beam.

  Args:
    examples_dir: ExampleGen's output, with one `Split-<name>/` folder of
      gzipped TFRecords of `tf.train.Example` per split.
    feature_types: raw feature name -> `string`, `int`, `float` or
      `string_list`, as ExampleGen wrote them in `feature_types.json`.
    config: the pipeline config, which names the text features and task labels.
    output_dir: where `statistics.pbtxt` and `statistics.md` are written.
    beam_args: Beam pipeline options, passed to `PipelineOptions` unchanged.
      When empty, Beam's local FnApiRunner runs in memory.

  Returns:
    The path of `statistics.pbtxt`.
  """
  splits = _find_splits(examples_dir)
  tf.io.gfile.makedirs(output_dir)
  statistics_path = os.path.join(output_dir, STATISTICS_FILE)
  options = beam_options.pipeline_options(beam_args)

  with beam.Pipeline(options=options) as pipeline:
    observations = _read_splits(pipeline, examples_dir, splits, feature_types)
    _ = (
        _compute_statistics(observations, feature_types, config)
        | 'GatherStatistics' >> beam.combiners.ToList()
        | 'BuildStatisticsProto' >> beam.Map(
            _build_statistics, splits=splits, feature_types=feature_types,
            label_features=_label_features(config))
        | 'FormatTextProto' >> beam.Map(text_format.MessageToString)
        | 'WriteStatistics' >> beam.io.WriteToText(
            statistics_path, shard_name_template=''))

  statistics = load_statistics(statistics_path)
  markdown_path = os.path.join(output_dir, STATISTICS_MARKDOWN_FILE)
  with tf.io.gfile.GFile(markdown_path, 'w') as f:
    f.write(render_markdown(statistics))
  for dataset in statistics.datasets:
    logging.info('StatisticsGen: split %s has %d examples and %d features.',
                 dataset.name, dataset.num_examples, len(dataset.features))
  logging.info('StatisticsGen: read %s, wrote %s and %s.', examples_dir,
               statistics_path, markdown_path)
  return statistics_path


def load_statistics(
    statistics_path: str) -> statistics_pb2.DatasetFeatureStatisticsList:
  """Read a `statistics.pbtxt` written by `run_statistics_gen`."""
  with tf.io.gfile.GFile(statistics_path) as f:
    return text_format.Parse(f.read(),
                             statistics_pb2.DatasetFeatureStatisticsList())


def get_split(statistics: statistics_pb2.DatasetFeatureStatisticsList,
              split: str) -> Optional[statistics_pb2.DatasetFeatureStatistics]:
  """Return the dataset named `split`, or None."""
  for dataset in statistics.datasets:
    if dataset.name == split:
      return dataset
  return None


def get_custom_stat(feature: statistics_pb2.FeatureNameStatistics,
                    name: str) -> Optional[statistics_pb2.CustomStatistic]:
  for custom in feature.custom_stats:
    if custom.name == name:
      return custom
  return None


def common_stats(
    feature: statistics_pb2.FeatureNameStatistics
) -> statistics_pb2.CommonStatistics:
  """Return the common statistics from a feature's string or numeric stats."""
  if feature.HasField('num_stats'):
    return feature.num_stats.common_stats
  return feature.string_stats.common_stats


def _find_splits(examples_dir: str) -> List[str]:
  """Return the split names under `examples_dir`, known splits first."""
  names = [
      os.path.basename(path.rstrip('/'))[len('Split-'):]
      for path in tf.io.gfile.glob(os.path.join(examples_dir, 'Split-*'))
  ]
  if not names:
    raise ValueError(f'No Split-<name> folders in {examples_dir}; run '
                     'ExampleGen first or pass its output folder.')
  known = [s for s in artifacts.SPLITS if s in names]
  return known + sorted(set(names) - set(known))


def _read_splits(pipeline: beam.Pipeline, examples_dir: str, splits: List[str],
                 feature_types: Dict[str, str]) -> beam.PCollection:
  """Read and parse every split into ((split, feature), _Observation)."""
  list_features = frozenset(
      name for name, raw_type in feature_types.items()
      if raw_type == STRING_LIST)
  parsed = []
  for split in splits:
    label = split.capitalize()
    pattern = artifacts.split_pattern(examples_dir, split)
    if tf.io.gfile.glob(pattern):
      records = pipeline | f'Read{label}' >> beam.io.ReadFromTFRecord(
          pattern, compression_type=beam.io.filesystem.CompressionTypes.GZIP)
    else:
      # An empty split still gets a dataset entry, with zero examples.
      logging.warning('StatisticsGen: no files match %s; split %s is empty.',
                      pattern, split)
      records = pipeline | f'Read{label}' >> beam.Create([])
    parsed.append(records | f'Parse{label}' >> beam.FlatMap(
        _parse_example, split=split, list_features=list_features))
  return parsed | 'FlattenSplits' >> beam.Flatten()


def _parse_example(serialized: bytes, split: str,
                   list_features: frozenset) -> Iterable[Tuple[Any, Any]]:
  """Yield ((split, feature), observation) per feature, and one example key.

  A scalar string '' counts as missing, and so does a list with no values.
  Numbers are never missing.
  """
  example = example_pb2.Example.FromString(serialized)
  yield (split, None), None
  for name, feature in example.features.feature.items():
    kind = feature.WhichOneof('kind')
    if kind == 'bytes_list':
      values = tuple(v.decode('utf-8', errors='replace')
                     for v in feature.bytes_list.value)
      if name not in list_features and values == ('',):
        values = ()
      kind = _BYTES
    elif kind == 'int64_list':
      values, kind = tuple(feature.int64_list.value), _INT
    elif kind == 'float_list':
      values, kind = tuple(feature.float_list.value), _FLOAT
    else:
      values = ()
    yield (split, name), _Observation(kind, values, not values)


def _label_features(config: PipelineConfig) -> List[str]:
  # A retrieval task's label is a candidate id, not a class.
  return sorted({task.label for task in config.tasks
                 if task.type != 'retrieval'})


def _compute_statistics(observations: beam.PCollection,
                        feature_types: Dict[str, str],
                        config: PipelineConfig) -> beam.PCollection:
  """Run the combiners. Every output is (split, feature, stat, payload)."""
  text_features = frozenset(f.name for f in config.features_of_type('text'))
  list_features = frozenset(
      name for name, raw_type in feature_types.items()
      if raw_type == STRING_LIST)
  label_features = frozenset(_label_features(config))

  examples = observations | 'KeepExampleKeys' >> beam.Filter(
      lambda kv: kv[0][1] is None)
  features = observations | 'KeepFeatures' >> beam.Filter(
      lambda kv: kv[0][1] is not None)

  num_examples = (
      examples
      | 'KeyBySplit' >> beam.Map(lambda kv: kv[0][0])
      | 'CountExamples' >> beam.combiners.Count.PerElement()
      | 'TagExampleCounts' >> beam.Map(
          lambda kv: (kv[0], None, 'num_examples', kv[1])))

  basic = (
      features
      | 'ComputeBasicStats' >> beam.CombinePerKey(_BasicStatsCombineFn())
      | 'TagBasicStats' >> beam.Map(
          lambda kv: (kv[0][0], kv[0][1], 'basic', kv[1])))

  value_counts = (
      features
      | 'ExtractValues' >> beam.FlatMap(_countable_values)
      | 'CountValues' >> beam.combiners.Count.PerElement()
      | 'KeyValueCountsByFeature' >> beam.Map(
          lambda kv: ((kv[0][0], kv[0][1]), (kv[1], kv[0][2]))))
  top_values = (
      value_counts
      | 'TopValues' >> beam.combiners.Top.PerKey(TOP_VALUES)
      | 'TagTopValues' >> beam.Map(
          lambda kv: (kv[0][0], kv[0][1], 'top_values', kv[1])))
  unique = (
      value_counts
      | 'CountDistinctValues' >> beam.combiners.Count.PerKey()
      | 'TagDistinctCounts' >> beam.Map(
          lambda kv: (kv[0][0], kv[0][1], UNIQUE, kv[1])))
  labels = (
      value_counts
      | 'KeepLabels' >> beam.Filter(lambda kv: kv[0][1] in label_features)
      | 'ListLabelCounts' >> beam.CombinePerKey(
          beam.combiners.ToListCombineFn())
      | 'TagLabelCounts' >> beam.Map(
          lambda kv: (kv[0][0], kv[0][1], LABEL_DISTRIBUTION, kv[1])))

  quantiles = (
      features
      | 'ExtractQuantileInputs' >> beam.FlatMap(
          _quantile_inputs, text_features=text_features,
          list_features=list_features)
      | 'ComputeQuantiles' >> beam_stats.ApproximateQuantiles.PerKey(
          NUM_QUANTILES)
      | 'TagQuantiles' >> beam.Map(
          lambda kv: (kv[0][0], kv[0][1], 'quantiles:' + kv[0][2], kv[1])))

  return ((num_examples, basic, top_values, unique, labels, quantiles)
          | 'FlattenStatistics' >> beam.Flatten())


def _countable_values(kv) -> Iterable[Tuple[str, str, Any]]:
  """Yield (split, feature, value) for the values whose counts are kept.

  Floats are left out, because their distinct values are rarely useful and can
  be as many as the examples.
  """
  (split, name), observation = kv
  if observation.kind in (_BYTES, _INT):
    # As strings, so that a label read as int compares with its classes.
    for value in observation.values:
      yield split, name, str(value)


def _quantile_inputs(kv, text_features: frozenset,
                     list_features: frozenset) -> Iterable[Tuple[Any, float]]:
  """Yield ((split, feature, quantity), number) for the quantile summaries.

  Text features give whitespace-token counts of non-empty values, list
  features give value counts of every example (0 included), and numbers give
  their values.
  """
  (split, name), observation = kv
  if name in list_features:
    yield (split, name, _VALUE_COUNT), len(observation.values)
  if observation.kind == _BYTES and name in text_features:
    for value in observation.values:
      yield (split, name, _TOKEN_LENGTH), len(value.split())
  elif observation.kind in (_INT, _FLOAT):
    for value in observation.values:
      if not math.isnan(value):
        yield (split, name, _NUMERIC), value


class _BasicStatsCombineFn(beam.CombineFn):
  """Counts, value counts, string lengths and moments of one feature.

  The accumulator is a dict so that it pickles between Beam workers. Mean and
  variance use Welford's update and Chan's merge, which stay accurate where a
  plain sum of squares would cancel.
  """

  def create_accumulator(self) -> Dict[str, Any]:
    return {
        'kinds': set(), 'num_present': 0, 'num_non_missing': 0,
        'tot_num_values': 0, 'min_num_values': None, 'max_num_values': 0,
        'total_length': 0, 'count': 0, 'mean': 0.0, 'm2': 0.0, 'min': None,
        'max': None, 'num_zeros': 0,
    }

  def add_input(self, acc: Dict[str, Any],
                observation: _Observation) -> Dict[str, Any]:
    num_values = len(observation.values)
    if observation.kind:
      acc['kinds'].add(observation.kind)
    acc['num_present'] += 1
    acc['num_non_missing'] += 0 if observation.missing else 1
    acc['tot_num_values'] += num_values
    acc['min_num_values'] = _min(acc['min_num_values'], num_values)
    acc['max_num_values'] = max(acc['max_num_values'], num_values)
    if observation.kind == _BYTES:
      acc['total_length'] += sum(len(v) for v in observation.values)
    elif observation.kind in (_INT, _FLOAT):
      for value in observation.values:
        _add_number(acc, float(value))
    return acc

  def merge_accumulators(self, accumulators) -> Dict[str, Any]:
    merged = self.create_accumulator()
    for acc in accumulators:
      merged['kinds'] |= acc['kinds']
      for key in ('num_present', 'num_non_missing', 'tot_num_values',
                  'total_length', 'num_zeros'):
        merged[key] += acc[key]
      merged['min_num_values'] = _min(merged['min_num_values'],
                                      acc['min_num_values'])
      merged['max_num_values'] = max(merged['max_num_values'],
                                     acc['max_num_values'])
      merged['min'] = _min(merged['min'], acc['min'])
      merged['max'] = _max(merged['max'], acc['max'])
      _merge_moments(merged, acc)
    return merged

  def extract_output(self, acc: Dict[str, Any]) -> Dict[str, Any]:
    return acc


def _min(a, b):
  """Return the smaller of two values, where None means no value yet."""
  if a is None:
    return b
  if b is None:
    return a
  return min(a, b)


def _max(a, b):
  """Return the larger of two values, where None means no value yet."""
  if a is None:
    return b
  if b is None:
    return a
  return max(a, b)


def _add_number(acc: Dict[str, Any], value: float) -> None:
  acc['count'] += 1
  delta = value - acc['mean']
  acc['mean'] += delta / acc['count']
  acc['m2'] += delta * (value - acc['mean'])
  acc['min'] = _min(acc['min'], value)
  acc['max'] = _max(acc['max'], value)
  acc['num_zeros'] += 1 if value == 0 else 0


def _merge_moments(merged: Dict[str, Any], acc: Dict[str, Any]) -> None:
  count = merged['count'] + acc['count']
  if not count:
    return
  delta = acc['mean'] - merged['mean']
  weight = merged['count'] * acc['count'] / count
  merged['m2'] += acc['m2'] + delta * delta * weight
  merged['mean'] += delta * acc['count'] / count
  merged['count'] = count


def _build_statistics(
    rows: List[Tuple[str, Optional[str], str, Any]], splits: List[str],
    feature_types: Dict[str, str],
    label_features: List[str]) -> statistics_pb2.DatasetFeatureStatisticsList:
  """Assemble the combiner outputs into one statistics proto."""
  by_split = {split: {} for split in splits}
  num_examples = {split: 0 for split in splits}
  for split, name, stat, payload in rows:
    if name is None:
      num_examples[split] = payload
    else:
      by_split[split].setdefault(name, {})[stat] = payload

  result = statistics_pb2.DatasetFeatureStatisticsList()
  for split in splits:
    dataset = result.datasets.add(name=split, num_examples=num_examples[split])
    features = by_split[split]
    for name in _ordered_names(features, feature_types):
      _fill_feature(dataset.features.add(), name, features[name],
                    feature_types.get(name), name in label_features,
                    num_examples[split])
  return result


def _ordered_names(features: Dict[str, Any],
                   feature_types: Dict[str, str]) -> List[str]:
  """Return the features in `feature_types` order, then the unlisted ones."""
  listed = [name for name in feature_types if name in features]
  return listed + sorted(set(features) - set(listed))


def _fill_feature(feature: statistics_pb2.FeatureNameStatistics, name: str,
                  stats: Dict[str, Any], raw_type: Optional[str],
                  is_label: bool, num_examples: int) -> None:
  """Fill one feature's statistics from its combiner outputs."""
  basic = stats['basic']
  kind = _observed_kind(name, basic['kinds'], raw_type)
  feature.name = name
  feature.type = _KIND_TO_STATS_TYPE[kind]

  if kind == _BYTES:
    common = feature.string_stats.common_stats
    _fill_string_stats(feature.string_stats, stats, basic)
  else:
    common = feature.num_stats.common_stats
    _fill_numeric_stats(feature.num_stats, stats, basic)
  _fill_common_stats(common, stats, basic, num_examples)

  if kind == _INT and UNIQUE in stats:
    feature.custom_stats.add(name=UNIQUE, num=stats[UNIQUE])
  token_lengths = stats.get('quantiles:' + _TOKEN_LENGTH)
  if token_lengths:
    custom = feature.custom_stats.add(name=TOKEN_LENGTH_QUANTILES)
    _fill_quantiles(custom.histogram, token_lengths, basic['num_non_missing'])
  if is_label:
    _fill_label_distribution(feature, stats.get(LABEL_DISTRIBUTION, []),
                             num_examples - basic['num_non_missing'])


def _observed_kind(name: str, kinds: set, raw_type: Optional[str]) -> str:
  """Return the value kind in the data, else the one `feature_types` names.

  When one feature contains several kinds, bytes wins over float over int,
  because every value of it can be read as that type.
  """
  for kind in (_BYTES, _FLOAT, _INT):
    if kind in kinds:
      if len(kinds) > 1:
        logging.warning('StatisticsGen: feature %s contains %s values, '
                        'recorded as %s.', name, sorted(kinds), kind)
      return kind
  return _RAW_TYPE_TO_KIND.get(raw_type, _BYTES)


def _fill_common_stats(common: statistics_pb2.CommonStatistics,
                       stats: Dict[str, Any], basic: Dict[str, Any],
                       num_examples: int) -> None:
  common.num_non_missing = basic['num_non_missing']
  # An example without the feature at all is missing too.
  common.num_missing = num_examples - basic['num_non_missing']
  common.min_num_values = basic['min_num_values'] or 0
  common.max_num_values = basic['max_num_values']
  common.tot_num_values = basic['tot_num_values']
  if basic['num_present']:
    common.avg_num_values = basic['tot_num_values'] / basic['num_present']
  value_counts = stats.get('quantiles:' + _VALUE_COUNT)
  if value_counts:
    _fill_quantiles(common.num_values_histogram, value_counts,
                    basic['num_present'])


def _fill_string_stats(string_stats: statistics_pb2.StringStatistics,
                       stats: Dict[str, Any], basic: Dict[str, Any]) -> None:
  string_stats.unique = stats.get(UNIQUE, 0)
  if basic['tot_num_values']:
    string_stats.avg_length = basic['total_length'] / basic['tot_num_values']
  for count, value in _sorted_counts(stats.get('top_values', [])):
    string_stats.top_values.add(value=value, frequency=count)


def _fill_numeric_stats(num_stats: statistics_pb2.NumericStatistics,
                        stats: Dict[str, Any], basic: Dict[str, Any]) -> None:
  if not basic['count']:
    return
  num_stats.mean = basic['mean']
  num_stats.std_dev = math.sqrt(basic['m2'] / basic['count'])
  num_stats.min = basic['min']
  num_stats.max = basic['max']
  num_stats.num_zeros = basic['num_zeros']
  quantiles = stats.get('quantiles:' + _NUMERIC)
  if quantiles:
    num_stats.median = quantiles[len(quantiles) // 2]
    _fill_quantiles(num_stats.histograms.add(), quantiles, basic['count'])


def _fill_quantiles(histogram: statistics_pb2.Histogram,
                    quantiles: List[float], count: int) -> None:
  """Store quantile points as equal-mass buckets between neighbours."""
  histogram.type = statistics_pb2.Histogram.QUANTILES
  buckets = len(quantiles) - 1
  for low, high in zip(quantiles, quantiles[1:]):
    histogram.buckets.add(low_value=low, high_value=high,
                          sample_count=count / buckets)


def _fill_label_distribution(feature: statistics_pb2.FeatureNameStatistics,
                             counts: List[Tuple[int, Any]],
                             num_unlabeled: int) -> None:
  """Store every label value with its count, '' counting unlabeled examples."""
  custom = feature.custom_stats.add(name=LABEL_DISTRIBUTION)
  rows = [(count, str(value)) for count, value in counts]
  if num_unlabeled:
    rows.append((num_unlabeled, ''))
  for rank, (count, value) in enumerate(_sorted_counts(rows)):
    custom.rank_histogram.buckets.add(low_rank=rank, high_rank=rank,
                                      label=value, sample_count=count)


def _sorted_counts(rows: Iterable[Tuple[int, Any]]) -> List[Tuple[int, str]]:
  """Sort (count, value) pairs by count descending, then value."""
  return sorted(((c, str(v)) for c, v in rows), key=lambda cv: (-cv[0], cv[1]))


def label_distribution(
    feature: statistics_pb2.FeatureNameStatistics) -> Dict[str, int]:
  """Return label value -> count ('' = unlabeled) stored by StatisticsGen."""
  custom = get_custom_stat(feature, LABEL_DISTRIBUTION)
  if custom is None:
    return {}
  return {b.label: int(b.sample_count) for b in custom.rank_histogram.buckets}


def render_markdown(
    statistics: statistics_pb2.DatasetFeatureStatisticsList) -> str:
  """Render the statistics as one Markdown table per split."""
  lines = ['# Statistics', '']
  for dataset in statistics.datasets:
    lines += [f'## Split `{dataset.name}`: {dataset.num_examples} examples', '',
              '| feature | type | non-missing | missing | distinct | '
              'values | quantiles (min, median, max) |',
              '|---|---|---:|---:|---:|---|---|']
    for feature in dataset.features:
      lines.append(_markdown_row(feature, dataset.num_examples))
    lines.append('')
    lines += _markdown_labels(dataset)
  return '\n'.join(lines) + '\n'


def _markdown_row(feature: statistics_pb2.FeatureNameStatistics,
                  num_examples: int) -> str:
  common = common_stats(feature)
  type_name = statistics_pb2.FeatureNameStatistics.Type.Name(feature.type)
  missing_rate = common.num_missing / num_examples if num_examples else 0.0
  if feature.HasField('string_stats'):
    distinct = str(feature.string_stats.unique)
    values = ', '.join(f'{_show(v.value)} ({int(v.frequency)})'
                       for v in feature.string_stats.top_values[:3])
  else:
    unique = get_custom_stat(feature, UNIQUE)
    distinct = str(int(unique.num)) if unique else ''
    num = feature.num_stats
    values = (f'min {num.min:g}, mean {num.mean:g}, std {num.std_dev:g}, '
              f'max {num.max:g}')
  return (f'| {feature.name} | {type_name} | {common.num_non_missing} | '
          f'{common.num_missing} ({missing_rate:.1%}) | {distinct} | {values} '
          f'| {_markdown_quantiles(feature)} |')


def _markdown_quantiles(feature: statistics_pb2.FeatureNameStatistics) -> str:
  parts = []
  token_lengths = get_custom_stat(feature, TOKEN_LENGTH_QUANTILES)
  if token_lengths:
    parts.append('tokens ' + _three_points(token_lengths.histogram))
  if common_stats(feature).HasField('num_values_histogram'):
    parts.append('values ' +
                 _three_points(common_stats(feature).num_values_histogram))
  return '; '.join(parts)


def _three_points(histogram: statistics_pb2.Histogram) -> str:
  buckets = histogram.buckets
  middle = buckets[len(buckets) // 2].low_value
  return f'{buckets[0].low_value:g}, {middle:g}, {buckets[-1].high_value:g}'


def _markdown_labels(
    dataset: statistics_pb2.DatasetFeatureStatistics) -> List[str]:
  lines = []
  for feature in dataset.features:
    if get_custom_stat(feature, LABEL_DISTRIBUTION) is None:
      continue
    distribution = label_distribution(feature)
    counts = ', '.join(f'{_show(label) if label else "(unlabeled)"}: {count}'
                       for label, count in distribution.items())
    lines += [f'Labels of `{feature.name}`: {counts or "none"}', '']
  return lines


def _show(value: str) -> str:
  """Quote a value for a Markdown cell, showing '' as (empty)."""
  if not value:
    return '(empty)'
  return '`' + value.replace('|', '\\|').replace('`', "'")[:40] + '`'
