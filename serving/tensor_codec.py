"""Conversions between TF Serving's request formats and numpy arrays.

REST requests carry JSON in the row format (`instances`) or the columnar
format (`inputs`); gRPC requests carry `TensorProto`s. Both become numpy
arrays typed by the signature's input dtypes, which is what
`SavedModelSession.run` feeds. Outputs go back the same two ways.
"""

import base64
import math
import re
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

# A JSON object with this one key is a binary string value, not named inputs.
B64_KEY = 'b64'
# TF Serving writes string outputs whose name ends with this as b64 objects.
BYTES_SUFFIX = '_bytes'


class ServingError(Exception):
  """A request error with the gRPC status code that TF Serving would return."""

  def __init__(self, code: grpc.StatusCode, message: str):
    super().__init__(message)
    self.code = code
    self.message = message


def invalid_argument(message: str) -> ServingError:
  return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def status_code_from_number(number: int) -> grpc.StatusCode:
  """Map a canonical error number (as in tf.errors) to its gRPC status code."""
  return _STATUS_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


_BRACKETED = re.compile(r'\[([^\[\]]*)\]')
_GRAPH_ERROR_PREFIX = 'Graph execution error:'
# Lines of a runtime error that name graph nodes and where they were built.
_NODE_LINES = ('[[', 'Detected at node', 'File "', 'Node: ')


def op_error_message(message: str) -> str:
  """Shorten a TensorFlow runtime error message for a client.

  Drops the `Graph execution error:` prefix, the `[[{{node ...}}]]` lines
  that name graph nodes and the traceback of where a node was built. A
  failed `tf.debugging.assert_*` keeps its own message and the value that
  failed it: `assertion failed: [k must be at most 100] [Condition x <= y
  ...] [x (Max:0) = ] [200] ...` becomes `k must be at most 100 (got 200)`.
  """
  text = message.strip()
  if text.startswith(_GRAPH_ERROR_PREFIX):
    text = text[len(_GRAPH_ERROR_PREFIX):].strip()
  lines = [line for line in text.splitlines()
           if line.strip() and not line.strip().startswith(_NODE_LINES)]
  text = '\n'.join(lines).strip() or message.strip()
  assertion = next((line.strip() for line in lines
                    if line.strip().startswith('assertion failed:')), None)
  if assertion is None:
    return text
  parts = _BRACKETED.findall(assertion)
  if not parts:
    return text
  result = parts[0]
  for index, part in enumerate(parts[:-1]):
    if part.startswith('x (') and part.rstrip().endswith('='):
      result += f' (got {parts[index + 1]})'
      break
  return result


def dtype_name(dtype_enum: int) -> str:
  """`DT_STRING`-style name of a `types_pb2.DataType` value."""
  try:
    return types_pb2.DataType.Name(dtype_enum)
  except ValueError:
    return str(dtype_enum)


def signature_shape(tensor_info: meta_graph_pb2.TensorInfo) -> Optional[List[int]]:
  """Dims of a signature tensor, -1 where unknown; None for unknown rank."""
  if tensor_info.tensor_shape.unknown_rank:
    return None
  return [dim.size for dim in tensor_info.tensor_shape.dim]


def is_batched(tensor_info: meta_graph_pb2.TensorInfo) -> bool:
  """Return whether the tensor's first dimension is the batch size (-1)."""
  shape = signature_shape(tensor_info)
  return bool(shape) and shape[0] == -1


def check_inputs(signature_name: str,
                 signature: meta_graph_pb2.SignatureDef,
                 names: Sequence[str]) -> None:
  """Raise INVALID_ARGUMENT unless `names` are exactly the signature's inputs."""
  expected = set(signature.inputs)
  missing = sorted(expected - set(names))
  unknown = sorted(set(names) - expected)
  if missing:
    raise invalid_argument(
        f'Missing input(s) {missing} for signature {signature_name!r}; it '
        f'takes {sorted(expected)}.')
  if unknown:
    raise invalid_argument(
        f'Unknown input(s) {unknown} for signature {signature_name!r}; it '
        f'takes {sorted(expected)}.')


def check_shape(name: str, array: np.ndarray,
                tensor_info: meta_graph_pb2.TensorInfo) -> None:
  """Raise INVALID_ARGUMENT when `array` cannot feed the signature tensor."""
  shape = signature_shape(tensor_info)
  if shape is None:
    return
  if array.ndim != len(shape) or any(
      want != -1 and want != got for want, got in zip(shape, array.shape)):
    raise invalid_argument(
        f'Input {name!r} has shape {list(array.shape)} but the signature '
        f'expects {shape} (-1: any size); send a rank-{len(shape)} value.')


