"""Evaluation metrics in NumPy: classification, AUC and per-impression ranking.

Ranking ties are broken by the order of the examples, so a constant scorer
gets the ranking of the input order, not a lucky one; AUC counts a tie as
half a correct pair (the Mann-Whitney statistic).
"""

from typing import Dict, Hashable, List, Optional, Sequence, Tuple

import numpy as np


def classification_metrics(y_true: Sequence[str],
                           y_pred: Sequence[str]) -> Dict[str, float]:
  """Accuracy and macro precision, recall and F1 over the labels seen.

  The classes are the union of true and predicted labels, so a class that
  is never predicted counts with precision 0 and recall 0.
  """
  y_true = np.asarray(y_true, dtype=object)
  y_pred = np.asarray(y_pred, dtype=object)
  if y_true.size == 0:
    return {'accuracy': float('nan'), 'macro_precision': float('nan'),
            'macro_recall': float('nan'), 'macro_f1': float('nan'),
            'examples': 0}
  classes = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
  precisions, recalls, f1s = [], [], []
  for label in classes:
    true_positive = np.sum((y_pred == label) & (y_true == label))
    predicted = np.sum(y_pred == label)
    actual = np.sum(y_true == label)
    precision = true_positive / predicted if predicted else 0.0
    recall = true_positive / actual if actual else 0.0
    f1 = (2 * precision * recall / (precision + recall)
          if precision + recall else 0.0)
    precisions.append(precision)
    recalls.append(recall)
    f1s.append(f1)
  return {
      'accuracy': float(np.mean(y_true == y_pred)),
      'macro_precision': float(np.mean(precisions)),
      'macro_recall': float(np.mean(recalls)),
      'macro_f1': float(np.mean(f1s)),
      'examples': int(y_true.size),
  }


def expected_value_rmse(true_values: Sequence[float],
                        probabilities: np.ndarray,
                        class_values: Sequence[float]) -> float:
  """RMSE of the probability-weighted mean class value, such as a rating.

  Args:
    true_values: [n] the true numeric labels.
    probabilities: [n, classes] the predicted class probabilities.
    class_values: [classes] the numeric value of each class.

  Returns:
    The root mean squared error; NaN for no examples.
  """
  true_values = np.asarray(true_values, dtype=np.float64)
  if true_values.size == 0:
    return float('nan')
  expected = np.asarray(probabilities, dtype=np.float64) @ np.asarray(
      class_values, dtype=np.float64)
  return float(np.sqrt(np.mean((expected - true_values) ** 2)))


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
  """Area under the ROC curve; NaN when only one class is present."""
  labels = np.asarray(labels, dtype=np.int64)
  scores = np.asarray(scores, dtype=np.float64)
  positives = int(np.sum(labels == 1))
  negatives = int(labels.size - positives)
  if positives == 0 or negatives == 0:
    return float('nan')
  ranks = _average_ranks(scores)
  rank_sum = float(np.sum(ranks[labels == 1]))
  return (rank_sum - positives * (positives + 1) / 2) / (positives *
                                                         negatives)


def _average_ranks(values: np.ndarray) -> np.ndarray:
  """1-based ranks, ties getting the mean of their ranks."""
  order = np.argsort(values, kind='mergesort')
  sorted_values = values[order]
  ranks = np.empty(values.size, dtype=np.float64)
  start = 0
  while start < values.size:
    end = start
    while end + 1 < values.size and sorted_values[end + 1] == sorted_values[
        start]:
      end += 1
    ranks[order[start:end + 1]] = (start + end) / 2 + 1
    start = end + 1
  return ranks


