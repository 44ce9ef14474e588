"""The multi-task Keras model: a functional graph with a masked summed loss.

The loss is L = sum_i alpha_i * L_i + lambda * sum(w^2). Each L_i is a mean
over the examples that carry task i's label, so a task whose examples are
rare in the mixed dataset (stories among impressions, say) is not scaled
down by the batch size:
- a softmax task: categorical cross-entropy;
- a multi-label task: binary cross-entropy, averaged over its classes;
- a retrieval task: in-batch softmax cross-entropy of each query against the
  batch's candidates (TFRS `Retrieval`), optionally with accidental hits
  removed and with the logQ correction of candidate sampling bias.
"""

from typing import Dict, Mapping, Optional, Sequence

import tensorflow as tf
import tensorflow_recommenders as tfrs

from models import features


def _example_losses(labels: tf.Tensor, probabilities: tf.Tensor,
                    class_weights: Optional[tf.Tensor] = None):
  """Per-example cross-entropy and weight; weight 0 where unlabelled."""
  labels = tf.reshape(labels, [-1])
  weights = tf.cast(labels >= 0, probabilities.dtype)
  safe_labels = tf.where(labels >= 0, labels, tf.zeros_like(labels))
  if class_weights is not None:
    weights *= tf.gather(tf.cast(class_weights, probabilities.dtype),
                         safe_labels)
  losses = tf.keras.losses.sparse_categorical_crossentropy(
      safe_labels, probabilities)
  return losses, weights


def masked_task_loss(labels: tf.Tensor, probabilities: tf.Tensor,
                     class_weights: Optional[tf.Tensor] = None) -> tf.Tensor:
  """Weighted mean cross-entropy over labelled examples; 0 when none is.

  Args:
    labels: [batch] class ids, NO_LABEL (negative) where unlabelled.
    probabilities: [batch, classes] softmax outputs.
    class_weights: optional [classes] weight of each class's examples.

  Returns:
    A scalar loss.
  """
  losses, weights = _example_losses(labels, probabilities, class_weights)
  return tf.math.divide_no_nan(tf.reduce_sum(losses * weights),
                               tf.reduce_sum(weights))


def _multilabel_losses(labels: tf.Tensor, probabilities: tf.Tensor):
  """Return per-example binary cross-entropy and a 0/1 label weight.

  The loss is averaged over classes. The weight is 0 for an unlabelled
  example, whose classes are all NO_LABEL.
  """
  weights = tf.cast(tf.reduce_all(labels >= 0, axis=-1), probabilities.dtype)
  safe_labels = tf.maximum(labels, 0.0)
  losses = tf.keras.losses.binary_crossentropy(safe_labels[..., tf.newaxis],
                                               probabilities[..., tf.newaxis])
  return tf.reduce_mean(losses, axis=-1), weights


