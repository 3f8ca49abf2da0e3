"""Checksums: of files (sha256, and a manifest of a directory's files) and of array values.

Every file vdm_jax writes to be read back later is verifiable: checkpoint steps record a file
manifest (`write_file_manifest` / `verify_file_manifest`) and the digests of their arrays
(`tree_digests`, two 32-bit sums of the raw bits, exact and independent of the sharding, so a
restored array is checked against the value it had when saved); exported cascades and the
text-embedding store record sha256s (exported files with `sha256_file`; the store, which
cannot hold its own file's hash, the sha256 of each tensor and of its caption index in its
metadata).
"""
import hashlib
import json
import os
from typing import Any, Mapping, Optional

import jax
from jax.experimental import multihost_utils
import numpy as np

FILE_MANIFEST = "vdm_jax_files.json"     # sizes and sha256 of the files of a directory
_HASH_CHUNK = 1 << 22


def sha256_file(path: str) -> str:
  """The hex sha256 of a file's bytes (read in chunks)."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
      h.update(chunk)
  return h.hexdigest()


def _words(x: np.ndarray, index: tuple, global_shape: tuple):
  """The raw bits of shard `x` as uint32 words, with their index and global shape: one word
  per element, or two for 64-bit elements (the last dimension doubled, so that row-major word
  positions stay global positions)."""
  if x.ndim == 0:
    x, index, global_shape = x.reshape(1), (slice(0, 1),), (1,)
  x = np.ascontiguousarray(x)
  if x.dtype == bool:
    return x.astype(np.uint32), index, tuple(global_shape)
  size = x.dtype.itemsize
  if size == 8:
    last = index[-1].start or 0
    index = tuple(index[:-1]) + (slice(2 * last, 2 * last + 2 * x.shape[-1]),)
    global_shape = tuple(global_shape[:-1]) + (2 * global_shape[-1],)
    return x.view(np.uint32), index, global_shape
  words = x.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[size]).astype(np.uint32, copy=False)
  return words, index, tuple(global_shape)


_MIX = 0x9E3779B1      # the weight of word position p is (_MIX * p + 1) mod 2**32
_MOD = 1 << 32


def _shard_sums(data: np.ndarray, index: tuple, global_shape: tuple) -> np.ndarray:
  """[s1, s2] mod 2**32 of one shard (`index`: its slices in the global array), so that the
  shards of an array add up to the array's: s1 the sum of its 32-bit words w, s2 the sum of
  (_MIX * p + 1) * w over their global word positions p. s2 = _MIX * sum(p * w) + s1, and
  sum(p * w) = sum over dimensions d of stride_d * sum_j (start_d + j) * (the words at index j
  along d, summed), so both cost one reduction per dimension and no temporary of the shard's
  size."""
  words, index, shape = _words(data, index, global_shape)
  if words.size == 0:
    return np.zeros(2, np.uint64)
  strides = [int(np.prod(shape[d + 1:], dtype=np.uint64)) for d in range(len(shape))]
  s1 = int(np.sum(words, dtype=np.uint32))
  weighted = 0
  with np.errstate(over="ignore"):
    for d in range(words.ndim):
      start = index[d].start or 0
      if start == 0 and words.shape[d] == 1:
        continue                                          # position 0 along d: adds nothing
      column = words if words.ndim == 1 else np.sum(
          words, axis=tuple(a for a in range(words.ndim) if a != d), dtype=np.uint32)
      stop = start + words.shape[d]
      j = (np.arange(start, stop, dtype=np.uint32) if stop <= _MOD else
           (np.arange(start, stop, dtype=np.uint64) % _MOD).astype(np.uint32))
      weighted = (weighted + strides[d] % _MOD * int(np.dot(column, j))) % _MOD
  return np.array([s1, (_MIX * weighted + s1) % _MOD], np.uint64)


def _chunked_sums(data: np.ndarray, index: tuple, global_shape: tuple,
                  max_elements: int = 1 << 22) -> np.ndarray:
  """`_shard_sums` in pieces along the first axis (bounded temporary memory)."""
  if data.ndim == 0 or data.size <= max_elements or data.shape[0] == 1:
    return _shard_sums(data, index, global_shape)
  rows = max(1, max_elements // max(data.size // data.shape[0], 1))
  start = index[0].start or 0
  total = np.zeros(2, np.uint64)
  for i in range(0, data.shape[0], rows):
    piece = data[i:i + rows]
    total += _shard_sums(piece, (slice(start + i, start + i + len(piece)),) + tuple(index[1:]),
                         global_shape)
  return total


def _leaf_sums(x: Any) -> np.ndarray:
  """The two checksums of one leaf (a jax.Array on any mesh, or a host value)."""
  if isinstance(x, jax.Array):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    total = np.zeros(2, np.uint64)
    for shard in x.addressable_shards:
      if shard.replica_id == 0:        # each element counted once over all processes
        total += _chunked_sums(np.asarray(shard.data), shard.index, x.shape)
    return total
  x = np.asarray(x)
  return _chunked_sums(x, tuple(slice(0, n) for n in x.shape), x.shape)


def tree_digests(tree: Any) -> dict[str, list]:
  """{path: [sum, weighted sum, dtype, shape]} of every array leaf of `tree`: two 32-bit sums
  of its raw bits (the second weighted by position), exact and independent of the sharding.
  A changed word anywhere changes the first; moved words change the second. Collective with several processes."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  paths = [jax.tree_util.keystr(p, simple=True, separator="/") for p, _ in leaves]
  sums = np.stack([_leaf_sums(v) for _, v in leaves]) if leaves else np.zeros((0, 2), np.uint64)
  if jax.process_count() > 1:
    sums = np.sum(multihost_utils.process_allgather(sums.astype(np.int64)), axis=0)
  sums = sums.astype(np.uint64) % np.uint64(1 << 32)
  return {path: [int(a), int(b), str(getattr(v, "dtype", "")), list(np.shape(v))]
          for path, (_, v), (a, b) in zip(paths, leaves, sums)}


