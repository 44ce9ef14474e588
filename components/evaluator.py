"""Evaluator: per-task metrics on the eval split, baselines and blessing.

The candidate is scored through its exported `from_examples` signature on the
raw eval examples, so the metrics describe the model that would be served.
Each task is compared with a baseline computed in the same run: the majority
class of train, or for click tasks the item's train-split click-through rate.
It is also compared with the version currently served, scored on the same
eval examples.
"""

import collections
import json
import logging
import os
from typing import Dict, List, NamedTuple, Optional

import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  Registers the tf-text ops of the graph.

from components import artifacts
from components import metrics as metric_lib
from components.config import PipelineConfig, TaskConfig
from models import features
from models import recommend

PREDICT_BATCH_SIZE = 512
# Maximum number of impressions (rank requests) per `rank` signature call.
RANK_BATCH_GROUPS = 64
METRICS_FILE = 'metrics.json'
REPORT_FILE = 'report.md'
BLESSED_FILE = 'BLESSED'
NOT_BLESSED_FILE = 'NOT_BLESSED'
# Prior weight, in impressions, of the global click-through rate that
# smooths each item's rate in the popularity baseline.
POPULARITY_PRIOR_IMPRESSIONS = 10.0
# Paired bootstrap over eval impressions for the ranking metrics' difference
# between the candidate and the popularity baseline.
BOOTSTRAP_REPLICATES = 1000
BOOTSTRAP_CONFIDENCE = 0.95


class EvaluatorResult(NamedTuple):
  """The evaluation outcome."""
  blessed: bool
  reasons: List[str]
  metrics: Dict[str, dict]
  metrics_path: str


class _EvalData(NamedTuple):
  serialized: List[bytes]
  values: Dict[str, list]


def _feature_values(example: tf.train.Example, name: str,
                    as_list: bool = False):
  feature = example.features.feature.get(name)
  if feature is None:
    return None
  kind = feature.WhichOneof('kind')
  values = list(getattr(feature, kind).value) if kind else []
  if kind == 'bytes_list':
    values = [v.decode('utf-8') for v in values]
  if as_list:
    return values
  return values[0] if values else ''


def _read_split(examples_dir: str, split: str, keys: List[str],
                list_keys=frozenset()) -> _EvalData:
  serialized, values = [], collections.defaultdict(list)
  for record in artifacts.read_records(examples_dir, split):
    serialized.append(record)
    example = tf.train.Example.FromString(record)
    for key in keys:
      values[key].append(_feature_values(example, key, key in list_keys))
  return _EvalData(serialized, dict(values))


def predict_examples(model_dir: str, serialized: List[bytes]
                     ) -> Dict[str, np.ndarray]:
  """Run a SavedModel's `from_examples` signature over serialized examples."""
  loaded = tf.saved_model.load(model_dir)
  if 'from_examples' not in loaded.signatures:
    raise ValueError(f'The SavedModel at {model_dir} has no `from_examples` '
                     f'signature; it has {sorted(loaded.signatures)}.')
  signature = loaded.signatures['from_examples']
  outputs = collections.defaultdict(list)
  for start in range(0, len(serialized), PREDICT_BATCH_SIZE):
    batch = tf.constant(serialized[start:start + PREDICT_BATCH_SIZE])
    for key, value in signature(examples=batch).items():
      outputs[key].append(value.numpy())
  return {key: np.concatenate(parts) for key, parts in outputs.items()}


def _labelled(task: TaskConfig, data: _EvalData) -> np.ndarray:
  """Return a boolean mask of the rows that carry the task's label.

  For retrieval, a labelled row must also have a query key, so that it is a
  query-item pair. Rows whose `unlabelled_when_set` feature is set are left
  out.
  """
  labelled = np.array([bool(label) for label in data.values[task.label]],
                      dtype=bool)
  if task.type == 'retrieval':
    labelled &= np.array([bool(q) for q in data.values[task.query_key]],
                         dtype=bool)
  if task.unlabelled_when_set:
    labelled &= np.array([not v for v in
                          data.values[task.unlabelled_when_set]], dtype=bool)
  return labelled


