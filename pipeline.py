"""mtlrec command line: run the pipeline on one snapshot with one config.

  python pipeline.py run --config configs/mind.yaml --data-dir DIR \\
      --pipeline-root runs --serving-dir serving_models

or predict a file of rows with a pushed model (batch inference on Beam):

  python pipeline.py infer --model-dir serving_models/mind/1 \\
      --input rows.jsonl --output predictions.jsonl

Flags this program does not know are Beam pipeline options and pass through
unchanged (`--runner`, `--direct_num_workers`, `--direct_running_mode`,
`--project`, `--region`, `--temp_location`, `--setup_file`, ...).
"""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=wrong-import-position
import argparse
import json
import logging
import sys
import time
import uuid
from typing import Any, Dict, List, Optional

from components import artifacts
from components import evaluator
from components import example_gen
from components import example_validator
from components import lineage
from components import pusher
from components import schema_gen
from components import statistics_gen
from components import trainer
from components import transform
from components.config import ConfigError, PipelineConfig, load_config
from components.runner import ComponentRunner

COMPONENTS = ('example_gen', 'statistics_gen', 'schema_gen',
              'example_validator', 'transform', 'trainer', 'evaluator',
              'pusher')
# The run summary, by default in <pipeline_root>/<pipeline_name>/.
SUMMARY_FILE = 'summary.json'


def _new_run_id() -> str:
  return time.strftime('%Y%m%d-%H%M%S', time.gmtime()) + '-' + uuid.uuid4(
  ).hex[:6]


def _example_gen(runner, config, data_path, beam_args):

  def execute(output_dir):
    result = example_gen.run_example_gen(config, data_path, output_dir,
                                         beam_args)
    return {'examples_dir': result.output_dir,
            'feature_types': result.feature_types,
            'counts': result.counts,
            'rejected_dir': result.rejected_dir}

  adapter = example_gen.get_adapter(config, data_path)
  inputs = {'data_path': data_path,
            'data_fingerprint': artifacts.fingerprint_files(
                adapter.input_files())}
  return runner.run('example_gen', inputs,
                    [config.data, config.split, config.features, config.tasks,
                     config.history],
                    execute)


def _data_validation(runner, config, examples, beam_args):
  """StatisticsGen, SchemaGen and ExampleValidator."""
  examples_dir = examples.outputs['examples_dir']
  feature_types = examples.outputs['feature_types']

  statistics = runner.run(
      'statistics_gen', {'examples': examples.fingerprint},
      [config.features, config.tasks],
      lambda out: {'statistics_path': statistics_gen.run_statistics_gen(
          examples_dir, feature_types, config, out, beam_args)})

  # The schema inferred on the first run is kept while the features match.
  previous_schema = runner.previous_outputs('schema_gen')
  existing = previous_schema and previous_schema.get('schema_path')
  if existing and (not os.path.isfile(existing) or set(
      previous_schema.get('feature_types', {})) != set(feature_types)):
    existing = None
  existing_fingerprint = (artifacts.fingerprint_files([existing])
                          if existing else None)
  schema = runner.run(
      'schema_gen', {'statistics': statistics.fingerprint,
                     'existing_schema': existing_fingerprint},
      [config.tasks],
      lambda out: {'schema_path': schema_gen.run_schema_gen(
          statistics.outputs['statistics_path'], feature_types, config, out,
          existing), 'feature_types': feature_types})

  previous_statistics = runner.previous_outputs('statistics_gen')
  previous_path = previous_statistics and previous_statistics.get(
      'statistics_path')
  if previous_path == statistics.outputs['statistics_path']:
    previous_path = None

  def validate(out):
    result = example_validator.run_example_validator(
        statistics.outputs['statistics_path'],
        schema.outputs['schema_path'], config, out, previous_path)
    return {'anomalies_path': result.markdown_path,
            'anomalies': [a._asdict() for a in result.anomalies]}

  validation = runner.run(
      'example_validator', {
          'statistics': statistics.fingerprint,
          'schema': artifacts.fingerprint_files(
              [schema.outputs['schema_path']]),
          'previous_statistics': (artifacts.fingerprint_files(
              [previous_path]) if previous_path else None)},
      [config.validation, config.features, config.tasks], validate)
  return schema, validation


