"""Trainer: fits the multi-task model and exports the serving SavedModel.

Training reads the transformed examples and keeps the weights of the epoch
with the lowest validation loss, also written as the best checkpoint. It logs
to TensorBoard and exports the model with the transform graph attached, so
the Evaluator scores and the Pusher ships exactly what will be served.
"""

import itertools
import json
import logging
import os
from typing import Dict, List, NamedTuple

import numpy as np

import tensorflow as tf
import tensorflow_transform as tft

from components import artifacts
from components.config import PipelineConfig
from models import export, features, recommend
from models.builder import build_model, id_vocabulary_size, num_classes
from models.multitask import split_labels

SERVING_MODEL_DIR = 'serving_model'
# File of raw feature types that ExampleGen writes next to the split folders.
FEATURE_TYPES_FILE = 'feature_types.json'
CHECKPOINT_DIR = 'checkpoints'
LOG_DIR = 'logs'
SHUFFLE_BUFFER = 100_000


class TrainerResult(NamedTuple):
  """Paths and training history written by the Trainer."""
  serving_model_dir: str
  history: Dict[str, list]
  best_epoch: int


def _optimizer(config: PipelineConfig) -> tf.keras.optimizers.Optimizer:
  trainer = config.trainer
  clip = {'clipnorm': trainer.clipnorm} if trainer.clipnorm else {}
  if trainer.optimizer == 'adam':
    return tf.keras.optimizers.Adam(trainer.learning_rate, **clip)
  if trainer.optimizer == 'adagrad':
    return tf.keras.optimizers.Adagrad(trainer.learning_rate, **clip)
  return tf.keras.optimizers.SGD(trainer.learning_rate,
                                 momentum=trainer.momentum, **clip)


def _negative_sampler(config: PipelineConfig):
  """Build a filter that keeps each negative of a task with a fixed chance.

  The draw depends only on the seed and the example's position, so the same
  negatives are kept in every epoch and every run.
  """
  sampling = config.trainer.negative_sampling
  task = config.task(sampling.task)
  negative_id = [c for c in task.classes if c != task.positive_class]
  negative_id = list(task.classes).index(negative_id[0])
  label_key = features.label_feature(task.name)

  def keep(index, batch):
    draw = tf.random.stateless_uniform(
        [], seed=tf.stack([tf.constant(config.seed, tf.int64), index]))
    is_negative = tf.equal(batch[label_key], negative_id)
    return tf.logical_or(tf.logical_not(is_negative),
                         draw < sampling.keep_fraction)

  return keep


def make_dataset(config: PipelineConfig, tft_output: tft.TFTransformOutput,
                 transformed_dir: str, split: str,
                 training: bool) -> tf.data.Dataset:
  """Batches of (inputs, labels) read in a fixed file and record order."""
  files = artifacts.split_files(transformed_dir, split)
  if not files:
    raise ValueError(f'No transformed examples for split {split!r} in '
                     f'{transformed_dir}; rerun the Transform component.')
  spec = tft_output.transformed_feature_spec()
  dataset = tf.data.TFRecordDataset(files, compression_type='GZIP')
  dataset = dataset.map(lambda record: tf.io.parse_single_example(record,
                                                                  spec))
  if training and config.trainer.negative_sampling:
    dataset = dataset.enumerate().filter(_negative_sampler(config)).map(
        lambda _, batch: batch)
  dataset = dataset.cache()
  if training:
    dataset = dataset.shuffle(SHUFFLE_BUFFER, seed=config.seed,
                              reshuffle_each_iteration=True)
  task_names = [task.name for task in config.tasks]
  dataset = dataset.batch(config.trainer.batch_size)
  dataset = dataset.map(lambda batch: split_labels(batch, task_names))
  return dataset.prefetch(tf.data.AUTOTUNE)


def balanced_class_weights(config: PipelineConfig,
                           tft_output: tft.TFTransformOutput,
                           train: tf.data.Dataset) -> Dict[str, List[float]]:
  """n / (classes * count) per class on train, for `balanced` tasks."""
  tasks = [t for t in config.tasks if t.class_weighting == 'balanced']
  if not tasks:
    return {}
  counts = {t.name: np.zeros(num_classes(config, tft_output, t.name))
            for t in tasks}
  for _, labels in train.as_numpy_iterator():
    for task in tasks:
      values = labels[task.name]
      values = values[values >= 0]
      counts[task.name] += np.bincount(values, minlength=counts[
          task.name].size)[:counts[task.name].size]
  weights = {}
  for name, count in counts.items():
    present = count > 0
    weight = np.zeros_like(count)
    weight[present] = count.sum() / (present.sum() * count[present])
    weights[name] = weight.tolist()
    logging.info('Trainer: class weights of %s: %s', name,
                 np.round(weight, 3).tolist())
  return weights


