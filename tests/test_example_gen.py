"""ExampleGen on real rows, run with Beam's DirectRunner (in memory)."""

import calendar
import csv
import dataclasses
import glob
import json
import os
import time
from typing import Any, Dict, List

import pytest
import tensorflow as tf

from components import example_gen
from components.config import load_config, parse_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AMAZON_CSV = os.path.join(REPO_ROOT, 'data', 'sample', 'Reviews.csv')
AMAZON_HEADER = ('Id,ProductId,UserId,ProfileName,HelpfulnessNumerator,'
                 'HelpfulnessDenominator,Score,Time,Summary,Text')


def _config(name: str, **data_overrides):
  config = load_config(os.path.join(REPO_ROOT, 'configs', f'{name}.yaml'))
  if data_overrides:
    data = dataclasses.replace(config.data, **data_overrides)
    config = dataclasses.replace(config, data=data)
  return config


def _parse_spec(feature_types: Dict[str, str]) -> Dict[str, Any]:
  """The tf.io parsing spec for the features, as the Transform reads them."""
  spec = {}
  for name, feature_type in feature_types.items():
    if feature_type == 'string_list':
      spec[name] = tf.io.RaggedFeature(tf.string)
    else:
      dtype = {'string': tf.string, 'int': tf.int64,
               'float': tf.float32}[feature_type]
      spec[name] = tf.io.FixedLenFeature([], dtype)
  return spec


def _to_python(value: Any, feature_type: str) -> Any:
  if feature_type == 'string':
    return value.decode('utf-8')
  if feature_type == 'string_list':
    return [v.decode('utf-8') for v in value]
  return value.item()


def _read_split(result, split: str) -> List[Dict[str, Any]]:
  """Decode one split's examples into dicts of Python values."""
  files = sorted(glob.glob(
      os.path.join(result.split_dirs[split], 'data_tfrecord-*.gz')))
  assert files, f'no TFRecord files in {result.split_dirs[split]}'
  types = result.feature_types
  spec = _parse_spec(types)
  dataset = (tf.data.TFRecordDataset(files, compression_type='GZIP')
             .batch(4096)
             .map(lambda batch: tf.io.parse_example(batch, spec)))
  examples = []
  for batch in dataset.as_numpy_iterator():
    size = len(batch['example_id'])
    examples.extend({name: _to_python(batch[name][i], types[name])
                     for name in types} for i in range(size))
  return examples


def _read_all(result) -> Dict[str, List[Dict[str, Any]]]:
  return {s: _read_split(result, s) for s in example_gen.SPLITS}


def _read_rejected(output_dir: str) -> List[Dict[str, Any]]:
  rows = []
  pattern = os.path.join(output_dir, 'rejected', 'rejected-*.jsonl')
  for path in sorted(glob.glob(pattern)):
    with open(path, encoding='utf-8') as f:
      rows.extend(json.loads(line) for line in f)
  return rows


def _by_row(rejected: List[Dict[str, Any]]) -> Dict[int, Dict[str, Any]]:
  return {r['row']: r for r in rejected}


@pytest.fixture(scope='module')
def amazon(tmp_path_factory):
  output_dir = str(tmp_path_factory.mktemp('amazon'))
  result = example_gen.run_example_gen(_config('amazon_fine_food'),
                                       AMAZON_CSV, output_dir)
  return result, _read_all(result)


@pytest.fixture(scope='module')
def amazon_rows() -> List[Dict[str, str]]:
  with open(AMAZON_CSV, encoding='utf-8', newline='') as f:
    return list(csv.DictReader(f))


def test_amazon_known_ids_labels(amazon):
  _, splits = amazon
  by_id = {e['example_id']: e for s in splits.values() for e in s}

  first = by_id['1']  # Score 5, 1 of 1 votes helpful.
  assert first['sentiment'] == 'positive'
  assert first['rating'] == '5'
  assert first['helpful'] == 'helpful'
  assert first['product_id'] == 'B001E4KFG0'
  assert first['time'] == 1303862400
  assert first['summary'] == 'Good Quality Dog Food'

  second = by_id['2']  # Score 1, no votes.
  assert second['sentiment'] == 'negative'
  assert second['rating'] == '1'
  assert second['helpful'] == ''
  assert second['helpfulness_denominator'] == 0


