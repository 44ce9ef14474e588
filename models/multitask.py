"""The multi-task Keras model: a functional graph with a masked summed loss.

The loss is L = sum_i alpha_i * L_i + lambda * sum(w^2). Each L_i is the
mean categorical cross-entropy over the examples that carry task i's label,
so a task whose examples are rare in the mixed dataset (stories among
impressions, say) is not scaled down by the batch size.
"""

from typing import Dict, Mapping, Optional, Sequence

import tensorflow as tf

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


class MultiTaskModel(tf.keras.Model):
  """Functional model whose fit() minimizes the weighted masked losses.

  Construct it like `tf.keras.Model(inputs, outputs)` with `outputs` a dict
  from task name to class probabilities, plus `task_weights` (alpha per
  task) and optional `class_weights` (per task, one weight per class). Labels are fed
  as a dict from task name to class id, `NO_LABEL` for an unlabelled example.
  """

  def __init__(self, *args, task_weights: Mapping[str, float],
               class_weights: Optional[Mapping[str, Sequence[float]]] = None,
               **kwargs):
    super().__init__(*args, **kwargs)
    self.task_weights = dict(task_weights)
    self.class_weights = {
        task: tf.constant(weights, tf.float32)
        for task, weights in (class_weights or {}).items()
    }
    self._regularization_tracker = tf.keras.metrics.Mean(
        name='regularization_loss')
    self._task_loss_trackers = {
        task: tf.keras.metrics.Mean(name=f'{task}_loss')
        for task in self.task_weights
    }
    self._task_accuracy = {
        task: tf.keras.metrics.Mean(name=f'{task}_accuracy')
        for task in self.task_weights
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

  def _compute_task_losses(self, labels: Dict[str, tf.Tensor],
                           predictions: Dict[str, tf.Tensor]):
    task_losses = {
        task: masked_task_loss(labels[task], predictions[task],
                               self.class_weights.get(task))
        for task in self.task_weights
    }
    total = tf.add_n([
        tf.constant(weight, tf.float32) * task_losses[task]
        for task, weight in self.task_weights.items()
    ])
    if self.losses:
      total += tf.add_n(self.losses)
    return total, task_losses

  def _update_metrics(self, labels, predictions):
    self._regularization_tracker.update_state(
        tf.add_n(self.losses) if self.losses else 0.0)
    for task in self.task_weights:
      task_labels = tf.reshape(labels[task], [-1])
      mask = task_labels >= 0
      losses, weights = _example_losses(task_labels, predictions[task],
                                        self.class_weights.get(task))
      self._task_loss_trackers[task].update_state(losses,
                                                  sample_weight=weights)
      correct = tf.cast(
          tf.equal(tf.argmax(predictions[task], axis=-1), task_labels),
          tf.float32)
      self._task_accuracy[task].update_state(
          correct, sample_weight=tf.cast(mask, tf.float32))

  def train_step(self, data):
    inputs, labels = data
    with tf.GradientTape() as tape:
      predictions = self(inputs, training=True)
      total, _ = self._compute_task_losses(labels, predictions)
    gradients = tape.gradient(total, self.trainable_variables)
    self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
    self._update_metrics(labels, predictions)
    return self._results()

  def test_step(self, data):
    inputs, labels = data
    predictions = self(inputs, training=False)
    self._update_metrics(labels, predictions)
    return self._results()


def split_labels(batch: Dict[str, tf.Tensor], task_names):
  """Separate transformed label columns from model inputs."""
  batch = dict(batch)
  labels = {task: batch.pop(features.label_feature(task))
            for task in task_names}
  return batch, labels