def _ranked_labels(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
  order = np.lexsort((np.arange(scores.size), -scores))
  return labels[order]


def mrr(labels: np.ndarray, scores: np.ndarray) -> float:
  """Mean reciprocal rank of the positives, as MIND computes it."""
  ranked = _ranked_labels(labels, scores)
  reciprocal = ranked / (np.arange(ranked.size) + 1)
  return float(np.sum(reciprocal) / np.sum(ranked))


def ndcg(labels: np.ndarray, scores: np.ndarray, k: int) -> float:
  """nDCG@k with gains 2^label - 1, as MIND computes it."""
  ranked = _ranked_labels(labels, scores)[:k]
  ideal = np.sort(labels)[::-1][:k]
  discounts = np.log2(np.arange(2, k + 2))
  dcg = np.sum((2 ** ranked - 1) / discounts[:ranked.size])
  ideal_dcg = np.sum((2 ** ideal - 1) / discounts[:ideal.size])
  return float(dcg / ideal_dcg) if ideal_dcg > 0 else float('nan')


IMPRESSION_METRICS = ('group_auc', 'mrr', 'ndcg@5', 'ndcg@10')


def per_impression_metrics(groups: Sequence[Hashable], labels: Sequence[int],
                           scores: Sequence[float]
                           ) -> Tuple[List[Hashable], Dict[str, np.ndarray]]:
  """AUC, MRR and nDCG@5/10 of each impression, in order of its group key.

  Impressions without both a click and a non-click are skipped, as in MIND's
  evaluation. The impressions kept depend on the labels alone, so two
  scorers of the same examples get aligned arrays.

  Returns:
    The group keys kept, and one array per metric with a value per key.
  """
  groups = np.asarray(groups, dtype=object)
  labels = np.asarray(labels, dtype=np.int64)
  scores = np.asarray(scores, dtype=np.float64)
  order = np.argsort(groups, kind='mergesort')
  values = {name: [] for name in IMPRESSION_METRICS}
  kept_groups = []
  boundaries = np.flatnonzero(groups[order][1:] != groups[order][:-1]) + 1
  for indices in np.split(order, boundaries):
    if indices.size == 0:
      continue
    indices = np.sort(indices)  # Keep the impression's display order.
    group_labels, group_scores = labels[indices], scores[indices]
    positives = int(np.sum(group_labels))
    if positives == 0 or positives == group_labels.size:
      continue
    kept_groups.append(groups[indices[0]])
    values['group_auc'].append(roc_auc(group_labels, group_scores))
    values['mrr'].append(mrr(group_labels, group_scores))
    values['ndcg@5'].append(ndcg(group_labels, group_scores, 5))
    values['ndcg@10'].append(ndcg(group_labels, group_scores, 10))
  arrays = {name: np.asarray(metric_values, dtype=np.float64)
            for name, metric_values in values.items()}
  return kept_groups, arrays


def impression_metrics(groups: Sequence[Hashable], labels: Sequence[int],
                       scores: Sequence[float]) -> Dict[str, float]:
  """Per-impression AUC, MRR and nDCG@5/10, averaged over impressions.

  Impressions without both a click and a non-click are skipped, as in MIND's
  evaluation; `impressions` reports how many were averaged.
  """
  kept_groups, values = per_impression_metrics(groups, labels, scores)
  summary = {name: float(np.mean(v)) if v.size else float('nan')
             for name, v in values.items()}
  summary['impressions'] = len(kept_groups)
  return summary


def paired_bootstrap_interval(candidate: np.ndarray, baseline: np.ndarray,
                              replicates: int = 1000,
                              confidence: float = 0.95,
                              seed: int = 0) -> Dict[str, float]:
  """Mean difference of paired values and its percentile bootstrap interval.

  Each replicate draws the units (impressions, say) with replacement and
  takes the mean of candidate minus baseline over the draw. The interval is
  the central `confidence` share of those means. An interval that spans 0
  means the units measured cannot tell the two scorers apart.

  Args:
    candidate: [units] one scorer's metric per unit.
    baseline: [units] the other scorer's metric for the same units.
    replicates: how many resamples to draw.
    confidence: the interval's coverage, between 0 and 1.
    seed: the random seed, so that a rerun reports the same interval.

  Returns:
    `difference` (the mean over all units), `lower`, `upper`, `units`.
  """
  candidate = np.asarray(candidate, dtype=np.float64)
  baseline = np.asarray(baseline, dtype=np.float64)
  if candidate.shape != baseline.shape:
    raise ValueError(f'Paired values differ in shape: {candidate.shape} for '
                     f'the candidate and {baseline.shape} for the baseline.')
  if not 0 < confidence < 1:
    raise ValueError(f'confidence must be between 0 and 1, got {confidence}.')
  differences = candidate - baseline
  if differences.size == 0:
    nan = float('nan')
    return {'difference': nan, 'lower': nan, 'upper': nan, 'units': 0}
  rng = np.random.default_rng(seed)
  # Draw in chunks of about 4M indices so that memory stays flat.
  chunk = max(1, 4_000_000 // differences.size)
  means = np.concatenate([
      differences[rng.integers(0, differences.size,
                               size=(min(chunk, replicates - start),
                                     differences.size))].mean(axis=1)
      for start in range(0, replicates, chunk)
  ])
  tail = (1 - confidence) / 2 * 100
  lower, upper = np.percentile(means, [tail, 100 - tail])
  return {'difference': float(differences.mean()), 'lower': float(lower),
          'upper': float(upper), 'units': int(differences.size)}


def binary_metrics(labels: Sequence[int], scores: Sequence[float],
                   groups: Optional[Sequence[Hashable]] = None
                   ) -> Dict[str, float]:
  """Pooled AUC, plus per-impression metrics when groups are given."""
  result = {'auc': roc_auc(labels, scores)}
  if groups is not None:
    result.update(impression_metrics(groups, labels, scores))
  return result


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
  """Compute the average precision: the mean precision at each positive's rank.

  Tied scores keep their input order. Returns NaN when there is no positive.
  """
  ranked = _ranked_labels(np.asarray(labels), np.asarray(scores))
  positives = ranked.sum()
  if positives == 0:
    return float('nan')
  hits = np.cumsum(ranked)
  return float(np.sum(ranked * hits / np.arange(1, ranked.size + 1)) /
               positives)


def multilabel_metrics(labels: np.ndarray, scores: np.ndarray,
                       threshold: float = 0.5) -> Dict[str, float]:
  """Compute macro-F1 and micro-F1 at `threshold`, and mean average precision.

  Args:
    labels: [examples, classes] 0/1.
    scores: [examples, classes] probabilities.
    threshold: a class is predicted where its score is at least this.

  Returns:
    `macro_f1` and `mean_average_precision`, both averaged over the classes
    with at least one positive example, and `micro_f1`. A class without
    positive examples is left out, because its average precision is
    undefined.
  """
  labels = np.asarray(labels, dtype=np.int64)
  scores = np.asarray(scores, dtype=np.float64)
  predicted = scores >= threshold
  present = labels.sum(axis=0) > 0
  f1s, precisions = [], []
  for c in np.flatnonzero(present):
    true_positive = np.sum(predicted[:, c] & (labels[:, c] == 1))
    denominator = predicted[:, c].sum() + labels[:, c].sum()
    f1s.append(2.0 * true_positive / denominator if denominator else 0.0)
    precisions.append(average_precision(labels[:, c], scores[:, c]))
  true_positive = np.sum(predicted & (labels == 1))
  denominator = predicted.sum() + labels.sum()
  return {
      'macro_f1': float(np.mean(f1s)) if f1s else float('nan'),
      'mean_average_precision': (float(np.mean(precisions)) if precisions
                                 else float('nan')),
      'micro_f1': (float(2.0 * true_positive / denominator) if denominator
                   else float('nan')),
  }


def top_k_accuracy(ranked_ids: np.ndarray, true_ids: Sequence[str],
                   ks: Sequence[int]) -> Dict[str, float]:
  """Compute the share of queries whose true id is among the first k ids.

  Args:
    ranked_ids: [queries, at least max(ks)] ids, best first.
    true_ids: [queries] the id each query interacted with.
    ks: the cut-offs.

  Returns:
    `top_<k>_accuracy` per k.
  """
  ranked_ids = np.asarray(ranked_ids, dtype=object)
  true_ids = np.asarray(true_ids, dtype=object)
  hits = ranked_ids == true_ids[:, np.newaxis]
  result = {}
  for k in ks:
    result[f'top_{k}_accuracy'] = (float(hits[:, :k].any(axis=1).mean())
                                   if true_ids.size else float('nan'))
  return result
