"""Tests of StatisticsGen, SchemaGen and ExampleValidator on real Beam runs."""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import json
from typing import Any, Dict, List

import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2
from tensorflow_metadata.proto.v0 import statistics_pb2
from tensorflow_transform.tf_metadata import schema_utils

from components import example_validator, schema_gen, statistics_gen
from components.config import parse_config

FEATURE_TYPES = {
    'example_id': 'string',
    'text': 'string',
    'summary': 'string',
    'product_id': 'string',
    'history': 'string_list',
    'score': 'int',
    'price': 'float',
    'sentiment': 'string',
    'helpful': 'string',
}

CONFIG = {
    'pipeline_name': 'data_validation_test',
    'data': {'adapter': 'generic', 'path': 'unused'},
    'features': [
        {'name': 'text', 'type': 'text'},
        {'name': 'summary', 'type': 'text'},
        {'name': 'product_id', 'type': 'categorical'},
        {'name': 'history', 'type': 'id_sequence'},
        {'name': 'price', 'type': 'numeric'},
    ],
    'tasks': [
        {'name': 'sentiment', 'type': 'multiclass', 'label': 'sentiment',
         'classes': ['negative', 'neutral', 'positive']},
        {'name': 'helpful', 'type': 'binary', 'label': 'helpful',
         'classes': ['not_helpful', 'helpful'], 'positive_class': 'helpful'},
    ],
}


def _example(example_id, text, summary, product_id, history, score, price,
             sentiment, helpful) -> Dict[str, Any]:
  return dict(example_id=example_id, text=text, summary=summary,
              product_id=product_id, history=history, score=score,
              price=price, sentiment=sentiment, helpful=helpful)


TRAIN = [
    _example('t1', 'great tasty snack', 'great', 'p1', ['a', 'b'], 5, 1.5,
             'positive', 'helpful'),
    _example('t2', 'bad', '', 'p1', [], 1, 2.5, 'negative', 'not_helpful'),
    _example('t3', 'ok I guess so', 'meh', 'p2', ['a'], 3, 3.0, 'neutral', ''),
    _example('t4', 'love it', 'yum', 'p1', ['c', 'a', 'b'], 5, 0.0,
             'positive', ''),
    _example('t5', 'not for me', 'no', 'p3', [], 2, 5.0, '', 'helpful'),
]
VALIDATION = [
    _example('v1', 'fine', 'ok', 'p2', ['a'], 4, 1.0, 'positive', ''),
    _example('v2', 'awful taste', 'bad', 'p3', [], 1, 2.0, 'negative',
             'helpful'),
]
EVAL = [
    _example('e1', 'tasty', 'good', 'p1', ['b'], 5, 1.0, 'positive', ''),
    _example('e2', 'meh', 'so so', 'p4', [], 3, 4.0, 'neutral', 'not_helpful'),
]


def _config(**validation):
  return parse_config(dict(CONFIG, validation=validation), source='test')


def _feature(value) -> tf.train.Feature:
  """Encode a Python value as ExampleGen does: by its Python type."""
  if isinstance(value, list):
    return tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[v.encode('utf-8') for v in value]))
  if isinstance(value, bool) or not isinstance(value, (int, float, str)):
    raise TypeError(f'Unsupported test value {value!r}.')
  if isinstance(value, int):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
  if isinstance(value, float):
    return tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
  return tf.train.Feature(bytes_list=tf.train.BytesList(
      value=[value.encode('utf-8')]))


def write_examples(examples_dir: str, splits: Dict[str, List[Dict[str, Any]]],
                   feature_types: Dict[str, str]) -> str:
  """Write ExampleGen's output layout from Python dicts.

  Args:
    examples_dir: the folder to create.
    splits: split name -> examples, each a dict of feature name -> value.
    feature_types: written as `feature_types.json`.

  Returns:
    `examples_dir`.
  """
  for split, examples in splits.items():
    split_dir = os.path.join(examples_dir, f'Split-{split}')
    os.makedirs(split_dir)
    path = os.path.join(split_dir, 'data_tfrecord-00000-of-00001.gz')
    with tf.io.TFRecordWriter(path, options='GZIP') as writer:
      for values in examples:
        example = tf.train.Example(features=tf.train.Features(feature={
            name: _feature(value) for name, value in values.items()}))
        writer.write(example.SerializeToString())
  with open(os.path.join(examples_dir, 'feature_types.json'), 'w') as f:
    json.dump(feature_types, f)
  return examples_dir


def _run_statistics(root, name, splits, config=None):
  examples_dir = write_examples(str(root / name / 'examples'), splits,
                                FEATURE_TYPES)
  return statistics_gen.run_statistics_gen(
      examples_dir, FEATURE_TYPES, config or _config(),
      str(root / name / 'statistics'))


