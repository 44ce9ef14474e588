"""Latency, throughput and memory of the model server, beside an in-process call.

One run measures, against a pushed model (`make run` pushes
`serving_models/amazon_fine_food/1`):

- the model's `serving_default` signature called in this process with
  `tf.saved_model.load(...).signatures[...]`, the baseline, and one thread
  sending 512 reviews per call, which with the other in-process cells shows
  the most reviews per second the model gives on the machine;
- `python -m serving.server` started as two subprocesses on 127.0.0.1, one
  with batching off and one with batching on. Each server gets REST and
  gRPC requests of 1 and 32 reviews from 1 and 16 client threads, each
  thread with its own client (its own gRPC channel, its own keep-alive
  HTTP connection). The runs of a cell alternate between the servers;
- the resident memory (VmRSS) of each server process right after it loaded,
  before and after 10,000 more requests.

Inputs are real reviews from data/sample/Reviews.csv. Each run of a cell
sends a warm-up, then `--requests` requests, and stops early after
`--cell-seconds`. Every cell runs `--repeats` times and the table keeps the
run of median throughput. It prints markdown tables of the measurements and
of the targets, as ratios.

  .venv/bin/python benchmarks/serving_benchmark.py \\
      --model-dir serving_models/amazon_fine_food
"""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=wrong-import-position
import argparse
import contextlib
import csv
import dataclasses
import itertools
import logging
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Run as a script, sys.path starts with benchmarks/, not the repository root.
sys.path.insert(0, REPO_ROOT)

import tensorflow as tf  # noqa: E402
import tensorflow_text  # noqa: E402,F401  Registers the tf-text ops.

from serving import client as serving_client  # noqa: E402

REVIEWS_CSV = os.path.join(REPO_ROOT, 'data', 'sample', 'Reviews.csv')
SIGNATURE = 'serving_default'
BATCH_SIZES = (1, 32)
# The in-process ceiling cell: one thread sending this many reviews per call.
CEILING_BATCH_SIZE = 512
CEILING_REQUESTS = 10
CLIENT_COUNTS = (1, 16)
PROTOCOLS = ('grpc', 'rest')
WARMUP_REQUESTS_PER_CLIENT = 5
# Loading the model and replaying its warmup requests took about 7 s on a
# 2-core machine, so 180 s leaves room for a slower or busier one.
SERVER_START_TIMEOUT_S = 180
# One batch thread: on 2 cores the model's own intra-op threads already use
# both, and requests that arrive while a batch runs join the next one.
BATCHING_PARAMETERS = """\
max_batch_size { value: 64 }
batch_timeout_micros { value: 1000 }
max_enqueued_batches { value: 16 }
num_batch_threads { value: 1 }
"""

Features = Dict[str, List[str]]


# ----------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------


def load_reviews(path: str = REVIEWS_CSV) -> List[Dict[str, str]]:
  """Read the serving inputs (summary, text, product id) of each review."""
  with open(path, encoding='utf-8', newline='') as f:
    return [{'summary': row['Summary'], 'text': row['Text'],
             'product_id': row['ProductId']} for row in csv.DictReader(f)]


def make_requests(reviews: Sequence[Dict[str, str]], batch_size: int,
                  count: int) -> List[Features]:
  """Build `count` requests of `batch_size` consecutive reviews each.

  The requests walk through the reviews and wrap around, so consecutive
  requests carry different texts of different lengths.
  """
  requests = []
  for index in range(count):
    start = index * batch_size
    rows = [reviews[(start + i) % len(reviews)] for i in range(batch_size)]
    requests.append({name: [row[name] for row in rows]
                     for name in ('summary', 'text', 'product_id')})
  return requests


