"""The MovieLens 100K adapter on the published files, run end to end through
ExampleGen with Beam's DirectRunner (in memory)."""

import glob
import json
import os
import shutil
from typing import Any, Dict, List

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that, equal_to
import pytest
import tensorflow as tf

from components import beam_options
from components import example_gen
from components.adapters import movielens
from components.config import parse_config

NUM_RATINGS = 100_000
NUM_MOVIES = 1_682
NUM_USERS = 943
GENRE_NAMES = [
    'unknown', 'Action', 'Adventure', 'Animation', "Children's", 'Comedy',
    'Crime', 'Documentary', 'Drama', 'Fantasy', 'Film-Noir', 'Horror',
    'Musical', 'Mystery', 'Romance', 'Sci-Fi', 'Thriller', 'War', 'Western',
]


def _config(max_rejected_fraction: float = 0.0):
  return parse_config({
      'pipeline_name': 'movielens_test',
      'data': {'adapter': 'movielens', 'path': '.',
               'max_rejected_fraction': max_rejected_fraction},
      'split': {'hash_key': 'example_id', 'validation_fraction': 0.1,
                'eval_fraction': 0.2},
      'features': [
          {'name': 'title', 'type': 'text'},
          {'name': 'user_id', 'type': 'categorical'},
          {'name': 'item_id', 'type': 'categorical'},
      ],
      'tasks': [{'name': 'rating', 'type': 'multiclass', 'label': 'rating',
                 'classes': ['1', '2', '3', '4', '5']}],
  })


def _read_split(result, split: str) -> List[Dict[str, Any]]:
  """Decode one split's TFRecords into dicts of Python values."""
  types = result.feature_types
  spec = {}
  for name, feature_type in types.items():
    if feature_type == 'string_list':
      spec[name] = tf.io.RaggedFeature(tf.string)
    else:
      dtype = tf.int64 if feature_type == 'int' else tf.string
      spec[name] = tf.io.FixedLenFeature([], dtype)

  files = sorted(glob.glob(
      os.path.join(result.split_dirs[split], 'data_tfrecord-*.gz')))
  dataset = (tf.data.TFRecordDataset(files, compression_type='GZIP')
             .batch(8192)
             .map(lambda batch: tf.io.parse_example(batch, spec)))
  examples = []
  for batch in dataset.as_numpy_iterator():
    columns = {}
    for name, feature_type in types.items():
      if feature_type == 'string':
        columns[name] = [v.decode('utf-8') for v in batch[name]]
      elif feature_type == 'string_list':
        columns[name] = [[v.decode('utf-8') for v in values]
                         for values in batch[name]]
      else:
        columns[name] = batch[name].tolist()
    size = len(columns['example_id'])
    examples.extend({name: columns[name][i] for name in types}
                    for i in range(size))
  return examples


def _read_splits(result) -> Dict[str, List[Dict[str, Any]]]:
  return {split: _read_split(result, split) for split in example_gen.SPLITS}


def _by_id(splits) -> Dict[str, Dict[str, Any]]:
  return {e['example_id']: e for examples in splits.values() for e in examples}


def _read_rejected(output_dir: str) -> List[Dict[str, Any]]:
  rows = []
  pattern = os.path.join(output_dir, 'rejected', 'rejected-*.jsonl')
  for path in sorted(glob.glob(pattern)):
    with open(path, encoding='utf-8') as f:
      rows.extend(json.loads(line) for line in f)
  return rows


def _pipe_rows(path: str) -> List[List[str]]:
  with open(path, encoding='latin-1') as f:
    return [line.rstrip('\n').split('|') for line in f if line.strip()]


@pytest.fixture(scope='module')
def movielens_dir(data_dir) -> str:
  path = os.path.join(data_dir, 'movielens-100k')
  if not os.path.isdir(path):
    pytest.skip(f'MovieLens 100K not found at {path}.')
  return path