def test_amazon_labels_match_csv(amazon, amazon_rows):
  _, splits = amazon
  by_id = {e['example_id']: e for s in splits.values() for e in s}
  sentiments = {'1': 'negative', '2': 'negative', '3': 'neutral',
                '4': 'positive', '5': 'positive'}
  for row in amazon_rows:
    example = by_id[row['Id']]
    numerator = int(row['HelpfulnessNumerator'])
    denominator = int(row['HelpfulnessDenominator'])
    if denominator == 0:
      helpful = ''
    else:
      helpful = 'helpful' if 2 * numerator >= denominator else 'not_helpful'
    assert example['sentiment'] == sentiments[row['Score']], row['Id']
    assert example['rating'] == row['Score'], row['Id']
    assert example['helpful'] == helpful, row['Id']
    assert example['text'] == row['Text'], row['Id']
  labels = {e['helpful'] for e in by_id.values()}
  assert labels == {'', 'helpful', 'not_helpful'}


def test_amazon_every_row_accounted(amazon, amazon_rows):
  result, splits = amazon
  counts = result.counts
  with open(os.path.join(result.output_dir, 'counts.json')) as f:
    assert json.load(f) == counts

  assert len(amazon_rows) == 1000
  assert counts['input_rows'] == {AMAZON_CSV: 1000}
  assert counts['rejected_rows'] == {AMAZON_CSV: 0}
  assert counts['rejected_fraction'] == 0.0
  assert sum(counts['examples'].values()) == 1000
  for split, examples in splits.items():
    assert counts['examples'][split] == len(examples), split
  ids = [e['example_id'] for s in splits.values() for e in s]
  assert sorted(ids) == sorted(r['Id'] for r in amazon_rows)
  assert _read_rejected(result.output_dir) == []


def test_amazon_feature_kinds_match_types(amazon):
  result, _ = amazon
  with open(os.path.join(result.output_dir, 'feature_types.json')) as f:
    written = json.load(f)
  assert written == result.feature_types
  assert written['time'] == 'int'
  assert written['sentiment'] == 'string'

  kinds = {'string': 'bytes_list', 'int': 'int64_list'}
  pattern = os.path.join(result.split_dirs['eval'], 'data_tfrecord-*.gz')
  dataset = tf.data.TFRecordDataset(glob.glob(pattern),
                                    compression_type='GZIP')
  for serialized in dataset.take(20).as_numpy_iterator():
    features = tf.train.Example.FromString(serialized).features.feature
    assert set(features) == set(written)
    for name, feature in features.items():
      kind = feature.WhichOneof('kind')
      assert kind == kinds[written[name]], name
      assert len(getattr(feature, kind).value) == 1, name


def test_splits_deterministic_and_disjoint(amazon, tmp_path):
  first, first_splits = amazon
  second = example_gen.run_example_gen(_config('amazon_fine_food'),
                                       AMAZON_CSV, str(tmp_path))
  second_splits = _read_all(second)

  ids = {}
  for split in example_gen.SPLITS:
    ids[split] = {e['example_id'] for e in first_splits[split]}
    again = {e['example_id'] for e in second_splits[split]}
    assert ids[split] == again, split
  assert not ids['train'] & ids['validation']
  assert not ids['train'] & ids['eval']
  assert not ids['validation'] & ids['eval']
  # 70/10/20 by a fingerprint: loose bounds, exact values are pinned above.
  assert 600 <= len(ids['train']) <= 800
  assert 50 <= len(ids['validation']) <= 150
  assert 130 <= len(ids['eval']) <= 270


def _review(review_id, score='5', numerator='0', denominator='0',
            time='1300000000', text='Tasty.'):
  return (f'{review_id},P{review_id},U{review_id},someone,{numerator},'
          f'{denominator},{score},{time},Summary {review_id},{text}')