class MultiTaskModel(tf.keras.Model):
  """Functional model whose fit() minimizes the weighted masked losses.

  Construct it like `tf.keras.Model(inputs, outputs)` with `outputs` a dict
  from task name to class probabilities and, for a retrieval task, its two
  tower embeddings (`features.tower_output`). `tasks` maps each task name to
  its `TaskConfig`, `class_weights` gives softmax tasks one weight per class,
  and `candidate_probabilities` gives the logQ correction each candidate
  id's sampling probability. Labels are fed as a dict from task name to
  class id (a multi-hot row for a multi-label task, the candidate id for a
  retrieval task), `NO_LABEL` for an unlabelled example.
  """

  def __init__(self, *args, tasks: Mapping[str, object],
               class_weights: Optional[Mapping[str, Sequence[float]]] = None,
               candidate_probabilities: Optional[Sequence[float]] = None,
               **kwargs):
    super().__init__(*args, **kwargs)
    self.task_types = {name: task.type for name, task in tasks.items()}
    self.task_weights = {name: task.weight for name, task in tasks.items()}
    self.class_weights = {
        task: tf.constant(weights, tf.float32)
        for task, weights in (class_weights or {}).items()
    }
    self._retrieval = {}
    self._logq = None
    for name, task in tasks.items():
      if task.type != 'retrieval':
        continue
      self._retrieval[name] = tfrs.tasks.Retrieval(
          loss=tf.keras.losses.CategoricalCrossentropy(
              from_logits=True,
              reduction=tf.keras.losses.Reduction.SUM_OVER_BATCH_SIZE),
          remove_accidental_hits=task.remove_accidental_hits,
          temperature=task.temperature,
          name=f'{name}_task')
      self._logq = (tf.constant(candidate_probabilities, tf.float32)
                    if task.logq_correction and candidate_probabilities
                    is not None else None)
      if task.logq_correction and candidate_probabilities is None:
        raise ValueError(f'Retrieval task {name!r} has logq_correction on, '
                         'but no candidate_probabilities were given. Pass '
                         'them or set logq_correction to false.')
    self._regularization_tracker = tf.keras.metrics.Mean(
        name='regularization_loss')
    self._task_loss_trackers = {
        task: tf.keras.metrics.Mean(name=f'{task}_loss')
        for task in self.task_weights
    }
    self._task_accuracy = {
        task: tf.keras.metrics.Mean(name=f'{task}_accuracy')
        for task, kind in self.task_types.items()
        if kind in ('multiclass', 'binary')
    }

  @property
  def metrics(self):
    return ([self._regularization_tracker] +
            list(self._task_loss_trackers.values()) +
            list(self._task_accuracy.values()))

  def _results(self) -> Dict[str, tf.Tensor]:
    """Epoch metrics; `loss` is the summed loss over the whole epoch.

    Each task's loss is averaged over all its labelled examples so far, not
    over batches, so batches without a task's labels do not dilute it.
    """
    results = {m.name: m.result() for m in self.metrics}
    results['loss'] = tf.add_n([
        tf.constant(weight, tf.float32) *
        self._task_loss_trackers[task].result()
        for task, weight in self.task_weights.items()
    ]) + self._regularization_tracker.result()
    return results

  def _retrieval_loss(self, task: str, labels: tf.Tensor, predictions):
    """Return the in-batch softmax loss and the number of pairs behind it.

    Only rows that are query-candidate pairs (label >= 0) take part.
    """
    labels = tf.reshape(labels, [-1])
    pairs = labels >= 0
    ids = tf.boolean_mask(labels, pairs)
    queries = tf.boolean_mask(
        predictions[features.tower_output(task, 'query')], pairs)
    candidates = tf.boolean_mask(
        predictions[features.tower_output(task, 'candidate')], pairs)
    probabilities = (tf.gather(self._logq, ids) if self._logq is not None
                     else None)
    count = tf.reduce_sum(tf.cast(pairs, tf.float32))

    def loss():
      return self._retrieval[task](
          queries, candidates, candidate_ids=ids,
          candidate_sampling_probability=probabilities,
          compute_metrics=False, compute_batch_metrics=False)

    return tf.cond(count > 0, loss, lambda: tf.constant(0.0)), count

  def _task_loss(self, task: str, labels: tf.Tensor, predictions):
    """Return the task's mean loss and the weight behind it.

    The weight is the number of labelled examples in the batch, or for a
    softmax task with class weights, the sum of their weights.
    """
    kind = self.task_types[task]
    if kind == 'retrieval':
      return self._retrieval_loss(task, labels, predictions)
    if kind == 'multilabel':
      losses, weights = _multilabel_losses(labels, predictions[task])
    else:
      losses, weights = _example_losses(labels, predictions[task],
                                        self.class_weights.get(task))
    total = tf.reduce_sum(weights)
    return tf.math.divide_no_nan(tf.reduce_sum(losses * weights),
                                 total), total

  def _compute_task_losses(self, labels: Dict[str, tf.Tensor],
                           predictions: Dict[str, tf.Tensor]):
    task_losses = {
        task: self._task_loss(task, labels[task], predictions)
        for task in self.task_weights
    }
    total = tf.add_n([
        tf.constant(weight, tf.float32) * task_losses[task][0]
        for task, weight in self.task_weights.items()
    ])
    if self.losses:
      total += tf.add_n(self.losses)
    return total, task_losses

  def _update_metrics(self, labels, predictions, task_losses):
    self._regularization_tracker.update_state(
        tf.add_n(self.losses) if self.losses else 0.0)
    for task, (loss, weight) in task_losses.items():
      self._task_loss_trackers[task].update_state(loss, sample_weight=weight)
    for task in self._task_accuracy:
      task_labels = tf.reshape(labels[task], [-1])
      correct = tf.cast(
          tf.equal(tf.argmax(predictions[task], axis=-1), task_labels),
          tf.float32)
      self._task_accuracy[task].update_state(
          correct, sample_weight=tf.cast(task_labels >= 0, tf.float32))

  def train_step(self, data):
    inputs, labels = data
    with tf.GradientTape() as tape:
      predictions = self(inputs, training=True)
      total, task_losses = self._compute_task_losses(labels, predictions)
    gradients = tape.gradient(total, self.trainable_variables)
    self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
    self._update_metrics(labels, predictions, task_losses)
    return self._results()

  def test_step(self, data):
    inputs, labels = data
    predictions = self(inputs, training=False)
    _, task_losses = self._compute_task_losses(labels, predictions)
    self._update_metrics(labels, predictions, task_losses)
    return self._results()


def split_labels(batch: Dict[str, tf.Tensor], task_names):
  """Separate transformed label columns from model inputs."""
  batch = dict(batch)
  labels = {task: batch.pop(features.label_feature(task))
            for task in task_names}
  return batch, labels