@pytest.fixture(scope='module')
def full_run(movielens_dir, tmp_path_factory):
  output_dir = str(tmp_path_factory.mktemp('movielens'))
  result = example_gen.run_example_gen(_config(), movielens_dir, output_dir)
  return result, _read_splits(result)


@pytest.fixture(scope='module')
def movies(movielens_dir) -> Dict[str, List[str]]:
  return {row[0]: row for row in _pipe_rows(
      os.path.join(movielens_dir, 'u.item'))}


@pytest.fixture(scope='module')
def users(movielens_dir) -> Dict[str, List[str]]:
  return {row[0]: row for row in _pipe_rows(
      os.path.join(movielens_dir, 'u.user'))}


def test_full_data_counts(full_run, movielens_dir):
  result, splits = full_run
  counts = result.counts
  path = lambda name: os.path.join(movielens_dir, name)

  assert counts['input_rows'] == {path('u.data'): NUM_RATINGS,
                                  path('u.item'): NUM_MOVIES,
                                  path('u.user'): NUM_USERS}
  assert set(counts['rejected_rows'].values()) == {0}
  assert _read_rejected(result.output_dir) == []
  assert sum(counts['examples'].values()) == NUM_RATINGS + NUM_MOVIES
  for split, examples in splits.items():
    assert counts['examples'][split] == len(examples), split

  examples = [e for s in splits.values() for e in s]
  ratings = [e for e in examples if e['rating']]
  movie_examples = [e for e in examples if not e['rating']]
  assert len(ratings) == NUM_RATINGS
  assert len(movie_examples) == NUM_MOVIES
  assert len({e['example_id'] for e in examples}) == len(examples)
  assert {e['user_id'] for e in ratings} == {str(i) for i in
                                            range(1, NUM_USERS + 1)}
  assert {e['example_id'] for e in movie_examples} == {
      f'item-{i}' for i in range(1, NUM_MOVIES + 1)}
  assert {e['rating'] for e in ratings} == {'1', '2', '3', '4', '5'}


def test_ratings_match_files(full_run, movielens_dir, movies, users):
  _, splits = full_run
  by_id = _by_id(splits)

  with open(os.path.join(movielens_dir, 'u.data'), encoding='ascii') as f:
    rows = [line.split() for line in f]
  assert len(rows) == NUM_RATINGS
  for user_id, item_id, rating, time in rows:
    example = by_id[f'{user_id}-{item_id}']
    assert example['rating'] == rating
    assert example['time'] == int(time)
    assert example['title'] == movies[item_id][1]
    assert example['age'] == int(users[user_id][1])
    assert example['zip_code'] == users[user_id][4]


def test_known_rating_decoded(full_run):
  _, splits = full_run
  by_id = _by_id(splits)

  # u.data line 1: user 196 rated Kolya (released 24-Jan-1997) with 3.
  kolya = by_id['196-242']
  assert kolya['user_id'] == '196'
  assert kolya['item_id'] == '242'
  assert kolya['time'] == 881250949
  assert kolya['rating'] == '3'
  assert kolya['title'] == 'Kolya (1996)'
  assert kolya['genres'] == ['Comedy']
  assert kolya['release_year'] == 1997
  assert kolya['age'] == 49
  assert kolya['gender'] == 'M'
  assert kolya['occupation'] == 'writer'
  assert kolya['zip_code'] == '55105'


def test_latin1_title_decoded(full_run):
  _, splits = full_run
  by_id = _by_id(splits)

  # u.data line 66942; u.item stores the title's first letter as byte 0xc1.
  rating = by_id['655-1633']
  assert rating['title'] == '\u00c1 k\u00f6ldum klaka (Cold Fever) (1994)'
  assert rating['genres'] == ['Comedy', 'Drama']
  assert rating['release_year'] == 1996
  assert rating['time'] == 889331315
  assert rating['rating'] == '3'
  assert rating['age'] == 50
  assert rating['gender'] == 'F'
  assert rating['occupation'] == 'healthcare'
  assert rating['zip_code'] == '60657'
  assert by_id['item-1322']['title'] == 'Metisse (Caf\u00e9 au Lait) (1993)'


