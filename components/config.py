"""Pipeline configuration: one YAML file per dataset and task set.

The YAML is parsed into frozen dataclasses. Every key is checked on load, and an
invalid value raises `ConfigError` naming the file, the key and what is accepted.
"""

import dataclasses
import hashlib
import json
import os
from typing import Any, Dict, List, Optional, Sequence

import yaml

FEATURE_TYPES = ('text', 'categorical', 'id_sequence', 'numeric')
TASK_TYPES = ('multiclass', 'binary', 'multilabel', 'retrieval')
TRUNKS = ('lstm', 'bilstm', 'transformer')
CLASS_METRICS = ('accuracy', 'macro_f1', 'macro_precision', 'macro_recall')
CLICK_METRICS = ('auc', 'group_auc', 'mrr', 'ndcg@5', 'ndcg@10')
MULTILABEL_METRICS = ('macro_f1', 'mean_average_precision')


def top_k_metric(k: int) -> str:
  """Return the name of a retrieval task's top-K accuracy metric."""
  return f'top_{k}_accuracy'


class ConfigError(ValueError):
  """An invalid pipeline configuration."""


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
  """A raw feature the model reads.

  Attributes:
    name: the raw feature name, as the dataset adapter writes it.
    type: `text` (tokenized into the shared text sequence), `categorical` (one
      id with its own embedding), `id_sequence` (a list of ids, mean-pooled),
      or `numeric` (z-scored float).
    vocabulary: for ids, the name of the vocabulary to use. Features naming
      the same vocabulary share ids and embeddings, such as a click history
      and the candidate news id. Defaults to the feature name.
    top_k: keep at most this many ids in the vocabulary.
    frequency_threshold: drop ids seen fewer times in train.
    oov_buckets: hash buckets for ids outside the vocabulary.
    max_length: for `id_sequence`, the most recent ids kept.
  """
  name: str
  type: str
  vocabulary: Optional[str] = None
  top_k: int = 50000
  frequency_threshold: int = 1
  oov_buckets: int = 1
  max_length: int = 50

  @property
  def vocabulary_name(self) -> str:
    return self.vocabulary or self.name


