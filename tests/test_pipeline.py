"""End-to-end tests of the pipeline on the bundled Amazon fine-food sample.

One module-scoped run of `run_pipeline` (ExampleGen to Pusher, about a minute
on two cores) feeds most tests. Everything runs for real: Beam's DirectRunner,
tf.Transform, Keras training and the SavedModel loaded the way TF Serving
loads it.
"""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import csv
import dataclasses
import glob
import hashlib
import json
import random
import shutil
from typing import Dict, List, NamedTuple

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  Registers the tf-text ops of the graph.
import tensorflow_transform as tft

import graph_checks
import pipeline
from components import artifacts
from components import evaluator
from components import pusher
from components import trainer
from components import transform
from components.config import PipelineConfig, load_config
from models import builder
from models import features
from serving import warmup
from serving.saved_model_session import SavedModelSession

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AMAZON_CONFIG = os.path.join(REPO_ROOT, 'configs', 'amazon_fine_food.yaml')
AMAZON_CSV = os.path.join(REPO_ROOT, 'data', 'sample', 'Reviews.csv')
# Max absolute difference allowed between the served graph's probabilities
# and the Keras model's; both compute in float32.
PROBABILITY_TOLERANCE = 1e-6


class PipelineRun(NamedTuple):
  """The fixture run's config, roots, summary and component folders."""
  config: PipelineConfig
  pipeline_root: str
  serving_dir: str
  summary: dict
  component_dirs: Dict[str, str]

  @property
  def examples_dir(self) -> str:
    return self.component_dirs['example_gen']

  @property
  def graph_dir(self) -> str:
    return os.path.join(self.component_dirs['transform'],
                        transform.TRANSFORM_GRAPH_DIR)

  @property
  def transformed_dir(self) -> str:
    return os.path.join(self.component_dirs['transform'],
                        transform.TRANSFORMED_EXAMPLES_DIR)

  @property
  def model_dir(self) -> str:
    return os.path.join(self.component_dirs['trainer'],
                        trainer.SERVING_MODEL_DIR)

  @property
  def pushed_dir(self) -> str:
    return self.summary['push']['path']


def _component_dirs(summary: dict) -> Dict[str, str]:
  return {c['component']: c['output_dir'] for c in summary['components']}


def _statuses(summary: dict) -> Dict[str, str]:
  return {c['component']: c['status'] for c in summary['components']}


def _versions(serving_dir: str, model_name: str) -> List[str]:
  base = os.path.join(serving_dir, model_name)
  return sorted(os.listdir(base)) if os.path.isdir(base) else []


def _file_digests(folder: str) -> Dict[str, str]:
  """Hash every file under `folder` with SHA-256, by relative path."""
  digests = {}
  for root, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        digests[os.path.relpath(path, folder)] = hashlib.sha256(
            f.read()).hexdigest()
  return digests


def _read_json(path: str):
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def _copy_lineage(run: PipelineRun, new_root: str) -> str:
  """Make a pipeline root whose lineage store is a copy of the fixture's.

  Runs in it reuse the fixture's cached outputs without adding executions to
  the fixture's store, which other tests read.
  """
  os.makedirs(new_root)
  shutil.copy(os.path.join(run.pipeline_root, 'lineage.sqlite'), new_root)
  return new_root


@pytest.fixture(scope='module')
def amazon_run(tmp_path_factory) -> PipelineRun:
  """Run the whole pipeline once on the bundled sample for the module."""
  base = tmp_path_factory.mktemp('amazon')
  config = load_config(AMAZON_CONFIG)
  pipeline_root = str(base / 'pipeline_root')
  serving_dir = str(base / 'serving')
  summary = pipeline.run_pipeline(config, None, pipeline_root, serving_dir, [])
  return PipelineRun(config, pipeline_root, serving_dir, summary,
                     _component_dirs(summary))


@pytest.fixture(scope='module')
def tft_output(amazon_run) -> tft.TFTransformOutput:
  return tft.TFTransformOutput(amazon_run.graph_dir)


@pytest.fixture(scope='module')
def raw_eval_records(amazon_run) -> List[bytes]:
  """Read ExampleGen's serialized eval examples in file order."""
  return list(artifacts.read_records(amazon_run.examples_dir, 'eval'))


