"""The `recommend` and `rank` signatures and the candidate catalogue behind them.

`recommend` scores every candidate for a query with a TFRS `BruteForce` index
of candidate embeddings computed at export time, and returns the top K ids,
their display values (titles) and scores. `rank` scores a given list of
candidates for each query. Both take raw query features, like the other
signatures.

The catalogue contains one row of raw candidate features per candidate id
seen in any split of the examples. For each id it keeps the row with the
most features filled in, usually the item's own row. It also stores each
id's count of train pairs. This popularity ranks the candidates for a query
with no known user id and no history.
"""

import collections
from typing import Dict, List, NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from components import artifacts
from components.config import PipelineConfig
from models import builder
from models import features

# Output keys of the `recommend` signature.
ITEM_IDS = 'item_ids'
TITLES = 'titles'
SCORES = 'scores'
SOURCE = 'source'
# Input keys that are not raw features.
K_INPUT = 'k'
EXCLUDE_INPUT = 'exclude'
CANDIDATES_INPUT = 'candidates'

SOURCE_MODEL = 'model'
SOURCE_POPULARITY = 'popularity'


class Catalogue(NamedTuple):
  """Raw candidate features, one row per candidate id.

  Attributes:
    ids: the candidate ids, by descending popularity, ties by id.
    values: raw feature name -> one value per id (a list for list features).
    popularity: each id's number of train pairs.
  """
  ids: List[str]
  values: Dict[str, list]
  popularity: List[int]


def rank_tower_features(config: PipelineConfig):
  """Return the query and candidate feature names of `rank` and `recommend`."""
  retrieval = config.retrieval_task
  if retrieval is not None:
    return list(retrieval.query_features), list(retrieval.candidate_features)
  serving = config.serving
  return list(serving.query_features), list(serving.candidate_features)


def query_key(config: PipelineConfig) -> str:
  """Return the raw feature that identifies a query (the user id)."""
  if config.retrieval_task is not None:
    return config.retrieval_task.query_key
  return config.serving.query_key or ''



def _example_values(example: tf.train.Example, name: str):
  feature = example.features.feature[name]
  kind = feature.WhichOneof('kind')
  values = list(getattr(feature, kind).value) if kind else []
  if kind == 'bytes_list':
    values = [v.decode('utf-8') for v in values]
  return values


def build_catalogue(config: PipelineConfig, examples_dir: str,
                    feature_types: Dict[str, str],
                    splits=('train', 'validation', 'eval')) -> Catalogue:
  """Collect every candidate id's features from the raw examples.

  Args:
    config: the pipeline config. Its retrieval task (or `serving`) names the
      candidate features, and the first one is the id.
    examples_dir: ExampleGen's output.
    feature_types: raw feature name -> type, as ExampleGen wrote them.
    splits: the splits to read ids from; popularity counts train only.

  Returns:
    The catalogue, most popular id first and ties by id.
  """
  _, candidate_features = rank_tower_features(config)
  id_feature = candidate_features[0]
  query = query_key(config)
  rows: Dict[str, Dict[str, object]] = {}
  filled: Dict[str, int] = {}
  popularity = collections.Counter()
  for split in splits:
    for record in artifacts.read_records(examples_dir, split):
      example = tf.train.Example.FromString(record)
      ids = _example_values(example, id_feature)
      if not ids or not ids[0]:
        continue
      candidate = ids[0]
      is_pair = bool(query and any(_example_values(example, query)))
      if split == 'train' and is_pair:
        popularity[candidate] += 1
      row = {}
      for name in candidate_features:
        values = _example_values(example, name)
        row[name] = (values if feature_types[name] == 'string_list'
                     else (values[0] if values else None))
      # Keep the row with the most filled-in features, for example an
      # item's own row over a pair row that lacks its text.
      count = sum(1 for v in row.values() if v not in (None, '', []))
      if candidate not in rows or count > filled[candidate]:
        rows[candidate], filled[candidate] = row, count
  if not rows:
    raise ValueError(f'No example in {examples_dir} has a candidate id in '
                     f'feature {id_feature!r}, so the catalogue would be '
                     'empty. Check the candidate id feature in the config.')
  ids = sorted(rows, key=lambda i: (-popularity[i], i))
  values = {}
  for name in candidate_features:
    default = [] if feature_types[name] == 'string_list' else (
        '' if feature_types[name] == 'string' else 0)
    values[name] = [rows[i][name] if rows[i][name] is not None else default
                    for i in ids]
  return Catalogue(ids, values, [popularity[i] for i in ids])


def _dense_batch(values: list, dtype) -> tf.Tensor:
  """Convert a list of scalars or of lists to a dense tensor ('' pads lists)."""
  if values and isinstance(values[0], list):
    width = max(1, max(len(v) for v in values))
    return tf.constant([v + [''] * (width - len(v)) for v in values])
  return tf.constant(values, dtype=dtype)