def _load_signature(model_dir: str, name: str):
  """Load a SavedModel's signature, or raise ValueError naming the others."""
  loaded = tf.saved_model.load(model_dir)
  if name not in loaded.signatures:
    raise ValueError(f'The SavedModel at {model_dir} has no `{name}` '
                     'signature. Its signatures are '
                     f'{sorted(loaded.signatures)}.')
  return loaded.signatures[name]


def _parse_inputs(serialized: List[bytes], spec) -> Dict[str, tf.Tensor]:
  """Parse raw examples into dense inputs; lists are padded with ''."""
  parsed = tf.io.parse_example(tf.constant(serialized), spec)
  return {name: (tf.sparse.to_dense(value, default_value='')
                 if isinstance(value, tf.SparseTensor) else value)
          for name, value in parsed.items()}


def recommend_examples(model_dir: str, serialized: List[bytes], k: int
                       ) -> np.ndarray:
  """Run a SavedModel's `recommend` signature on raw examples' query features.

  Returns:
    [examples, k] recommended ids, best first, with no ids excluded.
  """
  signature = _load_signature(model_dir, 'recommend')
  parse_spec = _parse_spec(signature,
                           {recommend.K_INPUT, recommend.EXCLUDE_INPUT})
  ids = []
  for start in range(0, len(serialized), PREDICT_BATCH_SIZE):
    inputs = _parse_inputs(serialized[start:start + PREDICT_BATCH_SIZE],
                           parse_spec)
    size = int(tf.shape(next(iter(inputs.values())))[0])
    inputs[recommend.K_INPUT] = tf.fill([size], tf.constant(k, tf.int32))
    inputs[recommend.EXCLUDE_INPUT] = tf.fill([size, 0], '')
    outputs = signature(**inputs)
    ids.append(outputs[recommend.ITEM_IDS].numpy().astype(str))
  return (np.concatenate(ids) if ids else
          np.zeros([0, k], dtype=str)).astype(object)


def _parse_spec(signature, skip) -> Dict[str, object]:
  """Build a parse_example spec for a signature's inputs, except `skip`."""
  spec = {}
  for name, tensor_spec in signature.structured_input_signature[1].items():
    if name in skip:
      continue
    spec[name] = (tf.io.VarLenFeature(tensor_spec.dtype)
                  if tensor_spec.shape.rank == 2 else tf.io.FixedLenFeature(
                      [], tensor_spec.dtype,
                      default_value='' if tensor_spec.dtype == tf.string
                      else 0))
  return spec


def rank_scores(model_dir: str, task: TaskConfig, data: _EvalData,
                mask: np.ndarray, candidate_id: str) -> np.ndarray:
  """Score each labelled example through the `rank` signature.

  The examples that share a `task.group_key` value (an impression) form one
  rank request. The request takes the query features from the first example
  and one candidate id from every example.

  Returns:
    One score per example; NaN where `mask` is False.
  """
  signature = _load_signature(model_dir, 'rank')
  spec = _parse_spec(signature, {recommend.CANDIDATES_INPUT})
  groups = collections.defaultdict(list)
  for index in np.flatnonzero(mask):
    groups[data.values[task.group_key][index]].append(index)
  scores = np.full(len(mask), np.nan)
  ordered = list(groups.values())
  for start in range(0, len(ordered), RANK_BATCH_GROUPS):
    batch = ordered[start:start + RANK_BATCH_GROUPS]
    inputs = _parse_inputs([data.serialized[rows[0]] for rows in batch],
                           spec)
    width = max(len(rows) for rows in batch)
    inputs[recommend.CANDIDATES_INPUT] = tf.constant(
        [[data.values[candidate_id][i] for i in rows] +
         [''] * (width - len(rows)) for rows in batch])
    batch_scores = signature(**inputs)[recommend.SCORES].numpy()
    for row, rows in enumerate(batch):
      scores[rows] = batch_scores[row, :len(rows)]
  return scores


def _retrieval_metrics(task: TaskConfig, model_dir: str, data: _EvalData,
                       mask: np.ndarray) -> Dict[str, float]:
  rows = [record for record, keep in zip(data.serialized, mask) if keep]
  ranked = recommend_examples(model_dir, rows, max(task.top_ks))
  true_ids = np.array(data.values[task.label], dtype=object)[mask]
  return metric_lib.top_k_accuracy(ranked, true_ids, task.top_ks)