def _transform(runner, config, examples, schema, beam_args):

  def execute(output_dir):
    result = transform.run_transform(config, examples.outputs['examples_dir'],
                                     schema.outputs['schema_path'],
                                     output_dir, beam_args)
    return {'transform_graph_dir': result.transform_graph_dir,
            'transformed_examples_dir': result.transformed_examples_dir,
            'counts': result.counts}

  # The schema's content, not its execution: a rerun that reuses the first
  # run's schema verbatim must not invalidate Transform and all after it.
  schema_fingerprint = artifacts.fingerprint_files(
      [schema.outputs['schema_path']])
  return runner.run('transform', {'examples': examples.fingerprint,
                                  'schema': schema_fingerprint},
                    [config.features, config.text, config.tasks], execute)


def _trainer(runner, config, examples, transformed):

  def execute(output_dir):
    result = trainer.run_trainer(
        config, examples.outputs['examples_dir'],
        transformed.outputs['transform_graph_dir'],
        transformed.outputs['transformed_examples_dir'], output_dir)
    return {'model_dir': result.serving_model_dir,
            'best_epoch': result.best_epoch}

  return runner.run('trainer', {'transform': transformed.fingerprint},
                    [config.model, config.trainer, config.tasks, config.seed,
                     config.model_name, config.serving], execute)


def _evaluator(runner, config, examples, model, serving_dir):
  model_dir = model.outputs['model_dir']
  evaluator_sections = [config.evaluator, config.tasks]
  served_dir = evaluator.latest_version_dir(serving_dir, config.model_name)
  served_fingerprint = None
  if served_dir:
    served_fingerprint = artifacts.fingerprint_files([served_dir])
    if served_fingerprint == artifacts.fingerprint_files([model_dir]):
      # The candidate is already the served version, so the evaluation that
      # blessed it is still valid and there is nothing new to compare with.
      reused = runner.reuse_by_input(
          'evaluator', 'model', model.fingerprint, evaluator_sections,
          lambda outputs: outputs.get('blessed') is True)
      if reused:
        return reused
      served_dir, served_fingerprint = None, None

  def execute(output_dir):
    result = evaluator.run_evaluator(config, examples.outputs['examples_dir'],
                                     model_dir, output_dir, served_dir)
    return {'blessed': result.blessed, 'reasons': result.reasons,
            'metrics_path': result.metrics_path, 'metrics': result.metrics,
            'served_model_dir': served_dir}

  return runner.run('evaluator', {'examples': examples.fingerprint,
                                  'model': model.fingerprint,
                                  'served_model': served_fingerprint},
                    evaluator_sections, execute)


def _pusher(runner, config, model, evaluation, serving_dir):
  serving_dir = os.path.abspath(serving_dir)
  model_dir = model.outputs['model_dir']

  def execute(output_dir):
    return pusher.run_pusher(model_dir, evaluation.outputs['blessed'],
                             evaluation.outputs['reasons'], serving_dir,
                             config.model_name, output_dir)._asdict()

  inputs = {'model': model.fingerprint, 'evaluation': evaluation.fingerprint,
            'serving_dir': serving_dir}
  served_dir = evaluator.latest_version_dir(serving_dir, config.model_name)
  if served_dir and artifacts.fingerprint_files(
      [served_dir]) == artifacts.fingerprint_files([model_dir]):
    reused = runner.reuse_by_input(
        'pusher', 'model', model.fingerprint, [config.model_name],
        lambda outputs: outputs.get('path') == served_dir)
    if reused:
      return reused
  outcome = runner.run('pusher', inputs, [config.model_name], execute)
  pushed_path = outcome.outputs.get('path')
  if outcome.status == 'reused' and pushed_path and not os.path.isdir(
      pushed_path):
    # The version pushed before was removed from the serving folder.
    runner.enable_cache = False
    outcome = runner.run('pusher', inputs, [config.model_name], execute)
    runner.enable_cache = True
  return outcome