@dataclasses.dataclass(frozen=True)
class TextConfig:
  """Normalization, tokenization and encoding of text features.

  Attributes:
    normalization: Unicode normalization form applied before lower-casing.
    lower_case: lower-case the text (after normalization).
    max_tokens: length the joined token sequence is truncated or padded to.
    top_k: token vocabulary size, most frequent first.
    frequency_threshold: drop tokens seen fewer times in train.
    oov_buckets: hash buckets for out-of-vocabulary tokens.
    cjk: `characters` makes each Han and Kana character one token, `bigrams`
      makes overlapping character bigrams of each Han/Kana run.
    ngram_size: character n-gram size for scripts written without spaces and
      without a segmenter here (Thai, Lao, Khmer, Myanmar).
  """
  normalization: str = 'NFKC'
  lower_case: bool = True
  max_tokens: int = 128
  top_k: int = 20000
  frequency_threshold: int = 2
  oov_buckets: int = 10
  cjk: str = 'characters'
  ngram_size: int = 3


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """One prediction task: a head with its label and metrics.

  Attributes:
    name: the task name; also the output key of the served model.
    type: `multiclass` (a softmax), `binary` (a two-way softmax),
      `multilabel` (one sigmoid per class, for a label that is a list of
      values) or `retrieval` (a two-tower model scoring every candidate for a
      query).
    label: the raw feature that contains the label string ('' or an empty
      list means unlabeled). For `retrieval`, the candidate id the query
      interacted with.
    classes: the label values in order; learned from train when empty.
    positive_class: for `binary`, the label value that counts as positive.
    weight: the task's weight alpha in the summed loss.
    class_weighting: `none`, or `balanced` to weight each class's examples
      by n / (classes * count) on train, so that a rare class is not
      drowned by the majority (this trades accuracy for macro-F1).
    main_metric: the metric that blessing compares.
    group_key: for click tasks, the raw feature grouping one impression, for
      per-impression AUC, MRR and nDCG.
    popularity_key: for click tasks, the item feature whose train-split
      click-through rate is the popularity baseline.
    unlabelled_when_set: a raw feature whose non-empty value marks rows that
      carry no label for this task. An item attribute that interaction rows
      repeat (a movie's genres on each of its ratings) is learned from the
      item's own rows only, so the item's split decides where it is seen.
    query_key: for `retrieval`, the raw feature that identifies the query
      (the user id). A row is a positive pair when both it and `label` are
      set.
    query_features: for `retrieval`, the features of the query tower.
    candidate_features: for `retrieval`, the features of the candidate tower.
      The first one is the candidate id.
    display_feature: for `retrieval`, a candidate feature returned with each
      recommended id (a title).
    embedding_dim: for `retrieval`, the size of both towers' output.
    logq_correction: for `retrieval`, subtract log(sampling probability) of
      each in-batch candidate from its logit, so that popular candidates are
      not penalized for appearing as negatives more often.
    remove_accidental_hits: for `retrieval`, drop in-batch negatives that are
      the query's positive candidate.
    temperature: for `retrieval`, the softmax temperature the logits are
      divided by.
    normalize_embeddings: for `retrieval`, scale both towers' outputs to
      unit length, so that scores are cosine similarities (use with a
      temperature below 1).
    top_ks: for `retrieval`, the K of each reported top-K accuracy.
    max_k: for `retrieval`, the maximum K that a `recommend` request accepts.
  """
  name: str
  type: str
  label: str
  classes: Sequence[str] = ()
  positive_class: Optional[str] = None
  weight: float = 1.0
  class_weighting: str = 'none'
  main_metric: str = ''
  group_key: Optional[str] = None
  popularity_key: Optional[str] = None
  unlabelled_when_set: Optional[str] = None
  query_key: Optional[str] = None
  query_features: Sequence[str] = ()
  candidate_features: Sequence[str] = ()
  display_feature: Optional[str] = None
  embedding_dim: int = 64
  logq_correction: bool = True
  remove_accidental_hits: bool = True
  temperature: float = 1.0
  normalize_embeddings: bool = False
  top_ks: Sequence[int] = (10, 50, 100)
  max_k: int = 100

  @property
  def candidate_id(self) -> str:
    """The candidate feature that identifies a candidate (for `retrieval`)."""
    return self.candidate_features[0]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The shared trunk and its sizes."""
  trunk: str = 'lstm'
  embedding_dim: int = 64
  units: int = 64
  id_embedding_dim: int = 16
  hidden_units: Sequence[int] = (64,)
  dropout: float = 0.2
  transformer_layers: int = 1
  transformer_heads: int = 2
  transformer_ff_dim: int = 128


@dataclasses.dataclass(frozen=True)
class NegativeSamplingConfig:
  """Keeps a fraction of a binary task's negatives in the train split only."""
  task: str
  keep_fraction: float


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
  """Optimizer, regularization and schedule.

  The loss is sum_i(weight_i * cross_entropy_i) + l2 * sum(w^2) over kernels.
  """
  batch_size: int = 64
  epochs: int = 10
  optimizer: str = 'sgd'
  learning_rate: float = 0.05
  momentum: float = 0.9
  l2: float = 1e-5
  clipnorm: Optional[float] = 1.0
  early_stopping_patience: int = 3
  negative_sampling: Optional[NegativeSamplingConfig] = None