def _retrieval_baseline(task: TaskConfig, train: _EvalData, data: _EvalData,
                        mask: np.ndarray) -> Dict[str, float]:
  """Compute the top-K accuracy of a train-split popularity baseline.

  Every query gets the same list: the train items with the highest counts.
  """
  train_mask = _labelled(task, train)
  counts = collections.Counter(
      np.array(train.values[task.label], dtype=object)[train_mask])
  popular = sorted(counts, key=lambda i: (-counts[i], i))[:max(task.top_ks)]
  true_ids = np.array(data.values[task.label], dtype=object)[mask]
  ranked = np.array([popular] * len(true_ids), dtype=object).reshape(
      len(true_ids), len(popular))
  return metric_lib.top_k_accuracy(ranked, true_ids, task.top_ks)


def _multi_hot(task: TaskConfig, data: _EvalData,
               mask: np.ndarray) -> np.ndarray:
  index = {c: i for i, c in enumerate(task.classes)}
  rows = np.array(data.values[task.label], dtype=object)[mask]
  result = np.zeros([len(rows), len(task.classes)], dtype=np.int64)
  for row, values in enumerate(rows):
    for value in values:
      if value in index:
        result[row, index[value]] = 1
  return result


def _multilabel_baseline(task: TaskConfig, train: _EvalData, data: _EvalData,
                         mask: np.ndarray) -> Dict[str, float]:
  """Compute the metrics of a baseline for a multi-label task.

  The baseline scores each class by its share of the labelled train rows.
  """
  prevalence = _multi_hot(task, train, _labelled(task, train)).mean(axis=0)
  labels = _multi_hot(task, data, mask)
  return metric_lib.multilabel_metrics(
      labels, np.tile(prevalence, (len(labels), 1)))


def _task_metrics(task: TaskConfig, data: _EvalData, mask: np.ndarray,
                  predicted_labels: np.ndarray,
                  positive_scores: Optional[np.ndarray]) -> Dict[str, float]:
  y_true = np.array(data.values[task.label], dtype=object)[mask]
  result = metric_lib.classification_metrics(y_true,
                                             predicted_labels[mask])
  if task.type == 'binary' and positive_scores is not None:
    labels = (y_true == task.positive_class).astype(np.int64)
    groups = (np.array(data.values[task.group_key], dtype=object)[mask]
              if task.group_key else None)
    result.update(metric_lib.binary_metrics(labels, positive_scores[mask],
                                            groups))
  return result


def numeric_class_values(task: TaskConfig) -> Optional[List[float]]:
  """Return the classes as numbers (ratings "1".."5"), or None if one is not."""
  try:
    return [float(c) for c in task.classes] if task.classes else None
  except ValueError:
    return None


def _true_values(task: TaskConfig, data: _EvalData,
                 mask: np.ndarray) -> np.ndarray:
  return np.array(data.values[task.label], dtype=object)[mask].astype(
      np.float64)


def _ranks_through_signature(config: PipelineConfig, task: TaskConfig) -> bool:
  """Return True if a binary task's ranking metrics use the `rank` signature."""
  return (recommend.serves_rank(config) and config.rank_task is not None and
          config.rank_task.name == task.name and task.type == 'binary' and
          bool(task.group_key))


def _model_task_metrics(task: TaskConfig, data: _EvalData, mask: np.ndarray,
                        outputs: Dict[str, np.ndarray],
                        ranked_scores: Optional[np.ndarray] = None
                        ) -> Dict[str, float]:
  """Compute a task's metrics from a model's outputs.

  For a binary task, `ranked_scores` (from the `rank` signature) replace the
  positive-class probabilities when given.
  """
  if task.type == 'multilabel':
    return metric_lib.multilabel_metrics(
        _multi_hot(task, data, mask),
        outputs[features.probabilities_output(task.name)][mask])
  labels = np.array([v.decode('utf-8') for v in
                     outputs[features.label_output(task.name)]], dtype=object)
  probabilities = outputs[features.probabilities_output(task.name)]
  result = _task_metrics(task, data, mask, labels,
                         _positive_scores(task, outputs, ranked_scores))
  class_values = numeric_class_values(task)
  if task.type == 'multiclass' and class_values:
    result['rmse'] = metric_lib.expected_value_rmse(
        _true_values(task, data, mask), probabilities[mask], class_values)
  return result


