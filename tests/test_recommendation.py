"""Retrieval, rating and genres on MovieLens 100K, end to end.

One pipeline run of `configs/movielens.yaml` (fewer epochs) trains the joint
model and pushes it. The tests check that histories come from the train
split only, that every task beats its baseline, and that the `recommend` and
`rank` signatures return the same results in process, over gRPC and over
REST.
"""

import collections
import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

import pipeline
from components import artifacts
from components.config import load_config
from serving import client as serving_client
from serving.client import ServingError
from serving.saved_model_session import SavedModelSession
import graph_checks
import serving_fixtures

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO_ROOT, 'configs', 'movielens.yaml')
MODEL = 'movielens'
QUERY_FEATURES = ('user_id', 'history', 'occupation', 'gender', 'age')
EPOCHS = 4


def _values(example: tf.train.Example, name: str):
  feature = example.features.feature[name]
  kind = feature.WhichOneof('kind')
  values = list(getattr(feature, kind).value) if kind else []
  return [v.decode('utf-8') if isinstance(v, bytes) else v for v in values]


@pytest.fixture(scope='module')
def movielens_dir(data_dir):
  path = os.path.join(data_dir, 'movielens-100k')
  if not os.path.isfile(os.path.join(path, 'u.data')):
    pytest.skip(f'MovieLens 100K not found in {path}.')
  return path


@pytest.fixture(scope='module')
def run(movielens_dir, tmp_path_factory):
  """Run the whole pipeline once and return its summary and serving folder."""
  root = tmp_path_factory.mktemp('movielens')
  config = load_config(CONFIG)
  config = dataclasses.replace(config, trainer=dataclasses.replace(
      config.trainer, epochs=EPOCHS))
  serving_dir = str(root / 'serving')
  summary = pipeline.run_pipeline(config, movielens_dir, str(root / 'runs'),
                                  serving_dir, [])
  return summary, serving_dir


@pytest.fixture(scope='module')
def splits(run):
  """Read the raw examples that ExampleGen wrote, as dicts per split name."""
  summary, _ = run
  examples_dir = next(c['output_dir'] for c in summary['components']
                      if c['component'] == 'example_gen')
  result = {}
  for split in ('train', 'validation', 'eval'):
    rows = []
    for record in artifacts.read_records(examples_dir, split):
      example = tf.train.Example.FromString(record)
      rows.append({name: _values(example, name) for name in
                   ('user_id', 'item_id', 'history', 'rating', 'title',
                    'occupation', 'gender', 'age')})
    result[split] = rows
  return result


@pytest.fixture(scope='module')
def model_dir(run):
  summary, serving_dir = run
  assert summary['push']['pushed'], summary.get('blessing_reasons')
  return os.path.join(serving_dir, MODEL, str(summary['push']['version']))


@pytest.fixture(scope='module')
def loaded(model_dir):
  return tf.saved_model.load(model_dir)


def _train_items(splits):
  items = collections.defaultdict(set)
  for row in splits['train']:
    if row['user_id'][0]:
      items[row['user_id'][0]].add(row['item_id'][0])
  return items


def _query(row, k, exclude=()):
  """Build a one-row `recommend` request for the user of an example row."""
  return {'user_id': [row['user_id'][0]], 'history': [row['history']],
          'occupation': [row['occupation'][0]], 'gender': [row['gender'][0]],
          'age': [row['age'][0]], 'k': [k], 'exclude': [list(exclude)]}


def _tensors(request):
  tensors = {}
  for name, value in request.items():
    if name == 'k':
      tensors[name] = tf.constant(value, tf.int32)
    elif name == 'age':
      tensors[name] = tf.constant(value, tf.int64)
    elif name in ('history', 'exclude'):
      width = max(len(v) for v in value)
      tensors[name] = tf.constant(
          [list(v) + [''] * (width - len(v)) for v in value],
          shape=[len(value), width], dtype=tf.string)
    else:
      tensors[name] = tf.constant(value)
  return tensors


def _recommend(loaded, request):
  outputs = loaded.signatures['recommend'](**_tensors(request))
  return {name: value.numpy() for name, value in outputs.items()}


def _users_by_eval_count(splits, count):
  eval_counts = collections.Counter(
      row['user_id'][0] for row in splits['eval'] if row['user_id'][0])
  return [user for user, _ in eval_counts.most_common(count)]


def _row_of_user(splits, user):
  return next(row for row in splits['eval'] if row['user_id'][0] == user)


def test_histories_contain_train_items_only(splits):
  train_items = _train_items(splits)
  checked = 0
  for split, rows in splits.items():
    for row in rows:
      user = row['user_id'][0]
      if not user:
        assert row['history'] == []
        continue
      history = set(row['history'])
      assert history <= train_items[user], (split, user)
      if split == 'train':
        assert row['item_id'][0] not in history
      else:
        # Validation and eval rows get the user's whole train history, up
        # to the configured max_length of 50.
        expected = min(len(train_items[user]), 50)
        assert len(row['history']) == expected
      checked += 1
  assert checked > 99_000


