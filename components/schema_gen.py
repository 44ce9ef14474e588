"""SchemaGen: a `tensorflow_metadata` Schema inferred from the train statistics.

Transform parses examples with `schema_utils.schema_as_feature_spec`, so the
inference rules are a contract. A `string`, `int` or `float` feature gets
`presence { min_fraction: 1.0 min_count: 1 }` and an empty `shape`, which
makes it a scalar `tf.io.FixedLenFeature([])`. A `string_list` feature gets
`value_count { min: 0 }` and no shape, which makes it a `tf.io.VarLenFeature`.
Each task's label feature gets a string domain: the config's classes, then the
other values seen in train. The empty string means unlabeled and is always
allowed.

A schema from an earlier run is reused unchanged, so that edits to it survive
reruns.
"""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import logging
from typing import Dict, List, Optional

import tensorflow as tf
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2

from components import statistics_gen
from components.adapters.base import FLOAT, INT, STRING, STRING_LIST
from components.config import PipelineConfig

SCHEMA_FILE = 'schema.pbtxt'
TRAIN_SPLIT = 'train'

_RAW_TYPE_TO_SCHEMA_TYPE = {
    STRING: schema_pb2.BYTES,
    STRING_LIST: schema_pb2.BYTES,
    INT: schema_pb2.INT,
    FLOAT: schema_pb2.FLOAT,
}
_STATS_TYPE_TO_SCHEMA_TYPE = {
    statistics_pb2.FeatureNameStatistics.STRING: schema_pb2.BYTES,
    statistics_pb2.FeatureNameStatistics.BYTES: schema_pb2.BYTES,
    statistics_pb2.FeatureNameStatistics.INT: schema_pb2.INT,
    statistics_pb2.FeatureNameStatistics.FLOAT: schema_pb2.FLOAT,
}


def run_schema_gen(statistics_path: str, feature_types: Dict[str, str],
                   config: PipelineConfig, output_dir: str,
                   existing_schema_path: Optional[str] = None) -> str:
  """Infer the schema from train statistics, or reuse an earlier run's.

  Args:
    statistics_path: `statistics.pbtxt` from StatisticsGen.
    feature_types: raw feature name -> `string`, `int`, `float` or
      `string_list`, as ExampleGen wrote them.
    config: the pipeline config, which names the task labels and classes.
    output_dir: where `schema.pbtxt` is written.
    existing_schema_path: the schema of an earlier run. When given, it is
      copied unchanged and no inference happens.

  Returns:
    The path of `schema.pbtxt`.
  """
  tf.io.gfile.makedirs(output_dir)
  schema_path = os.path.join(output_dir, SCHEMA_FILE)

  if existing_schema_path:
    _reuse_schema(existing_schema_path, schema_path)
    return schema_path

  statistics = statistics_gen.load_statistics(statistics_path)
  schema = infer_schema(statistics, feature_types, config)
  with tf.io.gfile.GFile(schema_path, 'w') as f:
    f.write(text_format.MessageToString(schema))
  logging.info('SchemaGen: read %s, inferred %d features, wrote %s.',
               statistics_path, len(schema.feature), schema_path)
  return schema_path


def load_schema(schema_path: str) -> schema_pb2.Schema:
  """Read a text-format `Schema`, naming the file when it does not parse."""
  with tf.io.gfile.GFile(schema_path) as f:
    text = f.read()
  try:
    return text_format.Parse(text, schema_pb2.Schema())
  except text_format.ParseError as e:
    raise ValueError(f'{schema_path} is not a valid text-format '
                     f'tensorflow_metadata Schema: {e}. Fix the file or '
                     'delete it to infer a new schema.') from e


