"""Batches concurrent predict requests into one session run.

Requests for the same model version and signature, with the same inputs,
dtypes and output keys, wait in one queue. A batch closes when a batch
thread is free and the queue contains `max_batch_size` examples or its oldest
request has waited `batch_timeout_micros`. The inputs are concatenated along the batch dimension (rank-2
string inputs, such as id lists padded with '', are padded to a common
width with b''), the signature runs once, and each request gets its rows of
every output back. Requests with an unbatched input (a scalar such as K)
run on their own.
"""

import collections
import dataclasses
import logging
import os
import re
import threading
import time
from typing import Deque, Dict, List, Mapping, Optional, Tuple

import grpc
import numpy as np
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory
from google.protobuf import text_format

from serving import tensor_codec
from serving.model_manager import ServableVersion
from serving.monitoring import ServerMetrics
from serving.tensor_codec import ServingError

# Seconds a queue without requests is kept before it is dropped.
_QUEUE_IDLE_SECONDS = 5.0


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
  """The `BatchingParameters` fields this server uses, with TF Serving's defaults."""
  max_batch_size: int = 1000
  batch_timeout_micros: int = 0
  max_enqueued_batches: int = 10
  num_batch_threads: int = os.cpu_count() or 1


def _batching_parameters_class():
  """`BatchingParameters`, from TF Serving's protos or declared here.

  tensorflow-serving-api 2.19 ships no `session_bundle_config_pb2`, so the
  fields this server reads are declared with TF Serving's names and types
  (`google.protobuf.Int64Value` wrappers, written `{ value: N }`). Other
  fields of a TF Serving batching file are ignored, and
  `load_batching_parameters` logs a warning for each.
  """
  try:
    # pylint: disable=g-import-not-at-top
    from tensorflow_serving.servables.tensorflow import session_bundle_config_pb2
    return session_bundle_config_pb2.BatchingParameters
  except ImportError:
    pass
  # pylint: disable=g-import-not-at-top,unused-import
  from google.protobuf import wrappers_pb2  # noqa: F401  Adds Int64Value.
  pool = descriptor_pool.Default()
  try:
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName('mtlrec.serving.BatchingParameters'))
  except KeyError:
    pass
  file_proto = descriptor_pb2.FileDescriptorProto(
      name='mtlrec/batching_parameters.proto', package='mtlrec.serving',
      syntax='proto3', dependency=['google/protobuf/wrappers.proto'])
  message = file_proto.message_type.add(name='BatchingParameters')
  for number, name in enumerate(['max_batch_size', 'batch_timeout_micros',
                                 'max_enqueued_batches',
                                 'num_batch_threads'], start=1):
    message.field.add(name=name, number=number, label=1, type=11,
                      type_name='.google.protobuf.Int64Value')
  pool.Add(file_proto)
  return message_factory.GetMessageClass(
      pool.FindMessageTypeByName('mtlrec.serving.BatchingParameters'))


def _top_level_fields(text: str) -> set:
  """Return the field names set at the top level of a text proto."""
  names, depth = set(), 0
  for line in text.splitlines():
    line = line.split('#', 1)[0]
    match = re.match(r'\s*([A-Za-z_]\w*)\s*[:{]', line)
    if match and depth == 0:
      names.add(match.group(1))
    depth += line.count('{') - line.count('}')
  return names


def load_batching_parameters(path: Optional[str]) -> BatchingParameters:
  """Read `--batching_parameters_file`; TF Serving's defaults without one.

  Raises:
    ValueError: the file does not parse or sets a value below 1.
  """
  if not path:
    return BatchingParameters()
  with open(path, encoding='utf-8') as f:
    text = f.read()
  proto = _batching_parameters_class()()
  used = sorted(field.name for field in dataclasses.fields(BatchingParameters))
  for name in sorted(_top_level_fields(text) - set(used)):
    logging.warning('Batching parameter %r in %s is ignored: this server '
                    'reads only %s. Check the spelling if you meant one of '
                    'them.', name, path, used)
  try:
    text_format.Parse(text, proto, allow_unknown_field=True)
  except text_format.ParseError as e:
    raise ValueError(f'Invalid BatchingParameters text proto in {path}: {e}. '
                     'Expected e.g. max_batch_size { value: 32 }.') from e
  values = {}
  for field in dataclasses.fields(BatchingParameters):
    if proto.HasField(field.name):
      values[field.name] = getattr(proto, field.name).value
  minimum = {'batch_timeout_micros': 0}
  for name, value in values.items():
    if value < minimum.get(name, 1):
      raise ValueError(f'{name} is {value} in {path}; it must be at least '
                       f'{minimum.get(name, 1)}.')
  parameters = BatchingParameters(**values)
  logging.info('Batching parameters from %s: %s', path, parameters)
  return parameters