def test_every_task_beats_its_baseline(run):
  summary, _ = run
  tasks = summary['tasks']
  retrieval = tasks['retrieval']
  assert retrieval['metrics']['top_100_accuracy'] > (
      retrieval['baseline']['top_100_accuracy'] + 0.05)
  assert tasks['rating']['metrics']['rmse'] < (
      tasks['rating']['baseline']['rmse'] - 0.1)
  assert tasks['genres']['metrics']['mean_average_precision'] > (
      tasks['genres']['baseline']['mean_average_precision'] + 0.05)
  assert summary['blessed']


def test_recommend_returns_distinct_ids_with_titles(loaded, splits):
  titles = {row['item_id'][0]: row['title'][0]
            for rows in splits.values() for row in rows}
  row = _row_of_user(splits, _users_by_eval_count(splits, 1)[0])
  top50 = _recommend(loaded, _query(row, 50))
  ids = top50['item_ids'][0].astype(str)
  assert ids.shape == (50,)
  assert len(set(ids)) == 50
  assert [t.decode('utf-8') for t in top50['titles'][0]] == [
      titles[i] for i in ids]
  assert np.all(np.diff(top50['scores'][0]) <= 0)
  assert top50['source'][0] == b'model'

  top3 = _recommend(loaded, _query(row, 3))
  assert list(top3['item_ids'][0].astype(str)) == list(ids[:3])

  excluded = list(ids[:5])
  without = _recommend(loaded, _query(row, 50, excluded))
  remaining_ids = without['item_ids'][0].astype(str)
  assert len(set(remaining_ids)) == 50
  assert not set(remaining_ids) & set(excluded)
  assert list(remaining_ids[:45]) == list(ids[5:])


def test_unknown_user_gets_most_rated_movies(loaded, splits):
  counts = collections.Counter(
      row['item_id'][0] for row in splits['train'] if row['user_id'][0])
  popular = sorted(counts, key=lambda i: (-counts[i], i))[:10]
  request = {'user_id': ['no-such-user'], 'history': [[]],
             'occupation': [''], 'gender': [''], 'age': [0], 'k': [10],
             'exclude': [[popular[0]]]}
  outputs = _recommend(loaded, request)
  assert outputs['source'][0] == b'popularity'
  assert list(outputs['item_ids'][0].astype(str)) == popular[1:] + [
      sorted(counts, key=lambda i: (-counts[i], i))[10]]


def test_rank_scores_equal_recommend_scores(loaded, splits):
  row = _row_of_user(splits, _users_by_eval_count(splits, 1)[0])
  top = _recommend(loaded, _query(row, 10))
  request = _query(row, 10)
  del request['k'], request['exclude']
  candidates = list(top['item_ids'][0].astype(str)[::-1]) + ['']
  tensors = _tensors(request)
  tensors['candidates'] = tf.constant([candidates])
  scores = loaded.signatures['rank'](**tensors)['scores'].numpy()[0]
  np.testing.assert_allclose(scores[:10], top['scores'][0][::-1], rtol=1e-5,
                             atol=1e-5)
  assert scores[10] == 0.0


@pytest.fixture(scope='module')
def server(run, tmp_path_factory):
  _, serving_dir = run
  log_path = tmp_path_factory.mktemp('server') / 'server.log'
  with serving_fixtures.running_server(
      MODEL, os.path.join(serving_dir, MODEL), log_path) as targets:
    yield targets


@pytest.fixture(params=['grpc', 'rest'])
def client(request, server):
  with serving_fixtures.connected_client(request.param, server,
                                         MODEL) as connected:
    yield connected


@pytest.mark.parametrize('k', [3, 50])
def test_served_recommend_matches_in_process(client, loaded, splits, k):
  hits_served = hits_in_process = 0
  for user in _users_by_eval_count(splits, 5):
    row = _row_of_user(splits, user)
    excluded = sorted(row['history'])[:3]
    expected = _recommend(loaded, _query(row, k, excluded))
    served = client.recommend(
        {name: _query(row, k)[name] for name in QUERY_FEATURES}, k=k,
        exclude=[excluded])
    ids = served['item_ids'][0].astype(str)
    assert list(ids) == list(expected['item_ids'][0].astype(str))
    assert len(set(ids)) == k
    assert not set(ids) & set(excluded)
    assert [t.decode('utf-8') if isinstance(t, bytes) else t
            for t in served['titles'][0]] == [
                t.decode('utf-8') for t in expected['titles'][0]]
    np.testing.assert_allclose(served['scores'][0], expected['scores'][0],
                               rtol=1e-6)
    held_out = {r['item_id'][0] for r in splits['eval']
                if r['user_id'][0] == user}
    hits_served += len(held_out & set(ids))
    hits_in_process += len(held_out & set(
        expected['item_ids'][0].astype(str)))
  assert hits_served == hits_in_process
  if k == 50:
    assert hits_served > 0


