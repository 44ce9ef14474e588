"""Recommendation quality on MovieLens 100K against baselines and references.

One command trains and scores, on the same 80/20 random split of the
ratings (ExampleGen's hash split, validation off):
- the joint multi-task model of `configs/movielens.yaml` (retrieval, rating
  and genres), once per seed, with the logQ correction on (as shipped) and
  off;
- each task alone: the same model with the other tasks' weights at 0, so
  only one head learns, once per seed;
- the most-rated-100 baseline (top-K accuracy), the user+item bias
  baseline (RMSE), and TensorFlow Recommenders' multi-task tutorial recipe
  (32-dim id embeddings, Adagrad 0.1, three epochs, weights 1 and 1).

Top-K accuracy follows TFRS: every eval rating is a positive pair, the
candidates are all 1,682 movies and nothing is excluded. RMSE is that of the
expected rating under the five-way softmax. Prints a markdown report and
writes the numbers as JSON.

  python benchmarks/recommendation_benchmark.py \\
      --data-dir /path/to/ml-100k --work-dir /tmp/mtlrec-rec
"""

import argparse
import dataclasses
import json
import logging
import os
import platform
import sys
import time

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top
import tensorflow_recommenders as tfrs  # pylint: disable=g-import-not-at-top

from components import artifacts  # pylint: disable=g-import-not-at-top
from components import config as config_lib  # pylint: disable=g-import-not-at-top
import pipeline  # pylint: disable=g-import-not-at-top

DEFAULT_CONFIG = os.path.join(REPO_ROOT, 'configs', 'movielens.yaml')
MAIN_METRICS = {'retrieval': 'top_100_accuracy', 'rating': 'rmse',
                'genres': 'mean_average_precision'}
# Maximum relative gap by which the joint model may trail a task trained
# alone.
MAX_JOINT_GAP = 0.02
# Metrics for which lower is better.
LOWER_IS_BETTER = {'rmse'}
BIAS_REGULARIZATION = 10.0
BIAS_ITERATIONS = 15


def benchmark_config(path: str, seed: int, only_task: str = '',
                     logq: bool = True) -> config_lib.PipelineConfig:
  """Return the shipped config on an 80/20 split, with validation off.

  With `only_task`, every other task's weight is 0, so only that task
  learns. With `logq` False, the retrieval task has no logQ correction.
  """
  config = config_lib.load_config(path)
  split = dataclasses.replace(config.split, validation_fraction=0.0,
                              eval_fraction=0.2)
  tasks = config.tasks
  name = 'joint'
  if only_task:
    name = f'only_{only_task}'
    tasks = tuple(dataclasses.replace(t, weight=1.0 if t.name == only_task
                                      else 0.0) for t in tasks)
  if not logq:
    name += '_no_logq'
    tasks = tuple(dataclasses.replace(t, logq_correction=False)
                  if t.type == 'retrieval' else t for t in tasks)
  return dataclasses.replace(
      config, split=split, tasks=tasks, seed=seed,
      pipeline_name=f'movielens_bench_{name}',
      model_name=f'movielens_bench_{name}')


def run_model(config, data_dir: str, work_dir: str) -> dict:
  """Train and evaluate one configuration.

  Returns:
    The metrics per task, the Trainer's and the whole run's seconds, and
    ExampleGen's output folder.
  """
  started = time.time()
  summary = pipeline.run_pipeline(
      config, data_dir, os.path.join(work_dir, 'runs'),
      os.path.join(work_dir, 'serving'), [], until='evaluator')
  # Stays None when the lineage store reused an earlier run's model, so the
  # Trainer did not run.
  trainer_seconds = None
  for component in summary['components']:
    if component['component'] == 'trainer' and component['status'] == 'ran':
      trainer_seconds = component['seconds']
  examples_dir = next(c['output_dir'] for c in summary['components']
                      if c['component'] == 'example_gen')
  return {'tasks': summary['tasks'], 'trainer_seconds': trainer_seconds,
          'seconds': time.time() - started,
          'examples_dir': examples_dir}