def candidate_probabilities(config: PipelineConfig,
                            tft_output: tft.TFTransformOutput,
                            train: tf.data.Dataset):
  """Compute each candidate id's share of the train pairs for logQ correction.

  A candidate never seen in train counts as half a pair, so its log stays
  finite. Returns None without a retrieval task or with its logq_correction
  off.
  """
  task = config.retrieval_task
  if task is None or not task.logq_correction:
    return None
  size = id_vocabulary_size(
      config, tft_output, config.feature(task.candidate_id).vocabulary_name)
  counts = np.full(size, 0.5)
  for _, labels in train.as_numpy_iterator():
    ids = labels[task.name].reshape(-1)
    counts += np.bincount(ids[ids >= 0], minlength=size)[:size]
  return (counts / counts.sum()).tolist()


def set_determinism(seed: int) -> None:
  """Seed every generator and make ops deterministic, for bitwise reruns."""
  tf.keras.utils.set_random_seed(seed)
  tf.config.experimental.enable_op_determinism()


def train_model(config: PipelineConfig, tft_output: tft.TFTransformOutput,
                transformed_dir: str, output_dir: str):
  """Fit the model and restore the weights of the best validation epoch."""
  set_determinism(config.seed)
  train = make_dataset(config, tft_output, transformed_dir, 'train', True)
  # Without a validation split, every epoch runs and the last epoch's
  # weights are kept.
  validation = (make_dataset(config, tft_output, transformed_dir,
                             'validation', False)
                if config.split.validation_fraction > 0 else None)

  model = build_model(config, tft_output,
                      balanced_class_weights(config, tft_output, train),
                      candidate_probabilities(config, tft_output, train))
  model.compile(optimizer=_optimizer(config))
  best_path = os.path.join(output_dir, CHECKPOINT_DIR, 'best')
  callbacks = [tf.keras.callbacks.TensorBoard(os.path.join(output_dir,
                                                           LOG_DIR))]
  if validation is not None:
    callbacks += [
        tf.keras.callbacks.ModelCheckpoint(
            best_path, monitor='val_loss', save_best_only=True,
            save_weights_only=True),
        tf.keras.callbacks.EarlyStopping(
            monitor='val_loss',
            patience=config.trainer.early_stopping_patience),
    ]
  history = model.fit(train, validation_data=validation,
                      epochs=config.trainer.epochs, callbacks=callbacks,
                      verbose=2)
  if validation is not None:
    model.load_weights(best_path)
  else:
    model.save_weights(best_path)
  return model, history.history


WARMUP_REQUESTS = 5


def run_trainer(config: PipelineConfig, examples_dir: str,
                transform_graph_dir: str, transformed_dir: str,
                output_dir: str) -> TrainerResult:
  """Train, then export the serving SavedModel into `output_dir`.

  Args:
    config: the pipeline config.
    examples_dir: ExampleGen's raw examples; a few eval rows become the
      model's warmup requests.
    transform_graph_dir: the Transform component's graph.
    transformed_dir: the Transform component's transformed examples.
    output_dir: where checkpoints, logs and the SavedModel go.

  Returns:
    The SavedModel path, the per-epoch history and the best epoch (1-based).
  """
  tft_output = tft.TFTransformOutput(transform_graph_dir)
  model, history = train_model(config, tft_output, transformed_dir,
                               output_dir)
  val_losses = history.get('val_loss', [])
  best_epoch = int(min(range(len(val_losses)), key=val_losses.__getitem__)
                   ) + 1 if val_losses else len(history.get('loss', []))
  logging.info('Trainer: %d epochs, best validation loss %.4f at epoch %d',
               len(history.get('loss', [])),
               min(val_losses) if val_losses else float('nan'), best_epoch)

  serving_dir = os.path.join(output_dir, SERVING_MODEL_DIR)
  warmup_examples = list(itertools.islice(
      artifacts.read_records(examples_dir, 'eval'), WARMUP_REQUESTS))
  catalogue = None
  if recommend.serves_rank(config) or recommend.serves_recommend(config):
    with open(os.path.join(examples_dir, FEATURE_TYPES_FILE),
              encoding='utf-8') as f:
      feature_types = json.load(f)
    catalogue = recommend.build_catalogue(config, examples_dir, feature_types)
    logging.info('Trainer: %d candidates in the catalogue',
                 len(catalogue.ids))
  export.export_serving_model(model, tft_output, config, serving_dir,
                              warmup_examples, catalogue)
  with open(os.path.join(output_dir, 'history.json'), 'w',
            encoding='utf-8') as f:
    json.dump({'history': history, 'best_epoch': best_epoch}, f, indent=2,
              default=float)
  logging.info('Trainer: exported the serving model to %s', serving_dir)
  return TrainerResult(serving_dir, history, best_epoch)