def test_quoted_line_break_stays_one_row(tmp_path):
  path = tmp_path / 'Reviews.csv'
  path.write_text('\n'.join([
      AMAZON_HEADER,
      _review('1', text='"First line,\nsecond line ""quoted""."'),
      _review('2', score='3', numerator='1', denominator='4'),
  ]) + '\n', encoding='utf-8')

  result = example_gen.run_example_gen(
      _config('amazon_fine_food'), str(path), str(tmp_path / 'out'))

  by_id = {e['example_id']: e
           for s in _read_all(result).values() for e in s}
  assert result.counts['input_rows'] == {str(path): 2}
  assert sorted(by_id) == ['1', '2']
  assert by_id['1']['text'] == 'First line,\nsecond line "quoted".'
  assert by_id['2']['sentiment'] == 'neutral'
  assert by_id['2']['helpful'] == 'not_helpful'


def test_malformed_reviews_rejected(tmp_path):
  path = tmp_path / 'Reviews.csv'
  lines = [
      AMAZON_HEADER.encode(),                                 # row 1
      _review('1').encode(),                                  # row 2
      _review('2', score='7').encode(),                       # row 3
      _review('3', score='five').encode(),                    # row 4
      b'4,P4,U4,someone,0,0,4,1300000000,Too few columns',   # row 5
      _review('5', numerator='3', denominator='2').encode(),  # row 6
      _review('6', numerator='-1', denominator='2').encode(),  # row 7
      _review('7', time='yesterday').encode(),                # row 8
      _review('8', text='caf\xe9').encode('latin-1'),         # row 9
      _review('9', text='"Quoted"x').encode(),                # row 10
      _review('10', numerator='2', denominator='4').encode(),  # row 11
  ]
  path.write_bytes(b'\n'.join(lines) + b'\n')

  result = example_gen.run_example_gen(
      _config('amazon_fine_food', max_rejected_fraction=1.0), str(path),
      str(tmp_path / 'out'))

  rejected = _by_row(_read_rejected(result.output_dir))
  expected = {
      3: ["Score", "'7'", '1 to 5'],
      4: ["Score", "'five'", 'not an integer'],
      5: ['9 columns', 'header has 10'],
      6: ['HelpfulnessNumerator (3)', 'HelpfulnessDenominator (2)'],
      7: ['negative', 'HelpfulnessNumerator is -1'],
      8: ['Time', "'yesterday'"],
      9: ['Text', 'UTF-8', "'caf\\xe9'"],
      10: ['not valid CSV'],
  }
  assert sorted(rejected) == sorted(expected)
  for row, fragments in expected.items():
    for fragment in fragments:
      assert fragment in rejected[row]['reason'], (row, rejected[row])
    assert rejected[row]['source'] == str(path)
  assert rejected[5]['raw'] == '4,P4,U4,someone,0,0,4,1300000000,Too few columns'
  assert rejected[9]['raw'].endswith('caf\\xe9')

  counts = result.counts
  examples = sorted(e['example_id']
                    for s in _read_all(result).values() for e in s)
  assert examples == ['1', '10']
  assert counts['input_rows'] == {str(path): 10}
  assert counts['rejected_rows'] == {str(path): 8}
  assert counts['rejected_fraction'] == pytest.approx(0.8)


def test_header_mismatch_rejects_all_rows(tmp_path):
  path = tmp_path / 'Reviews.csv'
  header = AMAZON_HEADER.replace('Score', 'Stars')
  path.write_text(f'{header}\n{_review("1")}\n{_review("2")}\n',
                  encoding='utf-8')

  with pytest.raises(ValueError, match='rejected fraction 1.0000'):
    example_gen.run_example_gen(_config('amazon_fine_food'), str(path),
                                str(tmp_path / 'out'))

  rejected = _read_rejected(str(tmp_path / 'out'))
  assert sorted(r['row'] for r in rejected) == [2, 3]
  for row in rejected:
    assert 'Stars' in row['reason']
    assert 'header' in row['reason']


def test_rejected_threshold_raises_after_writing(tmp_path):
  path = tmp_path / 'Reviews.csv'
  rows = [_review('1'), _review('2', score='0'), _review('3'), _review('4')]
  path.write_text('\n'.join([AMAZON_HEADER] + rows) + '\n', encoding='utf-8')
  output_dir = str(tmp_path / 'out')

  with pytest.raises(ValueError) as error:
    example_gen.run_example_gen(_config('amazon_fine_food'), str(path),
                                output_dir)

  message = str(error.value)
  assert '0.2500' in message
  assert 'max_rejected_fraction=0.05' in message
  assert os.path.join(output_dir, 'rejected') in message
  rejected = _read_rejected(output_dir)
  assert len(rejected) == 1
  assert rejected[0]['row'] == 3
  assert "'0'" in rejected[0]['reason']
  with open(os.path.join(output_dir, 'counts.json')) as f:
    assert json.load(f)['rejected_rows'] == {str(path): 1}