@pytest.fixture(scope='module')
def beam_eval_features(amazon_run, tft_output) -> Dict[str, np.ndarray]:
  """Read the eval features that Transform wrote on Beam, in file order."""
  files = sorted(glob.glob(os.path.join(amazon_run.transformed_dir,
                                        'Split-eval', '*.gz')))
  assert files, f'no transformed eval files in {amazon_run.transformed_dir}'
  spec = tft_output.transformed_feature_spec()
  dataset = tf.data.TFRecordDataset(files, compression_type='GZIP').map(
      lambda record: tf.io.parse_single_example(record, spec))
  rows = list(dataset.as_numpy_iterator())
  return {name: np.stack([row[name] for row in rows]) for name in spec}


@pytest.fixture(scope='module')
def served_session(amazon_run):
  session = SavedModelSession(amazon_run.pushed_dir)
  yield session
  session.close()


@pytest.fixture(scope='module')
def served_outputs(amazon_run, tft_output, raw_eval_records,
                   served_session) -> Dict[str, np.ndarray]:
  """Run the pushed version's `serving_default` on the raw eval rows."""
  raw_spec = tft_output.raw_feature_spec()
  requests = [
      warmup.request_inputs(amazon_run.config, raw_spec,
                            tf.train.Example.FromString(record))
      for record in raw_eval_records
  ]
  inputs = {name: np.concatenate([r[name] for r in requests])
            for name in requests[0]}
  return served_session.run(inputs, 'serving_default')


# Train/serve skew.


def test_transform_matches_beam(amazon_run, raw_eval_records,
                                beam_eval_features):
  loaded = tf.saved_model.load(amazon_run.model_dir)
  signature = loaded.signatures['transform_features']
  served = {name: value.numpy() for name, value in signature(
      examples=tf.constant(raw_eval_records)).items()}

  assert sorted(served) == sorted(beam_eval_features), (
      f'transform_features returns {sorted(served)}, Beam wrote '
      f'{sorted(beam_eval_features)}')
  for name, beam_values in beam_eval_features.items():
    assert served[name].dtype == np.int64, (
        f'{name}: transform_features returns {served[name].dtype}')
    assert served[name].shape == beam_values.shape, (
        f'{name}: transform_features shape {served[name].shape}, Beam '
        f'{beam_values.shape}')
    differs = (served[name] != beam_values).reshape(len(beam_values), -1)
    rows = np.flatnonzero(differs.any(axis=1))
    assert rows.size == 0, (
        f'{name}: {rows.size} of {len(beam_values)} eval rows differ from '
        f'Beam, first row {rows[:1].tolist()}: served '
        f'{served[name][rows[:1]].tolist()} != Beam '
        f'{beam_values[rows[:1]].tolist()}')


# The pushed version as TF Serving runs it.


def test_session_matches_keras(amazon_run, tft_output, beam_eval_features,
                               served_outputs):
  model = builder.build_model(amazon_run.config, tft_output)
  model.load_weights(os.path.join(
      amazon_run.component_dirs['trainer'], trainer.CHECKPOINT_DIR,
      'best')).expect_partial()
  keras_outputs = model(
      {name: beam_eval_features[name] for name in model.input_names},
      training=False)

  for task in amazon_run.config.tasks:
    expected = keras_outputs[task.name].numpy()
    actual = served_outputs[features.probabilities_output(task.name)]
    assert actual.shape == expected.shape, (
        f'{task.name}: served shape {actual.shape}, Keras {expected.shape}')
    difference = float(np.max(np.abs(actual - expected)))
    assert difference <= PROBABILITY_TOLERANCE, (
        f'{task.name}: served probabilities differ from the Keras model by '
        f'up to {difference:.3g} (row '
        f'{int(np.argmax(np.abs(actual - expected).max(axis=1)))})')