def _features(statistics, split):
  dataset = statistics_gen.get_split(statistics, split)
  return {f.name: f for f in dataset.features}


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  return tmp_path_factory.mktemp('data_validation')


@pytest.fixture(scope='module')
def clean_statistics_path(root):
  return _run_statistics(root, 'clean', {
      'train': TRAIN, 'validation': VALIDATION, 'eval': EVAL})


@pytest.fixture(scope='module')
def clean_statistics(clean_statistics_path):
  return statistics_gen.load_statistics(clean_statistics_path)


@pytest.fixture(scope='module')
def schema_path(root, clean_statistics_path):
  return schema_gen.run_schema_gen(clean_statistics_path, FEATURE_TYPES,
                                   _config(), str(root / 'schema'))


# StatisticsGen.


def test_statistics_splits_and_example_counts(clean_statistics):
  names = [d.name for d in clean_statistics.datasets]
  assert names == ['train', 'validation', 'eval']
  counts = [d.num_examples for d in clean_statistics.datasets]
  assert counts == [5, 2, 2]


def test_statistics_feature_order_and_types(clean_statistics):
  features = _features(clean_statistics, 'train')
  assert list(features) == list(FEATURE_TYPES)
  stats_type = statistics_pb2.FeatureNameStatistics
  assert features['text'].type == stats_type.STRING
  assert features['history'].type == stats_type.STRING
  assert features['score'].type == stats_type.INT
  assert features['price'].type == stats_type.FLOAT


def test_statistics_missing_counts(clean_statistics):
  features = _features(clean_statistics, 'train')
  summary = features['summary'].string_stats.common_stats
  assert summary.num_non_missing == 4
  assert summary.num_missing == 1
  history = features['history'].string_stats.common_stats
  assert history.num_missing == 2
  assert history.tot_num_values == 6
  assert history.max_num_values == 3
  assert features['score'].num_stats.common_stats.num_missing == 0
  assert features['price'].num_stats.common_stats.num_missing == 0


def test_statistics_top_values_and_unique(clean_statistics):
  product = _features(clean_statistics, 'train')['product_id'].string_stats
  assert product.unique == 3
  top = [(v.value, v.frequency) for v in product.top_values]
  assert top == [('p1', 3), ('p2', 1), ('p3', 1)]
  history = _features(clean_statistics, 'train')['history'].string_stats
  assert history.unique == 3
  assert [(v.value, v.frequency) for v in history.top_values] == [
      ('a', 3), ('b', 2), ('c', 1)]


def test_statistics_numeric(clean_statistics):
  score = _features(clean_statistics, 'train')['score'].num_stats
  assert (score.min, score.max) == (1, 5)
  assert score.mean == pytest.approx(3.2)
  assert score.std_dev == pytest.approx(1.6)  # population std of 5,1,3,5,2
  unique = statistics_gen.get_custom_stat(
      _features(clean_statistics, 'train')['score'], statistics_gen.UNIQUE)
  assert unique.num == 4
  price = _features(clean_statistics, 'train')['price'].num_stats
  assert price.mean == pytest.approx(2.4)
  assert price.num_zeros == 1
  assert price.median == pytest.approx(2.5)


def test_statistics_token_length_quantiles(clean_statistics):
  text = _features(clean_statistics, 'train')['text']
  custom = statistics_gen.get_custom_stat(
      text, statistics_gen.TOKEN_LENGTH_QUANTILES)
  buckets = custom.histogram.buckets
  assert len(buckets) == statistics_gen.NUM_QUANTILES - 1
  assert buckets[0].low_value == 1  # 'bad'
  assert buckets[-1].high_value == 4  # 'ok I guess so'
  assert sum(b.sample_count for b in buckets) == pytest.approx(5)


def test_statistics_value_count_quantiles(clean_statistics):
  history = _features(clean_statistics, 'train')['history']
  histogram = history.string_stats.common_stats.num_values_histogram
  assert histogram.buckets[0].low_value == 0
  assert histogram.buckets[-1].high_value == 3


def test_statistics_label_distribution(clean_statistics):
  features = _features(clean_statistics, 'train')
  assert statistics_gen.label_distribution(features['sentiment']) == {
      'positive': 2, 'negative': 1, 'neutral': 1, '': 1}
  assert statistics_gen.label_distribution(features['helpful']) == {
      'helpful': 2, 'not_helpful': 1, '': 2}
  assert statistics_gen.label_distribution(features['text']) == {}


def test_statistics_markdown(clean_statistics_path):
  markdown_path = os.path.join(os.path.dirname(clean_statistics_path),
                               statistics_gen.STATISTICS_MARKDOWN_FILE)
  with open(markdown_path) as f:
    markdown = f.read()
  assert '## Split `train`: 5 examples' in markdown
  assert '| summary | STRING | 4 | 1 (20.0%) |' in markdown
  assert 'Labels of `sentiment`: `positive`: 2' in markdown


