"""Batch inference (`pipeline.py infer`) against per-row session predictions.

Every prediction the Beam pipeline writes must equal what a single-row
`serving_default` (or `from_examples`) call through `SavedModelSession`
returns for that row. Every input row must come out exactly once, as a
prediction or as a rejected row with its reason.
"""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import csv
import json
from typing import Dict, List

import numpy as np
import pytest
import tensorflow as tf

import pipeline
from serving import batch_inference
from serving.saved_model_session import SavedModelSession
import serving_fixtures

REVIEWS_CSV = os.path.join(serving_fixtures.REPO_ROOT, 'data', 'sample',
                           'Reviews.csv')
TASKS = ('helpful', 'rating', 'sentiment')
# Small batches, so that the sample spans several session calls.
BATCH_SIZE = 8


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory) -> str:
  serving_dir = serving_fixtures.pushed_serving_dir(tmp_path_factory)
  return os.path.join(serving_dir, serving_fixtures.MODEL_NAME, '1')


@pytest.fixture(scope='module')
def session(model_dir):
  loaded = SavedModelSession(model_dir)
  yield loaded
  loaded.close()


@pytest.fixture(scope='module')
def reviews() -> List[Dict[str, str]]:
  """30 real reviews as raw feature rows."""
  with open(REVIEWS_CSV, encoding='utf-8', newline='') as f:
    rows = list(csv.DictReader(f))[:30]
  return [{'example_id': row['Id'], 'summary': row['Summary'],
           'text': row['Text'], 'product_id': row['ProductId']}
          for row in rows]


def _read_jsonl(path: str) -> List[dict]:
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def _single_row_outputs(session, row: Dict[str, str]):
  inputs = {name: np.array([row[name].encode('utf-8')], dtype=object)
            for name in ('summary', 'text', 'product_id')}
  return session.run(inputs)


def _assert_matches_session(prediction: dict, outputs) -> None:
  for task in TASKS:
    got = prediction['predictions'][task]
    assert got['label'] == outputs[f'{task}_label'][0].decode(), (
        prediction['row'], task)
    # float32 -> JSON double -> float32 is lossless, so equality is exact.
    np.testing.assert_array_equal(
        np.array(got['probabilities'], dtype=np.float32),
        outputs[f'{task}_probabilities'][0],
        err_msg=f'{prediction["row"]} {task}')