def test_movie_examples_match_file(full_run, movies):
  _, splits = full_run
  by_id = _by_id(splits)

  for item_id, row in movies.items():
    example = by_id[f'item-{item_id}']
    flags = row[5:]
    assert example['item_id'] == item_id
    assert example['title'] == row[1]
    assert example['genres'] == [g for g, flag in zip(GENRE_NAMES, flags)
                                 if flag == '1'], item_id
    assert example['release_year'] == (int(row[2][-4:]) if row[2] else 0)
    assert example['rating'] == ''
    assert example['time'] == 0
    assert example['user_id'] == ''
    assert example['age'] == 0

  # Movie 267 has no title, release date or genre in u.item.
  unknown = by_id['item-267']
  assert unknown['title'] == 'unknown'
  assert unknown['release_year'] == 0
  assert unknown['genres'] == ['unknown']


def test_splits_deterministic_and_disjoint(full_run, movielens_dir, tmp_path):
  _, full_splits = full_run
  full_split_of = {e['example_id']: split
                   for split, examples in full_splits.items()
                   for e in examples}

  # A second run on the first 5,000 ratings puts each example id in the same
  # split, because the split hashes the example id alone.
  subset_dir = tmp_path / 'subset'
  subset_dir.mkdir()
  for name in ('u.item', 'u.user', 'u.genre'):
    os.symlink(os.path.join(movielens_dir, name), subset_dir / name)
  with open(os.path.join(movielens_dir, 'u.data'), 'rb') as f:
    head = [next(f) for _ in range(5000)]
  (subset_dir / 'u.data').write_bytes(b''.join(head))
  subset = example_gen.run_example_gen(_config(), str(subset_dir),
                                       str(tmp_path / 'out'))

  subset_splits = _read_splits(subset)
  assert sum(len(s) for s in subset_splits.values()) == 5000 + NUM_MOVIES
  for split, examples in subset_splits.items():
    for example in examples:
      assert full_split_of[example['example_id']] == split, example

  sizes = {split: len(examples) for split, examples in full_splits.items()}
  assert len(full_split_of) == sum(sizes.values())
  # 70/10/20 by an MD5 fingerprint of 101,682 ids, within 1 point.
  total = NUM_RATINGS + NUM_MOVIES
  assert abs(sizes['train'] / total - 0.7) < 0.01
  assert abs(sizes['validation'] / total - 0.1) < 0.01
  assert abs(sizes['eval'] / total - 0.2) < 0.01


def _movie_line(item_id: str, title: bytes, release_date: bytes,
                genres=(), flags=None) -> bytes:
  if flags is None:
    flags = [b'1' if g in genres else b'0' for g in GENRE_NAMES]
  return b'|'.join([item_id.encode(), title, release_date, b'',
                    b'http://example.invalid/' + item_id.encode(), *flags])


