"""The file format of exported weights, readable without building a model.

A stage directory holds `params.safetensors` (EMA parameters, one float32 tensor per parameter
path) and `config.json`; the cascade directory above it holds `manifest.json` with the sha256 of
every file (see `vdm_jax/export.py`, which writes and loads whole cascades). This module only
reads and checks those files: plain numpy, no model, no sampler, so that the training loop
(`train.init_from=<an exported stage>`) can start from shipped weights.
"""
import json
import os
from typing import Any, Mapping

import jax
import numpy as np

from vdm_jax import errors
from vdm_jax.integrity import sha256_file

FORMAT = "vdm_jax.exported_cascade"
VERSION = 1
MANIFEST = "manifest.json"
PARAMS = "params.safetensors"
CONFIG = "config.json"
FILE_KEYS = ("params", "config", "stats")   # the files a manifest entry may list


class IntegrityError(errors.UserError, ValueError):
  """An exported file is missing, or its bytes are not the ones the manifest records."""


def flatten_params(params: Any) -> dict[str, np.ndarray]:
  """Nested parameter dicts -> {'a/b/c': float32 numpy array} (keys sorted)."""
  out = {}

  def walk(tree, prefix):
    if isinstance(tree, Mapping):
      for k in sorted(tree):
        walk(tree[k], f"{prefix}{k}/")
    else:
      out[prefix.rstrip("/")] = np.asarray(jax.device_get(tree), np.float32)
  walk(params, "")
  return out


def unflatten_params(flat: Mapping[str, np.ndarray]) -> dict:
  """{'a/b/c': array} -> nested dicts."""
  tree: dict = {}
  for key, value in flat.items():
    node = tree
    *path, last = key.split("/")
    for part in path:
      node = node.setdefault(part, {})
    node[last] = value
  return tree


def read_json(path: str, what: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError as e:
    raise IntegrityError(f"{what} {path} is missing.") from e
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise IntegrityError(f"{what} {path} is unreadable or not JSON ({e}).") from e


def write_json(path: str, payload: dict) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def entries(manifest: dict) -> dict:
  """{label: stage entry} of the stages and the distilled extras ('base' / 'base distilled')."""
  out = {n: e for n, e in manifest.get("stages", {}).items()}
  out.update({f"{n} distilled": e for n, e in manifest.get("distilled", {}).items()})
  out.update({f"{n} autoencoder": e for n, e in manifest.get("autoencoders", {}).items()})
  return out


def entry_files(entry: dict) -> list:
  """The files of one manifest entry (relative paths): parameters, config, and an
  autoencoder's latent statistics."""
  return [entry[k] for k in FILE_KEYS if k in entry]


def read_manifest(directory: str) -> dict:
  """The manifest of an exported cascade, checked for format and version."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"No exported cascade at {directory}.")
  manifest = read_json(os.path.join(directory, MANIFEST), "The manifest")
  if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
    raise IntegrityError(f"{directory}/{MANIFEST} is not a {FORMAT} manifest of version "
                         f"{VERSION} (format {manifest.get('format')!r}, version "
                         f"{manifest.get('version')!r}).")
  return manifest


def verify_file(directory: str, manifest: dict, rel: str) -> str:
  """The absolute path of `rel` after checking its sha256 against the manifest."""
  want = manifest.get("sha256", {}).get(rel)
  path = os.path.join(directory, rel)
  if want is None:
    raise IntegrityError(f"{path} is not listed with a sha256 in {directory}/{MANIFEST}.")
  if not os.path.isfile(path):
    raise IntegrityError(f"{path} is missing (listed in {directory}/{MANIFEST}).")
  got = sha256_file(path)
  if got != want:
    raise IntegrityError(
        f"{path} is corrupt: its sha256 is {got}, the manifest records {want}. The file was "
        "changed or damaged after export; restore it (e.g. reinstall the package, or git "
        "checkout the file) or export the stage again.")
  return path


def verify(directory: str) -> dict:
  """Checks every file of an exported cascade; returns its manifest."""
  manifest = read_manifest(directory)
  for entry in entries(manifest).values():
    for rel in entry_files(entry):
      verify_file(directory, manifest, rel)
  return manifest


def load_params(path: str) -> dict:
  from safetensors import SafetensorError  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  try:
    return load_file(path)
  except (SafetensorError, OSError, ValueError) as e:
    raise IntegrityError(f"{path} is not a readable safetensors file ({e}).") from e


def load_stage_params(stage_dir: str) -> tuple[dict, int, dict]:
  """(parameters as numpy arrays, step, config dict) of one exported stage directory (e.g.
  `vdm_jax/assets/demo_cascade/base`): its files verified against the manifest of the
  cascade it belongs to, first. What `train.init_from=<exported stage>` starts from."""
  stage_dir = os.path.normpath(os.path.abspath(stage_dir))
  root, name = os.path.dirname(stage_dir), os.path.basename(stage_dir)
  manifest = read_manifest(root)
  entry = next((e for e in entries(manifest).values()
                if os.path.dirname(e["params"]) == name), None)
  if entry is None:
    raise IntegrityError(f"{stage_dir} is not a stage of the exported cascade {root} (its "
                         f"{MANIFEST} lists {sorted(entries(manifest))}).")
  config = read_json(verify_file(root, manifest, entry["config"]), "The stage config")
  flat = load_params(verify_file(root, manifest, entry["params"]))
  return unflatten_params(flat), int(entry.get("step", 0)), config


def is_exported_stage(path: str) -> bool:
  """Whether `path` is a stage directory of an exported cascade (not a training workdir)."""
  path = os.path.normpath(os.path.abspath(path))
  return (os.path.isfile(os.path.join(path, PARAMS)) and
          os.path.isfile(os.path.join(os.path.dirname(path), MANIFEST)))