def _positive_scores(task: TaskConfig, outputs: Dict[str, np.ndarray],
                     ranked_scores: Optional[np.ndarray] = None
                     ) -> Optional[np.ndarray]:
  """Return the positive score per example: `rank` scores, else P(positive)."""
  if task.type != 'binary':
    return None
  if ranked_scores is not None:
    return ranked_scores
  index = list(task.classes).index(task.positive_class)
  return outputs[features.probabilities_output(task.name)][:, index]


def _impression_differences(task: TaskConfig, data: _EvalData,
                            mask: np.ndarray, candidate_scores: np.ndarray,
                            baseline_scores: np.ndarray
                            ) -> Dict[str, Dict[str, float]]:
  """Candidate minus baseline per ranking metric, with a 95% interval.

  The interval is a paired bootstrap over the eval impressions, so it shows
  whether the impressions measured can tell the two scorers apart.
  """
  groups = np.array(data.values[task.group_key], dtype=object)[mask]
  labels = (np.array(data.values[task.label], dtype=object)[mask] ==
            task.positive_class).astype(np.int64)
  _, candidate = metric_lib.per_impression_metrics(
      groups, labels, candidate_scores[mask])
  _, baseline = metric_lib.per_impression_metrics(
      groups, labels, baseline_scores[mask])
  return {
      name: metric_lib.paired_bootstrap_interval(
          candidate[name], baseline[name],
          replicates=BOOTSTRAP_REPLICATES, confidence=BOOTSTRAP_CONFIDENCE)
      for name in metric_lib.IMPRESSION_METRICS
  }


def _baseline_metrics(task: TaskConfig, train: _EvalData, data: _EvalData,
                      mask: np.ndarray,
                      popularity: Optional[np.ndarray] = None
                      ) -> Dict[str, float]:
  """Majority class of train; for click tasks, train-split item CTR.

  `popularity` is the click task's `_popularity_scores`, computed here when
  the caller passes None.
  """
  if task.type == 'multilabel':
    return _multilabel_baseline(task, train, data, mask)
  if task.type == 'retrieval':
    return _retrieval_baseline(task, train, data, mask)
  train_labels = [v for v in train.values[task.label] if v != '']
  counts = collections.Counter(train_labels)
  majority = (min(counts, key=lambda label: (-counts[label], label))
              if counts else '')
  predicted = np.array([majority] * len(mask), dtype=object)
  positive_scores = None
  if task.type == 'binary':
    positive_scores = (popularity if popularity is not None else
                       _popularity_scores(task, train, data))
  result = _task_metrics(task, data, mask, predicted, positive_scores)
  result['majority_class'] = majority
  if task.type == 'multiclass' and numeric_class_values(task):
    # The RMSE baseline predicts the train mean for every example.
    train_values = np.array(train_labels, dtype=np.float64)
    true_values = _true_values(task, data, mask)
    mean = train_values.mean() if train_values.size else 0.0
    result['rmse'] = (float(np.sqrt(np.mean((true_values - mean) ** 2)))
                      if true_values.size else float('nan'))
  return result


def _popularity_scores(task: TaskConfig, train: _EvalData,
                       data: _EvalData) -> np.ndarray:
  """Score each example by its item's train click-through rate, smoothed."""
  key = task.popularity_key
  impressions, clicked = collections.Counter(), collections.Counter()
  for item, label in zip(train.values.get(key, []), train.values[task.label]):
    if label == '':
      continue
    impressions[item] += 1
    clicked[item] += int(label == task.positive_class)
  total_impressions = sum(impressions.values())
  global_rate = (sum(clicked.values()) / total_impressions
                 if total_impressions else 0.0)
  if key is None:
    return np.full(len(data.serialized), global_rate)
  prior = POPULARITY_PRIOR_IMPRESSIONS
  return np.array([
      (clicked[item] + prior * global_rate) / (impressions[item] + prior)
      for item in data.values[key]
  ])