def test_k_above_max_k_is_rejected(client, splits):
  row = _row_of_user(splits, _users_by_eval_count(splits, 1)[0])
  with pytest.raises(ServingError) as raised:
    client.recommend({name: _query(row, 1)[name] for name in QUERY_FEATURES},
                     k=101)
  assert raised.value.code == 'INVALID_ARGUMENT'
  # The graph's assertion, without TensorFlow's node dump.
  assert raised.value.message == (
      'k must be at most 100, the configured max_k (got 101)')


def test_served_rank_matches_in_process(client, loaded, splits):
  row = _row_of_user(splits, _users_by_eval_count(splits, 2)[1])
  top = _recommend(loaded, _query(row, 5))
  candidates = [list(top['item_ids'][0].astype(str))]
  scores = client.rank({name: _query(row, 1)[name] for name in QUERY_FEATURES},
                       candidates)
  np.testing.assert_allclose(scores[0], top['scores'][0], rtol=1e-5,
                             atol=1e-5)


def _query_flags(row) -> list:
  """Return the client command line's --feature flags for a row's user."""
  return ['--feature', f'user_id={row["user_id"][0]}',
          '--feature', f'history={" ".join(row["history"])}',
          '--feature', f'occupation={row["occupation"][0]}',
          '--feature', f'gender={row["gender"][0]}',
          '--feature', f'age={row["age"][0]}']


def test_recommend_command_prints_titles(server, loaded, splits, capsys):
  _, rest_url = server
  row = _row_of_user(splits, _users_by_eval_count(splits, 1)[0])
  expected = _recommend(loaded, _query(row, 3))
  code = serving_client.main([
      'recommend', '--model', MODEL, '--rest', rest_url, '--k', '3'] +
                             _query_flags(row))
  assert code == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == '# row 0: ranked by the model'
  for rank, (item, title) in enumerate(zip(expected['item_ids'][0],
                                           expected['titles'][0]), start=1):
    assert lines[rank].split()[:2] == [str(rank), item.decode('utf-8')]
    assert lines[rank].endswith(title.decode('utf-8'))


def test_rank_command_prints_best_first(server, loaded, splits, capsys):
  grpc_target, _ = server
  row = _row_of_user(splits, _users_by_eval_count(splits, 2)[1])
  top = _recommend(loaded, _query(row, 4))
  best_first = [item.decode('utf-8') for item in top['item_ids'][0]]
  code = serving_client.main([
      'rank', '--model', MODEL, '--grpc', grpc_target,
      '--candidates', ' '.join(reversed(best_first))] + _query_flags(row))
  assert code == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == '# row 0: 4 candidates, best first'
  for rank, (item, score) in enumerate(zip(best_first, top['scores'][0]),
                                       start=1):
    printed_rank, printed_item, printed_score = lines[rank].split()
    assert (int(printed_rank), printed_item) == (rank, item)
    assert float(printed_score) == pytest.approx(float(score), abs=1e-4)


def test_session_recommend_matches_tf2_call(model_dir, loaded, splits):
  row = _row_of_user(splits, _users_by_eval_count(splits, 3)[2])
  request = _query(row, 20, sorted(row['history'])[:2])
  expected = _recommend(loaded, request)
  session = SavedModelSession(model_dir)
  try:
    inputs = {name: value.numpy() for name, value in
              _tensors(request).items()}
    outputs = session.run(inputs, signature_name='recommend')
    ops = session.op_types()
  finally:
    session.close()
  assert list(outputs['item_ids'][0]) == list(expected['item_ids'][0])
  np.testing.assert_allclose(outputs['scores'][0], expected['scores'][0],
                             rtol=1e-6)
  not_in_core = graph_checks.unregistered_ops(sorted(ops), with_text=False)
  assert not graph_checks.unregistered_ops(not_in_core, with_text=True)


def test_served_unknown_user_needs_only_its_id(client, splits):
  counts = collections.Counter(
      row['item_id'][0] for row in splits['train'] if row['user_id'][0])
  popular = sorted(counts, key=lambda i: (-counts[i], i))[:5]
  outputs = client.recommend({'user_id': ['no-such-user']}, k=5)
  assert outputs['source'][0] in (b'popularity', 'popularity')
  assert list(outputs['item_ids'][0].astype(str)) == popular
  np.testing.assert_allclose(outputs['scores'][0],
                             np.log1p([counts[i] for i in popular]),
                             rtol=1e-6)