def test_session_labels_match_argmax(amazon_run, tft_output, served_outputs):
  for task in amazon_run.config.tasks:
    classes = builder.class_names(amazon_run.config, tft_output, task.name)
    probabilities = served_outputs[features.probabilities_output(task.name)]
    expected = [classes[i] for i in np.argmax(probabilities, axis=1)]
    labels = [v.decode('utf-8') for v in
              served_outputs[features.label_output(task.name)]]
    wrong = [i for i, (a, b) in enumerate(zip(labels, expected)) if a != b]
    assert len(labels) == len(expected), (
        f'{task.name}: {len(labels)} labels for {len(expected)} rows')
    assert not wrong, (
        f'{task.name}: {len(wrong)} labels are not the class with the max '
        f'probability, first row {wrong[0] if wrong else None}: '
        f'{labels[wrong[0]] if wrong else None!r} != '
        f'{expected[wrong[0]] if wrong else None!r}')


def test_graph_ops_registered(served_session):
  ops = served_session.op_types()
  not_in_core = graph_checks.unregistered_ops(sorted(ops), with_text=False)
  not_in_text = graph_checks.unregistered_ops(not_in_core, with_text=True)

  assert 'NormalizeUTF8' in not_in_core, (
      f'NormalizeUTF8 is missing from the ops outside core TensorFlow: '
      f'{not_in_core}')
  assert not not_in_text, (
      f'ops registered neither by core TensorFlow nor by tensorflow-text: '
      f'{not_in_text}')


# Reproducibility.


def test_retrain_reproduces_metrics(amazon_run, tmp_path):
  config = amazon_run.config
  trainer_dir = str(tmp_path / 'trainer')
  evaluator_dir = str(tmp_path / 'evaluator')
  retrained = trainer.run_trainer(config, amazon_run.examples_dir,
                                  amazon_run.graph_dir,
                                  amazon_run.transformed_dir, trainer_dir)
  evaluator.run_evaluator(config, amazon_run.examples_dir,
                          retrained.serving_model_dir, evaluator_dir)

  metrics_files = [
      os.path.join(amazon_run.component_dirs['evaluator'],
                   evaluator.METRICS_FILE),
      os.path.join(evaluator_dir, evaluator.METRICS_FILE),
  ]
  first, second = [_read_json(path)['tasks'] for path in metrics_files]
  for task in config.tasks:
    assert second[task.name] == first[task.name], (
        f'{task.name}: rerun metrics {second[task.name]} != first run '
        f'{first[task.name]}')

  checkpoints = [
      tf.train.load_checkpoint(os.path.join(directory, trainer.CHECKPOINT_DIR,
                                            'best'))
      for directory in (amazon_run.component_dirs['trainer'], trainer_dir)
  ]
  names = sorted(checkpoints[0].get_variable_to_shape_map())
  assert names == sorted(checkpoints[1].get_variable_to_shape_map()), (
      'the rerun checkpoint has other variables than the first run')
  differing = [name for name in names
               if name != '_CHECKPOINTABLE_OBJECT_GRAPH' and not np.array_equal(
                   checkpoints[0].get_tensor(name),
                   checkpoints[1].get_tensor(name))]
  assert not differing, f'weights differ between the runs: {differing}'


# Blessing and pushing.


def test_unblessed_pusher_skips(amazon_run, tmp_path):
  name = amazon_run.config.model_name
  before = _versions(amazon_run.serving_dir, name)
  result = pusher.run_pusher(amazon_run.model_dir, False, ['reason'],
                             amazon_run.serving_dir, name,
                             str(tmp_path / 'pusher'))

  assert result.pushed is False, f'pushed an unblessed model: {result}'
  assert result.version is None, f'version {result.version} for no push'
  assert 'reason' in result.reason, f'reason {result.reason!r}'
  after = _versions(amazon_run.serving_dir, name)
  assert after == before, f'versions {before} became {after}'


def _strict_config(config: PipelineConfig) -> PipelineConfig:
  """Return the config with a tolerance that fails every served comparison.

  With tolerance -1.0 the candidate's main metric has to beat the served
  version's by 1.0, which no metric in [0, 1] can.
  """
  return dataclasses.replace(
      config, evaluator=dataclasses.replace(config.evaluator, tolerance=-1.0))