def pad_to_width(arrays: List[np.ndarray]) -> List[np.ndarray]:
  """Pad rank-2 string arrays with b'' to the widest one's width."""
  width = max(array.shape[1] for array in arrays)
  padded = []
  for array in arrays:
    if array.shape[1] < width:
      filler = np.full((array.shape[0], width - array.shape[1]), b'',
                       dtype=object)
      array = np.concatenate([array, filler], axis=1)
    padded.append(array)
  return padded


def concatenate_inputs(requests: List[Mapping[str, np.ndarray]]
                       ) -> Dict[str, np.ndarray]:
  """Concatenate the requests' inputs along the batch dimension, in order."""
  merged = {}
  for name in requests[0]:
    arrays = [request[name] for request in requests]
    if arrays[0].dtype == object and arrays[0].ndim == 2:
      arrays = pad_to_width(arrays)
    merged[name] = np.concatenate(arrays, axis=0)
  return merged


def split_outputs(outputs: Mapping[str, np.ndarray],
                  sizes: List[int]) -> List[Dict[str, np.ndarray]]:
  """Split batched outputs back into per-request rows by batch sizes."""
  total = sum(sizes)
  for name, array in outputs.items():
    if array.ndim == 0 or array.shape[0] != total:
      raise ServingError(
          grpc.StatusCode.INTERNAL,
          f'Output {name!r} has shape {list(array.shape)}, not a batch of '
          f'{total}, so a batch cannot be split; turn batching off for this '
          'model.')
  bounds = np.cumsum([0] + sizes)
  return [{name: array[start:end] for name, array in outputs.items()}
          for start, end in zip(bounds[:-1], bounds[1:])]


class _Task:
  """Request waiting in a queue, with its result once the batch ran."""

  def __init__(self, inputs: Dict[str, np.ndarray], size: int):
    self.inputs = inputs
    self.size = size
    self.enqueued = time.monotonic()
    self.done = threading.Event()
    self.outputs: Optional[Dict[str, np.ndarray]] = None
    self.error: Optional[BaseException] = None


class _BatchQueue:
  """Requests compatible with one another; the open batch is its head."""

  def __init__(self, key: Tuple, servable: ServableVersion,
               signature_name: str, output_keys: Optional[List[str]]):
    self.key = key
    self.servable = servable
    self.signature_name = signature_name
    self.output_keys = output_keys
    self.pending: Deque[_Task] = collections.deque()
    self.pending_size = 0
    self.last_active = time.monotonic()

  def take(self, max_batch_size: int) -> List[_Task]:
    """Remove and return the oldest requests that fit in one batch."""
    batch, size = [], 0
    while self.pending and size + self.pending[0].size <= max_batch_size:
      task = self.pending.popleft()
      batch.append(task)
      size += task.size
    self.pending_size -= size
    self.last_active = time.monotonic()
    return batch


