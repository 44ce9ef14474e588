"""Wall time and peak memory of each pipeline component on one dataset.

Each component runs in its own process (`pipeline.py run --component C`,
the components before it reused from the lineage store), so the peak
resident memory of that process is the component's own, plus the Python and
TensorFlow start-up that every process pays. Prints a markdown table.

  python benchmarks/component_benchmark.py --config configs/mind.yaml \\
      --data-dir ../shared/data/mind-sample --work-dir /tmp/mtlrec-bench
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPONENTS = ('example_gen', 'statistics_gen', 'schema_gen',
              'example_validator', 'transform', 'trainer', 'evaluator',
              'pusher')


def _run_component(component, args, summary_path):
  """Run the pipeline up to `component`; return its times and peak RSS."""
  command = [sys.executable, os.path.join(REPO_ROOT, 'pipeline.py'), 'run',
             '--config', args.config, '--pipeline-root',
             os.path.join(args.work_dir, 'runs'), '--serving-dir',
             os.path.join(args.work_dir, 'serving'), '--output-json',
             summary_path, '--component', component]
  if args.data_dir:
    command += ['--data-dir', args.data_dir]
  return _measure(command, summary_path, component)


def _measure(command, summary_path, component):
  started = time.time()
  process = subprocess.Popen(command, cwd=REPO_ROOT,
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  # wait4 returns this child's own resource usage; ru_maxrss is in KiB.
  _, status, usage = os.wait4(process.pid, 0)
  wall = time.time() - started
  if os.waitstatus_to_exitcode(status) != 0:
    raise RuntimeError(f'{" ".join(command)} failed with status {status}.')
  peak_kib = usage.ru_maxrss
  with open(summary_path, encoding='utf-8') as f:
    summary = json.load(f)
  own = sum(c['seconds'] for c in summary['components']
            if component in (None, c['component']))
  return wall, own, peak_kib


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', required=True)
  parser.add_argument('--data-dir', default=None)
  parser.add_argument('--work-dir', default='/tmp/mtlrec-bench')
  parser.add_argument('--end-to-end', action='store_true',
                      help='Also run the whole pipeline in one process, as '
                      '`make run` does, on fresh roots.')
  args = parser.parse_args()
  os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
  if os.path.isdir(args.work_dir):
    shutil.rmtree(args.work_dir)
  os.makedirs(args.work_dir)

  rows = []
  total_started = time.time()
  for component in COMPONENTS:
    summary_path = os.path.join(args.work_dir, f'{component}.json')
    wall, own, peak_kib = _run_component(component, args, summary_path)
    rows.append((component, own, wall, peak_kib))
  total = time.time() - total_started

  print(f'config: {args.config}; data: {args.data_dir or "bundled"}; '
        f'machine: {platform.machine()}, {os.cpu_count()} CPUs, '
        f'Python {platform.python_version()}')
  print()
  print('| component | component time (s) | process wall time (s) | '
        'peak RSS (MiB) |')
  print('|---|---:|---:|---:|')
  for component, own, wall, peak_kib in rows:
    print(f'| {component} | {own:.1f} | {wall:.1f} | {peak_kib / 1024:.0f} |')
  print(f'| all, one process each | | {total:.1f} | |')
  if args.end_to_end:
    _print_end_to_end(args)


def _print_end_to_end(args):
  """Run all components in one fresh process, as `make run` does."""
  work_dir = os.path.join(args.work_dir, 'end_to_end')
  summary_path = os.path.join(work_dir, 'summary.json')
  command = [sys.executable, os.path.join(REPO_ROOT, 'pipeline.py'), 'run',
             '--config', args.config, '--pipeline-root',
             os.path.join(work_dir, 'runs'), '--serving-dir',
             os.path.join(work_dir, 'serving'), '--output-json', summary_path]
  if args.data_dir:
    command += ['--data-dir', args.data_dir]
  wall, own, peak_kib = _measure(command, summary_path, None)
  print(f'| whole pipeline, one process | {own:.1f} | {wall:.1f} | '
        f'{peak_kib / 1024:.0f} |')


if __name__ == '__main__':
  main()