@pytest.fixture(scope='module')
def mind_dir(data_dir) -> str:
  return os.path.join(data_dir, 'mind-sample')


@pytest.fixture(scope='module')
def mind(mind_dir, tmp_path_factory):
  output_dir = str(tmp_path_factory.mktemp('mind'))
  result = example_gen.run_example_gen(_config('mind'), mind_dir, output_dir)
  return result, _read_all(result)


def _tsv_rows(path: str) -> List[List[str]]:
  with open(path, encoding='utf-8') as f:
    return [line.rstrip('\n').split('\t') for line in f if line.strip()]


def test_mind_every_row_accounted(mind, mind_dir):
  result, splits = mind
  news = _tsv_rows(os.path.join(mind_dir, 'news.tsv'))
  behaviors = _tsv_rows(os.path.join(mind_dir, 'behaviors.tsv'))
  shown = sum(len(b[4].split()) for b in behaviors)

  counts = result.counts
  assert sorted(counts['input_rows'].values()) == [len(news), len(behaviors)]
  assert sum(counts['rejected_rows'].values()) == 0
  assert sum(counts['examples'].values()) == len(news) + shown
  for split, examples in splits.items():
    assert counts['examples'][split] == len(examples), split
  stories = [e for s in splits.values() for e in s if not e['impression_id']]
  assert len(stories) == len(news)


def test_mind_time_split_orders_impressions(mind):
  _, splits = mind
  times = {}
  impressions = {}
  for split, examples in splits.items():
    shown = [e for e in examples if e['impression_id']]
    assert shown, split
    times[split] = [e['time'] for e in shown]
    impressions[split] = {e['impression_id'] for e in shown}
    assert all(e['time'] == 0 for e in examples if not e['impression_id'])

  assert max(times['train']) < min(times['validation'])
  assert max(times['validation']) < min(times['eval'])
  assert not impressions['train'] & impressions['eval']
  assert not impressions['train'] & impressions['validation']
  assert not impressions['validation'] & impressions['eval']
  total = sum(len(t) for t in times.values())
  assert 0.15 <= len(times['eval']) / total <= 0.25


def test_mind_impression_examples_match_tsv(mind, mind_dir):
  _, splits = mind
  news = {row[0]: row for row in _tsv_rows(os.path.join(mind_dir, 'news.tsv'))}
  behaviors = _tsv_rows(os.path.join(mind_dir, 'behaviors.tsv'))
  by_id = {e['example_id']: e for s in splits.values() for e in s}

  # The first impression that shows stories with and without a news.tsv row.
  for impression_id, user_id, time_text, history, entries in behaviors:
    entries = entries.split()
    known = {entry[:-2] in news for entry in entries}
    if known == {True, False}:
      break
  else:
    pytest.fail('no impression shows both known and unknown news ids')
  expected_time = calendar.timegm(
      time.strptime(time_text, '%m/%d/%Y %I:%M:%S %p'))
  for position, entry in enumerate(entries, start=1):
    example = by_id[f'{impression_id}-{position}']
    news_id, label = entry.rsplit('-', 1)
    assert example['news_id'] == news_id
    assert example['click'] == label
    assert example['category'] == ''
    assert example['user_id'] == user_id
    assert example['history'] == history.split()
    assert example['time'] == expected_time
    title = news[news_id][3] if news_id in news else ''
    assert example['title'] == title, entry
    subcategory = news[news_id][2] if news_id in news else ''
    assert example['subcategory'] == subcategory, entry


def test_mind_story_examples_have_category(mind):
  _, splits = mind
  by_id = {e['example_id']: e for s in splits.values() for e in s}
  story = by_id['N16278']
  assert story['category'] == 'sports'
  assert story['subcategory'] == 'more_sports'
  assert story['title'].startswith('Silver Spring Man Nabs Title')
  assert story['click'] == ''
  assert story['impression_id'] == ''
  assert story['history'] == []


