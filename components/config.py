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
TASK_TYPES = ('multiclass', 'binary')
TRUNKS = ('lstm', 'bilstm', 'transformer')
CLASS_METRICS = ('accuracy', 'macro_f1', 'macro_precision', 'macro_recall')
CLICK_METRICS = ('auc', 'group_auc', 'mrr', 'ndcg@5', 'ndcg@10')


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
  """One prediction task: a softmax head with its label and metrics.

  Attributes:
    name: the task name; also the output key of the served model.
    type: `multiclass` or `binary` (a two-way softmax).
    label: the raw feature that contains the label string ('' means
      unlabeled).
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
  """
  tolerance: float = 0.01


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
  seed: int = 42
  source_path: str = ''

  def features_of_type(self, feature_type: str) -> List[FeatureConfig]:
    return [f for f in self.features if f.type == feature_type]

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
    valid_metrics = CLASS_METRICS + (CLICK_METRICS if task.type == 'binary'
                                     else ())
    _check(task.main_metric in valid_metrics, source,
           f'task {task.name!r} has main_metric {task.main_metric!r}; valid '
           f'metrics for a {task.type} task are {list(valid_metrics)}.')
    if task.main_metric in ('group_auc', 'mrr', 'ndcg@5', 'ndcg@10'):
      _check(bool(task.group_key), source,
             f'task {task.name!r}: main_metric {task.main_metric} needs '
             '`group_key` (the impression id feature).')

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


def _default_main_metric(task: Dict[str, Any]) -> str:
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
      evaluator=_build(EvaluatorConfig, raw.pop('evaluator', None),
                       'evaluator', source),
      validation=_build(ValidationConfig, raw.pop('validation', None),
                        'validation', source),
      seed=int(raw.pop('seed', 42)),
      source_path=source,
  )
  _check(not raw, source, f'unknown top-level key(s) {sorted(raw)}.')
  if not config.model_name:
    config = dataclasses.replace(config, model_name=config.pipeline_name)
  _validate(config, source)
  return config