# SchemaGen.


def test_schema_feature_spec_round_trip(schema_path):
  schema = schema_gen.load_schema(schema_path)
  spec = schema_utils.schema_as_feature_spec(schema).feature_spec
  assert spec['text'] == tf.io.FixedLenFeature([], tf.string)
  assert spec['score'] == tf.io.FixedLenFeature([], tf.int64)
  assert spec['price'] == tf.io.FixedLenFeature([], tf.float32)
  assert spec['sentiment'] == tf.io.FixedLenFeature([], tf.string)
  assert spec['history'] == tf.io.VarLenFeature(tf.string)
  assert set(spec) == set(FEATURE_TYPES)


def test_schema_parses_written_examples(root, clean_statistics_path,
                                        schema_path):
  del clean_statistics_path  # Writes the examples read here.
  schema = schema_gen.load_schema(schema_path)
  spec = schema_utils.schema_as_feature_spec(schema).feature_spec
  pattern = str(root / 'clean' / 'examples' / 'Split-train' / '*.gz')
  records = list(tf.data.TFRecordDataset(
      tf.io.gfile.glob(pattern), compression_type='GZIP'))
  parsed = tf.io.parse_example(tf.stack(records), spec)
  assert parsed['text'].shape == (5,)
  assert parsed['summary'].numpy()[1] == b''
  assert parsed['score'].numpy().tolist() == [5, 1, 3, 5, 2]
  history = tf.sparse.to_dense(parsed['history'], default_value=b'')
  assert history.shape == (5, 3)
  assert history.numpy()[3].tolist() == [b'c', b'a', b'b']


def test_schema_presence_and_value_count(schema_path):
  features = {f.name: f for f in schema_gen.load_schema(schema_path).feature}
  text = features['text']
  assert text.type == schema_pb2.BYTES
  assert text.presence.min_fraction == 1.0
  assert text.presence.min_count == 1
  assert text.HasField('shape')
  assert not text.shape.dim
  history = features['history']
  assert history.HasField('value_count')
  assert history.value_count.min == 0
  assert not history.HasField('shape')


def test_schema_label_domains(schema_path):
  features = {f.name: f for f in schema_gen.load_schema(schema_path).feature}
  assert list(features['sentiment'].string_domain.value) == [
      'negative', 'neutral', 'positive']
  assert list(features['helpful'].string_domain.value) == [
      'not_helpful', 'helpful']
  assert not features['product_id'].HasField('string_domain')


def test_schema_label_domain_without_classes(root, clean_statistics_path):
  config = dict(CONFIG, tasks=[
      {'name': 'sentiment', 'type': 'multiclass', 'label': 'sentiment'}])
  path = schema_gen.run_schema_gen(
      clean_statistics_path, FEATURE_TYPES,
      parse_config(config, source='test'), str(root / 'schema_no_classes'))
  features = {f.name: f for f in schema_gen.load_schema(path).feature}
  assert list(features['sentiment'].string_domain.value) == [
      'negative', 'neutral', 'positive']
  assert not features['helpful'].HasField('string_domain')


def test_schema_existing_reused_verbatim(root, clean_statistics_path):
  curated = ('# Curated by hand: keep this comment.\n'
             'feature {\n  name: "text"\n  type: BYTES\n}\n')
  existing = root / 'curated.pbtxt'
  existing.write_text(curated)
  path = schema_gen.run_schema_gen(
      clean_statistics_path, FEATURE_TYPES, _config(),
      str(root / 'schema_reused'), existing_schema_path=str(existing))
  with open(path) as f:
    assert f.read() == curated


def test_schema_existing_invalid_raises(root, clean_statistics_path):
  existing = root / 'broken.pbtxt'
  existing.write_text('feature { nme: "text" }\n')
  with pytest.raises(ValueError, match='broken.pbtxt'):
    schema_gen.run_schema_gen(
        clean_statistics_path, FEATURE_TYPES, _config(),
        str(root / 'schema_broken'), existing_schema_path=str(existing))


# ExampleValidator.


@pytest.fixture(scope='module')
def drifted_statistics_path(root):
  """Statistics whose eval split has every anomaly kind, the others none."""
  drifted_eval = []
  for i, sentiment in enumerate(['very_positive', 'mixed', 'very_positive',
                                 'neutral']):
    example = _example(f'd{i}', '', 'fine', 'p1', ['a'], '5', 1.0,
                       sentiment, '')
    del example['summary']
    example['extra'] = 'x'
    drifted_eval.append(example)
  return _run_statistics(root, 'drifted', {
      'train': TRAIN, 'validation': VALIDATION, 'eval': drifted_eval})