def test_mind_malformed_rows_rejected(tmp_path):
  news_lines = [
      b'N1\tsports\tsoccer\tTitle one\tAbstract one\thttp://x\t[]\t[]',
      b'N2\tnews\tpolitics\tSeven\tcolumns\thttp://x\t[]',
      b'N1\tnews\tdup\tDuplicate\t\thttp://x\t[]\t[]',
      b'',
      b'N3\tnews\tworld\tCaf\xe9\t\thttp://x\t[]\t[]',
  ]
  behavior_lines = [
      b'1\tU1\t11/11/2019 9:05:01 AM\tN1 N9\tN1-1 N9-0',
      b'2\tU2\t31/11/2019 9:05:01 AM\tN1\tN1-0',
      b'3\tU3\t11/12/2019 9:05:01 AM\t\tN1-2',
      b'4\tU4\t11/12/2019 9:05:01 AM\tN1\t',
      b'5\tU5\t11/12/2019 9:05:01 AM\tN1',
      b'6\tU6\t11/12/2019 9:05:01 AM\t\tN1',
  ]
  (tmp_path / 'news.tsv').write_bytes(b'\n'.join(news_lines) + b'\n')
  (tmp_path / 'behaviors.tsv').write_bytes(b'\n'.join(behavior_lines) + b'\n')

  result = example_gen.run_example_gen(
      _config('mind', max_rejected_fraction=1.0), str(tmp_path),
      str(tmp_path / 'out'))

  rejected = _read_rejected(result.output_dir)
  news_rejected = _by_row([r for r in rejected
                           if r['source'].endswith('news.tsv')])
  behavior_rejected = _by_row([r for r in rejected
                               if r['source'].endswith('behaviors.tsv')])
  expected_news = {2: ['7 tab-separated columns'],
                   3: ["'N1'", 'row 1'],
                   5: ['UTF-8', '0xe9']}
  expected_behaviors = {2: ["'31/11/2019 9:05:01 AM'"],
                        3: ["'N1-2'", 'label 0 or 1'],
                        4: ['impression list', 'empty'],
                        5: ['4 tab-separated columns'],
                        6: ["'N1'", 'newsid-label']}
  for found, expected in ((news_rejected, expected_news),
                          (behavior_rejected, expected_behaviors)):
    assert sorted(found) == sorted(expected)
    for row, fragments in expected.items():
      for fragment in fragments:
        assert fragment in found[row]['reason'], (row, found[row])

  by_id = {e['example_id']: e for s in _read_all(result).values() for e in s}
  assert sorted(by_id) == ['1-1', '1-2', 'N1']
  assert by_id['N1']['title'] == 'Title one'
  assert by_id['1-1']['title'] == 'Title one'
  assert by_id['1-1']['click'] == '1'
  assert by_id['1-2']['news_id'] == 'N9'
  assert by_id['1-2']['title'] == ''
  assert by_id['1-2']['click'] == '0'
  assert by_id['1-2']['time'] == calendar.timegm((2019, 11, 11, 9, 5, 1))
  assert sorted(result.counts['input_rows'].values()) == [4, 6]
  assert sum(result.counts['rejected_rows'].values()) == 8


def test_generic_sample_config(tmp_path):
  config = _config('generic_csv')
  data_path = config.resolve_data_path(None)

  result = example_gen.run_example_gen(config, data_path, str(tmp_path))

  by_id = {e['example_id']: e for s in _read_all(result).values() for e in s}
  assert len(by_id) == 60
  assert result.counts['rejected_fraction'] == 0.0
  assert result.feature_types['tags'] == 'string_list'
  assert by_id['r001']['tags'] == ['knife', 'steel']
  assert by_id['r001']['price'] == pytest.approx(34.99)
  assert by_id['r001']['stars'] == 5
  assert by_id['r001']['topic'] == 'kitchen'
  assert by_id['r048']['text'].endswith('voice.\nWorth every minute.')


def _generic_config(data_format: str, path: str):
  return parse_config({
      'pipeline_name': 'generic_test',
      'data': {
          'adapter': 'generic', 'path': path, 'format': data_format,
          'max_rejected_fraction': 1.0,
          'columns': {'example_id': 'id', 'text': 'text', 'tags': 'tags',
                      'count': 'n', 'score': 'score', 'label': 'label'},
          'types': {'tags': 'string_list', 'count': 'int', 'score': 'float'},
      },
      'features': [{'name': 'text', 'type': 'text'}],
      'tasks': [{'name': 'label', 'type': 'multiclass', 'label': 'label'}],
  })


