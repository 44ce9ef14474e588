"""ExampleValidator: anomalies between statistics, the schema and the last run.

Every split's statistics are checked against the schema for missing columns,
unexpected columns, type or shape mismatches and label values outside the
label's string domain. Text features are also checked for a jump in the
fraction of empty values: against the same split of the previous run's
statistics when given, else against this run's train split.

The anomalies are written as a `tensorflow_metadata` `Anomalies` proto
(`anomalies.pbtxt`, keyed by feature, one reason per split and kind) and as a
readable `anomalies.md`.
"""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import logging
from typing import Dict, List, NamedTuple, Optional, Tuple

import tensorflow as tf
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2
from tensorflow_metadata.proto.v0 import statistics_pb2

from components import schema_gen, statistics_gen
from components.config import PipelineConfig

ANOMALIES_FILE = 'anomalies.pbtxt'
ANOMALIES_MARKDOWN_FILE = 'anomalies.md'
NO_ANOMALIES = 'No anomalies found.'

# Anomaly kinds.
MISSING_COLUMN = 'missing_column'
UNEXPECTED_COLUMN = 'unexpected_column'
TYPE_MISMATCH = 'type_mismatch'
UNSEEN_LABEL = 'unseen_label'
EMPTY_TEXT_RATE_INCREASE = 'empty_text_rate_increase'

_Reason = anomalies_pb2.AnomalyInfo.Type
_KIND_TO_REASON = {
    MISSING_COLUMN: _Reason.SCHEMA_MISSING_COLUMN,
    UNEXPECTED_COLUMN: _Reason.SCHEMA_NEW_COLUMN,
    TYPE_MISMATCH: _Reason.UNEXPECTED_DATA_TYPE,
    UNSEEN_LABEL: _Reason.ENUM_TYPE_UNEXPECTED_STRING_VALUES,
    EMPTY_TEXT_RATE_INCREASE: _Reason.FEATURE_TYPE_LOW_FRACTION_PRESENT,
}

_STATS_TYPE_TO_SCHEMA_TYPE = {
    statistics_pb2.FeatureNameStatistics.STRING: schema_pb2.BYTES,
    statistics_pb2.FeatureNameStatistics.BYTES: schema_pb2.BYTES,
    statistics_pb2.FeatureNameStatistics.INT: schema_pb2.INT,
    statistics_pb2.FeatureNameStatistics.FLOAT: schema_pb2.FLOAT,
}


class Anomaly(NamedTuple):
  """One anomaly of one feature in one split.

  Attributes:
    feature: the feature name.
    kind: one of MISSING_COLUMN, UNEXPECTED_COLUMN, TYPE_MISMATCH,
      UNSEEN_LABEL or EMPTY_TEXT_RATE_INCREASE.
    description: what was found, with the values and counts involved.
    split: the split whose statistics show it.
  """
  feature: str
  kind: str
  description: str
  split: str


class ValidationResult(NamedTuple):
  """The anomalies found and where they were written."""
  anomalies: List[Anomaly]
  anomalies_path: str
  markdown_path: str

  @property
  def has_anomalies(self) -> bool:
    return bool(self.anomalies)


def run_example_validator(
    statistics_path: str, schema_path: str, config: PipelineConfig,
    output_dir: str,
    previous_statistics_path: Optional[str] = None) -> ValidationResult:
  """Compare every split's statistics with the schema and the previous run.

  Args:
    statistics_path: this run's `statistics.pbtxt`.
    schema_path: the `schema.pbtxt` from SchemaGen.
    config: the pipeline config, which names the text features and the
      allowed increase of their empty fraction.
    output_dir: where `anomalies.pbtxt` and `anomalies.md` are written.
    previous_statistics_path: the last run's `statistics.pbtxt`, the baseline
      of the empty-text check. Without it, each split is compared with train.

  Returns:
    The anomalies and the paths written.

  Raises:
    ValueError: anomalies were found and `config.validation.fail_on_anomalies`
      is set. The files are written first.
  """
  statistics = statistics_gen.load_statistics(statistics_path)
  schema = schema_gen.load_schema(schema_path)
  previous = None
  if previous_statistics_path:
    previous = statistics_gen.load_statistics(previous_statistics_path)

  anomalies = []
  for dataset in statistics.datasets:
    anomalies += _check_split(dataset, schema)
    anomalies += _check_empty_text(dataset, statistics, previous, config)

  result = _write_anomalies(anomalies, schema, output_dir)
  _log_result(result, statistics_path, schema_path, previous_statistics_path)
  if anomalies and config.validation.fail_on_anomalies:
    raise ValueError(
        f'{len(anomalies)} anomalies found in {statistics_path} against '
        f'{schema_path}: {_summary(anomalies)}. Details are in '
        f'{result.markdown_path}. Fix the data, edit the schema, or set '
        'validation.fail_on_anomalies: false to continue.')
  return result