def run_pipeline(config: PipelineConfig, data_dir: Optional[str],
                 pipeline_root: str, serving_dir: str,
                 beam_args: List[str], until: str = 'pusher',
                 enable_cache: bool = True) -> Dict[str, Any]:
  """Run the components in order, up to and including `until`."""
  data_path = config.resolve_data_path(data_dir)
  pipeline_root = os.path.abspath(pipeline_root)
  run_id = _new_run_id()
  run_dir = os.path.join(pipeline_root, config.pipeline_name, run_id)
  store = lineage.LineageStore(pipeline_root)
  store.start_run(run_id, config.pipeline_name, config.source_path, data_path)
  runner = ComponentRunner(store, config.pipeline_name, run_id, run_dir,
                           enable_cache)
  stop_after = COMPONENTS.index(until)
  summary = {'status': 'complete', 'run_id': run_id, 'run_dir': run_dir,
             'pipeline_name': config.pipeline_name,
             'model_name': config.model_name, 'data_path': data_path}
  try:
    examples = _example_gen(runner, config, data_path, beam_args)
    if stop_after >= 1:
      schema, validation = _data_validation(runner, config, examples,
                                            beam_args)
      summary['anomalies'] = validation.outputs['anomalies']
    if stop_after >= 4:
      transformed = _transform(runner, config, examples, schema, beam_args)
    if stop_after >= 5:
      model = _trainer(runner, config, examples, transformed)
    if stop_after >= 6:
      evaluation = _evaluator(runner, config, examples, model, serving_dir)
      summary['blessed'] = evaluation.outputs['blessed']
      summary['blessing_reasons'] = evaluation.outputs['reasons']
      summary['tasks'] = _task_summary(config, evaluation.outputs['metrics'])
    if stop_after >= 7:
      push = _pusher(runner, config, model, evaluation, serving_dir)
      summary['push'] = push.outputs
  except BaseException:
    store.finish_run(run_id, lineage.FAILED)
    raise
  store.finish_run(run_id, lineage.COMPLETE)
  summary['components'] = [
      {'component': o.component, 'status': o.status,
       'output_dir': o.output_dir, 'seconds': round(o.seconds, 2)}
      for o in runner.outcomes
  ]
  summary['examples'] = examples.outputs['counts']
  return summary


def _task_summary(config: PipelineConfig, metrics: Dict[str, dict]):
  tasks = {}
  for task in config.tasks:
    result = metrics[task.name]
    tasks[task.name] = {
        'main_metric': task.main_metric,
        'metrics': result['candidate'],
        'baseline': result['baseline'],
        'served': result['served'],
    }
    if result.get('difference'):
      tasks[task.name]['difference'] = result['difference']
  return tasks


def format_summary(summary: Dict[str, Any]) -> str:
  """Format the per-task metrics table and the push outcome for a terminal."""
  lines = [f'Run {summary["run_id"]} in {summary["run_dir"]}']
  for component in summary.get('components', []):
    lines.append(f'  {component["component"]:<18} {component["status"]:<7} '
                 f'{component["seconds"]:>7.1f} s')
  if 'tasks' in summary:
    lines += ['', f'{"task":<12} {"metric":<24} {"model":>8} {"baseline":>9}'
              f' {"served":>8}']
    for task, result in summary['tasks'].items():
      for name, value in result['metrics'].items():
        if not isinstance(value, float):
          continue
        served = (result['served'] or {}).get(name)
        main = '*' if name == result['main_metric'] else ' '
        lines.append(
            f'{task:<12} {name + main:<24} {value:>8.4f} '
            f'{result["baseline"].get(name, float("nan")):>9.4f} '
            f'{"" if served is None else f"{served:.4f}":>8}')
    lines.append('(* main metric; baseline: the majority class, the train '
                 'mean for rmse, train-split popularity for clicks and '
                 'retrieval, train prevalence for multi-label)')
    for task, result in summary['tasks'].items():
      differences = result.get('difference')
      if not differences:
        continue
      units = next(iter(differences.values()))['units']
      lines.append(f'{task}: model minus baseline over {units} impressions, '
                   f'{evaluator.BOOTSTRAP_CONFIDENCE:.0%} bootstrap interval:')
      for name, interval in differences.items():
        lines.append(f'  {name:<10} {interval["difference"]:+.4f} '
                     f'({interval["lower"]:+.4f} to '
                     f'{interval["upper"]:+.4f})')
  push = summary.get('push')
  if push:
    lines.append('')
    reused = any(c['component'] == 'pusher' and c['status'] == 'reused'
                 for c in summary.get('components', []))
    lines.append(('unchanged since the last run: ' if reused else '') +
                 push['reason'])
  return '\n'.join(lines)