def _pairs(examples_dir: str, split: str):
  """Read the (user ids, item ids, ratings) of a split's rating examples."""
  users, items, ratings = [], [], []
  for record in artifacts.read_records(examples_dir, split):
    feature = tf.train.Example.FromString(record).features.feature
    user = feature['user_id'].bytes_list.value[0].decode()
    if not user:
      continue
    users.append(user)
    items.append(feature['item_id'].bytes_list.value[0].decode())
    ratings.append(float(feature['rating'].bytes_list.value[0].decode()))
  return np.array(users), np.array(items), np.array(ratings)


def _movie_ids(examples_dir: str):
  ids = set()
  for split in ('train', 'validation', 'eval'):
    for record in artifacts.read_records(examples_dir, split):
      feature = tf.train.Example.FromString(record).features.feature
      ids.add(feature['item_id'].bytes_list.value[0].decode())
  return np.array(sorted(ids))


def bias_baseline(train, test) -> float:
  """Compute the test RMSE of mean + user bias + item bias.

  The biases are fitted on train by alternating ridge regression.
  """
  users, items, ratings = train
  mean = ratings.mean()
  user_bias, item_bias = {}, {}
  for _ in range(BIAS_ITERATIONS):
    residual = {}
    for u, i, r in zip(users, items, ratings):
      residual.setdefault(i, []).append(r - mean - user_bias.get(u, 0.0))
    item_bias = {i: sum(v) / (len(v) + BIAS_REGULARIZATION)
                 for i, v in residual.items()}
    residual = {}
    for u, i, r in zip(users, items, ratings):
      residual.setdefault(u, []).append(r - mean - item_bias.get(i, 0.0))
    user_bias = {u: sum(v) / (len(v) + BIAS_REGULARIZATION)
                 for u, v in residual.items()}
  t_users, t_items, t_ratings = test
  predicted = np.array([mean + user_bias.get(u, 0.0) + item_bias.get(i, 0.0)
                        for u, i in zip(t_users, t_items)])
  predicted = np.clip(predicted, 1.0, 5.0)
  return float(np.sqrt(np.mean((predicted - t_ratings) ** 2)))


def popularity_top_k(train, test, k: int = 100) -> float:
  _, items, _ = train
  values, counts = np.unique(items, return_counts=True)
  order = np.lexsort((values, -counts))
  top = set(values[order[:k]])
  return float(np.mean([i in top for i in test[1]]))


class _TutorialModel(tfrs.models.Model):
  """TFRS's multi-task tutorial model: ids only, rating and retrieval."""

  def __init__(self, user_ids, movie_ids):
    super().__init__()
    dim = 32
    self.user_model = tf.keras.Sequential([
        tf.keras.layers.StringLookup(vocabulary=user_ids, mask_token=None),
        tf.keras.layers.Embedding(len(user_ids) + 1, dim)])
    self.movie_model = tf.keras.Sequential([
        tf.keras.layers.StringLookup(vocabulary=movie_ids, mask_token=None),
        tf.keras.layers.Embedding(len(movie_ids) + 1, dim)])
    self.rating_model = tf.keras.Sequential([
        tf.keras.layers.Dense(256, activation='relu'),
        tf.keras.layers.Dense(128, activation='relu'),
        tf.keras.layers.Dense(1)])
    self.rating_task = tfrs.tasks.Ranking(
        loss=tf.keras.losses.MeanSquaredError())
    self.retrieval_task = tfrs.tasks.Retrieval()

  def rating(self, users, movies):
    return self.rating_model(tf.concat(
        [self.user_model(users), self.movie_model(movies)], axis=1))

  def compute_loss(self, inputs, training=False):
    users, movies = inputs['user_id'], inputs['item_id']
    ratings = self.rating(users, movies)
    rating_loss = self.rating_task(labels=inputs['rating'],
                                   predictions=ratings)
    retrieval_loss = self.retrieval_task(
        self.user_model(users), self.movie_model(movies),
        compute_metrics=False)
    return rating_loss + retrieval_loss