def test_generic_jsonl_rejects_bad_lines(tmp_path):
  path = tmp_path / 'rows.jsonl'
  lines = [
      {'id': 'a', 'text': 'hello', 'tags': ['x', 'y'], 'n': 3, 'score': 0.5,
       'label': 'pos'},
      {'id': 'b', 'text': 'no tags', 'tags': None, 'n': '4', 'score': 1,
       'label': 'neg'},
      'not json',
      {'id': 'c', 'text': 't', 'tags': [], 'n': 1, 'score': 0.1},
      {'id': 'd', 'text': 't', 'tags': 'x y', 'n': 1, 'score': 0.1,
       'label': 'pos'},
      {'id': 'e', 'text': 't', 'tags': [], 'n': 'three', 'score': 0.1,
       'label': 'pos'},
      {'id': 'f', 'text': 't', 'tags': [], 'n': 1, 'score': None,
       'label': 'pos'},
      [1, 2],
  ]
  path.write_text('\n'.join(l if isinstance(l, str) else json.dumps(l)
                            for l in lines) + '\n', encoding='utf-8')

  result = example_gen.run_example_gen(
      _generic_config('jsonl', str(path)), str(path), str(tmp_path / 'out'))

  rejected = _by_row(_read_rejected(result.output_dir))
  expected = {3: ['not valid JSON'],
              4: ["'label' is missing"],
              5: ['tags', '"x y"', 'not a JSON list'],
              6: ['n', "'three'", 'not an integer'],
              7: ['score', 'null'],
              8: ['JSON list, not an object']}
  assert sorted(rejected) == sorted(expected)
  for row, fragments in expected.items():
    for fragment in fragments:
      assert fragment in rejected[row]['reason'], (row, rejected[row])
  by_id = {e['example_id']: e for s in _read_all(result).values() for e in s}
  assert by_id['a']['tags'] == ['x', 'y']
  assert by_id['a']['score'] == pytest.approx(0.5)
  assert by_id['b']['tags'] == []
  assert by_id['b']['count'] == 4


def test_generic_csv_rejects_bad_values(tmp_path):
  path = tmp_path / 'rows.csv'
  path.write_text(
      'id,text,tags,n,score,label\n'
      'a,hello,x y,3,0.5,pos\n'
      'b,short row,x,3,0.5\n'
      'c,bad float,x,3,abc,pos\n'
      'd,not finite,x,3,nan,pos\n'
      'e,bad int,x,3.5,0.5,pos\n', encoding='utf-8')

  result = example_gen.run_example_gen(
      _generic_config('csv', str(path)), str(path), str(tmp_path / 'out'))

  rejected = _by_row(_read_rejected(result.output_dir))
  expected = {3: ['5 columns', 'header has 6'],
              4: ['score', "'abc'", 'not a finite number'],
              5: ['score', "'nan'"],
              6: ['n', "'3.5'", 'not an integer']}
  assert sorted(rejected) == sorted(expected)
  for row, fragments in expected.items():
    for fragment in fragments:
      assert fragment in rejected[row]['reason'], (row, rejected[row])
  assert result.counts['examples']['train'] + result.counts['examples'][
      'validation'] + result.counts['examples']['eval'] == 1


def test_get_adapter_unknown_name():
  config = _config('amazon_fine_food')
  config = dataclasses.replace(
      config, data=dataclasses.replace(config.data, adapter='parquet'))
  with pytest.raises(ValueError, match="'parquet'") as error:
    example_gen.get_adapter(config, AMAZON_CSV)
  assert 'amazon_fine_food' in str(error.value)
  assert 'generic' in str(error.value)
  assert 'mind' in str(error.value)


def test_config_feature_not_written_raises(tmp_path):
  config = _config('amazon_fine_food')
  config = dataclasses.replace(
      config, split=dataclasses.replace(config.split, hash_key='review_id'))
  with pytest.raises(ValueError, match="'review_id'"):
    example_gen.run_example_gen(config, AMAZON_CSV, str(tmp_path))