@pytest.fixture(scope='module')
def small_dir(movielens_dir, tmp_path_factory) -> str:
  """A MovieLens folder with a few good and a few malformed rows."""
  folder = tmp_path_factory.mktemp('small_movielens')
  shutil.copy(os.path.join(movielens_dir, 'u.genre'), folder / 'u.genre')
  bad_action_flags = [b'0'] * len(GENRE_NAMES)
  bad_action_flags[1] = b'2'
  movie_lines = [
      _movie_line('1', b'Toy Story (1995)', b'01-Jan-1995',
                  genres=('Animation', "Children's", 'Comedy')),     # row 1
      _movie_line('2', b'Caf\xe9 Society (2016)', b'15-Jul-2016',
                  genres=('Drama',)),                                 # row 2
      b'3|Too few columns|01-Jan-1995||http://example.invalid/3|0|1',  # row 3
      _movie_line('x4', b'Bad id (1995)', b'01-Jan-1995'),            # row 4
      _movie_line('5', b'Bad flag (1995)', b'01-Jan-1995',
                  flags=bad_action_flags),                            # row 5
      _movie_line('6', b'Bad date (1995)', b'1995-01-01'),            # row 6
      _movie_line('7', b'Smart \x93quotes\x94 (1995)', b'01-Jan-1995'),  # row 7
      _movie_line('1', b'Duplicate (1995)', b'01-Jan-1995'),          # row 8
      _movie_line('9', b'Nobody rated it', b'', genres=('unknown',)),  # row 9
  ]
  user_lines = [
      b'1|24|M|technician|85711',  # row 1
      b'2|53|F|other|94043',       # row 2
      b'3|old|M|writer|32067',     # row 3
      b'4|23|M|writer',            # row 4
      b'1|30|F|artist|12345',      # row 5
  ]
  rating_lines = [
      b'1\t1\t5\t881250949',      # row 1
      b'2\t2\t4\t881250950',      # row 2
      b'1\t99\t3\t881250951',     # row 3: movie 99 has no u.item row
      b'77\t1\t3\t881250952',     # row 4: user 77 has no u.user row
      b'1\t2\t6\t881250953',      # row 5
      b'1\t2\tfive\t881250954',   # row 6
      b'u1\t2\t3\t881250955',     # row 7
      b'1\t2\t3\tyesterday',      # row 8
      b'1\t2\t3\t-5',             # row 9
      b'1\t2\t3',                 # row 10
      b'1\t2\t3\t88125\xff0956',  # row 11
      b'2\t1\t3\t881250000',      # row 12: user 2 rated movie 1 twice
      b'2\t1\t4\t881260000',      # row 13
      b'2\t1\t4\t881260000',      # row 14: the same event as row 13
      b'0\t1\t3\t881250957',      # row 15
  ]
  (folder / 'u.item').write_bytes(b'\n'.join(movie_lines) + b'\n')
  (folder / 'u.user').write_bytes(b'\n'.join(user_lines) + b'\n')
  (folder / 'u.data').write_bytes(b'\n'.join(rating_lines) + b'\n')
  return str(folder)


@pytest.fixture(scope='module')
def small_run(small_dir, tmp_path_factory):
  output_dir = str(tmp_path_factory.mktemp('small_out'))
  result = example_gen.run_example_gen(
      _config(max_rejected_fraction=1.0), small_dir, output_dir)
  return result, _by_id(_read_splits(result))


SMALL_RATING_IDS = ['1-1', '2-2', '1-99', '77-1', '2-1-881250000',
                    '2-1-881260000']


def test_malformed_rows_rejected(small_run, small_dir):
  result, _ = small_run
  rejected = _read_rejected(result.output_dir)
  by_file = {}
  for row in rejected:
    by_file.setdefault(os.path.basename(row['source']), {})[row['row']] = row

  expected = {
      'u.data': {
          5: ['rating (column 3)', '6', 'are 1 to 5'],
          6: ['rating (column 3)', "'five'", 'not an integer'],
          7: ['user id (column 1)', "'u1'", 'not an integer'],
          8: ['timestamp (column 4)', "'yesterday'", 'not an integer'],
          9: ['timestamp (column 4)', '-5', 'Unix seconds'],
          10: ['3 tab-separated columns', 'have 4'],
          11: ['not valid UTF-8', '0xff'],
          14: ['item 1 at time 881260000', 'row 13'],
          15: ['user id (column 1)', 'is 0', 'count from 1'],
      },
      'u.item': {
          3: ['7 pipe-separated columns', 'have 24'],
          4: ['movie id (column 1)', "'x4'", 'not an integer'],
          5: ['Action genre flag (column 7)', "'2'", '0 or 1'],
          6: ['release date (column 3)', "'1995-01-01'", 'DD-Mon-YYYY'],
          7: ['0x93', 'control character', 'Latin-1'],
          8: ['movie id 1', 'row 1'],
      },
      'u.user': {
          3: ['age (column 2)', "'old'", 'not an integer'],
          4: ['4 pipe-separated columns', 'have 5'],
          5: ['user id 1', 'row 1'],
      },
  }
  assert {f: sorted(rows) for f, rows in by_file.items()} == {
      f: sorted(rows) for f, rows in expected.items()}
  for file_name, rows in expected.items():
    for row_number, fragments in rows.items():
      reason = by_file[file_name][row_number]['reason']
      for fragment in fragments:
        assert fragment in reason, (file_name, row_number, reason)
  assert by_file['u.item'][7]['raw'].startswith(
      '7|Smart \x93quotes\x94 (1995)|')