def latest_version_dir(serving_dir: str, model_name: str) -> Optional[str]:
  """The highest integer version folder of a model, or None."""
  base = os.path.join(serving_dir, model_name)
  if not os.path.isdir(base):
    return None
  versions = [int(name) for name in os.listdir(base) if name.isdigit()]
  return os.path.join(base, str(max(versions))) if versions else None


def _value_keys(config: PipelineConfig) -> List[str]:
  keys = set()
  for task in config.tasks:
    keys.add(task.label)
    keys.update(k for k in (task.group_key, task.popularity_key,
                            task.query_key, task.unlabelled_when_set) if k)
  keys.update(recommend.rank_tower_features(config)[1][:1])
  return sorted(keys)


def _list_keys(config: PipelineConfig) -> frozenset:
  return frozenset(task.label for task in config.tasks
                   if task.type == 'multilabel')


def _bless(config: PipelineConfig, task_results: Dict[str, dict],
           served_error: Optional[str]) -> List[str]:
  """Reasons not to bless; empty when the candidate is blessed."""
  reasons = []
  if served_error:
    reasons.append(served_error)
  tolerance = config.evaluator.tolerance
  for task in config.tasks:
    result = task_results[task.name]
    name = task.main_metric
    value = result['candidate'].get(name, float('nan'))
    baseline = result['baseline'].get(name, float('nan'))
    interval = (result.get('difference') or {}).get(name)
    if not value > baseline:
      reason = (f'{task.name}: {name} {value:.4f} does not beat the '
                f'baseline {baseline:.4f}')
      if interval:
        reason += (f' (difference {_format_interval(interval)} over '
                   f'{interval["units"]} impressions)')
      reasons.append(reason + '.')
    elif (config.evaluator.require_significant_lead and interval and
          not interval['lower'] > 0):
      reasons.append(
          f'{task.name}: {name} leads the baseline by '
          f'{_format_interval(interval)} over {interval["units"]} '
          'impressions; the interval includes 0 and '
          'evaluator.require_significant_lead is set.')
    served = (result.get('served') or {}).get(name)
    if served is not None and not np.isnan(served) and (
        np.isnan(value) or value < served - tolerance):
      reasons.append(f'{task.name}: {name} {value:.4f} is below the served '
                     f'version\'s {served:.4f} by more than {tolerance}.')
  return reasons