def infer_schema(statistics: statistics_pb2.DatasetFeatureStatisticsList,
                 feature_types: Dict[str, str],
                 config: PipelineConfig) -> schema_pb2.Schema:
  """Build a schema from the train dataset of `statistics`.

  Raises:
    ValueError: the statistics have no train split, or it has no examples.
  """
  train = statistics_gen.get_split(statistics, TRAIN_SPLIT)
  if train is None or not train.num_examples:
    raise ValueError(
        f'Cannot infer a schema: the statistics have no {TRAIN_SPLIT!r} '
        'examples. Check that ExampleGen wrote a non-empty train split.')

  unseen = sorted(set(feature_types) - {f.name for f in train.features})
  if unseen:
    logging.warning('SchemaGen: %s listed in feature_types but carried by no '
                    'train example; left out of the schema.', unseen)

  schema = schema_pb2.Schema()
  labels = _label_classes(config)
  for feature_stats in train.features:
    feature = schema.feature.add()
    _set_type_and_shape(feature, feature_stats,
                        feature_types.get(feature_stats.name))
    if feature_stats.name in labels:
      _set_label_domain(feature, feature_stats, labels[feature_stats.name])
  return schema


def _reuse_schema(existing_schema_path: str, schema_path: str) -> None:
  # Parse first, so that a broken curated schema fails here and not in
  # Transform.
  schema = load_schema(existing_schema_path)
  if os.path.abspath(existing_schema_path) != os.path.abspath(schema_path):
    tf.io.gfile.copy(existing_schema_path, schema_path, overwrite=True)
  logging.info('SchemaGen: reused the existing schema %s (%d features) '
               'unchanged as %s; no inference ran.', existing_schema_path,
               len(schema.feature), schema_path)


def _label_classes(config: PipelineConfig) -> Dict[str, List[str]]:
  """Return label feature -> the classes the config names for it."""
  labels = {}
  for task in config.tasks:
    if task.type == 'retrieval':
      continue  # Its label is a candidate id, not a class.
    classes = labels.setdefault(task.label, [])
    classes += [c for c in task.classes if c not in classes]
  return labels


def _set_type_and_shape(feature: schema_pb2.Feature,
                        feature_stats: statistics_pb2.FeatureNameStatistics,
                        raw_type: Optional[str]) -> None:
  """Set the type, and presence and shape (scalars) or value_count (lists).

  A feature missing from `feature_types` is a list unless every train example
  contains exactly one value.
  """
  feature.name = feature_stats.name
  if raw_type in _RAW_TYPE_TO_SCHEMA_TYPE:
    feature.type = _RAW_TYPE_TO_SCHEMA_TYPE[raw_type]
    is_list = raw_type == STRING_LIST
  else:
    common = statistics_gen.common_stats(feature_stats)
    feature.type = _STATS_TYPE_TO_SCHEMA_TYPE[feature_stats.type]
    is_list = common.min_num_values != 1 or common.max_num_values != 1
    logging.warning('SchemaGen: feature %s is not in feature_types; inferred '
                    '%s %s from its statistics.', feature.name,
                    schema_pb2.FeatureType.Name(feature.type),
                    'list' if is_list else 'scalar')

  if is_list:
    feature.value_count.min = 0
  else:
    feature.presence.min_fraction = 1.0
    feature.presence.min_count = 1
    # An empty shape is a scalar: FixedLenFeature([]) in tf.Transform.
    feature.shape.SetInParent()


def _set_label_domain(feature: schema_pb2.Feature,
                      feature_stats: statistics_pb2.FeatureNameStatistics,
                      classes: List[str]) -> None:
  """List the config's classes, then other non-empty train label values."""
  if feature.type != schema_pb2.BYTES:
    logging.warning('SchemaGen: label feature %s is %s, not BYTES; no string '
                    'domain added.', feature.name,
                    schema_pb2.FeatureType.Name(feature.type))
    return
  seen = sorted(label for label in
                statistics_gen.label_distribution(feature_stats) if label)
  values = list(classes) + [v for v in seen if v not in classes]
  feature.string_domain.name = feature.name
  feature.string_domain.value.extend(values)
  logging.info('SchemaGen: label %s has %d values in its domain: %s.',
               feature.name, len(values), values)