# ----------------------------------------------------------------------------
# Load loop
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class CellResult:
  """Latencies and counts of one cell: one server, protocol, batch, clients."""
  latencies_s: List[float]
  wall_s: float
  errors: int
  capped: bool

  @property
  def completed(self) -> int:
    return len(self.latencies_s)

  def percentile_ms(self, q: float) -> float:
    if not self.latencies_s:
      return float('nan')
    return float(np.percentile(self.latencies_s, q)) * 1000

  @property
  def throughput(self) -> float:
    """Completed requests per second of wall time, all clients together."""
    return self.completed / self.wall_s if self.wall_s else 0.0


def run_cell(make_caller: Callable[[], Callable[[Features], None]],
             requests: Sequence[Features], clients: int, total: int,
             max_seconds: float) -> CellResult:
  """Send `total` requests from `clients` threads, each with its own caller.

  Each thread first sends a few warm-up requests, which are not timed. The
  timed part starts for all threads together. It stops after `total`
  requests or after `max_seconds`, whichever comes first.

  Args:
    make_caller: builds one caller (a client, a channel) per thread.
    requests: inputs, taken in turn.
    clients: concurrent threads.
    total: timed requests over all threads.
    max_seconds: the time cap of the timed part.
  """
  ready = threading.Barrier(clients + 1)
  go = threading.Event()
  next_index = itertools.count()
  index_lock = threading.Lock()
  latencies: List[List[float]] = [[] for _ in range(clients)]
  errors = [0] * clients
  deadline = [0.0]

  def worker(slot: int) -> None:
    try:
      call = make_caller()
      for i in range(WARMUP_REQUESTS_PER_CLIENT):
        call(requests[(slot + i) % len(requests)])
    except BaseException:
      # Breaking the barrier makes the main thread raise, not wait forever.
      ready.abort()
      raise
    ready.wait()
    go.wait()
    while time.perf_counter() < deadline[0]:
      with index_lock:
        index = next(next_index)
      if index >= total:
        return
      began = time.perf_counter()
      try:
        call(requests[index % len(requests)])
      except serving_client.ServingError as e:
        errors[slot] += 1
        logging.warning('Request %d failed: %s', index, e)
        continue
      latencies[slot].append(time.perf_counter() - began)

  threads = [threading.Thread(target=worker, args=(slot,), daemon=True)
             for slot in range(clients)]
  for thread in threads:
    thread.start()
  ready.wait()
  began = time.perf_counter()
  deadline[0] = began + max_seconds
  go.set()
  for thread in threads:
    thread.join()
  wall = time.perf_counter() - began
  flat = [value for values in latencies for value in values]
  return CellResult(flat, wall, sum(errors),
                    capped=len(flat) + sum(errors) < total)


def in_process_caller(version_dir: str) -> Callable[[], Callable]:
  """Load the signature once; every thread calls the same concrete function.

  The call converts the lists to tensors and the outputs to numpy, the work a
  client does too, so the baseline differs only by the server in between.
  """
  signature = tf.saved_model.load(version_dir).signatures[SIGNATURE]

  def call(features: Features) -> None:
    outputs = signature(**{name: tf.constant(values)
                           for name, values in features.items()})
    for value in outputs.values():
      value.numpy()

  return lambda: call


def server_caller(protocol: str, server: 'ServerProcess'
                  ) -> Callable[[], Callable]:
  """Build a factory that makes one client per thread (gRPC or REST)."""

  def make() -> Callable[[Features], None]:
    if protocol == 'grpc':
      client = serving_client.GrpcClient(server.grpc_target,
                                         server.model_name)
    else:
      client = serving_client.RestClient(server.rest_url, server.model_name)
    return lambda features: client.predict(features, SIGNATURE)

  return make


# ----------------------------------------------------------------------------
# Server process
# ----------------------------------------------------------------------------


def _free_port() -> int:
  """Return a port that is free on 127.0.0.1 now.

  NOTE: another process could take the port before the server binds it.
  The server then fails to start, and the benchmark stops with its log.
  """
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind(('127.0.0.1', 0))
    return sock.getsockname()[1]