# JSON to numpy ----------------------------------------------------------------


def _json_shape(name: str, value: Any) -> List[int]:
  """Return the dims of a nested JSON list; raise when it is ragged."""
  if not isinstance(value, list):
    return []
  if not value:
    return [0]
  inner = [_json_shape(name, item) for item in value]
  if any(shape != inner[0] for shape in inner):
    raise invalid_argument(
        f'Input {name!r} is a ragged list: its items have different lengths '
        f'or nesting. Pad every row to the same length (id lists with "").')
  return [len(value)] + inner[0]


def _flatten(value: Any, out: List[Any]) -> List[Any]:
  if isinstance(value, list):
    for item in value:
      _flatten(item, out)
  else:
    out.append(value)
  return out


def is_b64_object(value: Any) -> bool:
  return isinstance(value, dict) and set(value) == {B64_KEY}


def _string_leaf(name: str, value: Any) -> bytes:
  if isinstance(value, str):
    return value.encode('utf-8')
  if is_b64_object(value) and isinstance(value[B64_KEY], str):
    try:
      return base64.b64decode(value[B64_KEY], validate=True)
    except ValueError as e:
      raise invalid_argument(
          f'Input {name!r} has an invalid base64 value '
          f'{value[B64_KEY][:40]!r}: {e}.') from e
  raise invalid_argument(
      f'Input {name!r} expects strings (or {{"b64": ...}} objects) but got '
      f'{json_type_name(value)} {_preview(value)}.')


def _number_leaf(name: str, value: Any, integer: bool) -> Any:
  # bool is a subclass of int in Python, but not a number in JSON.
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise invalid_argument(
        f'Input {name!r} expects {"integers" if integer else "numbers"} but '
        f'got {json_type_name(value)} {_preview(value)}.')
  if integer and isinstance(value, float):
    if not value.is_integer():
      raise invalid_argument(
          f'Input {name!r} expects integers but got {value!r}.')
    value = int(value)
  return value


def _bool_leaf(name: str, value: Any) -> bool:
  if not isinstance(value, bool):
    raise invalid_argument(
        f'Input {name!r} expects true or false but got '
        f'{json_type_name(value)} {_preview(value)}.')
  return value


def json_type_name(value: Any) -> str:
  if value is None:
    return 'null'
  if isinstance(value, bool):
    return 'a boolean'
  if isinstance(value, (int, float)):
    return 'a number'
  if isinstance(value, str):
    return 'a string'
  if isinstance(value, list):
    return 'a list'
  return 'an object'


def _preview(value: Any) -> str:
  text = repr(value)
  return text if len(text) <= 40 else text[:37] + '...'


def json_to_array(name: str, value: Any,
                  tensor_info: meta_graph_pb2.TensorInfo) -> np.ndarray:
  """Convert one input's JSON value to an array of the signature's dtype.

  Raises:
    ServingError: INVALID_ARGUMENT for ragged lists, wrong types or shapes.
  """
  dtype = tf.dtypes.as_dtype(tensor_info.dtype)
  shape = _json_shape(name, value)
  leaves = _flatten(value, [])
  if dtype == tf.string:
    array = np.empty(len(leaves), dtype=object)
    array[:] = [_string_leaf(name, leaf) for leaf in leaves]
  elif dtype.is_floating or dtype.is_integer:
    converted = [_number_leaf(name, leaf, dtype.is_integer) for leaf in leaves]
    try:
      array = np.array(converted, dtype=dtype.as_numpy_dtype)
    except OverflowError as e:
      raise invalid_argument(
          f'Input {name!r} has a value out of range for {dtype.name}: '
          f'{e}.') from e
  elif dtype == tf.bool:
    array = np.array([_bool_leaf(name, leaf) for leaf in leaves], dtype=bool)
  else:
    raise invalid_argument(
        f'Input {name!r} has dtype {dtype.name}, which the JSON API does not '
        'support; use the gRPC API.')
  array = array.reshape(shape)
  check_shape(name, array, tensor_info)
  return array


def _named_values(payload: Any, signature: meta_graph_pb2.SignatureDef,
                  field: str) -> Optional[Dict[str, Any]]:
  """`payload` as {input name: value}, or None when it is a bare value."""
  if isinstance(payload, dict) and not is_b64_object(payload):
    return payload
  if len(signature.inputs) != 1:
    raise invalid_argument(
        f'"{field}" must name each input in an object because the signature '
        f'takes several inputs: {sorted(signature.inputs)}.')
  return None


