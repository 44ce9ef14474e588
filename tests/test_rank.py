"""The `rank` signature of a click model: one request per impression.

A small generated click log, where each user clicks the stories of one
topic, trains a binary click task through the generic adapter. The config
serves the click task through `rank`, so the Evaluator's per-impression
metrics come from `rank` scores, which must equal the click probabilities
of the `from_examples` signature on the same rows.
"""

import collections
import csv
import os
import random

import numpy as np
import pytest
import tensorflow as tf

import pipeline
from components import artifacts
from components.config import load_config

_CONFIG = '''
pipeline_name: clicks
model_name: clicks
seed: 3
data:
  adapter: generic
  path: clicks.csv
  format: csv
  columns:
    example_id: row_id
    impression_id: impression_id
    user_id: user_id
    history: history
    news_id: news_id
    title: title
    click: click
  types:
    history: string_list
split:
  hash_key: impression_id
  validation_fraction: 0.1
  eval_fraction: 0.2
features:
  - {name: history, type: id_sequence, vocabulary: news_id, max_length: 8}
  - {name: news_id, type: categorical, vocabulary: news_id}
  - {name: title, type: text}
text:
  max_tokens: 8
  top_k: 500
  frequency_threshold: 1
  oov_buckets: 2
tasks:
  - {name: click, type: binary, label: click, classes: ["0", "1"],
     positive_class: "1", group_key: impression_id, popularity_key: news_id}
serving:
  rank_task: click
  query_key: user_id
  query_features: [history]
  candidate_features: [news_id, title]
model:
  trunk: lstm
  embedding_dim: 16
  units: 16
  id_embedding_dim: 8
  hidden_units: [32]
  dropout: 0.0
trainer:
  batch_size: 32
  epochs: 6
  optimizer: adam
  learning_rate: 0.01
  early_stopping_patience: 6
'''

_TOPICS = {'space': ['orbit', 'rocket', 'planet', 'comet', 'star'],
           'food': ['bread', 'soup', 'pasta', 'salad', 'cheese']}


def _write_clicks(path: str, impressions: int) -> None:
  """Write a click log where each user clicks only the stories of one topic.

  Each user's history also comes from that topic.
  """
  rng = random.Random(0)
  stories = {f'N{i}': sorted(_TOPICS)[i % 2] for i in range(30)}
  titles = {story: ' '.join(rng.sample(_TOPICS[topic], 3))
            for story, topic in stories.items()}
  by_topic = collections.defaultdict(list)
  for story, topic in stories.items():
    by_topic[topic].append(story)
  with open(path, 'w', encoding='utf-8', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['row_id', 'impression_id', 'user_id', 'history',
                     'news_id', 'title', 'click'])
    for impression in range(impressions):
      user = f'U{impression % 40}'
      topic = sorted(_TOPICS)[impression % 40 % 2]
      history = rng.sample(by_topic[topic], 4)
      shown_stories = rng.sample(sorted(stories), 6)
      for position, story in enumerate(shown_stories):
        writer.writerow([f'I{impression}-{position}', f'I{impression}', user,
                         ' '.join(history), story, titles[story],
                         '1' if stories[story] == topic else '0'])


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp('clicks')
  _write_clicks(str(root / 'clicks.csv'), 300)
  (root / 'clicks.yaml').write_text(_CONFIG, encoding='utf-8')
  config = load_config(str(root / 'clicks.yaml'))
  summary = pipeline.run_pipeline(config, None, str(root / 'runs'),
                                  str(root / 'serving'), [],
                                  until='evaluator')
  return summary


def _component_dir(summary, name):
  return next(c['output_dir'] for c in summary['components']
              if c['component'] == name)


def test_rank_metrics_beat_popularity(run):
  click = run['tasks']['click']
  for metric in ('group_auc', 'mrr', 'ndcg@5', 'ndcg@10'):
    assert click['metrics'][metric] > click['baseline'][metric] + 0.1, metric
  assert click['metrics']['group_auc'] > 0.9


def test_rank_metrics_report_a_bootstrap_interval(run):
  click = run['tasks']['click']
  for metric in ('group_auc', 'mrr', 'ndcg@5', 'ndcg@10'):
    interval = click['difference'][metric]
    assert interval['difference'] == pytest.approx(
        click['metrics'][metric] - click['baseline'][metric]), metric
    assert 0 < interval['lower'] <= interval['difference'] <= interval[
        'upper'], metric
    assert interval['units'] == click['metrics']['impressions']
  report = open(os.path.join(_component_dir(run, 'evaluator'), 'report.md'),
                encoding='utf-8').read()
  lower = click['difference']['mrr']['lower']
  assert f'| click | mrr | {click["difference"]["mrr"]["difference"]:+.4f}' \
      f' | {lower:+.4f} to ' in report
  assert 'model minus baseline over' in pipeline.format_summary(run)


def test_rank_scores_equal_click_probabilities(run):
  model_dir = os.path.join(_component_dir(run, 'trainer'), 'serving_model')
  loaded = tf.saved_model.load(model_dir)
  records = list(artifacts.read_records(_component_dir(run, 'example_gen'),
                                        'eval'))[:12]
  examples = [tf.train.Example.FromString(r).features.feature
              for r in records]
  probabilities = loaded.signatures['from_examples'](
      examples=tf.constant(records))['click_probabilities'].numpy()[:, 1]

  impressions = collections.OrderedDict()
  for row, feature in enumerate(examples):
    impression = feature['impression_id'].bytes_list.value[0]
    impressions.setdefault(impression, []).append(row)
  width = max(len(rows) for rows in impressions.values())
  history, candidates = [], []
  for rows in impressions.values():
    history.append([v for v in examples[rows[0]]['history'].bytes_list.value])
    candidates.append([examples[r]['news_id'].bytes_list.value[0]
                       for r in rows] + [b''] * (width - len(rows)))
  depth = max(len(h) for h in history)
  history = [h + [b''] * (depth - len(h)) for h in history]
  scores = loaded.signatures['rank'](
      history=tf.constant(history),
      candidates=tf.constant(candidates))['scores'].numpy()

  for index, rows in enumerate(impressions.values()):
    np.testing.assert_allclose(scores[index, :len(rows)],
                               probabilities[rows], rtol=1e-5, atol=1e-6)
    assert np.all(scores[index, len(rows):] == 0.0)