def digest_mismatches(saved: Mapping[str, list], current: Mapping[str, list],
                      limit: int = 8) -> list[str]:
  """The arrays whose checksums differ between a saved and a recomputed digest map."""
  bad = []
  for path in sorted(set(saved) | set(current)):
    s, c = saved.get(path), current.get(path)
    if s is None or c is None:
      bad.append(f"{path}: {'absent' if s is None else 'present'} in the digests, "
                 f"{'absent' if c is None else 'present'} in the restored state")
    elif list(s[:2]) != list(c[:2]):
      bad.append(f"{path} ({c[2]} {tuple(c[3])}): its values do not match their checksum")
  if len(bad) > limit:
    bad = bad[:limit] + [f"... and {len(bad) - limit} more arrays"]
  return bad


def write_file_manifest(step_dir: str) -> None:
  """Records the size and sha256 of every file under `step_dir` in FILE_MANIFEST (atomic)."""
  files = {}
  for root, _, names in os.walk(step_dir):
    for name in names:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, step_dir)
      if rel == FILE_MANIFEST or name.endswith(".tmp"):
        continue
      files[rel] = {"bytes": os.path.getsize(path), "sha256": sha256_file(path)}
  tmp = os.path.join(step_dir, FILE_MANIFEST + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump({"files": files}, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, os.path.join(step_dir, FILE_MANIFEST))


def verify_file_manifest(step_dir: str) -> Optional[list[str]]:
  """Problems of the files under `step_dir` against its manifest (missing, resized, changed);
  None when the step has no manifest (written before it could be recorded)."""
  manifest = os.path.join(step_dir, FILE_MANIFEST)
  if not os.path.exists(manifest):
    return None
  try:
    with open(manifest, encoding="utf-8") as f:
      files = json.load(f)["files"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    return [f"{FILE_MANIFEST}: unreadable ({type(e).__name__}: {e})"]
  problems = []
  for rel, rec in sorted(files.items()):
    path = os.path.join(step_dir, rel)
    if not os.path.exists(path):
      problems.append(f"{rel}: missing")
    elif os.path.getsize(path) != rec["bytes"]:
      problems.append(f"{rel}: {os.path.getsize(path)} bytes, {rec['bytes']} when saved "
                      "(truncated or overwritten)")
    elif sha256_file(path) != rec["sha256"]:
      problems.append(f"{rel}: its sha256 differs from the one recorded at save (changed "
                      "bytes)")
  return problems
