"""Each trunk trains, exports and serves the Keras model's probabilities."""

import os

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata
from tensorflow_transform.tf_metadata import metadata_io

from components.config import parse_config
from models import export, features
from models.builder import build_model, class_names
from models.multitask import masked_task_loss, split_labels
from models.preprocessing import make_preprocessing_fn
from serving.saved_model_session import SavedModelSession

RAW_SPEC = {
    'title': tf.io.FixedLenFeature([], tf.string),
    'item': tf.io.FixedLenFeature([], tf.string),
    'history': tf.io.VarLenFeature(tf.string),
    'price': tf.io.FixedLenFeature([], tf.float32),
    'topic': tf.io.FixedLenFeature([], tf.string),
    'click': tf.io.FixedLenFeature([], tf.string),
}
SPORTS = ['the team won the final match', 'a late goal decided the game',
          'the striker scored twice tonight', 'fans cheered the home team']
MARKETS = ['stocks fell as rates rose', 'the bank raised interest rates',
           'bond yields climbed this week', 'investors sold shares today']


def _rows():
  rows = []
  for copy in range(6):
    for index, title in enumerate(SPORTS + MARKETS):
      topic = 'sports' if title in SPORTS else 'markets'
      rows.append({
          'title': title, 'item': f'n{index}',
          'history': [f'n{(index + 1) % 8}', f'n{(index + 2) % 8}'][:copy % 3],
          'price': float(index),
          # Every third copy is an unlabelled topic, as for click examples.
          'topic': '' if copy % 3 == 2 else topic,
          'click': '1' if topic == 'sports' else '0',
      })
  return rows


def _config(trunk):
  return parse_config({
      'pipeline_name': 'tiny',
      'data': {'adapter': 'generic', 'path': 'unused.csv'},
      'features': [
          {'name': 'title', 'type': 'text'},
          {'name': 'item', 'type': 'categorical', 'vocabulary': 'item'},
          {'name': 'history', 'type': 'id_sequence', 'vocabulary': 'item',
           'max_length': 3},
          {'name': 'price', 'type': 'numeric'},
      ],
      'text': {'max_tokens': 12, 'frequency_threshold': 1},
      'tasks': [
          {'name': 'topic', 'type': 'multiclass', 'label': 'topic'},
          {'name': 'click', 'type': 'binary', 'label': 'click',
           'classes': ['0', '1'], 'positive_class': '1'},
      ],
      'model': {'trunk': trunk, 'embedding_dim': 16, 'units': 16,
                'hidden_units': [16], 'dropout': 0.0,
                'transformer_heads': 2, 'transformer_ff_dim': 16},
      'trainer': {'batch_size': 8, 'epochs': 1, 'optimizer': 'adam',
                  'learning_rate': 0.01},
  })


@pytest.fixture(scope='module')
def transformed(tmp_path_factory):
  """Analyze the tiny rows in memory, write the graph, transform the rows."""
  graph_dir = str(tmp_path_factory.mktemp('tiny') / 'transform_graph')
  metadata = dataset_metadata.DatasetMetadata.from_feature_spec(RAW_SPEC)
  rows = _rows()
  with beam.Pipeline() as pipeline:
    with tft_beam.Context(temp_dir=graph_dir + '-tmp',
                          force_tf_compat_v1=False):
      raw = pipeline | 'CreateRows' >> beam.Create(rows)
      transform_fn = ((raw, metadata)
                      | tft_beam.AnalyzeDataset(
                          make_preprocessing_fn(_config('lstm'))))
      _ = transform_fn | tft_beam.WriteTransformFn(graph_dir)
  metadata_io.write_metadata(
      metadata, os.path.join(graph_dir, tft.TFTransformOutput.RAW_METADATA_DIR))
  tft_output = tft.TFTransformOutput(graph_dir)
  raw_tensors = {
      'title': tf.constant([r['title'] for r in rows]),
      'item': tf.constant([r['item'] for r in rows]),
      'history': tf.ragged.constant([r['history'] for r in rows],
                                    dtype=tf.string).to_sparse(),
      'price': tf.constant([r['price'] for r in rows]),
      'topic': tf.constant([r['topic'] for r in rows]),
      'click': tf.constant([r['click'] for r in rows]),
  }
  batch = tft_output.transform_features_layer()(raw_tensors)
  return tft_output, {k: v.numpy() for k, v in batch.items()}, rows


def test_unlabelled_rows_get_no_label(transformed):
  _, batch, rows = transformed
  labels = batch[features.label_feature('topic')]
  for row, label in zip(rows, labels):
    assert (label == features.NO_LABEL) == (row['topic'] == ''), row


def test_history_shares_item_vocabulary(transformed):
  _, batch, rows = transformed
  item_ids = dict(zip([r['item'] for r in rows],
                      batch[features.id_feature('item')]))
  history = batch[features.id_sequence_feature('history')]
  for row, ids in zip(rows, history):
    expected = [item_ids[i] for i in row['history']]
    assert list(ids[:len(expected)]) == expected, row
    assert list(ids[len(expected):]) == [0] * (3 - len(expected)), row


def test_tokens_start_with_bos_and_pad_with_zero(transformed):
  _, batch, _ = transformed
  tokens = batch[features.TOKENS]
  assert (tokens[:, 0] == features.BOS_ID).all()
  assert (tokens[:, -1] == features.PAD_ID).all()


def test_masked_loss_ignores_unlabelled():
  probabilities = tf.constant([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
  labels = tf.constant([0, 1, features.NO_LABEL], tf.int64)
  expected = -(np.log(0.9) + np.log(0.8)) / 2
  assert float(masked_task_loss(labels, probabilities)) == pytest.approx(
      expected, rel=1e-6)


def test_masked_loss_without_labels_is_zero():
  probabilities = tf.constant([[0.5, 0.5]])
  labels = tf.constant([features.NO_LABEL], tf.int64)
  assert float(masked_task_loss(labels, probabilities)) == 0.0


@pytest.mark.parametrize('trunk', ['lstm', 'bilstm', 'transformer'])
def test_trunk_exports_keras_probabilities(trunk, transformed, tmp_path):
  tft_output, batch, rows = transformed
  config = _config(trunk)
  tf.keras.utils.set_random_seed(1)
  model = build_model(config, tft_output)
  model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
  inputs, labels = split_labels(batch, ['topic', 'click'])
  history = model.fit(tf.data.Dataset.from_tensor_slices(
      (inputs, labels)).batch(8), epochs=3, verbose=0)
  assert history.history['loss'][-1] < history.history['loss'][0]

  export_dir = str(tmp_path / 'model')
  export.export_serving_model(model, tft_output, config, export_dir)
  expected = model(inputs, training=False)
  session = SavedModelSession(export_dir)
  width = max(len(r['history']) for r in rows)
  outputs = session.run({
      'title': np.array([r['title'].encode() for r in rows], dtype=object),
      'item': np.array([r['item'].encode() for r in rows], dtype=object),
      'history': np.array([[h.encode() for h in r['history']] +
                           [b''] * (width - len(r['history']))
                           for r in rows], dtype=object),
      'price': np.array([r['price'] for r in rows], dtype=np.float32),
  })
  session.close()
  for task in ('topic', 'click'):
    served = outputs[features.probabilities_output(task)]
    np.testing.assert_allclose(served, expected[task].numpy(), atol=1e-6)
    names = class_names(config, tft_output, task)
    decoded = [v.decode() for v in outputs[features.label_output(task)]]
    assert decoded == [names[i] for i in served.argmax(axis=1)]
