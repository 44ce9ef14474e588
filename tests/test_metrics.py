"""Metric values against hand-computed references."""

import math

import numpy as np
import pytest

from components import metrics


def test_classification_metrics_values():
  result = metrics.classification_metrics(
      ['a', 'a', 'a', 'b', 'b', 'c'], ['a', 'a', 'b', 'b', 'c', 'c'])
  # a: P=1, R=2/3; b: P=1/2, R=1/2; c: P=1/2, R=1.
  assert result['accuracy'] == pytest.approx(4 / 6)
  assert result['macro_precision'] == pytest.approx((1 + 0.5 + 0.5) / 3)
  assert result['macro_recall'] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
  f1s = [2 * 1 * (2 / 3) / (1 + 2 / 3), 0.5, 2 * 0.5 / 1.5]
  assert result['macro_f1'] == pytest.approx(np.mean(f1s))


def test_majority_predictor_macro_f1():
  result = metrics.classification_metrics(['p'] * 8 + ['n'] * 2, ['p'] * 10)
  assert result['macro_f1'] == pytest.approx((2 * 0.8 / 1.8) / 2)


def test_auc_perfect_and_inverted():
  assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
  assert metrics.roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0


def test_auc_counts_ties_as_half():
  assert metrics.roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
  # One positive above both negatives, one tied with one negative.
  assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]) == pytest.approx(
      (2 + 1.5) / 4)


def test_auc_single_class_is_nan():
  assert math.isnan(metrics.roc_auc([1, 1], [0.2, 0.3]))


def test_mrr_and_ndcg_values():
  labels = np.array([0, 1, 0, 1])
  scores = np.array([0.9, 0.8, 0.1, 0.2])
  # Ranking: 0.9(0), 0.8(1), 0.2(1), 0.1(0): positives at ranks 2 and 3.
  assert metrics.mrr(labels, scores) == pytest.approx((1 / 2 + 1 / 3) / 2)
  dcg = 1 / math.log2(3) + 1 / math.log2(4)
  ideal = 1 / math.log2(2) + 1 / math.log2(3)
  assert metrics.ndcg(labels, scores, 5) == pytest.approx(dcg / ideal)


def test_ties_rank_in_input_order():
  # A constant scorer ranks in display order: the click at position 3.
  assert metrics.mrr(np.array([0, 0, 1]), np.zeros(3)) == pytest.approx(1 / 3)


def test_impression_metrics_skip_one_class_groups():
  result = metrics.impression_metrics(
      groups=['i1', 'i1', 'i2', 'i2', 'i3'],
      labels=[1, 0, 0, 1, 1],
      scores=[0.9, 0.1, 0.8, 0.2, 0.5])
  assert result['impressions'] == 2
  assert result['group_auc'] == pytest.approx(0.5)
  assert result['mrr'] == pytest.approx((1 + 0.5) / 2)


def test_expected_value_rmse():
  probabilities = np.array([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])
  # Expected values 2.5 and 1.0 against true 3 and 1.
  result = metrics.expected_value_rmse([3, 1], probabilities, [1, 2, 3])
  assert result == pytest.approx(math.sqrt((0.25 + 0.0) / 2))


def test_average_precision_by_hand():
  # Positives at ranks 1 and 3: (1/1 + 2/3) / 2.
  value = metrics.average_precision(np.array([1, 0, 1, 0]),
                                    np.array([0.9, 0.8, 0.7, 0.1]))
  assert value == pytest.approx((1 + 2 / 3) / 2)


def test_multilabel_metrics_by_hand():
  labels = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0]])
  scores = np.array([[0.9, 0.2, 0.1], [0.4, 0.8, 0.6], [0.1, 0.3, 0.2]])
  result = metrics.multilabel_metrics(labels, scores)
  # Class 0: predicted {0}, true {0, 1}: F1 = 2/3. Class 1: predicted {1},
  # true {1, 2}: F1 = 2/3. Class 2 has no positive and is left out.
  assert result['macro_f1'] == pytest.approx(2 / 3)
  # Class 0: ranks 0.9, 0.4 -> both positives first: AP 1. Class 1: 0.8
  # (pos), 0.3 (pos), 0.2: AP 1.
  assert result['mean_average_precision'] == pytest.approx(1.0)
  # Micro: 2 true positives, 3 predicted (incl. class 2), 4 true.
  assert result['micro_f1'] == pytest.approx(4 / 7)


def test_top_k_accuracy():
  ranked = np.array([['a', 'b', 'c'], ['c', 'a', 'b'], ['b', 'c', 'a']],
                    dtype=object)
  result = metrics.top_k_accuracy(ranked, ['a', 'b', 'd'], [1, 3])
  assert result['top_1_accuracy'] == pytest.approx(1 / 3)
  assert result['top_3_accuracy'] == pytest.approx(2 / 3)


def test_per_impression_metrics_align_two_scorers():
  groups = ['b', 'a', 'b', 'a', 'c']
  labels = [1, 0, 0, 1, 1]
  kept_groups, good = metrics.per_impression_metrics(groups, labels,
                                              [0.9, 0.1, 0.2, 0.8, 0.5])
  _, bad = metrics.per_impression_metrics(groups, labels,
                                          [0.1, 0.9, 0.8, 0.2, 0.5])
  # 'c' has no non-click, so only 'a' and 'b' are kept, in key order.
  assert kept_groups == ['a', 'b']
  np.testing.assert_allclose(good['group_auc'], [1.0, 1.0])
  np.testing.assert_allclose(bad['group_auc'], [0.0, 0.0])
  np.testing.assert_allclose(bad['mrr'], [0.5, 0.5])


def test_bootstrap_interval_constant_shift():
  baseline = np.linspace(0.0, 1.0, 50)
  result = metrics.paired_bootstrap_interval(baseline + 0.25, baseline)
  assert result['difference'] == pytest.approx(0.25)
  assert result['lower'] == pytest.approx(0.25)
  assert result['upper'] == pytest.approx(0.25)
  assert result['units'] == 50


def test_paired_bootstrap_interval_spans_zero_for_noise_only():
  rng = np.random.default_rng(7)
  baseline = rng.uniform(size=400)
  noise = metrics.paired_bootstrap_interval(
      baseline + rng.normal(0, 0.1, size=400), baseline)
  assert noise['lower'] < 0 < noise['upper']
  # Standard error of the mean difference: 0.1 / sqrt(400) = 0.005, so the
  # 95% interval is about 0.02 wide.
  assert 0.012 < noise['upper'] - noise['lower'] < 0.03
  better = metrics.paired_bootstrap_interval(
      baseline + 0.05 + rng.normal(0, 0.1, size=400), baseline)
  assert better['lower'] > 0
  # The same seed gives the same interval.
  assert metrics.paired_bootstrap_interval(
      baseline + 0.05, baseline, seed=3) == metrics.paired_bootstrap_interval(
          baseline + 0.05, baseline, seed=3)


def test_paired_bootstrap_interval_rejects_unpaired_values():
  with pytest.raises(ValueError, match=r'\(3,\) for the candidate and '
                     r'\(2,\) for the baseline'):
    metrics.paired_bootstrap_interval(np.zeros(3), np.zeros(2))