@dataclasses.dataclass(frozen=True)
class SplitConfig:
  """Deterministic train / validation / eval split.

  Examples with a value in `time_key` are split by time: the earliest train,
  then validation, and the last `eval_fraction` eval. The others are split by
  a fingerprint of `hash_key`.
  """
  hash_key: str = 'example_id'
  time_key: Optional[str] = None
  validation_fraction: float = 0.1
  eval_fraction: float = 0.2


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Location of a snapshot and the adapter that reads it.

  Attributes:
    adapter: `amazon_fine_food`, `mind`, `movielens` or `generic`.
    path: file or folder of the snapshot, relative to `--data-dir` when that
      is given, else to the config's own folder.
    max_rejected_fraction: the run fails when more input rows than this are
      rejected.
    format: for `generic`, `csv` or `jsonl`.
    columns: for `generic`, raw feature name -> source column.
    types: for `generic`, raw feature name -> `string`, `int`, `float` or
      `string_list` (space-separated in CSV, a list in JSONL).
  """
  adapter: str
  path: str
  max_rejected_fraction: float = 0.05
  format: Optional[str] = None
  columns: Dict[str, str] = dataclasses.field(default_factory=dict)
  types: Dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class EvaluatorConfig:
  """Blessing thresholds.

  Attributes:
    tolerance: the candidate is blessed only if no task's main metric is
      below the served model's by more than this (absolute).
    require_significant_lead: bless a task whose main metric has a
      bootstrap interval (a click task scored per impression) only if the
      whole interval of its lead over the baseline is above 0.
  """
  tolerance: float = 0.01
  require_significant_lead: bool = False


@dataclasses.dataclass(frozen=True)
class ValidationConfig:
  """Anomaly thresholds between the schema and a snapshot's statistics.

  Attributes:
    max_empty_text_rate_increase: flag a text feature whose empty fraction
      grew by more than this against the previous run.
    fail_on_anomalies: stop the run when anomalies are found.
  """
  max_empty_text_rate_increase: float = 0.1
  fail_on_anomalies: bool = False


@dataclasses.dataclass(frozen=True)
class HistoryConfig:
  """A per-user history feature that ExampleGen builds from the train split.

  Each example gets `name`: the items that its user interacted with in the
  train split, oldest first, at most `max_length` of the most recent. A
  train example's own item is left out of its history, so the label it
  predicts is never among its inputs. Validation and eval examples get the
  user's whole train history, and no validation or eval interaction reaches
  any history.

  Attributes:
    name: the raw feature written; list it in `features` as an
      `id_sequence` with the item vocabulary to use it.
    user_key: the raw feature that identifies the user.
    item_key: the raw feature that identifies the item.
    time_key: the raw feature that orders a user's items.
    max_length: the most recent items kept.
  """
  name: str = 'history'
  user_key: str = 'user_id'
  item_key: str = 'item_id'
  time_key: str = 'time'
  max_length: int = 50


@dataclasses.dataclass(frozen=True)
class ServingConfig:
  """Shapes of the exported `recommend` and `rank` signatures.

  Attributes:
    rank_task: the task whose score `rank` returns per candidate. It is a
      `retrieval` task (the dot product of the towers) or a `binary` task
      (the probability of the positive class). Defaults to the retrieval
      task, else the first binary task.
    query_features: without a retrieval task, the features of the query
      that `rank` repeats for each candidate (the user and the history).
    candidate_features: without a retrieval task, the features `rank` looks
      up per candidate id in the catalogue; the first is the id.
    query_key: without a retrieval task, the feature that identifies the
      query, whose rows count towards a candidate's popularity.
  """
  rank_task: Optional[str] = None
  query_features: Sequence[str] = ()
  candidate_features: Sequence[str] = ()
  query_key: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """A whole pipeline: data, features, tasks, model and training."""
  pipeline_name: str
  model_name: str
  data: DataConfig
  features: Sequence[FeatureConfig]
  tasks: Sequence[TaskConfig]
  split: SplitConfig = SplitConfig()
  text: TextConfig = TextConfig()
  model: ModelConfig = ModelConfig()
  trainer: TrainerConfig = TrainerConfig()
  evaluator: EvaluatorConfig = EvaluatorConfig()
  validation: ValidationConfig = ValidationConfig()
  history: Optional[HistoryConfig] = None
  serving: ServingConfig = ServingConfig()
  seed: int = 42
  source_path: str = ''

  def features_of_type(self, feature_type: str) -> List[FeatureConfig]:
    return [f for f in self.features if f.type == feature_type]

  def tasks_of_type(self, task_type: str) -> List[TaskConfig]:
    return [t for t in self.tasks if t.type == task_type]

  @property
  def retrieval_task(self) -> Optional[TaskConfig]:
    tasks = self.tasks_of_type('retrieval')
    return tasks[0] if tasks else None

  def feature(self, name: str) -> FeatureConfig:
    for feature in self.features:
      if feature.name == name:
        return feature
    raise KeyError(f'No feature named {name!r} in {self.source_path}.')

  @property
  def rank_task(self) -> Optional[TaskConfig]:
    """The task that the `rank` signature scores candidates with."""
    if self.serving.rank_task:
      return self.task(self.serving.rank_task)
    if self.retrieval_task:
      return self.retrieval_task
    binary = self.tasks_of_type('binary')
    return binary[0] if binary else None

  def task(self, name: str) -> TaskConfig:
    for task in self.tasks:
      if task.name == name:
        return task
    raise KeyError(f'No task named {name!r} in {self.source_path}.')

  def resolve_data_path(self, data_dir: Optional[str]) -> str:
    # Absolute, so the same snapshot reached by another relative path is
    # recognized as the same input by the cache.
    base = data_dir or os.path.dirname(os.path.abspath(self.source_path))
    return os.path.abspath(os.path.join(base, self.data.path))

  def section_fingerprint(self, *sections: str) -> str:
    """Fingerprint of the named top-level sections, for caching."""
    payload = {s: _to_plain(getattr(self, s)) for s in sections}
    blob = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode('utf-8')).hexdigest()


def _to_plain(value: Any) -> Any:
  if dataclasses.is_dataclass(value):
    return {k: _to_plain(v) for k, v in dataclasses.asdict(value).items()}
  if isinstance(value, (list, tuple)):
    return [_to_plain(v) for v in value]
  return value


def _build(cls, values: Any, where: str, source: str):
  """Build dataclass `cls` from a mapping, rejecting unknown keys."""
  if values is None:
    values = {}
  if not isinstance(values, dict):
    raise ConfigError(f'{source}: `{where}` must be a mapping, got '
                      f'{type(values).__name__} {values!r}.')
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ConfigError(f'{source}: unknown key(s) {unknown} in `{where}`; '
                      f'valid keys are {sorted(known - {"source_path"})}.')
  try:
    return cls(**values)
  except TypeError as e:
    raise ConfigError(f'{source}: invalid `{where}`: {e}') from e


def _check(condition: bool, source: str, message: str) -> None:
  if not condition:
    raise ConfigError(f'{source}: {message}')


def _parse_evaluator(values: Any, source: str) -> EvaluatorConfig:
  evaluator = _build(EvaluatorConfig, values, 'evaluator', source)
  _check(isinstance(evaluator.require_significant_lead, bool), source,
         '`evaluator.require_significant_lead` must be true or false, got '
         f'{evaluator.require_significant_lead!r}.')
  return evaluator


def _parse_trainer(values: Any, source: str) -> TrainerConfig:
  values = dict(values or {})
  sampling = values.pop('negative_sampling', None)
  trainer = _build(TrainerConfig, values, 'trainer', source)
  if sampling is not None:
    sampling = _build(NegativeSamplingConfig, sampling,
                      'trainer.negative_sampling', source)
    _check(0.0 < sampling.keep_fraction <= 1.0, source,
           'trainer.negative_sampling.keep_fraction must be in (0, 1], got '
           f'{sampling.keep_fraction}.')
    trainer = dataclasses.replace(trainer, negative_sampling=sampling)
  _check(trainer.optimizer in ('sgd', 'adam', 'adagrad'), source,
         f'trainer.optimizer must be sgd, adam or adagrad, got '
         f'{trainer.optimizer!r}.')
  _check(trainer.batch_size > 0 and trainer.epochs > 0, source,
         'trainer.batch_size and trainer.epochs must be positive.')
  return trainer


def _parse_history(values: Any, source: str) -> Optional[HistoryConfig]:
  if values is None:
    return None
  return _build(HistoryConfig, values, 'history', source)


def _parse_serving(values: Any, source: str) -> ServingConfig:
  values = dict(values or {}) if isinstance(values, dict) else values
  if isinstance(values, dict):
    for key in ('query_features', 'candidate_features'):
      if key in values:
        values[key] = tuple(str(v) for v in values[key] or ())
  return _build(ServingConfig, values, 'serving', source)


def _validate(config: PipelineConfig, source: str) -> None:
  """Cross-checks between sections."""
  names = [f.name for f in config.features]
  _check(len(names) == len(set(names)), source,
         f'feature names must be unique, got {names}.')
  for feature in config.features:
    _check(feature.type in FEATURE_TYPES, source,
           f'feature {feature.name!r} has type {feature.type!r}; valid types '
           f'are {list(FEATURE_TYPES)}.')
  _check(bool(config.features_of_type('text')) or
         bool([f for f in config.features if f.type != 'text']), source,
         'at least one feature is required.')

  _check(bool(config.tasks), source, 'at least one task is required.')
  task_names = [t.name for t in config.tasks]
  _check(len(task_names) == len(set(task_names)), source,
         f'task names must be unique, got {task_names}.')
  for task in config.tasks:
    _check(task.type in TASK_TYPES, source,
           f'task {task.name!r} has type {task.type!r}; valid types are '
           f'{list(TASK_TYPES)}.')
    _check(task.class_weighting in ('none', 'balanced'), source,
           f'task {task.name!r} has class_weighting '
           f'{task.class_weighting!r}; valid values are none and balanced.')
    if task.type == 'binary':
      _check(len(task.classes) == 2 and task.positive_class in task.classes,
             source, f'binary task {task.name!r} needs two `classes` and a '
             f'`positive_class` among them, got classes={list(task.classes)} '
             f'positive_class={task.positive_class!r}.')
    if task.type == 'retrieval':
      _validate_retrieval(config, task, source)
      valid_metrics = tuple(top_k_metric(k) for k in task.top_ks)
    elif task.type == 'multilabel':
      _check(bool(task.classes), source,
             f'multilabel task {task.name!r} needs its `classes` listed.')
      _check(task.class_weighting == 'none', source,
             f'multilabel task {task.name!r} supports class_weighting none '
             f'only, got {task.class_weighting!r}.')
      valid_metrics = MULTILABEL_METRICS
    else:
      valid_metrics = CLASS_METRICS + (CLICK_METRICS if task.type == 'binary'
                                       else ())
    if task.unlabelled_when_set:
      _check(task.unlabelled_when_set in names or
             task.unlabelled_when_set in _history_names(config), source,
             f'task {task.name!r}: unlabelled_when_set '
             f'{task.unlabelled_when_set!r} is not a feature; features are '
             f'{names}.')
    _check(task.main_metric in valid_metrics, source,
           f'task {task.name!r} has main_metric {task.main_metric!r}; valid '
           f'metrics for a {task.type} task are {list(valid_metrics)}.')
    if task.main_metric in ('group_auc', 'mrr', 'ndcg@5', 'ndcg@10'):
      _check(bool(task.group_key), source,
             f'task {task.name!r}: main_metric {task.main_metric} needs '
             '`group_key` (the impression id feature).')

  _check(len(config.tasks_of_type('retrieval')) <= 1, source,
         'at most one retrieval task is supported, got '
         f'{[t.name for t in config.tasks_of_type("retrieval")]}.')
  if config.serving.rank_task:
    _check(config.serving.rank_task in task_names, source,
           f'serving.rank_task {config.serving.rank_task!r} is not a task; '
           f'tasks are {task_names}.')
    _check(config.task(config.serving.rank_task).type in ('retrieval',
                                                          'binary'), source,
           f'serving.rank_task {config.serving.rank_task!r} must name a '
           'retrieval or binary task.')
  serving_features = (list(config.serving.query_features) +
                      list(config.serving.candidate_features))
  unknown = sorted(set(serving_features) - set(names))
  _check(not unknown, source,
         f'serving names feature(s) {unknown} that are not in `features` '
         f'({names}).')
  if (config.rank_task is not None and config.rank_task.type == 'binary'
      and config.serving.rank_task):
    _check(bool(config.serving.query_features) and
           bool(config.serving.candidate_features), source,
           f'serving.rank_task {config.serving.rank_task!r} needs '
           'serving.query_features and serving.candidate_features.')
  if config.history:
    _check(config.history.max_length > 0, source,
           'history.max_length must be positive, got '
           f'{config.history.max_length}.')

  _check(config.model.trunk in TRUNKS, source,
         f'model.trunk must be one of {list(TRUNKS)}, got '
         f'{config.model.trunk!r}.')

  split = config.split
  _check(0 < split.eval_fraction < 1 and 0 <= split.validation_fraction < 1
         and split.eval_fraction + split.validation_fraction < 1, source,
         'split fractions must be in [0, 1) and leave room for train, got '
         f'validation_fraction={split.validation_fraction} '
         f'eval_fraction={split.eval_fraction}.')

  _check(config.text.cjk in ('characters', 'bigrams'), source,
         f'text.cjk must be characters or bigrams, got {config.text.cjk!r}.')

  sampling = config.trainer.negative_sampling
  if sampling is not None:
    _check(sampling.task in task_names, source,
           f'trainer.negative_sampling.task {sampling.task!r} is not a task; '
           f'tasks are {task_names}.')


def _history_names(config: PipelineConfig) -> List[str]:
  return [config.history.name] if config.history else []


def _validate_retrieval(config: PipelineConfig, task: TaskConfig,
                        source: str) -> None:
  """Raise ConfigError unless a retrieval task's settings are consistent.

  Every feature must be in exactly one of the two towers, and the first
  candidate feature must be the categorical candidate id.
  """
  names = [f.name for f in config.features]
  _check(bool(task.query_key), source,
         f'retrieval task {task.name!r} needs `query_key` (the user id '
         'feature).')
  _check(bool(task.query_features) and bool(task.candidate_features), source,
         f'retrieval task {task.name!r} needs `query_features` and '
         '`candidate_features`.')
  towers = list(task.query_features) + list(task.candidate_features)
  unknown = sorted(set(towers) - set(names))
  _check(not unknown, source,
         f'retrieval task {task.name!r} names feature(s) {unknown} that are '
         f'not in `features` ({names}).')
  both = sorted(set(task.query_features) & set(task.candidate_features))
  _check(not both, source,
         f'retrieval task {task.name!r}: feature(s) {both} are in both '
         'towers; each feature belongs to one.')
  missing = [n for n in names if n not in towers]
  _check(not missing, source,
         f'retrieval task {task.name!r}: feature(s) {missing} are in '
         'neither `query_features` nor `candidate_features`.')
  text_in_query = [n for n in task.query_features
                   if config.feature(n).type == 'text']
  _check(not text_in_query, source,
         f'retrieval task {task.name!r}: text feature(s) {text_in_query} '
         'must be candidate features; the shared text trunk encodes the '
         'candidate.')
  candidate_id = config.feature(task.candidate_id)
  _check(candidate_id.type == 'categorical', source,
         f'retrieval task {task.name!r}: the first candidate feature '
         f'{task.candidate_id!r} must be the categorical candidate id, got '
         f'type {candidate_id.type!r}.')
  _check(task.label == task.candidate_id, source,
         f'retrieval task {task.name!r}: `label` ({task.label!r}) must be '
         f'the candidate id feature {task.candidate_id!r}.')
  if task.display_feature:
    _check(task.display_feature in task.candidate_features, source,
           f'retrieval task {task.name!r}: display_feature '
           f'{task.display_feature!r} must be a candidate feature.')
  _check(bool(task.top_ks) and all(k > 0 for k in task.top_ks) and
         task.max_k >= max(task.top_ks), source,
         f'retrieval task {task.name!r}: top_ks must be positive and at '
         f'most max_k, got top_ks={list(task.top_ks)} max_k={task.max_k}.')
  _check(task.temperature > 0, source,
         f'retrieval task {task.name!r}: temperature must be positive, got '
         f'{task.temperature}.')
  _check(task.embedding_dim > 0, source,
         f'retrieval task {task.name!r}: embedding_dim must be positive.')


def _default_main_metric(task: Dict[str, Any]) -> str:
  if task.get('type') == 'retrieval':
    return top_k_metric(max(task.get('top_ks') or TaskConfig.top_ks))
  if task.get('type') == 'multilabel':
    return 'mean_average_precision'
  if task.get('group_key'):
    return 'group_auc'
  return 'macro_f1'


def load_config(path: str) -> PipelineConfig:
  """Load and validate a pipeline config from a YAML file."""
  try:
    with open(path, encoding='utf-8') as f:
      raw = yaml.safe_load(f)
  except FileNotFoundError as e:
    raise ConfigError(f'Config file not found: {path}') from e
  except yaml.YAMLError as e:
    raise ConfigError(f'{path}: invalid YAML: {e}') from e
  return parse_config(raw, source=path)


def parse_config(raw: Any, source: str = '<config>') -> PipelineConfig:
  """Build a `PipelineConfig` from parsed YAML."""
  _check(isinstance(raw, dict), source, 'the config must be a mapping.')
  raw = dict(raw)
  for key in ('pipeline_name', 'data', 'features', 'tasks'):
    _check(key in raw, source, f'missing required key `{key}`.')

  features = [
      _build(FeatureConfig, f, f'features[{i}]', source)
      for i, f in enumerate(raw.pop('features') or [])
  ]
  tasks = []
  for i, t in enumerate(raw.pop('tasks') or []):
    t = dict(t or {})
    t.setdefault('main_metric', _default_main_metric(t))
    t['classes'] = tuple(str(c) for c in t.get('classes', ()))
    for key in ('query_features', 'candidate_features'):
      if key in t:
        t[key] = tuple(str(v) for v in t[key] or ())
    if 'top_ks' in t:
      t['top_ks'] = tuple(int(k) for k in t['top_ks'] or ())
    if t.get('positive_class') is not None:
      t['positive_class'] = str(t['positive_class'])
    tasks.append(_build(TaskConfig, t, f'tasks[{i}]', source))
  model = dict(raw.pop('model', None) or {})
  if 'hidden_units' in model:
    model['hidden_units'] = tuple(model['hidden_units'])

  config = PipelineConfig(
      pipeline_name=str(raw.pop('pipeline_name')),
      model_name=str(raw.pop('model_name', '') or ''),
      data=_build(DataConfig, raw.pop('data'), 'data', source),
      features=tuple(features),
      tasks=tuple(tasks),
      split=_build(SplitConfig, raw.pop('split', None), 'split', source),
      text=_build(TextConfig, raw.pop('text', None), 'text', source),
      model=_build(ModelConfig, model, 'model', source),
      trainer=_parse_trainer(raw.pop('trainer', None), source),
      evaluator=_parse_evaluator(raw.pop('evaluator', None), source),
      validation=_build(ValidationConfig, raw.pop('validation', None),
                        'validation', source),
      history=_parse_history(raw.pop('history', None), source),
      serving=_parse_serving(raw.pop('serving', None), source),
      seed=int(raw.pop('seed', 42)),
      source_path=source,
  )
  _check(not raw, source, f'unknown top-level key(s) {sorted(raw)}.')
  if not config.model_name:
    config = dataclasses.replace(config, model_name=config.pipeline_name)
  _validate(config, source)
  return config