def _check_split(dataset: statistics_pb2.DatasetFeatureStatistics,
                 schema: schema_pb2.Schema) -> List[Anomaly]:
  """Check one split's columns, types and label values against the schema."""
  if not dataset.num_examples:
    logging.warning('ExampleValidator: split %s has no examples; its columns '
                    'were not checked.', dataset.name)
    return []

  split = dataset.name
  stats_by_name = {f.name: f for f in dataset.features}
  schema_features = [f for f in schema.feature if not f.deprecated]
  anomalies = []
  for feature in schema_features:
    feature_stats = stats_by_name.get(feature.name)
    if feature_stats is None:
      anomalies.append(Anomaly(
          feature.name, MISSING_COLUMN,
          f'The schema lists {feature.name!r} but no example of split '
          f'{split!r} carries it.', split))
      continue
    anomalies += _check_type(feature, feature_stats, split)
    anomalies += _check_domain(feature, feature_stats, schema, split)

  schema_names = {f.name for f in schema.feature}
  for name in stats_by_name:
    if name not in schema_names:
      anomalies.append(Anomaly(
          name, UNEXPECTED_COLUMN,
          f'Split {split!r} carries {name!r}, which the schema does not '
          'list.', split))
  return anomalies


def _check_type(feature: schema_pb2.Feature,
                feature_stats: statistics_pb2.FeatureNameStatistics,
                split: str) -> List[Anomaly]:
  """Compare the value type, and for scalars the number of values."""
  data_type = _STATS_TYPE_TO_SCHEMA_TYPE.get(feature_stats.type)
  if data_type != feature.type:
    stats_type = statistics_pb2.FeatureNameStatistics.Type.Name(
        feature_stats.type)
    return [Anomaly(
        feature.name, TYPE_MISMATCH,
        f'The schema types {feature.name!r} as '
        f'{schema_pb2.FeatureType.Name(feature.type)}, but split {split!r} '
        f'contains {stats_type} values.', split)]

  max_values = statistics_gen.common_stats(feature_stats).max_num_values
  if _is_scalar(feature) and max_values > 1:
    return [Anomaly(
        feature.name, TYPE_MISMATCH,
        f'The schema makes {feature.name!r} a scalar, but examples of split '
        f'{split!r} contain up to {max_values} values.', split)]
  return []


def _is_scalar(feature: schema_pb2.Feature) -> bool:
  return feature.HasField('shape') and not feature.shape.dim


def _check_domain(feature: schema_pb2.Feature,
                  feature_stats: statistics_pb2.FeatureNameStatistics,
                  schema: schema_pb2.Schema, split: str) -> List[Anomaly]:
  """Report values outside the feature's string domain ('' is allowed)."""
  domain = _string_domain(feature, schema)
  if domain is None:
    return []

  counts = statistics_gen.label_distribution(feature_stats)
  if not counts:
    # NOTE: only the top values are known for features that are not task
    # labels, so rarer values outside the domain go unreported.
    counts = {v.value: int(v.frequency)
              for v in feature_stats.string_stats.top_values}
  allowed = set(domain.value)
  unseen = sorted(((value, count) for value, count in counts.items()
                   if value and value not in allowed),
                  key=lambda vc: (-vc[1], vc[0]))
  if not unseen:
    return []
  listed = ', '.join(f'{value!r} ({count})' for value, count in unseen)
  return [Anomaly(
      feature.name, UNSEEN_LABEL,
      f'Split {split!r} has {len(unseen)} value(s) of {feature.name!r} that '
      f'are not in its domain: {listed}. Add them to the schema domain and '
      'the config classes, or fix the data.', split)]


def _string_domain(feature: schema_pb2.Feature, schema: schema_pb2.Schema
                   ) -> Optional[schema_pb2.StringDomain]:
  """Return the feature's inline or named string domain, if any."""
  if feature.HasField('string_domain'):
    return feature.string_domain
  if feature.HasField('domain'):
    for domain in schema.string_domain:
      if domain.name == feature.domain:
        return domain
  return None


def _check_empty_text(
    dataset: statistics_pb2.DatasetFeatureStatistics,
    statistics: statistics_pb2.DatasetFeatureStatisticsList,
    previous: Optional[statistics_pb2.DatasetFeatureStatisticsList],
    config: PipelineConfig) -> List[Anomaly]:
  """Report text features whose empty fraction rose past the threshold."""
  baseline, baseline_name = _empty_text_baseline(dataset, statistics, previous)
  if baseline is None or not dataset.num_examples:
    return []

  threshold = config.validation.max_empty_text_rate_increase
  anomalies = []
  for feature in config.features_of_type('text'):
    rate = _empty_rate(dataset, feature.name)
    baseline_rate = _empty_rate(baseline, feature.name)
    if rate is None or baseline_rate is None:
      continue
    if rate - baseline_rate > threshold:
      anomalies.append(Anomaly(
          feature.name, EMPTY_TEXT_RATE_INCREASE,
          f'The fraction of empty {feature.name!r} values in split '
          f'{dataset.name!r} rose from {baseline_rate:.1%} ({baseline_name}) '
          f'to {rate:.1%}, more than the allowed '
          f'validation.max_empty_text_rate_increase of {threshold:.1%}.',
          dataset.name))
  return anomalies


