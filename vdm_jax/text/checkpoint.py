"""Reading Hugging Face model directories: config.json and (possibly sharded) safetensors.

Only safetensors are read, never pickled PyTorch `.bin` files. Tensors are read lazily, one at a
time, as numpy arrays (bfloat16 through `ml_dtypes`), so that only the encoder's weights of a
full encoder-decoder checkpoint are ever loaded.
"""
import json
import os

import numpy as np
from safetensors import safe_open

INDEX_FILE = "model.safetensors.index.json"


def _listing(directory):
  names = sorted(os.listdir(directory))
  shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
  return shown or "nothing"


def require_directory(path, *, what):
  """Raises FileNotFoundError unless `path` is an existing directory; returns its absolute path."""
  if not path:
    raise FileNotFoundError(f"{what}: no directory given (text.path is empty)")
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"{what}: the directory {path!r} does not exist; set text.path to a "
                            "Hugging Face model directory (config.json + *.safetensors)")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{what}: {path!r} is a file, not a directory; set text.path to the "
                            "directory that holds config.json and *.safetensors")
  return path


def read_json(directory, name, *, what):
  """Loads `directory/name` as JSON, or raises FileNotFoundError naming the missing file."""
  path = os.path.join(directory, name)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what}: {directory!r} has no {name} (it holds: "
                            f"{_listing(directory)})")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


class SafetensorsCheckpoint:
  """The tensors of a Hugging Face directory: `model.safetensors`, or shards listed by
  `model.safetensors.index.json`, or else every `*.safetensors` file in the directory.

  `get(name)` reads one tensor as a numpy array; `shape(name)` reads only its header.
  """

  def __init__(self, directory, *, what="text encoder checkpoint"):
    self.directory = require_directory(directory, what=what)
    self._what = what
    self._handles = {}
    self._file_of = self._weight_map()

  def _weight_map(self):
    index_path = os.path.join(self.directory, INDEX_FILE)
    if os.path.isfile(index_path):
      with open(index_path, encoding="utf-8") as f:
        weight_map = json.load(f).get("weight_map")
      if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{self._what}: {index_path} has no 'weight_map'; it is not a "
                         "safetensors shard index")
      for shard in sorted(set(weight_map.values())):
        if not os.path.isfile(os.path.join(self.directory, shard)):
          raise FileNotFoundError(f"{self._what}: shard {shard!r} named by {INDEX_FILE} is "
                                  f"missing from {self.directory!r}; copy every shard")
      return dict(weight_map)
    files = sorted(n for n in os.listdir(self.directory) if n.endswith(".safetensors"))
    if not files:
      raise FileNotFoundError(
          f"{self._what}: {self.directory!r} holds no *.safetensors file (it holds: "
          f"{_listing(self.directory)}). Save the model with "
          "save_pretrained(safe_serialization=True); pickled .bin weights are never read")
    weight_map = {}
    for name in files:
      for key in self._handle(name).keys():
        weight_map.setdefault(key, name)
    return weight_map

  def _handle(self, file_name):
    if file_name not in self._handles:
      self._handles[file_name] = safe_open(os.path.join(self.directory, file_name),
                                           framework="numpy")
    return self._handles[file_name]

  def keys(self):
    return list(self._file_of)

  def __contains__(self, name):
    return name in self._file_of

  def _check(self, name):
    if name not in self._file_of:
      raise KeyError(f"{self._what}: tensor {name!r} is not in the checkpoint at "
                     f"{self.directory!r}; is it a checkpoint of another model?")

  def shape(self, name):
    self._check(name)
    return tuple(self._handle(self._file_of[name]).get_slice(name).get_shape())

  def get(self, name):
    """Reads tensor `name` as a numpy array (its stored dtype)."""
    self._check(name)
    return np.asarray(self._handle(self._file_of[name]).get_tensor(name))

  def close(self):
    self._handles.clear()