def rows_to_arrays(instances: Any, signature_name: str,
                   signature: meta_graph_pb2.SignatureDef
                   ) -> Dict[str, np.ndarray]:
  """Decode the row format: `instances`, one JSON value or object per row."""
  if not isinstance(instances, list):
    raise invalid_argument(
        f'"instances" must be a list of rows, got {json_type_name(instances)}.')
  if not instances:
    raise invalid_argument('"instances" is empty; send at least one row.')
  named = [_named_values(row, signature, 'instances') for row in instances]
  if all(row is None for row in named):
    (input_name,) = signature.inputs
    return {input_name: json_to_array(input_name, instances,
                                      signature.inputs[input_name])}
  if any(row is None for row in named):
    raise invalid_argument('"instances" mixes objects and bare values; use '
                           'one form for every row.')
  keys = set(named[0])
  for index, row in enumerate(named):
    if set(row) != keys:
      raise invalid_argument(
          f'Row {index} of "instances" has inputs {sorted(row)} but row 0 '
          f'has {sorted(keys)}; every row needs the same inputs.')
  check_inputs(signature_name, signature, sorted(keys))
  return {name: json_to_array(name, [row[name] for row in named],
                              signature.inputs[name])
          for name in sorted(keys)}


def columns_to_arrays(inputs: Any, signature_name: str,
                      signature: meta_graph_pb2.SignatureDef
                      ) -> Dict[str, np.ndarray]:
  """Decode the columnar format: `inputs`, one JSON value per input."""
  named = _named_values(inputs, signature, 'inputs')
  if named is None:
    (input_name,) = signature.inputs
    named = {input_name: inputs}
  check_inputs(signature_name, signature, sorted(named))
  arrays = {name: json_to_array(name, value, signature.inputs[name])
            for name, value in named.items()}
  check_batch_sizes(arrays, signature)
  return arrays


def check_batch_sizes(arrays: Mapping[str, np.ndarray],
                      signature: meta_graph_pb2.SignatureDef) -> None:
  """Raise INVALID_ARGUMENT unless batched inputs agree on the batch size."""
  sizes = {name: array.shape[0] for name, array in arrays.items()
           if is_batched(signature.inputs[name]) and array.ndim}
  if len(set(sizes.values())) > 1:
    raise invalid_argument(
        f'Inputs have different batch sizes {dict(sorted(sizes.items()))}; '
        'every input needs one entry per example.')


# numpy to JSON ----------------------------------------------------------------


def _float_to_json(value: np.floating) -> float:
  """Return the shortest decimal that parses back to the same float."""
  if not math.isfinite(value):
    return float(value)
  # numpy's str() of a float32 is its shortest round-tripping decimal.
  shortest = float(str(value))
  # Parsing a decimal to float64 first and rounding to float32 after can
  # differ from direct rounding near a tie; fall back to the exact value.
  if type(value)(shortest) == value:
    return shortest
  return float(value)


def _leaf_to_json(value: Any, as_b64: bool) -> Any:
  if isinstance(value, bytes):
    if not as_b64:
      try:
        return value.decode('utf-8')
      except UnicodeDecodeError:
        pass
    return {B64_KEY: base64.b64encode(value).decode('ascii')}
  if isinstance(value, np.floating):
    return _float_to_json(value)
  if isinstance(value, np.bool_):
    return bool(value)
  if isinstance(value, np.integer):
    return int(value)
  if isinstance(value, str):
    return value
  raise invalid_argument(f'Output value {value!r} has no JSON form.')


def _nest(flat: List[Any], shape: Sequence[int], offset: int = 0) -> Any:
  if not shape:
    return flat[offset]
  step = int(np.prod(shape[1:], dtype=np.int64))
  return [_nest(flat, shape[1:], offset + i * step) for i in range(shape[0])]


def array_to_json(name: str, array: np.ndarray) -> Any:
  """Convert `array` to a nested JSON list (or a scalar)."""
  as_b64 = name.endswith(BYTES_SUFFIX)
  flat = [_leaf_to_json(value, as_b64) for value in array.ravel()]
  return _nest(flat, array.shape)