def tfrs_tutorial(train, test, movie_ids, seed: int) -> dict:
  """Train the TFRS multi-task tutorial recipe and score it on `test`.

  Returns:
    `top_100_accuracy` and `rmse`.
  """
  tf.keras.utils.set_random_seed(seed)
  users, items, ratings = train
  model = _TutorialModel(np.unique(users), movie_ids)
  model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
  dataset = tf.data.Dataset.from_tensor_slices(
      {'user_id': users, 'item_id': items,
       'rating': ratings.astype(np.float32)}).shuffle(
           100_000, seed=seed, reshuffle_each_iteration=False)
  model.fit(dataset.batch(8192).cache(), epochs=3, verbose=0)

  index = tfrs.layers.factorized_top_k.BruteForce(model.user_model, k=100)
  index.index(model.movie_model(tf.constant(movie_ids)),
              tf.constant(movie_ids))
  t_users, t_items, t_ratings = test
  hits = []
  for start in range(0, len(t_users), 4096):
    _, top = index(tf.constant(t_users[start:start + 4096]))
    top = top.numpy().astype(str)
    hits.extend((top == t_items[start:start + 4096, None]).any(axis=1))
  predicted = np.concatenate([
      model.rating(tf.constant(t_users[s:s + 4096]),
                   tf.constant(t_items[s:s + 4096])).numpy()[:, 0]
      for s in range(0, len(t_users), 4096)])
  return {'top_100_accuracy': float(np.mean(hits)),
          'rmse': float(np.sqrt(np.mean((predicted - t_ratings) ** 2)))}


def _spread(values):
  values = np.asarray(values, dtype=np.float64)
  return {'mean': float(values.mean()), 'std': float(values.std()),
          'values': values.tolist()}


def _relative_gap(joint: float, single: float, metric: str) -> float:
  """Return how much worse joint is than single, relative to single.

  The gap is negative when joint is better.
  """
  if metric in LOWER_IS_BETTER:
    return (joint - single) / single
  return (single - joint) / single


def run(args) -> dict:
  seeds = [args.first_seed + i for i in range(args.seeds)]
  results = {'machine': f'{platform.machine()}, {os.cpu_count()} CPU cores, '
                        f'{platform.python_version()}',
             'seeds': seeds, 'joint': [], 'single': {}}
  for seed in seeds:
    config = benchmark_config(args.config, seed)
    logging.info('Benchmark: joint model, seed %d', seed)
    results['joint'].append(run_model(config, args.data_dir, args.work_dir))
  results['joint_no_logq'] = []
  if not args.skip_no_logq:
    for seed in seeds:
      logging.info('Benchmark: joint model without logQ, seed %d', seed)
      config = benchmark_config(args.config, seed, logq=False)
      results['joint_no_logq'].append(
          run_model(config, args.data_dir, args.work_dir))
  examples_dir = results['joint'][0]['examples_dir']
  if not args.skip_single:
    for task in MAIN_METRICS:
      results['single'][task] = []
      for seed in seeds:
        logging.info('Benchmark: %s alone, seed %d', task, seed)
        config = benchmark_config(args.config, seed, only_task=task)
        results['single'][task].append(
            run_model(config, args.data_dir, args.work_dir))

  train = _pairs(examples_dir, 'train')
  test = _pairs(examples_dir, 'eval')
  movie_ids = _movie_ids(examples_dir)
  results['split'] = {'train_ratings': int(len(train[0])),
                      'eval_ratings': int(len(test[0])),
                      'movies': int(len(movie_ids))}
  results['popularity_top_100'] = popularity_top_k(train, test)
  results['bias_rmse'] = bias_baseline(train, test)
  results['tfrs_tutorial'] = [tfrs_tutorial(train, test, movie_ids, seed)
                              for seed in seeds]

  summary = {}
  for task, metric in MAIN_METRICS.items():
    joint = [r['tasks'][task]['metrics'][metric] for r in results['joint']]
    summary[task] = {'metric': metric, 'joint': _spread(joint)}
    if task in results['single']:
      single = [r['tasks'][task]['metrics'][metric]
                for r in results['single'][task]]
      summary[task]['single'] = _spread(single)
      summary[task]['joint_worse_by'] = _relative_gap(
          np.mean(joint), np.mean(single), metric)
  results['summary'] = summary
  return results