def test_significant_lead_gate_needs_interval_above_zero():
  config = load_config(os.path.join(REPO_ROOT, 'configs', 'mind.yaml'))
  gated = dataclasses.replace(config, evaluator=dataclasses.replace(
      config.evaluator, require_significant_lead=True))
  noisy = {'difference': 0.0025, 'lower': -0.0071, 'upper': 0.0123,
           'units': 937}
  results = {
      'category': {'candidate': {'macro_f1': 0.22},
                   'baseline': {'macro_f1': 0.03}},
      'click': {'candidate': {'group_auc': 0.5086},
                'baseline': {'group_auc': 0.5061},
                'difference': {'group_auc': noisy}},
  }

  # The main metric's point estimate beats the baseline.
  assert evaluator._bless(config, results, None) == []  # pylint: disable=protected-access
  assert evaluator._bless(gated, results, None) == [  # pylint: disable=protected-access
      'click: group_auc leads the baseline by +0.0025, 95% interval -0.0071 '
      'to +0.0123 over 937 impressions; the interval includes 0 and '
      'evaluator.require_significant_lead is set.']
  results['click']['difference']['group_auc'] = dict(noisy, lower=0.0004)
  assert evaluator._bless(gated, results, None) == []  # pylint: disable=protected-access


def test_strict_tolerance_not_blessed(amazon_run, tmp_path):
  result = evaluator.run_evaluator(
      _strict_config(amazon_run.config), amazon_run.examples_dir,
      amazon_run.model_dir, str(tmp_path / 'evaluator'),
      amazon_run.pushed_dir)

  assert result.blessed is False, f'blessed; reasons {result.reasons}'
  for task in amazon_run.config.tasks:
    below = [r for r in result.reasons
             if r.startswith(f'{task.name}:') and 'below the served' in r]
    assert below, f'{task.name}: no served comparison in {result.reasons}'
  assert os.path.isfile(os.path.join(
      str(tmp_path / 'evaluator'), evaluator.NOT_BLESSED_FILE)), (
          'NOT_BLESSED marker missing')


def test_strict_tolerance_skips_push(amazon_run, tmp_path):
  name = amazon_run.config.model_name
  pipeline_root = _copy_lineage(amazon_run, str(tmp_path / 'pipeline_root'))
  serving_dir = str(tmp_path / 'serving')
  # A served version with other bytes than the candidate, so the Evaluator
  # compares the two instead of reusing the candidate's own blessing.
  served_dir = os.path.join(serving_dir, name, '1')
  shutil.copytree(amazon_run.pushed_dir, served_dir)
  with open(os.path.join(served_dir, 'assets.extra', 'note.txt'), 'w',
            encoding='utf-8') as f:
    f.write('served before the candidate\n')

  summary = pipeline.run_pipeline(_strict_config(amazon_run.config), None,
                                  pipeline_root, serving_dir, [])

  statuses = _statuses(summary)
  assert statuses['evaluator'] == 'ran', f'statuses {statuses}'
  assert summary['blessed'] is False, (
      f'blessed; reasons {summary["blessing_reasons"]}')
  assert summary['push']['pushed'] is False, f'push {summary["push"]}'
  assert _versions(serving_dir, name) == ['1'], (
      f'versions {_versions(serving_dir, name)}')
  text = pipeline.format_summary(summary)
  assert 'not pushed: the model was not blessed' in text, text
  assert 'below the served' in text, text


def _model_without_saved_model_pb(model_dir: str, target: str) -> str:
  shutil.copytree(os.path.join(model_dir, 'variables'),
                  os.path.join(target, 'variables'))
  return target


def _model_with_dangling_link(model_dir: str, target: str) -> str:
  shutil.copytree(model_dir, target)
  os.symlink(os.path.join(target, 'missing.bin'),
             os.path.join(target, 'variables', 'dangling.bin'))
  return target


@pytest.mark.parametrize('make_model', [_model_without_saved_model_pb,
                                        _model_with_dangling_link])
def test_failed_push_keeps_versions(amazon_run, tmp_path, make_model):
  name = amazon_run.config.model_name
  serving_dir = str(tmp_path / 'serving')
  shutil.copytree(amazon_run.pushed_dir, os.path.join(serving_dir, name, '1'))
  before = _file_digests(os.path.join(serving_dir, name))
  broken_model = make_model(amazon_run.model_dir, str(tmp_path / 'broken'))

  with pytest.raises(OSError):
    pusher.push_model(broken_model, serving_dir, name)

  entries = sorted(os.listdir(os.path.join(serving_dir, name)))
  assert entries == ['1'], f'serving folder has {entries}'
  after = _file_digests(os.path.join(serving_dir, name))
  assert after == before, (
      f'files changed: {sorted(set(after.items()) ^ set(before.items()))}')