class BatchScheduler:
  """Routes predict calls into per-servable queues run by shared threads.

  As in TF Serving's shared batch scheduler, a batch closes only when a
  batch thread is free to run it: when its queue contains `max_batch_size`
  examples, or when its oldest request has waited `batch_timeout_micros`.
  While every batch thread is busy, the open batch keeps taking requests,
  so batches grow with the load instead of waiting, already closed, for a
  thread. A free thread takes the queue whose oldest request is oldest.
  """

  def __init__(self, parameters: BatchingParameters,
               metrics: Optional[ServerMetrics] = None):
    self.parameters = parameters
    self.metrics = metrics or ServerMetrics()
    self._condition = threading.Condition()
    self._queues: Dict[Tuple, _BatchQueue] = {}
    self._stopping = False
    self._threads = [
        threading.Thread(target=self._work, name=f'batch-run_{index}',
                         daemon=True)
        for index in range(max(1, parameters.num_batch_threads))]
    for thread in self._threads:
      thread.start()

  @staticmethod
  def _batch_size(signature, inputs: Mapping[str, np.ndarray]
                  ) -> Optional[int]:
    """Return the request's batch size, or None when it cannot be batched."""
    sizes = set()
    for name, array in inputs.items():
      if not tensor_codec.is_batched(signature.inputs[name]) or not array.ndim:
        return None
      sizes.add(array.shape[0])
    return sizes.pop() if len(sizes) == 1 else None

  @staticmethod
  def _queue_key(servable, signature_name, inputs, output_keys) -> Tuple:
    shapes = []
    for name, array in sorted(inputs.items()):
      # String id lists of any width share a queue; they are padded.
      trailing = ('padded',) if (
          array.dtype == object and array.ndim == 2) else array.shape[1:]
      shapes.append((name, array.dtype.str, trailing))
    return (id(servable), signature_name, tuple(output_keys or ()),
            tuple(shapes))

  def run(self, servable: ServableVersion, signature_name: str,
          inputs: Dict[str, np.ndarray],
          output_keys: Optional[List[str]] = None) -> Dict[str, np.ndarray]:
    """Run `inputs` on the servable inside a batch, and return its outputs.

    Raises:
      ServingError: INVALID_ARGUMENT when the request is bigger than
        max_batch_size, UNAVAILABLE when the queue is full or the server
        stops, or the session's error.
    """
    signature = servable.signature(signature_name)
    size = self._batch_size(signature, inputs)
    if size is None or size == 0:
      return servable.run(signature_name, inputs, output_keys)
    if size > self.parameters.max_batch_size:
      raise tensor_codec.invalid_argument(
          f'The request has {size} examples, more than max_batch_size '
          f'{self.parameters.max_batch_size}; split it into smaller '
          'requests.')
    task = _Task(inputs, size)
    key = self._queue_key(servable, signature_name, inputs, output_keys)
    max_enqueued = (self.parameters.max_enqueued_batches *
                    self.parameters.max_batch_size)
    with self._condition:
      if self._stopping:
        raise ServingError(grpc.StatusCode.UNAVAILABLE,
                           'The server is stopping; retry on another '
                           'replica.')
      queue = self._queues.get(key)
      if queue is None:
        queue = _BatchQueue(key, servable, signature_name, output_keys)
        self._queues[key] = queue
      if queue.pending_size + size > max_enqueued:
        raise ServingError(
            grpc.StatusCode.UNAVAILABLE,
            f'The batching queue of model {servable.name!r} is full '
            f'({queue.pending_size} examples waiting); retry later or raise '
            'max_enqueued_batches.')
      queue.pending.append(task)
      queue.pending_size += size
      self._condition.notify()
    task.done.wait()
    if task.error is not None:
      raise task.error
    return task.outputs

  def _next_batch(self) -> Optional[Tuple[_BatchQueue, List[_Task]]]:
    """Wait for a batch that may close now; None once stopped and drained."""
    parameters = self.parameters
    timeout = parameters.batch_timeout_micros / 1e6
    with self._condition:
      while True:
        now = time.monotonic()
        ready, wait = None, _QUEUE_IDLE_SECONDS
        for queue in self._queues.values():
          if not queue.pending:
            continue
          oldest = queue.pending[0].enqueued
          if (self._stopping or now >= oldest + timeout or
              queue.pending_size >= parameters.max_batch_size):
            if ready is None or oldest < ready.pending[0].enqueued:
              ready = queue
          else:
            wait = min(wait, oldest + timeout - now)
        if ready is not None:
          batch = ready.take(parameters.max_batch_size)
          if any(queue.pending for queue in self._queues.values()):
            # Another thread may take what is left.
            self._condition.notify()
          return ready, batch
        if self._stopping:
          return None
        self._retire_idle_queues(now)
        self._condition.wait(wait)

  def _retire_idle_queues(self, now: float) -> None:
    """Drop idle queues, so an unloaded version's servable is released."""
    idle = [key for key, queue in self._queues.items()
            if not queue.pending and
            now - queue.last_active > _QUEUE_IDLE_SECONDS]
    for key in idle:
      del self._queues[key]

  def _work(self) -> None:
    while True:
      next_batch = self._next_batch()
      if next_batch is None:
        return
      self._run_batch(*next_batch)

  def _run_batch(self, queue: _BatchQueue, batch: List[_Task]) -> None:
    try:
      inputs = concatenate_inputs([task.inputs for task in batch])
      outputs = queue.servable.run(queue.signature_name, inputs,
                                   queue.output_keys)
      self.metrics.batch_size.observe(
          {'model_name': queue.servable.name},
          sum(task.size for task in batch))
      for task, task_outputs in zip(
          batch, split_outputs(outputs, [task.size for task in batch])):
        task.outputs = task_outputs
    except Exception as e:  # pylint: disable=broad-except
      # Every caller in the batch gets the error; the callers log it.
      for task in batch:
        task.error = e
    finally:
      for task in batch:
        task.done.set()

  def stop(self) -> None:
    """Run the requests already queued, then stop the batch threads."""
    with self._condition:
      self._stopping = True
      self._condition.notify_all()
    for thread in self._threads:
      thread.join()