def arrays_to_rows(outputs: Mapping[str, np.ndarray]) -> List[Any]:
  """Encode outputs in the row format: a value or object per example."""
  sizes = {name: (array.shape[0] if array.ndim else None)
           for name, array in outputs.items()}
  if len(set(sizes.values())) != 1 or None in sizes.values():
    raise invalid_argument(
        f'Outputs have different or no batch sizes {sizes}, so they cannot '
        'be split into rows; send the request in the columnar format '
        '("inputs").')
  converted = {name: array_to_json(name, array)
               for name, array in outputs.items()}
  if len(converted) == 1:
    return next(iter(converted.values()))
  (size,) = set(sizes.values())
  return [{name: values[row] for name, values in converted.items()}
          for row in range(size)]


def arrays_to_columns(outputs: Mapping[str, np.ndarray]) -> Any:
  """Encode outputs in the columnar format: a bare value or an object."""
  converted = {name: array_to_json(name, array)
               for name, array in outputs.items()}
  if len(converted) == 1:
    return next(iter(converted.values()))
  return converted


# TensorProto ------------------------------------------------------------------

# Dtypes whose values travel in `tensor_content` as raw little-endian bytes,
# the encoding that `tf.make_tensor_proto` uses for them.
_CONTENT_DTYPES = {
    np.dtype(np.float32): types_pb2.DT_FLOAT,
    np.dtype(np.float64): types_pb2.DT_DOUBLE,
    np.dtype(np.int32): types_pb2.DT_INT32,
    np.dtype(np.int64): types_pb2.DT_INT64,
}
_NUMPY_DTYPES = {enum: dtype for dtype, enum in _CONTENT_DTYPES.items()}


def array_to_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
  """Encode a numpy array as the TensorProto `tf.make_tensor_proto` writes.

  Strings (object arrays of bytes) and the common numeric dtypes are built
  directly, because `tf.make_tensor_proto` costs more Python time per
  tensor than a small request's whole decoding. Any other array goes
  through `tf.make_tensor_proto`.
  """
  array = np.asarray(array)
  if array.dtype == object and all(
      isinstance(value, bytes) for value in array.flat):
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
    proto.string_val.extend(array.flat)
  elif (array.dtype in _CONTENT_DTYPES and array.size > 1 and
        sys.byteorder == 'little'):
    # A single value goes in the repeated value field, as TensorFlow puts it.
    proto = tensor_pb2.TensorProto(dtype=_CONTENT_DTYPES[array.dtype])
    proto.tensor_content = np.ascontiguousarray(array).tobytes()
  else:
    return tf.make_tensor_proto(array)
  dims = proto.tensor_shape.dim
  for size in array.shape:
    dims.add().size = size
  return proto


def tensor_proto_to_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
  """Decode a TensorProto to the array `tf.make_ndarray` returns.

  Full string lists and `tensor_content` of the common numeric dtypes are
  read directly. Everything else, such as repeated value fields or a single
  value that fills the shape, goes through `tf.make_ndarray`.
  """
  shape = [dim.size for dim in proto.tensor_shape.dim]
  count = int(np.prod(shape)) if shape else 1
  if proto.dtype == types_pb2.DT_STRING and len(proto.string_val) == count:
    array = np.empty(count, dtype=object)
    array[:] = list(proto.string_val)
    return array.reshape(shape)
  dtype = _NUMPY_DTYPES.get(proto.dtype)
  if (dtype is not None and sys.byteorder == 'little' and
      len(proto.tensor_content) == count * dtype.itemsize):
    return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(
        shape).copy()
  return tf.make_ndarray(proto)



def tensor_proto_to_array(name: str, proto: tensor_pb2.TensorProto,
                          tensor_info: meta_graph_pb2.TensorInfo
                          ) -> np.ndarray:
  """Decode one gRPC input and check it against the signature tensor."""
  if proto.dtype != tensor_info.dtype:
    raise invalid_argument(
        f'Input {name!r} has dtype {dtype_name(proto.dtype)} but the '
        f'signature expects {dtype_name(tensor_info.dtype)}.')
  try:
    array = tensor_proto_to_ndarray(proto)
  except (TypeError, ValueError) as e:
    raise invalid_argument(f'Input {name!r} is not a valid TensorProto: '
                           f'{e}.') from e
  check_shape(name, array, tensor_info)
  return array


def tensor_protos_to_arrays(protos: Mapping[str, Any], signature_name: str,
                            signature: meta_graph_pb2.SignatureDef
                            ) -> Dict[str, np.ndarray]:
  """Decode a PredictRequest's inputs for `signature`."""
  check_inputs(signature_name, signature, list(protos))
  arrays = {name: tensor_proto_to_array(name, proto, signature.inputs[name])
            for name, proto in protos.items()}
  check_batch_sizes(arrays, signature)
  return arrays