# Caching.


def test_rerun_reuses_components(amazon_run):
  name = amazon_run.config.model_name
  summary = pipeline.run_pipeline(amazon_run.config, None,
                                  amazon_run.pipeline_root,
                                  amazon_run.serving_dir, [])

  statuses = _statuses(summary)
  for component in ('example_gen', 'statistics_gen', 'transform', 'trainer',
                    'evaluator', 'pusher'):
    assert statuses[component] == 'reused', (
        f'{component} {statuses[component]}; all statuses {statuses}')
  assert summary['blessed'] is True, f'reasons {summary["blessing_reasons"]}'
  assert _versions(amazon_run.serving_dir, name) == ['1'], (
      f'versions {_versions(amazon_run.serving_dir, name)}')
  assert summary['push']['path'] == amazon_run.pushed_dir, (
      f'push {summary["push"]}')


def test_served_rerun_keeps_blessing(amazon_run, tmp_path):
  name = amazon_run.config.model_name
  pipeline_root = _copy_lineage(amazon_run, str(tmp_path / 'pipeline_root'))
  other_serving = str(tmp_path / 'other_serving')
  other_served = os.path.join(other_serving, name, '1')
  shutil.copytree(amazon_run.pushed_dir, other_served)
  with open(os.path.join(other_served, 'assets.extra', 'note.txt'), 'w',
            encoding='utf-8') as f:
    f.write('served before the candidate\n')
  strict = pipeline.run_pipeline(_strict_config(amazon_run.config), None,
                                 pipeline_root, other_serving, [])
  assert strict['blessed'] is False, 'the strict run was blessed'

  # The candidate is already served here, as version 1.
  serving_dir = str(tmp_path / 'serving')
  shutil.copytree(amazon_run.pushed_dir, os.path.join(serving_dir, name, '1'))
  summary = pipeline.run_pipeline(amazon_run.config, None, pipeline_root,
                                  serving_dir, [])

  components = [c['component'] for c in summary['components']]
  assert components.count('pusher') == 1, f'components {components}'
  assert summary['blessed'] is True, (
      f'the served model lost its blessing: {summary["blessing_reasons"]}')


def _edit_first_review(source: str, target: str) -> None:
  """Copy the reviews CSV with one character of the first review changed."""
  with open(source, encoding='utf-8', newline='') as f:
    rows = list(csv.reader(f))
  text_column = rows[0].index('Text')
  old = rows[1][text_column]
  rows[1][text_column] = old.replace('a', 'e', 1)
  assert rows[1][text_column] != old, f'no "a" in the first review: {old!r}'
  with open(target, 'w', encoding='utf-8', newline='') as f:
    csv.writer(f).writerows(rows)


def test_data_edit_reruns_example_gen(tmp_path):
  config = load_config(AMAZON_CONFIG)
  # data.path is ../data/sample/Reviews.csv, relative to --data-dir.
  data_dir = tmp_path / 'snapshot' / 'configs'
  data_dir.mkdir(parents=True)
  csv_path = tmp_path / 'snapshot' / 'data' / 'sample' / 'Reviews.csv'
  csv_path.parent.mkdir(parents=True)
  shutil.copy(AMAZON_CSV, csv_path)
  pipeline_root = str(tmp_path / 'pipeline_root')
  serving_dir = str(tmp_path / 'serving')

  def example_gen_status() -> str:
    summary = pipeline.run_pipeline(config, str(data_dir), pipeline_root,
                                    serving_dir, [], until='example_gen')
    assert summary['data_path'] == str(csv_path), summary['data_path']
    return _statuses(summary)['example_gen']

  assert example_gen_status() == 'ran'
  assert example_gen_status() == 'reused'
  _edit_first_review(AMAZON_CSV, str(csv_path))
  assert example_gen_status() == 'ran'


# Quality.