def report(results: dict) -> str:
  """Format the results as Markdown tables."""
  summary = results['summary']
  joint = summary['retrieval']['joint']['mean']
  rmse = summary['rating']['joint']['mean']
  tutorial = results['tfrs_tutorial']

  lines = [
      f'Machine: {results["machine"]}. Seeds: {results["seeds"]}. Split: '
      f'{results["split"]["train_ratings"]} train and '
      f'{results["split"]["eval_ratings"]} eval ratings, '
      f'{results["split"]["movies"]} candidate movies.', '',
      '| model | top-100 accuracy | rating RMSE |', '|---|---|---|',
      f'| joint multi-task model (mean of seeds) | {joint:.4f} | '
      f'{rmse:.4f} |',
      f'| most-rated 100 movies | {results["popularity_top_100"]:.4f} | |',
  ]
  if results['joint_no_logq']:
    runs = results['joint_no_logq']
    top_100 = np.mean([r['tasks']['retrieval']['metrics']['top_100_accuracy']
                       for r in runs])
    no_logq_rmse = np.mean([r['tasks']['rating']['metrics']['rmse']
                            for r in runs])
    lines.append('| joint model, logQ correction off (mean of seeds) | '
                 f'{top_100:.4f} | {no_logq_rmse:.4f} |')

  lines += [
      f'| user + item bias | | {results["bias_rmse"]:.4f} |',
      f'| TFRS multi-task tutorial recipe (mean of seeds) | '
      f'{np.mean([t["top_100_accuracy"] for t in tutorial]):.4f} | '
      f'{np.mean([t["rmse"] for t in tutorial]):.4f} |',
      '', f'Top-100 accuracy over popularity: '
      f'{joint - results["popularity_top_100"]:+.4f}.', '',
      '| task | metric | joint (mean ± std) | alone (mean ± std) | '
      'joint worse by |', '|---|---|---|---|---|']

  for task, row in summary.items():
    single = row.get('single')
    lines.append(
        f'| {task} | {row["metric"]} | {row["joint"]["mean"]:.4f} ± '
        f'{row["joint"]["std"]:.4f} | ' +
        (f'{single["mean"]:.4f} ± {single["std"]:.4f} | '
         f'{100 * row["joint_worse_by"]:+.2f}% |' if single else ' | |'))

  compared = {task: row['joint_worse_by'] for task, row in summary.items()
              if 'joint_worse_by' in row}
  if compared:
    better = [t for t, gap in compared.items() if gap < 0]
    worse = [t for t, gap in compared.items() if gap > MAX_JOINT_GAP]
    lines += ['', 'The joint model is better than the task alone on: '
              f'{", ".join(better) or "none"}. Worse by more than '
              f'{100 * MAX_JOINT_GAP:.0f}% relative on: '
              f'{", ".join(worse) or "none"}.']

  seconds = [r['trainer_seconds'] for r in results['joint']
             if r['trainer_seconds'] is not None]
  if seconds:
    lines += ['', f'Joint training run: {np.mean(seconds):.0f} s on average '
              f'over {len(seconds)} run(s) (Trainer component, training and '
              'export). Runs reused from an earlier benchmark are left out.']
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data-dir', required=True,
                      help='Path to the MovieLens 100K folder (ml-100k).')
  parser.add_argument('--config', default=DEFAULT_CONFIG)
  parser.add_argument('--work-dir', default='/tmp/mtlrec-recommendation')
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--first-seed', type=int, default=42)
  parser.add_argument('--skip-single', action='store_true',
                      help='Skip the single-task runs (each task alone).')
  parser.add_argument('--skip-no-logq', action='store_true',
                      help='Skip the joint model runs without logQ '
                      'correction.')
  parser.add_argument('--output-json', default=None)
  args = parser.parse_args()
  logging.basicConfig(level=logging.INFO)
  results = run(args)
  text = report(results)
  print(text)
  if args.output_json:
    with open(args.output_json, 'w', encoding='utf-8') as f:
      json.dump(results, f, indent=2, default=float)


if __name__ == '__main__':
  main()