@pytest.fixture(scope='module')
def drifted_result(root, drifted_statistics_path, schema_path):
  return example_validator.run_example_validator(
      drifted_statistics_path, schema_path, _config(),
      str(root / 'validator_drifted'))


def _of_kind(result, kind):
  return [a for a in result.anomalies if a.kind == kind]


def test_validator_clean_data(root, clean_statistics_path, schema_path):
  result = example_validator.run_example_validator(
      clean_statistics_path, schema_path, _config(),
      str(root / 'validator_clean'))
  assert result.anomalies == []
  with open(result.markdown_path) as f:
    assert example_validator.NO_ANOMALIES in f.read()
  with open(result.anomalies_path) as f:
    proto = text_format.Parse(f.read(), anomalies_pb2.Anomalies())
  assert not proto.anomaly_info


def test_validator_only_eval_flagged(drifted_result):
  assert {a.split for a in drifted_result.anomalies} == {'eval'}


def test_validator_missing_column(drifted_result):
  found = _of_kind(drifted_result, example_validator.MISSING_COLUMN)
  assert [a.feature for a in found] == ['summary']


def test_validator_unexpected_column(drifted_result):
  found = _of_kind(drifted_result, example_validator.UNEXPECTED_COLUMN)
  assert [a.feature for a in found] == ['extra']


def test_validator_type_mismatch(drifted_result):
  found = _of_kind(drifted_result, example_validator.TYPE_MISMATCH)
  assert [a.feature for a in found] == ['score']
  assert 'INT' in found[0].description
  assert 'contains STRING values' in found[0].description


def test_validator_unseen_labels(drifted_result):
  found = _of_kind(drifted_result, example_validator.UNSEEN_LABEL)
  assert [a.feature for a in found] == ['sentiment']
  assert "'very_positive' (2), 'mixed' (1)" in found[0].description
  assert 'neutral' not in found[0].description


def test_validator_empty_text_against_train(drifted_result):
  found = _of_kind(drifted_result,
                   example_validator.EMPTY_TEXT_RATE_INCREASE)
  assert [a.feature for a in found] == ['text']
  assert 'from 0.0%' in found[0].description
  assert 'to 100.0%' in found[0].description


def test_validator_empty_text_against_previous(root, drifted_statistics_path,
                                               clean_statistics_path,
                                               schema_path):
  # The previous run had the same empty eval text, so there is no jump.
  same = example_validator.run_example_validator(
      drifted_statistics_path, schema_path, _config(),
      str(root / 'validator_same_previous'),
      previous_statistics_path=drifted_statistics_path)
  assert not _of_kind(same, example_validator.EMPTY_TEXT_RATE_INCREASE)

  # Against a clean previous run, train is unchanged and eval jumps.
  jump = example_validator.run_example_validator(
      drifted_statistics_path, schema_path, _config(),
      str(root / 'validator_clean_previous'),
      previous_statistics_path=clean_statistics_path)
  found = _of_kind(jump, example_validator.EMPTY_TEXT_RATE_INCREASE)
  assert [(a.feature, a.split) for a in found] == [('text', 'eval')]
  assert 'previous run' in found[0].description


def test_validator_threshold_from_config(root, drifted_statistics_path,
                                         schema_path):
  result = example_validator.run_example_validator(
      drifted_statistics_path, schema_path,
      _config(max_empty_text_rate_increase=1.0),
      str(root / 'validator_loose'))
  assert not _of_kind(result, example_validator.EMPTY_TEXT_RATE_INCREASE)


def test_validator_writes_proto_and_markdown(drifted_result):
  with open(drifted_result.anomalies_path) as f:
    proto = text_format.Parse(f.read(), anomalies_pb2.Anomalies())
  assert set(proto.anomaly_info) == {'summary', 'extra', 'score', 'sentiment',
                                     'text'}
  reason = proto.anomaly_info['sentiment'].reason[0]
  assert reason.type == (
      anomalies_pb2.AnomalyInfo.ENUM_TYPE_UNEXPECTED_STRING_VALUES)
  assert proto.baseline.feature
  with open(drifted_result.markdown_path) as f:
    markdown = f.read()
  assert example_validator.NO_ANOMALIES not in markdown
  assert '| eval | sentiment | unseen_label |' in markdown


def test_validator_fail_on_anomalies(root, drifted_statistics_path,
                                     schema_path):
  output_dir = root / 'validator_fail'
  with pytest.raises(ValueError, match='anomalies.md') as raised:
    example_validator.run_example_validator(
        drifted_statistics_path, schema_path,
        _config(fail_on_anomalies=True), str(output_dir))
  assert 'unseen_label' in str(raised.value)
  assert (output_dir / example_validator.ANOMALIES_FILE).exists()
