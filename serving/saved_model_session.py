"""Runs a SavedModel signature the way TensorFlow Serving does.

TF Serving loads the MetaGraphDef tagged `serve` into a `tf.compat.v1`
session. It runs each request by feeding and fetching the tensor names that
the signature def lists, so no Python object of the exporting program is used.
"""

import threading
from typing import Callable, Dict, Mapping, Optional, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  Registers the tf-text ops of the graph.


class SavedModelSession:
  """A loaded SavedModel and a session to run its signatures."""

  def __init__(self, export_dir: str, tags=('serve',),
               config: Optional[tf.compat.v1.ConfigProto] = None):
    self._graph = tf.Graph()
    self._session = tf.compat.v1.Session(graph=self._graph, config=config)
    with self._graph.as_default():
      self.meta_graph = tf.compat.v1.saved_model.loader.load(
          self._session, list(tags), export_dir)
    self.signatures = dict(self.meta_graph.signature_def)
    self._callables: Dict[Tuple, Callable] = {}
    self._lock = threading.Lock()

  def run(self, inputs: Mapping[str, np.ndarray],
          signature_name: str = 'serving_default',
          output_keys: Optional[list] = None) -> Dict[str, np.ndarray]:
    """Feed `inputs` by the signature's input names; return its outputs.

    Raises:
      KeyError: the signature, an input or an output key is unknown.
    """
    if signature_name not in self.signatures:
      raise KeyError(f'Signature {signature_name!r} not found; the model has '
                     f'{sorted(self.signatures)}.')
    signature = self.signatures[signature_name]
    missing = sorted(set(signature.inputs) - set(inputs))
    unknown = sorted(set(inputs) - set(signature.inputs))
    if missing or unknown:
      raise KeyError(f'Signature {signature_name!r} expects inputs '
                     f'{sorted(signature.inputs)}; missing {missing}, '
                     f'unknown {unknown}.')
    names = sorted(inputs)
    keys = sorted(output_keys or signature.outputs)
    run = self._callable(signature_name, tuple(names), tuple(keys))
    # A callable feeds values as they are, while `Session.run` casts each
    # value to its placeholder's dtype. Cast here as `Session.run` does.
    feeds = []
    for name in names:
      dtype = tf.dtypes.as_dtype(signature.inputs[name].dtype).as_numpy_dtype
      value = inputs[name]
      if not (isinstance(value, np.ndarray) and value.dtype == dtype):
        value = np.asarray(value, dtype=dtype)
      feeds.append(value)
    values = run(*feeds)
    return dict(zip(keys, values))

  def _callable(self, signature_name: str, names: Tuple[str, ...],
                keys: Tuple[str, ...]) -> Callable:
    """Return the cached session callable that feeds `names`, fetches `keys`.

    `Session.run` with a feed dict resolves every tensor name and builds its
    fetch handlers on each call. A callable does that once, which saves
    Python time on every small batch.

    Raises:
      KeyError: an output key is unknown.
    """
    cache_key = (signature_name, names, keys)
    run = self._callables.get(cache_key)
    if run is None:
      signature = self.signatures[signature_name]
      unknown = sorted(set(keys) - set(signature.outputs))
      if unknown:
        raise KeyError(f'Signature {signature_name!r} has no outputs '
                       f'{unknown}; it has {sorted(signature.outputs)}.')
      with self._lock:
        run = self._session.make_callable(
            [signature.outputs[key].name for key in keys],
            [signature.inputs[name].name for name in names])
        self._callables[cache_key] = run
    return run

  def op_types(self) -> set:
    """Every op type in the graph and its function library."""
    graph_def = self.meta_graph.graph_def
    types = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
      types.update(node.op for node in function.node_def)
    return types

  def close(self) -> None:
    self._session.close()