def test_fixture_run_blessed(amazon_run):
  summary = amazon_run.summary
  assert summary['blessed'] is True, f'reasons {summary["blessing_reasons"]}'
  for task in amazon_run.config.tasks:
    result = summary['tasks'][task.name]
    assert result['main_metric'] == 'macro_f1', result['main_metric']
    model, baseline = result['metrics']['macro_f1'], result['baseline'][
        'macro_f1']
    assert model > baseline, (
        f'{task.name}: macro_f1 {model:.4f} <= baseline {baseline:.4f}')


def test_fixture_summary_reports_push(amazon_run):
  summary = json.loads(json.dumps(amazon_run.summary, default=str))
  assert summary['push']['pushed'] is True, summary['push']
  assert summary['push']['version'] == 1, summary['push']
  assert summary['push']['path'] == os.path.join(
      amazon_run.serving_dir, 'amazon_fine_food', '1'), summary['push']
  text = pipeline.format_summary(amazon_run.summary)
  assert 'pushed amazon_fine_food version 1' in text, text


# The generic adapter.

_TOPIC_WORDS = {
    'astronomy': ['telescope', 'orbit', 'comet', 'nebula', 'galaxy', 'planet',
                  'eclipse', 'asteroid', 'meteor', 'star'],
    'cooking': ['oven', 'recipe', 'garlic', 'saucepan', 'butter', 'simmer',
                'onion', 'dough', 'skillet', 'pepper'],
}
_FILLER_WORDS = ['the', 'a', 'we', 'saw', 'with', 'today', 'again', 'very',
                 'our', 'new']
_CHANNELS = ['web', 'mobile', 'email']

_GENERIC_CONFIG = '''
pipeline_name: topics
model_name: topics
seed: 7
data:
  adapter: generic
  path: posts.csv
  format: csv
  columns:
    example_id: post_id
    text: body
    channel: channel
    topic: topic
split:
  hash_key: example_id
  validation_fraction: 0.1
  eval_fraction: 0.2
features:
  - {name: text, type: text}
  - {name: channel, type: categorical}
text:
  max_tokens: 16
  top_k: 500
  frequency_threshold: 1
  oov_buckets: 2
tasks:
  - {name: topic, type: multiclass, label: topic,
     classes: [astronomy, cooking], main_metric: accuracy}
model:
  trunk: lstm
  embedding_dim: 16
  units: 16
  id_embedding_dim: 4
  hidden_units: [16]
  dropout: 0.1
trainer:
  batch_size: 16
  epochs: 8
  optimizer: adam
  learning_rate: 0.02
  early_stopping_patience: 3
'''


def _write_posts(path: str, rows: int) -> None:
  """Write short posts whose topic words never overlap between topics."""
  rng = random.Random(0)
  topics = sorted(_TOPIC_WORDS)
  with open(path, 'w', encoding='utf-8', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['post_id', 'body', 'channel', 'topic'])
    for index in range(rows):
      topic = topics[index % len(topics)]
      words = (rng.sample(_TOPIC_WORDS[topic], 3) +
               rng.sample(_FILLER_WORDS, 3))
      rng.shuffle(words)
      writer.writerow([f'p{index:03d}', ' '.join(words),
                       rng.choice(_CHANNELS), topic])


def test_generic_adapter_trains(tmp_path):
  _write_posts(str(tmp_path / 'posts.csv'), 120)
  config_path = tmp_path / 'topics.yaml'
  config_path.write_text(_GENERIC_CONFIG, encoding='utf-8')
  serving_dir = str(tmp_path / 'serving')

  summary = pipeline.run_pipeline(load_config(str(config_path)), None,
                                  str(tmp_path / 'pipeline_root'),
                                  serving_dir, [])

  assert summary['examples']['rejected_fraction'] == 0.0, summary['examples']
  accuracy = summary['tasks']['topic']['metrics']['accuracy']
  assert accuracy >= 0.9, f'topic eval accuracy {accuracy:.4f}'
  assert summary['blessed'] is True, f'reasons {summary["blessing_reasons"]}'
  assert summary['push']['pushed'] is True, summary['push']
  assert _versions(serving_dir, 'topics') == ['1'], (
      f'versions {_versions(serving_dir, "topics")}')