def _to_raw(inputs: Dict[str, tf.Tensor], config: PipelineConfig):
  """Convert dense request tensors to the raw tensors of the transform layer."""
  raw = {}
  for name, value in inputs.items():
    if config.feature(name).type == 'id_sequence':
      value = tf.sparse.from_dense(value)  # Drops the '' padding values.
    raw[name] = value
  return raw


class RecommendModule(tf.Module):
  """The exported retrieval and ranking graph: towers, index and catalogue."""

  def __init__(self, model: tf.keras.Model, tft_output, tft_layer,
               config: PipelineConfig, catalogue: Catalogue):
    super().__init__()
    raw_spec = tft_output.raw_feature_spec()
    self._tft_output = tft_output
    self._config = config
    self._tft_layer = tft_layer
    self._model = model
    self._query_features, self._candidate_features = rank_tower_features(
        config)
    self._raw_spec = raw_spec
    self._task = config.rank_task
    retrieval = config.retrieval_task
    self._retrieval = retrieval

    # The catalogue plus one empty last row, which `_row_of_id` returns for
    # ids that are not in the catalogue.
    self._ids = tf.constant(catalogue.ids)
    self._catalogue = {}
    for name in self._candidate_features:
      values = catalogue.values[name]
      dtype = raw_spec[name].dtype
      empty = [] if values and isinstance(values[0], list) else (
          '' if dtype == tf.string else 0)
      self._catalogue[name] = _dense_batch(values + [empty], dtype)
    self._row_of_id = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            self._ids, tf.range(len(catalogue.ids), dtype=tf.int64)),
        default_value=len(catalogue.ids))

    if retrieval is not None:
      self._query_tower = tower_model(model, config, 'query')
      self._candidate_tower = tower_model(model, config, 'candidate')
      embeddings = self._candidate_tower(self._transform(
          {name: self._catalogue[name][:-1]
           for name in self._candidate_features}), training=False)
      self.index = tfrs.layers.factorized_top_k.BruteForce(
          k=retrieval.max_k, name='candidate_index')
      self.index.index(tf.cast(embeddings, tf.float32), self._ids)
      # Popularity as a one-column index: a query of 1 scores each id by
      # log(1 + its train count).
      self.popularity_index = tfrs.layers.factorized_top_k.BruteForce(
          k=retrieval.max_k, name='popularity_index')
      counts = np.asarray(catalogue.popularity, np.float32)
      self.popularity_index.index(
          tf.constant(np.log1p(counts)[:, np.newaxis]), self._ids)
      display = retrieval.display_feature or retrieval.candidate_id
      self._display = tf.constant(
          [str(v) for v in catalogue.values[display]] + [''])
      user = config.feature(retrieval.query_key)
      self._user_input = features.id_feature(user.name)
      self._known_users = self._vocabulary_size(user.vocabulary_name)
      self._history_inputs = [
          features.id_sequence_feature(f) for f in retrieval.query_features
          if config.feature(f).type == 'id_sequence']

  def _vocabulary_size(self, vocabulary_name: str) -> int:
    return int(self._tft_output.vocabulary_size_by_name(
        features.id_vocabulary(vocabulary_name)))

  def _transform(self, raw):
    return self._tft_layer(_to_raw(raw, self._config))

  def _is_unknown_query(self, transformed) -> tf.Tensor:
    """Return True where the user id is unknown and the history is empty."""
    user = transformed[self._user_input]
    known = tf.logical_and(user > features.MISSING_ID,
                           user <= self._known_users)
    for name in self._history_inputs:
      known = tf.logical_or(known, tf.reduce_any(
          tf.not_equal(transformed[name], features.MISSING_ID), axis=1))
    return tf.logical_not(known)

  def query_embeddings(self, query: Dict[str, tf.Tensor]) -> tf.Tensor:
    transformed = self._transform(query)
    inputs = {name: transformed[name] for name in self._query_tower.input_names}
    return tf.cast(self._query_tower(inputs, training=False), tf.float32)

  def recommend(self, query: Dict[str, tf.Tensor], k: tf.Tensor,
                exclude: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Return the top max(k) candidates of each query, without excluded ids.

    Every row gets max(k) candidates. A query with an unknown user id and an
    empty history gets the candidates with the most train pairs instead.

    NOTE: when fewer than k catalogue ids are not excluded, the output still
    has min(k, catalogue size) ids per row, and excluded ids fill the last
    places.
    """
    max_k = self._retrieval.max_k
    k = tf.reduce_max(tf.cast(k, tf.int32))
    tf.debugging.assert_positive(
        k, message='k must be a positive number of candidates')
    tf.debugging.assert_less_equal(
        k, tf.constant(max_k, tf.int32),
        message=f'k must be at most {max_k}, the configured max_k')
    count = tf.shape(self._ids)[0]
    k = tf.minimum(k, count)
    fetch = tf.minimum(k + tf.shape(exclude)[1], count)

    transformed = self._transform(query)
    inputs = {name: transformed[name] for name in self._query_tower.input_names}
    queries = tf.cast(self._query_tower(inputs, training=False), tf.float32)
    unknown = self._is_unknown_query(transformed)

    model_scores, model_ids = self.index(queries, k=fetch)
    popular_scores, popular_ids = self.popularity_index(
        tf.ones([tf.shape(queries)[0], 1]), k=fetch)
    scores = tf.where(unknown[:, tf.newaxis], popular_scores, model_scores)
    ids = tf.where(unknown[:, tf.newaxis], popular_ids, model_ids)

    # Sink the excluded ids below every other score, then keep the top k.
    excluded = tf.reduce_any(tf.equal(ids[:, :, tf.newaxis],
                                      exclude[:, tf.newaxis, :]), axis=-1)
    order = tf.argsort(tf.where(excluded, tf.ones_like(scores),
                                tf.zeros_like(scores)), axis=1, stable=True)
    order = order[:, :k]
    ids = tf.gather(ids, order, batch_dims=1)
    scores = tf.gather(scores, order, batch_dims=1)
    rows = self._row_of_id.lookup(ids)
    return {
        ITEM_IDS: ids,
        TITLES: tf.gather(self._display, rows),
        SCORES: scores,
        SOURCE: tf.where(unknown, SOURCE_POPULARITY, SOURCE_MODEL),
    }

  def rank(self, query: Dict[str, tf.Tensor],
           candidates: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Score each (query, candidate) pair. Padding ('') scores 0."""
    batch = tf.shape(candidates)[0]
    width = tf.shape(candidates)[1]
    flat = tf.reshape(candidates, [-1])
    rows = self._row_of_id.lookup(flat)
    raw = {}
    for name in self._candidate_features:
      raw[name] = tf.gather(self._catalogue[name], rows)
    # An id outside the catalogue keeps its id and empty features.
    raw[self._candidate_features[0]] = flat
    for name in self._query_features:
      value = query[name]
      tiled = tf.repeat(value, width, axis=0)
      raw[name] = tiled
    transformed = self._transform(raw)
    if self._task.type == 'retrieval':
      query_inputs = {n: transformed[n] for n in self._query_tower.input_names}
      candidate_inputs = {n: transformed[n]
                          for n in self._candidate_tower.input_names}
      scores = tf.reduce_sum(
          tf.cast(self._query_tower(query_inputs, training=False), tf.float32)
          * tf.cast(self._candidate_tower(candidate_inputs, training=False),
                    tf.float32), axis=1)
    else:
      inputs = {n: transformed[n] for n in self._model.input_names}
      probabilities = tf.cast(
          self._model(inputs, training=False)[self._task.name], tf.float32)
      positive = list(self._task.classes).index(self._task.positive_class)
      scores = probabilities[:, positive]
    scores = tf.where(tf.equal(flat, ''), tf.zeros_like(scores), scores)
    return {SCORES: tf.reshape(scores, [batch, width])}


def tower_model(model: tf.keras.Model, config: PipelineConfig,
                tower: str) -> tf.keras.Model:
  """Build the sub-model from one retrieval tower's inputs to its output."""
  task = config.retrieval_task.name
  output = model.get_layer(features.tower_output(task, tower)).output
  by_name = dict(zip(model.input_names, model.inputs))
  return tf.keras.Model(
      {n: by_name[n] for n in builder.tower_inputs(config, tower)}, output,
      name=f'{task}_{tower}_tower')


def query_input_spec(config: PipelineConfig, raw_spec
                     ) -> Dict[str, tf.TensorSpec]:
  """Return the request specs of the query features ([batch, width] lists)."""
  query_features, _ = rank_tower_features(config)
  specs = {}
  for name in query_features:
    shape = ([None, None] if config.feature(name).type == 'id_sequence'
             else [None])
    specs[name] = tf.TensorSpec(shape, raw_spec[name].dtype, name=name)
  return specs


def recommend_signature(module: RecommendModule, config: PipelineConfig,
                        raw_spec):
  specs = query_input_spec(config, raw_spec)
  specs[K_INPUT] = tf.TensorSpec([None], tf.int32, name=K_INPUT)
  specs[EXCLUDE_INPUT] = tf.TensorSpec([None, None], tf.string,
                                       name=EXCLUDE_INPUT)

  @tf.function(input_signature=[specs])
  def recommend(inputs):
    inputs = dict(inputs)
    k = inputs.pop(K_INPUT)
    exclude = inputs.pop(EXCLUDE_INPUT)
    return module.recommend(inputs, k, exclude)

  return recommend


def rank_signature(module: RecommendModule, config: PipelineConfig, raw_spec):
  specs = query_input_spec(config, raw_spec)
  specs[CANDIDATES_INPUT] = tf.TensorSpec([None, None], tf.string,
                                          name=CANDIDATES_INPUT)

  @tf.function(input_signature=[specs])
  def rank(inputs):
    inputs = dict(inputs)
    candidates = inputs.pop(CANDIDATES_INPUT)
    return module.rank(inputs, candidates)

  return rank


def serves_recommend(config: PipelineConfig) -> bool:
  return config.retrieval_task is not None


def serves_rank(config: PipelineConfig) -> bool:
  query_features, candidate_features = rank_tower_features(config)
  return (config.rank_task is not None and bool(query_features) and
          bool(candidate_features))