def _write_jsonl_input(path: str, reviews) -> Dict[str, str]:
  """Write the reviews plus bad lines; return row key -> expected reason."""
  bad_lines = {
      'missing columns': json.dumps({'summary': 'no text', 'product_id': 'p'}),
      'wrong types': json.dumps({'summary': 5, 'text': 't',
                                 'product_id': 'p'}),
      'expected a JSON object': json.dumps(['summary', 'text']),
      'invalid JSON': '{"summary": "cut off',
      'empty line': '',
  }
  lines = [json.dumps(row) for row in reviews]
  expected = {}
  for reason, line in bad_lines.items():
    lines.insert(len(lines) // 2, line)
  with open(path, 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')
  for number, line in enumerate(lines, start=1):
    for reason, bad in bad_lines.items():
      if line == bad:
        expected[f'input.jsonl:{number}'] = reason
  return expected


def test_jsonl_matches_session(model_dir, session, reviews, tmp_path):
  input_path = str(tmp_path / 'input.jsonl')
  expected_rejections = _write_jsonl_input(input_path, reviews)
  output = str(tmp_path / 'predictions.jsonl')

  counts = batch_inference.run_batch_inference(
      model_dir, input_path, output, max_batch_size=BATCH_SIZE)

  predictions = _read_jsonl(output)
  rejected = _read_jsonl(counts.rejected_path)
  assert counts.rows == len(reviews) + len(expected_rejections)
  assert counts.predicted == len(predictions) == len(reviews)
  assert counts.rejected == len(rejected) == len(expected_rejections)
  by_id = {row['example_id']: row for row in reviews}
  for prediction in predictions:
    _assert_matches_session(
        prediction, _single_row_outputs(session, by_id[prediction['id']]))
  reasons = {row['row']: row['reason'] for row in rejected}
  assert set(reasons) == set(expected_rejections)
  for key, reason in expected_rejections.items():
    assert reason in reasons[key], (key, reasons[key])


def test_csv_matches_session(model_dir, session, reviews, tmp_path):
  input_path = str(tmp_path / 'input.csv')
  header = ['example_id', 'summary', 'text', 'product_id']
  with open(input_path, 'w', encoding='utf-8', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    for row in reviews[:10]:
      writer.writerow([row[name] for name in header])
    # A quoted field across lines is one record, not two bad ones.
    writer.writerow(['multi', 'Two lines', 'first line\nsecond line', 'P1'])
    writer.writerow(['short', 'only three fields', 'P2'])
  with open(input_path, 'ab') as f:
    f.write(b'latin1,caf\xe9,text,P3\n')
  output = str(tmp_path / 'predictions.jsonl')

  counts = batch_inference.run_batch_inference(
      model_dir, input_path, output, max_batch_size=BATCH_SIZE)

  predictions = _read_jsonl(output)
  rejected = _read_jsonl(counts.rejected_path)
  assert (counts.rows, counts.predicted, counts.rejected) == (13, 11, 2)
  assert len(predictions) == 11
  by_id = {row['example_id']: row for row in reviews}
  by_id['multi'] = {'summary': 'Two lines',
                    'text': 'first line\nsecond line', 'product_id': 'P1'}
  for prediction in predictions:
    _assert_matches_session(
        prediction, _single_row_outputs(session, by_id[prediction['id']]))
  reasons = sorted(row['reason'] for row in rejected)
  assert 'expected 4 CSV fields' in reasons[0], reasons
  assert 'not valid UTF-8' in reasons[1], reasons


def _example(row: Dict[str, str]) -> bytes:
  feature = {name: tf.train.Feature(bytes_list=tf.train.BytesList(
      value=[value.encode('utf-8')])) for name, value in row.items()}
  return tf.train.Example(features=tf.train.Features(
      feature=feature)).SerializeToString()


def test_tfrecord_matches_from_examples(model_dir, session, reviews,
                                        tmp_path):
  records = [_example(row) for row in reviews[:12]]
  without_text = _example({'example_id': 'no-text', 'summary': 's',
                           'product_id': 'p'})
  input_path = str(tmp_path / 'input.tfrecord')
  with tf.io.TFRecordWriter(input_path) as writer:
    for record in records[:6] + [without_text, b'\xff\xfenot a proto'] + \
        records[6:]:
      writer.write(record)
  output = str(tmp_path / 'predictions.jsonl')

  counts = batch_inference.run_batch_inference(
      model_dir, input_path, output, max_batch_size=BATCH_SIZE)

  predictions = _read_jsonl(output)
  rejected = _read_jsonl(counts.rejected_path)
  assert (counts.rows, counts.predicted, counts.rejected) == (14, 12, 2)
  by_id = {row['example_id']: _example(row) for row in reviews[:12]}
  for prediction in predictions:
    outputs = session.run(
        {'examples': np.array([by_id[prediction['id']]], dtype=object)},
        'from_examples')
    _assert_matches_session(prediction, outputs)
  reasons = {row['row']: row['reason'] for row in rejected}
  # The batch with the incomplete example is rerun row by row, so only that
  # example fails, with TensorFlow's message.
  assert 'inference failed' in reasons['input.tfrecord:7']
  assert 'text' in reasons['input.tfrecord:7']
  assert 'not a serialized tf.Example' in reasons['input.tfrecord:8']


def test_cli_infer_writes_outputs(model_dir, reviews, tmp_path, capsys):
  input_path = str(tmp_path / 'rows.json')
  with open(input_path, 'w', encoding='utf-8') as f:
    for row in reviews[:3]:
      f.write(json.dumps(row) + '\n')
  output = str(tmp_path / 'out.jsonl')

  status = pipeline.main(['infer', '--model-dir', model_dir, '--input',
                          input_path, '--output', output, '--format', 'jsonl',
                          '--direct_running_mode=in_memory'])

  assert status == 0
  assert len(_read_jsonl(output)) == 3
  assert '3 rows: 3 predictions' in capsys.readouterr().out


def test_cli_infer_rejects_model_base(model_dir, tmp_path, capsys):
  status = pipeline.main(['infer', '--model-dir', os.path.dirname(model_dir),
                          '--input', str(tmp_path / 'x.jsonl'), '--output',
                          str(tmp_path / 'out.jsonl')])

  assert status == 2
  assert 'saved_model.pb is missing' in capsys.readouterr().err


AMAZON_CONFIG = os.path.join(serving_fixtures.REPO_ROOT, 'configs',
                             'amazon_fine_food.yaml')


def test_snapshot_matches_session(model_dir, session, reviews, tmp_path):
  # The first 12 rows of the raw dataset file, unchanged, plus one bad row.
  with open(REVIEWS_CSV, encoding='utf-8', newline='') as f:
    lines = list(csv.reader(f))
  input_path = str(tmp_path / 'Reviews.csv')
  with open(input_path, 'w', encoding='utf-8', newline='') as f:
    writer = csv.writer(f)
    writer.writerows(lines[:13])
    bad = list(lines[13])
    bad[lines[0].index('Score')] = '9'
    writer.writerow(bad)
  output = str(tmp_path / 'predictions.jsonl')

  counts = batch_inference.run_batch_inference(
      model_dir, input_path, output, max_batch_size=BATCH_SIZE,
      config_path=AMAZON_CONFIG)

  predictions = _read_jsonl(output)
  rejected = _read_jsonl(counts.rejected_path)
  assert (counts.rows, counts.predicted, counts.rejected) == (13, 12, 1)
  by_id = {row['example_id']: row for row in reviews}
  assert sorted(p['id'] for p in predictions) == sorted(
      row[0] for row in lines[1:13])
  for prediction in predictions:
    assert prediction['row'] == f'example {prediction["id"]}'
    _assert_matches_session(
        prediction, _single_row_outputs(session, by_id[prediction['id']]))
  assert rejected[0]['row'] == 'Reviews.csv:14'
  assert "Score is '9'" in rejected[0]['reason'], rejected


def test_cli_infer_snapshot_errors(model_dir, tmp_path, capsys):
  base = ['infer', '--model-dir', model_dir, '--config', AMAZON_CONFIG,
          '--output', str(tmp_path / 'out.jsonl')]

  missing = str(tmp_path / 'missing' / 'Reviews.csv')
  assert pipeline.main(base + ['--input', missing]) == 2
  assert f'Missing amazon_fine_food input files at {missing}' in \
      capsys.readouterr().err
  assert pipeline.main(base + ['--input', REVIEWS_CSV, '--format',
                               'csv']) == 2
  assert 'Invalid --format csv with --config' in capsys.readouterr().err


def test_rejected_path_drops_jsonl():
  assert batch_inference.rejected_path_for('a/p.jsonl') == \
      'a/p.rejected.jsonl'
  assert batch_inference.rejected_path_for('a/p.out') == \
      'a/p.out.rejected.jsonl'


def test_unknown_extension_needs_format():
  with pytest.raises(ValueError, match='pass --format'):
    batch_inference.infer_format('rows.txt')