def test_small_counts_balance(small_run, small_dir):
  result, by_id = small_run
  counts = result.counts
  path = lambda name: os.path.join(small_dir, name)

  assert counts['input_rows'] == {path('u.data'): 15, path('u.item'): 9,
                                  path('u.user'): 5}
  assert counts['rejected_rows'] == {path('u.data'): 9, path('u.item'): 6,
                                     path('u.user'): 3}
  # Each u.data row is one rating example or one rejected row, and likewise
  # each u.item row is one movie example or one rejected row.
  ratings = sorted(i for i, e in by_id.items() if e['rating'])
  assert ratings == sorted(SMALL_RATING_IDS)
  assert sorted(i for i, e in by_id.items() if not e['rating']) == [
      'item-1', 'item-2', 'item-9']
  # The two u.user rows that were read went into ratings.
  assert by_id['1-1']['occupation'] == 'technician'
  assert by_id['2-2']['occupation'] == 'other'


def test_unknown_movie_and_user_kept(small_run):
  _, by_id = small_run

  no_movie = by_id['1-99']
  assert no_movie['item_id'] == '99'
  assert no_movie['rating'] == '3'
  assert no_movie['title'] == ''
  assert no_movie['genres'] == []
  assert no_movie['release_year'] == 0
  assert no_movie['gender'] == 'M'

  no_user = by_id['77-1']
  assert no_user['user_id'] == '77'
  assert no_user['title'] == 'Toy Story (1995)'
  assert no_user['gender'] == ''
  assert no_user['age'] == 0


def test_repeated_pair_ids_and_latin1(small_run):
  _, by_id = small_run

  assert by_id['2-1-881250000']['rating'] == '3'
  assert by_id['2-1-881260000']['rating'] == '4'
  assert '2-1' not in by_id
  assert by_id['2-2']['title'] == 'Caf\u00e9 Society (2016)'
  assert by_id['item-9']['release_year'] == 0
  assert by_id['item-9']['genres'] == ['unknown']
  assert by_id['item-1']['genres'] == ['Animation', "Children's", 'Comedy']


def test_movie_examples_switched_off(small_dir):
  adapter = example_gen.get_adapter(_config(), small_dir)
  assert isinstance(adapter, movielens.MovieLensAdapter)
  adapter.emit_movie_examples = False

  pipeline = beam.Pipeline(
      options=beam_options.pipeline_options([]))
  read = adapter.read(pipeline)
  ids = read.examples | 'ExampleIds' >> beam.Map(lambda e: e['example_id'])
  assert_that(ids, equal_to(SMALL_RATING_IDS))
  result = pipeline.run()
  result.wait_until_finish()

  counters = result.metrics().query(
      MetricsFilter().with_namespace('movielens'))['counters']
  by_name = {c.key.metric.name: c.committed for c in counters}
  assert by_name['movies_without_ratings'] == 1  # Movie 9.
  assert by_name['ratings_without_movie'] == 1   # Rating 1-99.
  assert by_name['ratings_without_user'] == 1    # Rating 77-1.


def test_genre_file_out_of_order(tmp_path):
  path = tmp_path / 'u.genre'
  path.write_text('unknown|0\nAction|2\n', encoding='latin-1')

  with pytest.raises(ValueError, match=r'line 2 .*index 1'):
    movielens.read_genres(str(path))