def _write_report(path: str, config: PipelineConfig, summary: dict) -> None:
  lines = [f'# Evaluation of {config.model_name}', '',
           f'Blessed: {"yes" if summary["blessed"] else "no"}', '']
  for reason in summary['reasons']:
    lines.append(f'- {reason}')
  lines += ['', '| task | metric | candidate | baseline | served |',
            '|---|---|---|---|---|']
  for task in config.tasks:
    result = summary['tasks'][task.name]
    for name, value in result['candidate'].items():
      if not isinstance(value, float):
        continue
      served = (result.get('served') or {}).get(name)
      marker = ' (main)' if name == task.main_metric else ''
      lines.append(f'| {task.name} | {name}{marker} | {value:.4f} | '
                   f'{result["baseline"].get(name, float("nan")):.4f} | '
                   f'{"" if served is None else f"{served:.4f}"} |')
  differences = [(task.name, name, interval) for task in config.tasks
                 for name, interval in (summary['tasks'][task.name].get(
                     'difference') or {}).items()]
  if differences:
    lines += ['', 'Candidate minus baseline per impression, with a '
              f'{BOOTSTRAP_CONFIDENCE:.0%} paired bootstrap interval over '
              'the eval impressions. An interval that spans 0 means these '
              'impressions cannot tell the two apart.', '',
              f'| task | metric | difference | {BOOTSTRAP_CONFIDENCE:.0%} '
              'interval | impressions |', '|---|---|---|---|---|']
    for task_name, name, interval in differences:
      lines.append(f'| {task_name} | {name} | {interval["difference"]:+.4f} '
                   f'| {interval["lower"]:+.4f} to {interval["upper"]:+.4f} '
                   f'| {interval["units"]} |')
  with open(path, 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')


def _format_interval(interval: Dict[str, float]) -> str:
  return (f'{interval["difference"]:+.4f}, {BOOTSTRAP_CONFIDENCE:.0%} '
          f'interval {interval["lower"]:+.4f} to {interval["upper"]:+.4f}')


def run_evaluator(config: PipelineConfig, examples_dir: str, model_dir: str,
                  output_dir: str,
                  served_model_dir: Optional[str] = None) -> EvaluatorResult:
  """Evaluate the candidate, its baselines and the served version; bless.

  Args:
    config: the pipeline config.
    examples_dir: ExampleGen's raw examples (train for baselines, eval).
    model_dir: the candidate SavedModel.
    output_dir: where metrics.json, report.md and the blessing go.
    served_model_dir: the version in service, if any, scored on the same
      eval examples.

  Returns:
    The blessing, the reasons against it, and the metrics per task.
  """
  keys = _value_keys(config)
  eval_data = _read_split(examples_dir, 'eval', keys, _list_keys(config))
  train_data = _read_split(examples_dir, 'train', keys, _list_keys(config))
  if not eval_data.serialized:
    raise ValueError(f'The eval split in {examples_dir} is empty; lower '
                     'split.eval_fraction or add data.')
  candidate = predict_examples(model_dir, eval_data.serialized)

  served, served_error = None, None
  if served_model_dir:
    try:
      served = predict_examples(served_model_dir, eval_data.serialized)
    except (ValueError, OSError, tf.errors.OpError) as e:
      served_error = (f'The served version at {served_model_dir} could not '
                      f'be evaluated, so the candidate cannot be compared '
                      f'with it: {e}')
      logging.error('Evaluator: %s', served_error)

  task_results = {}
  for task in config.tasks:
    mask = _labelled(task, eval_data)
    popularity = None
    if task.type == 'binary':
      popularity = _popularity_scores(task, train_data, eval_data)
    if task.type == 'retrieval':
      candidate_metrics = _retrieval_metrics(task, model_dir, eval_data, mask)
    else:
      ranked = None
      if _ranks_through_signature(config, task):
        ranked = rank_scores(model_dir, task, eval_data, mask,
                             recommend.rank_tower_features(config)[1][0])
      candidate_metrics = _model_task_metrics(task, eval_data, mask,
                                              candidate, ranked)
    result = {
        'main_metric': task.main_metric,
        'examples': int(mask.sum()),
        'candidate': candidate_metrics,
        'baseline': _baseline_metrics(task, train_data, eval_data, mask,
                                      popularity),
        'served': None,
    }
    if task.type == 'binary' and task.group_key:
      result['difference'] = _impression_differences(
          task, eval_data, mask, _positive_scores(task, candidate, ranked),
          popularity)
    if served is not None and task.type == 'retrieval':
      try:
        result['served'] = _retrieval_metrics(task, served_model_dir,
                                              eval_data, mask)
      except ValueError as e:
        logging.warning('Evaluator: the served version is not compared on '
                        '%s: %s', task.name, e)
    elif served is not None and (features.probabilities_output(task.name)
                                 in served):
      result['served'] = _model_task_metrics(task, eval_data, mask, served)
    task_results[task.name] = result

  reasons = _bless(config, task_results, served_error)
  summary = {'blessed': not reasons, 'reasons': reasons,
             'model_dir': model_dir, 'served_model_dir': served_model_dir,
             'eval_examples': len(eval_data.serialized),
             'tasks': task_results}
  os.makedirs(output_dir, exist_ok=True)
  metrics_path = os.path.join(output_dir, METRICS_FILE)
  with open(metrics_path, 'w', encoding='utf-8') as f:
    json.dump(summary, f, indent=2, default=float)
  _write_report(os.path.join(output_dir, REPORT_FILE), config, summary)
  marker = BLESSED_FILE if not reasons else NOT_BLESSED_FILE
  with open(os.path.join(output_dir, marker), 'w', encoding='utf-8') as f:
    f.write('\n'.join(reasons) + '\n')
  logging.info('Evaluator: %s', 'blessed' if not reasons else
               'not blessed: ' + ' '.join(reasons))
  return EvaluatorResult(not reasons, reasons, task_results, metrics_path)