def _empty_text_baseline(
    dataset: statistics_pb2.DatasetFeatureStatistics,
    statistics: statistics_pb2.DatasetFeatureStatisticsList,
    previous: Optional[statistics_pb2.DatasetFeatureStatisticsList]
) -> Tuple[Optional[statistics_pb2.DatasetFeatureStatistics], str]:
  """Return (baseline dataset, its description) for the empty-text check.

  The baseline is the same split of the previous run, else this run's train
  split. Train is not compared with itself.
  """
  if previous is not None:
    baseline = statistics_gen.get_split(previous, dataset.name)
    if baseline is not None and baseline.num_examples:
      return baseline, f'previous run, split {dataset.name!r}'
  if dataset.name == schema_gen.TRAIN_SPLIT:
    return None, ''
  return (statistics_gen.get_split(statistics, schema_gen.TRAIN_SPLIT),
          f'this run, split {schema_gen.TRAIN_SPLIT!r}')


def _empty_rate(dataset: Optional[statistics_pb2.DatasetFeatureStatistics],
                name: str) -> Optional[float]:
  """Return the feature's missing fraction, or None if unknown."""
  if dataset is None or not dataset.num_examples:
    return None
  for feature in dataset.features:
    if feature.name == name:
      common = statistics_gen.common_stats(feature)
      return common.num_missing / dataset.num_examples
  return None


def _write_anomalies(anomalies: List[Anomaly], schema: schema_pb2.Schema,
                     output_dir: str) -> ValidationResult:
  tf.io.gfile.makedirs(output_dir)
  result = ValidationResult(
      anomalies=anomalies,
      anomalies_path=os.path.join(output_dir, ANOMALIES_FILE),
      markdown_path=os.path.join(output_dir, ANOMALIES_MARKDOWN_FILE))
  with tf.io.gfile.GFile(result.anomalies_path, 'w') as f:
    f.write(text_format.MessageToString(to_proto(anomalies, schema)))
  with tf.io.gfile.GFile(result.markdown_path, 'w') as f:
    f.write(render_markdown(anomalies))
  return result


def to_proto(anomalies: List[Anomaly],
             schema: schema_pb2.Schema) -> anomalies_pb2.Anomalies:
  """Build an `Anomalies` proto keyed by feature, one reason per anomaly."""
  proto = anomalies_pb2.Anomalies()
  proto.baseline.CopyFrom(schema)
  by_feature: Dict[str, List[Anomaly]] = {}
  for anomaly in anomalies:
    by_feature.setdefault(anomaly.feature, []).append(anomaly)

  for name, found in by_feature.items():
    info = proto.anomaly_info[name]
    info.path.step.append(name)
    info.severity = anomalies_pb2.AnomalyInfo.ERROR
    info.short_description = ', '.join(sorted({a.kind for a in found}))
    info.description = ' '.join(f'[{a.split}] {a.description}' for a in found)
    for anomaly in found:
      info.reason.add(type=_KIND_TO_REASON[anomaly.kind],
                      short_description=f'{anomaly.kind} in {anomaly.split}',
                      description=anomaly.description)
  return proto


def render_markdown(anomalies: List[Anomaly]) -> str:
  lines = ['# Anomalies', '']
  if not anomalies:
    return '\n'.join(lines + [NO_ANOMALIES]) + '\n'
  lines += ['| split | feature | kind | description |', '|---|---|---|---|']
  for anomaly in anomalies:
    description = anomaly.description.replace('|', '\\|')
    lines.append(f'| {anomaly.split} | {anomaly.feature} | {anomaly.kind} | '
                 f'{description} |')
  return '\n'.join(lines) + '\n'


def _summary(anomalies: List[Anomaly]) -> str:
  return '; '.join(f'{a.kind} {a.feature!r} in {a.split}' for a in anomalies)


def _log_result(result: ValidationResult, statistics_path: str,
                schema_path: str, previous_statistics_path: Optional[str]):
  for anomaly in result.anomalies:
    logging.warning('ExampleValidator: %s in split %s, feature %s: %s',
                    anomaly.kind, anomaly.split, anomaly.feature,
                    anomaly.description)
  logging.info('ExampleValidator: read %s, %s and previous statistics %s; '
               'found %d anomalies; wrote %s and %s.', statistics_path,
               schema_path, previous_statistics_path or '(none)',
               len(result.anomalies), result.anomalies_path,
               result.markdown_path)