def _parse_args(argv: Optional[List[str]]):
  parser = argparse.ArgumentParser(
      description='Run the mtlrec pipeline. Unknown flags are Beam pipeline '
      'options and pass through unchanged.')
  commands = parser.add_subparsers(dest='command', required=True)
  run = commands.add_parser('run', help='Run the pipeline on one snapshot.')
  run.add_argument('--config', required=True, help='Pipeline config YAML.')
  run.add_argument('--data-dir', default=None,
                   help='Folder the config\'s data.path is relative to '
                   '(default: the config file\'s folder).')
  run.add_argument('--pipeline-root', default='runs',
                   help='Folder for run artifacts and the lineage store.')
  run.add_argument('--serving-dir', default='serving_models',
                   help='TF Serving model base folder the Pusher writes to.')
  run.add_argument('--output-json', default=None,
                   help='Write the run summary as JSON to this file '
                   '(default: <pipeline-root>/<pipeline_name>/'
                   f'{SUMMARY_FILE}).')
  run.add_argument('--component', default='pusher', choices=COMPONENTS,
                   help='Run the pipeline up to and including this '
                   'component; upstream components are reused when cached.')
  run.add_argument('--no-cache', action='store_true',
                   help='Run every component even if a cached execution '
                   'matches.')
  _add_infer_parser(commands)
  return parser.parse_known_args(argv)


def _add_infer_parser(commands) -> None:
  infer = commands.add_parser(
      'infer', help='Predict every row of a file with a pushed model (Beam '
      'RunInference).')
  infer.add_argument('--model-dir', required=True,
                     help='A pushed version folder, '
                     '<serving_dir>/<model_name>/<version>.')
  infer.add_argument('--input', required=True,
                     help='Input file or glob: CSV or JSON Lines rows of raw '
                     'features, or TFRecords of serialized tf.Example. With '
                     '--config: the data snapshot (file, glob or folder) in '
                     'its dataset\'s own format.')
  infer.add_argument('--output', required=True,
                     help='Predictions file (JSON Lines); rejected rows go '
                     'to <output without .jsonl>.rejected.jsonl.')
  infer.add_argument('--format', default=None,
                     choices=('csv', 'jsonl', 'tfrecord'),
                     help='Input format (default: from the file name).')
  infer.add_argument('--config', default=None,
                     help='Pipeline config whose data adapter reads --input, '
                     'as ExampleGen does, e.g. configs/amazon_fine_food.yaml '
                     'with --input data/sample/Reviews.csv.')
  infer.add_argument('--batch-size', type=int, default=256,
                     help='Maximum rows per model call (default %(default)s).')


def _infer(args, beam_args: List[str]) -> int:
  """Run batch inference; exit status 1 if no row got a prediction."""
  # Imported here so that `run` does not load the serving code.
  from serving import batch_inference  # pylint: disable=g-import-not-at-top
  try:
    counts = batch_inference.run_batch_inference(
        args.model_dir, args.input, args.output, args.format, beam_args,
        args.batch_size, args.config)
  except (FileNotFoundError, KeyError, ValueError) as e:
    # KeyError's str() quotes its message.
    message = e.args[0] if isinstance(e, KeyError) and e.args else e
    print(f'error: {message}', file=sys.stderr)
    return 2
  print(f'{counts.rows} rows: {counts.predicted} predictions in '
        f'{counts.output_path}, {counts.rejected} rejected in '
        f'{counts.rejected_path}')
  return 0 if counts.predicted or not counts.rows else 1


def main(argv: Optional[List[str]] = None) -> int:
  logging.basicConfig(level=logging.INFO,
                      format='%(asctime)s %(levelname)s %(message)s')
  args, beam_args = _parse_args(argv)
  if args.command == 'infer':
    return _infer(args, beam_args)
  try:
    config = load_config(args.config)
  except ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  summary_path = args.output_json or os.path.join(
      args.pipeline_root, config.pipeline_name, SUMMARY_FILE)
  try:
    summary = run_pipeline(config, args.data_dir, args.pipeline_root,
                           args.serving_dir, beam_args, args.component,
                           not args.no_cache)
  except (ValueError, FileNotFoundError) as e:
    # Bad data or paths: the traceback goes to the log, the reason last.
    logging.exception('The pipeline run failed.')
    _write_summary(summary_path, {'status': 'failed', 'error': str(e),
                                  'config': args.config})
    print(f'error: {e}', file=sys.stderr)
    return 1
  _write_summary(summary_path, summary)
  print(format_summary(summary))
  print(f'Summary written to {summary_path}')
  return 0


def _write_summary(path: str, summary: Dict[str, Any]) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(summary, f, indent=2, default=str)


if __name__ == '__main__':
  sys.exit(main())