class ServerProcess:
  """`python -m serving.server` as a subprocess on 127.0.0.1 free ports.

  Args:
    model_dir: the model's base path, with one folder per version.
    work_dir: where the server's log and batching file go.
    batching: start it with --enable_batching and BATCHING_PARAMETERS.
    threads: (intra-op, inter-op) session threads; 0 lets TensorFlow choose.
  """

  def __init__(self, model_dir: str, work_dir: str, batching: bool,
               threads: Tuple[int, int] = (0, 0)):
    self.model_name = os.path.basename(os.path.normpath(model_dir))
    self.grpc_port = _free_port()
    self.rest_port = _free_port()
    self.grpc_target = f'127.0.0.1:{self.grpc_port}'
    self.rest_url = f'http://127.0.0.1:{self.rest_port}'
    suffix = 'batching_on' if batching else 'batching_off'
    self.log_path = os.path.join(work_dir, f'server_{suffix}.log')
    self.command = [
        sys.executable, '-m', 'serving.server', f'--port={self.grpc_port}',
        f'--rest_api_port={self.rest_port}', '--grpc_host=127.0.0.1',
        '--rest_api_host=127.0.0.1', f'--model_name={self.model_name}',
        f'--model_base_path={os.path.abspath(model_dir)}']
    if batching:
      parameters_path = os.path.join(work_dir, 'batching_parameters.txt')
      with open(parameters_path, 'w', encoding='utf-8') as f:
        f.write(BATCHING_PARAMETERS)
      self.command += ['--enable_batching=true',
                       f'--batching_parameters_file={parameters_path}']
    intra, inter = threads
    if intra:
      self.command.append(f'--tensorflow_intra_op_parallelism={intra}')
    if inter:
      self.command.append(f'--tensorflow_inter_op_parallelism={inter}')
    self.process: Optional[subprocess.Popen] = None

  def __enter__(self) -> 'ServerProcess':
    self.start()
    return self

  def __exit__(self, *exc) -> None:
    self.stop()

  def start(self) -> None:
    """Start the server and wait until the model is AVAILABLE on both ports.

    Raises:
      RuntimeError: the server exited or did not become ready in time.
    """
    env = dict(os.environ, TF_USE_LEGACY_KERAS='1', TF_CPP_MIN_LOG_LEVEL='2')
    with open(self.log_path, 'w', encoding='utf-8') as log:
      self.process = subprocess.Popen(self.command, cwd=REPO_ROOT, env=env,
                                      stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
      if self.process.poll() is not None:
        raise RuntimeError(f'The server exited with status '
                           f'{self.process.returncode}; its log:\n'
                           f'{self._log_tail()}')
      if self._ready():
        return
      time.sleep(0.5)
    self.stop()
    raise RuntimeError(f'The server was not ready after '
                       f'{SERVER_START_TIMEOUT_S} s; its log:\n'
                       f'{self._log_tail()}')

  def _ready(self) -> bool:
    """Whether both the gRPC and the REST port report a version AVAILABLE."""
    clients = (serving_client.GrpcClient(self.grpc_target, self.model_name,
                                         timeout_s=2, max_attempts=1),
               serving_client.RestClient(self.rest_url, self.model_name,
                                         timeout_s=2, max_attempts=1))
    try:
      for client in clients:
        states = [status['state'] for status in client.model_status()]
        if 'AVAILABLE' not in states:
          return False
      return True
    except serving_client.ServingError:
      return False
    finally:
      for client in clients:
        client.close()

  def _log_tail(self, lines: int = 30) -> str:
    with open(self.log_path, encoding='utf-8', errors='replace') as f:
      return ''.join(f.readlines()[-lines:])

  def rss_kib(self) -> int:
    """Read the server's resident memory (VmRSS in /proc) in KiB."""
    with open(f'/proc/{self.process.pid}/status', encoding='ascii') as f:
      for line in f:
        if line.startswith('VmRSS:'):
          return int(line.split()[1])
    raise RuntimeError(f'No VmRSS in /proc/{self.process.pid}/status.')

  def stop(self) -> None:
    """Send SIGTERM, the server's graceful stop, and kill it if it hangs."""
    if self.process is None or self.process.poll() is not None:
      return
    self.process.send_signal(signal.SIGTERM)
    try:
      self.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
      logging.warning('The server did not stop within 30 s; killing it.')
      self.process.kill()
      self.process.wait()


# ----------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
  """One line of the results table: the run of median throughput.

  `throughputs` contains the requests/s of every run of the cell, in order.
  """
  batching: str
  protocol: str
  batch_size: int
  clients: int
  result: CellResult
  throughputs: List[float] = dataclasses.field(default_factory=list)


def median_row(batching: str, protocol: str, batch_size: int, clients: int,
               runs: Sequence[CellResult]) -> Row:
  """Keep the run of median throughput; an even count takes the lower one."""
  ranked = sorted(runs, key=lambda run: run.throughput)
  return Row(batching, protocol, batch_size, clients,
             ranked[(len(ranked) - 1) // 2],
             [run.throughput for run in runs])


@dataclasses.dataclass
class MemoryResult:
  """VmRSS of one server: loaded, before and after the memory requests."""
  batching: str
  loaded_kib: int
  before_kib: int
  after_kib: int
  requests: int
  errors: int

  @property
  def growth_percent(self) -> float:
    return 100.0 * (self.after_kib - self.before_kib) / self.before_kib


def _cell_total(args, batch_size: int) -> int:
  return args.requests if batch_size == 1 else args.batch32_requests


def measure_in_process(version_dir: str, requests_by_size, args) -> List[Row]:
  """Time the signature called in this process, the baseline.

  A last cell sends CEILING_BATCH_SIZE reviews per call from one thread, the
  largest batch. With the 16-thread cells, it shows the maximum reviews per
  second that the model itself gives on this machine.
  """
  make_caller = in_process_caller(version_dir)
  rows = []
  for batch_size in BATCH_SIZES:
    for clients in CLIENT_COUNTS:
      runs = [run_cell(make_caller, requests_by_size[batch_size], clients,
                       _cell_total(args, batch_size), args.cell_seconds)
              for _ in range(args.repeats)]
      rows.append(median_row('-', 'in-process', batch_size, clients, runs))
      _log_row(rows[-1])
  ceiling_requests = make_requests(load_reviews(), CEILING_BATCH_SIZE, 4)
  runs = [run_cell(make_caller, ceiling_requests, 1, CEILING_REQUESTS,
                   args.cell_seconds) for _ in range(args.repeats)]
  rows.append(median_row('-', 'in-process', CEILING_BATCH_SIZE, 1, runs))
  _log_row(rows[-1])
  return rows


def measure_servers(servers: Dict[str, ServerProcess], requests_by_size,
                    args) -> List[Row]:
  """Time every protocol, batch size and client count on both servers.

  Both servers run at once, each idle while the other is measured. The runs
  of a cell alternate between them (off, on, off, on, ...), so a slow
  spell of the machine falls on both rather than on one.
  """
  rows = []
  for protocol in PROTOCOLS:
    for batch_size in BATCH_SIZES:
      for clients in CLIENT_COUNTS:
        runs: Dict[str, List[CellResult]] = {name: [] for name in servers}
        for _ in range(args.repeats):
          for batching, server in servers.items():
            runs[batching].append(run_cell(
                server_caller(protocol, server), requests_by_size[batch_size],
                clients, _cell_total(args, batch_size), args.cell_seconds))
        for batching in servers:
          rows.append(median_row(batching, protocol, batch_size, clients,
                                 runs[batching]))
          _log_row(rows[-1])
  return rows


def measure_memory(server: ServerProcess, batching: str, loaded_kib: int,
                   requests: Sequence[Features], args) -> MemoryResult:
  """Send `--memory-requests` batch-1 requests and read VmRSS around them.

  Half of the client threads use REST and half gRPC, so both front ends
  get load.

  The before value is taken after the latency cells, so allocator arenas
  and caches that the first requests fill are already counted, and the
  growth across the requests is what keeps accumulating.
  """
  before = server.rss_kib()
  grpc_make = server_caller('grpc', server)
  rest_make = server_caller('rest', server)
  turn = itertools.count()

  def make_caller():
    return (grpc_make if next(turn) % 2 == 0 else rest_make)()

  result = run_cell(make_caller, requests, args.memory_clients,
                    args.memory_requests, args.memory_seconds)
  after = server.rss_kib()
  memory = MemoryResult(batching, loaded_kib, before, after,
                        result.completed, result.errors)
  logging.info('%s: VmRSS %d KiB before, %d KiB after %d requests',
               batching, before, after, result.completed)
  return memory


def _log_row(row: Row) -> None:
  result = row.result
  logging.info('%s %s batch %d, %d clients: %d requests, p50 %.2f ms, '
               'p99 %.2f ms, %.1f req/s, %d errors%s', row.batching,
               row.protocol, row.batch_size, row.clients, result.completed,
               result.percentile_ms(50), result.percentile_ms(99),
               result.throughput, result.errors,
               ' (time cap)' if result.capped else '')


# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------


def _find(rows: Sequence[Row], batching: str, protocol: str, batch_size: int,
          clients: int) -> CellResult:
  for row in rows:
    if (row.batching, row.protocol, row.batch_size, row.clients) == (
        batching, protocol, batch_size, clients):
      return row.result
  raise KeyError((batching, protocol, batch_size, clients))


def format_results(rows: Sequence[Row]) -> List[str]:
  """Format the measurements as a markdown table, one line per cell."""
  lines = ['| batching | protocol | batch | clients | requests | p50 (ms) | '
           'p99 (ms) | requests/s | reviews/s | errors | requests/s of '
           'each run |',
           '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|']
  for row in rows:
    result = row.result
    capped = ' (time cap)' if result.capped else ''
    run_throughputs = ', '.join(f'{value:.0f}' for value in row.throughputs)
    lines.append(
        f'| {row.batching} | {row.protocol} | {row.batch_size} | '
        f'{row.clients} | {result.completed}{capped} | '
        f'{result.percentile_ms(50):.2f} | {result.percentile_ms(99):.2f} | '
        f'{result.throughput:.1f} | '
        f'{result.throughput * row.batch_size:.0f} | {result.errors} | '
        f'{run_throughputs} |')
  return lines


def format_memory(memory: Sequence[MemoryResult]) -> List[str]:
  lines = ['| batching | VmRSS after load (MiB) | VmRSS before (MiB) | '
           'VmRSS after (MiB) | requests | growth | errors |',
           '|---|---:|---:|---:|---:|---:|---:|']
  for item in memory:
    lines.append(
        f'| {item.batching} | {item.loaded_kib / 1024:.0f} | '
        f'{item.before_kib / 1024:.0f} | {item.after_kib / 1024:.0f} | '
        f'{item.requests} | {item.growth_percent:+.1f}% | {item.errors} |')
  return lines


def _verdict(met: bool) -> str:
  return 'met' if met else 'missed'


def format_targets(rows: Sequence[Row],
                   memory: Sequence[MemoryResult]) -> List[str]:
  """Format each target beside its measurement as a ratio, without asserting.

  A latency ratio is the measurement over its bound, and at most 1 meets
  the target. A throughput ratio is batching on over off, and at least 2
  meets it. A memory ratio is VmRSS after over before, and at most 1.10
  meets it.
  """
  lines = ['| target | measured | bound | ratio | result |',
           '|---|---:|---:|---:|---|']
  baseline = _find(rows, '-', 'in-process', 1, 1)
  served = _find(rows, 'off', 'grpc', 1, 1)
  for q, factor, extra_ms in ((50, 2, 1), (99, 3, 2)):
    bound = factor * baseline.percentile_ms(q) + extra_ms
    measured = served.percentile_ms(q)
    lines.append(
        f'| gRPC p{q}, batch 1, 1 client, batching off <= {factor} x '
        f'in-process p{q} + {extra_ms} ms | {measured:.2f} ms | '
        f'{bound:.2f} ms | {measured / bound:.2f} | '
        f'{_verdict(measured <= bound)} |')
  # The maximum reviews per second of any in-process cell of this run.
  ceiling_reviews = max(row.result.throughput * row.batch_size
                        for row in rows if row.protocol == 'in-process')
  for protocol in PROTOCOLS:
    for batch_size in BATCH_SIZES:
      off = _find(rows, 'off', protocol, batch_size, 16).throughput
      on = _find(rows, 'on', protocol, batch_size, 16).throughput
      ratio = on / off if off else float('nan')
      verdict = _verdict(ratio >= 2)
      if ratio < 2 and 2 * off * batch_size > ceiling_reviews:
        # No batching reaches the bound: it is more reviews per second than
        # any in-process call of the model gave.
        verdict += (f': the bound is {2 * off * batch_size:.0f} reviews/s, '
                    f'the best in-process cell {ceiling_reviews:.0f}')
      lines.append(
          f'| {protocol} throughput, batch {batch_size}, 16 clients, '
          f'batching on >= 2 x off | {on:.1f} req/s | {2 * off:.1f} req/s | '
          f'{ratio:.2f} x | {verdict} |')
  for item in memory:
    ratio = item.after_kib / item.before_kib
    lines.append(
        f'| VmRSS growth over {item.requests} requests, batching '
        f'{item.batching} <= 10% | {item.after_kib / 1024:.0f} MiB | '
        f'{1.1 * item.before_kib / 1024:.0f} MiB | {ratio:.3f} | '
        f'{_verdict(item.growth_percent <= 10)} |')
  return lines


def format_report(args, rows, memory, elapsed_s: float) -> str:
  command = ' '.join([os.path.relpath(sys.executable, REPO_ROOT)] +
                     [os.path.relpath(sys.argv[0], REPO_ROOT)] + sys.argv[1:])
  header = [
      f'command: `{command}`',
      f'machine: {platform.platform()}, {os.cpu_count()} CPUs, Python '
      f'{platform.python_version()}, TensorFlow {tf.__version__}; '
      f'model {os.path.relpath(args.model_dir, REPO_ROOT)} version {_latest_version(args.model_dir)}; '
      f'benchmark wall time {elapsed_s:.0f} s',
      f'batching on: {BATCHING_PARAMETERS.strip().replace(chr(10), ", ")}',
      f'session threads, in process and in both servers: intra-op '
      f'{args.intra_op_threads or "TensorFlow default"}, inter-op '
      f'{args.inter_op_threads or "TensorFlow default"}',
  ]
  return '\n'.join(header + [''] + format_results(rows) + [''] +
                   format_memory(memory) + [''] +
                   format_targets(rows, memory)) + '\n'


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------


def _latest_version(model_dir: str) -> int:
  """Find the highest version number, the version the server serves.

  Raises:
    SystemExit: the folder has no version with a saved_model.pb.
  """
  versions = []
  if os.path.isdir(model_dir):
    for name in os.listdir(model_dir):
      if name.isdigit() and os.path.isfile(
          os.path.join(model_dir, name, 'saved_model.pb')):
        versions.append(int(name))
  if not versions:
    raise SystemExit(f'error: no model version with a saved_model.pb under '
                     f'{model_dir}. Run `make run` first, which pushes '
                     'serving_models/amazon_fine_food/1, or pass the base '
                     'path of a pushed model with --model-dir.')
  return max(versions)


def _parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description='Measure the model server\'s latency, throughput and '
      'memory, beside an in-process call of the same signature.')
  parser.add_argument('--model-dir',
                      default=os.path.join(REPO_ROOT, 'serving_models',
                                           'amazon_fine_food'),
                      help='The model\'s base path, <serving_dir>/<name>, '
                      'with numbered version folders; <name> is the served '
                      'model name.')

  parser.add_argument('--requests', type=int, default=1000,
                      help='Timed requests of batch 1 per cell.')
  parser.add_argument('--batch32-requests', type=int, default=300,
                      help='Timed requests of batch 32 per cell.')
  parser.add_argument('--cell-seconds', type=float, default=15,
                      help='Time cap of each cell\'s timed part, in seconds.')
  parser.add_argument('--repeats', type=int, default=3,
                      help='Runs of each cell; the table keeps the run of '
                      'median throughput.')

  parser.add_argument('--memory-requests', type=int, default=10000,
                      help='Requests sent between the two VmRSS readings.')
  parser.add_argument('--memory-clients', type=int, default=16,
                      help='Client threads sending the memory requests.')
  parser.add_argument('--memory-seconds', type=float, default=120,
                      help='Time cap of the memory requests, in seconds.')
  parser.add_argument('--intra-op-threads', type=int, default=0,
                      help='Threads per op, in process and in both servers '
                      '(--tensorflow_intra_op_parallelism); 0 lets '
                      'TensorFlow choose.')
  parser.add_argument('--inter-op-threads', type=int, default=0,
                      help='Threads running independent ops, in process and '
                      'in both servers (--tensorflow_inter_op_parallelism); '
                      '0 lets TensorFlow choose.')
  parser.add_argument('--work-dir', default=None,
                      help='Folder for the server logs and batching file '
                      '(default: a new temporary folder).')

  args = parser.parse_args(argv)
  for name in ('requests', 'batch32_requests', 'repeats', 'memory_requests',
               'memory_clients'):
    if getattr(args, name) < 1:
      parser.error(f'--{name.replace("_", "-")} must be at least 1.')
  for name in ('intra_op_threads', 'inter_op_threads'):
    if getattr(args, name) < 0:
      parser.error(f'--{name.replace("_", "-")} must be 0 or more.')
  return args


def main(argv: Optional[List[str]] = None) -> int:
  logging.basicConfig(level=logging.INFO,
                      format='%(asctime)s %(levelname)s %(message)s')
  args = _parse_args(argv)
  # Before the in-process model loads, while TensorFlow can still size its
  # thread pools.
  if args.intra_op_threads:
    tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
  if args.inter_op_threads:
    tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
  version = _latest_version(args.model_dir)
  version_dir = os.path.join(args.model_dir, str(version))
  work_dir = args.work_dir or tempfile.mkdtemp(prefix='mtlrec-serving-bench-')
  os.makedirs(work_dir, exist_ok=True)
  started = time.time()

  reviews = load_reviews()
  requests_by_size = {size: make_requests(reviews, size, 64)
                      for size in BATCH_SIZES}
  rows = measure_in_process(version_dir, requests_by_size, args)

  memory = []
  with contextlib.ExitStack() as stack:
    servers = {}
    loaded = {}
    for batching in ('off', 'on'):
      servers[batching] = stack.enter_context(
          ServerProcess(args.model_dir, work_dir, batching == 'on',
                        (args.intra_op_threads, args.inter_op_threads)))
      loaded[batching] = servers[batching].rss_kib()
    rows += measure_servers(servers, requests_by_size, args)
    for batching, server in servers.items():
      memory.append(measure_memory(server, batching, loaded[batching],
                                   requests_by_size[1], args))

  print(format_report(args, rows, memory, time.time() - started))
  logging.info('Server logs are in %s', work_dir)
  return 0


if __name__ == '__main__':
  sys.exit(main())
