"""`TextEmbeddingStore`: caption -> precomputed (emb [L, D] float32, mask [L] bool).

Built once from a caption list with a `TextEncoder`, saved to one safetensors file (never
pickle): tensors `embeddings` [N, L, D] float32 and `masks` [N, L] bool, and in the file's
metadata a JSON index `captions` (row i is captions[i]) plus `max_length`, `dim`, `encoder`.
The data pipeline calls `lookup(caption)` per example. The empty caption "" is never stored:
it always gives the null condition (zeros, all-False mask), as `TextEncoder.encode` does.

Integrity. `save` records in the metadata the sha256 of each tensor (`sha256_embeddings`,
`sha256_masks`: dtype, shape and bytes) and of the index (`sha256_index`: captions,
max_length, dim, encoder); `load` checks them and refuses a store whose bytes changed (a
flipped bit, a truncated or unreadable file) with `CorruptStoreError` naming the file and the
part, never returning wrong embeddings. The store is a cache of the captions' encodings: delete
the file and training (`text.store_path`, `load_or_build_store`) rebuilds it. Stores written
before checksums existed still load, with a warning that they are unverified.
"""
import hashlib
import json
import os

from absl import logging
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from vdm_jax import errors
from vdm_jax.text import encoder as encoder_lib

FORMAT = "vdm_jax.text_embeddings"
VERSION = "1"
TENSORS = ("embeddings", "masks")
INDEX_KEYS = ("captions", "max_length", "dim", "encoder")  # the metadata `sha256_index` covers
_REBUILD = ("delete it: it is a cache of the captions' text encodings, and training with "
            "text.store_path set rebuilds it from the captions (load_or_build_store), as does "
            "TextEmbeddingStore.build(encoder, captions).save(path)")


class CorruptStoreError(errors.UserError, ValueError):
  """A text embedding store file whose bytes do not match the checksums written with it."""


def tensor_sha256(array):
  """sha256 hex digest of an array's dtype, shape and C-order bytes."""
  array = np.ascontiguousarray(array)
  digest = hashlib.sha256(f"{array.dtype.str}{list(array.shape)}".encode())
  if array.size:   # an empty store (captions ignored) has no bytes to hash
    digest.update(memoryview(array).cast("B"))
  return digest.hexdigest()


def index_sha256(metadata):
  """sha256 hex digest of the index entries (INDEX_KEYS) of a store's metadata."""
  return hashlib.sha256(json.dumps([metadata.get(k) for k in INDEX_KEYS]).encode()).hexdigest()


def _readonly(array):
  array.flags.writeable = False
  return array


class TextEmbeddingStore:
  """Precomputed text embeddings keyed by exact caption string.

  With an `encoder` attached, `lookup` of an unknown caption encodes it on the fly and keeps
  it (and `save` writes it); without one, an unknown caption raises KeyError.
  """

  def __init__(self, *, captions, embeddings, masks, encoder_name="", encoder=None):
    captions = list(captions)
    if len(set(captions)) != len(captions) or "" in captions:
      raise ValueError("store captions must be unique and non-empty")
    if embeddings.ndim != 3 or masks.shape != embeddings.shape[:2]:
      raise ValueError(f"embeddings must be [N, L, D] and masks [N, L]; got "
                       f"{embeddings.shape} and {masks.shape}")
    if len(captions) != embeddings.shape[0]:
      raise ValueError(f"{len(captions)} captions for {embeddings.shape[0]} embedding rows")
    self._captions = captions
    self._row = {c: i for i, c in enumerate(captions)}
    self._emb = _readonly(np.ascontiguousarray(embeddings, np.float32))
    self._mask = _readonly(np.ascontiguousarray(masks, bool))
    self._extra = {}  # captions encoded on the fly: caption -> (emb, mask)
    self.encoder_name = encoder_name
    self.encoder = None
    if encoder is not None:
      self.attach(encoder)

  @property
  def max_length(self):
    return self._emb.shape[1]

  @property
  def dim(self):
    return self._emb.shape[2]

  @property
  def captions(self):
    return self._captions + list(self._extra)

  def __len__(self):
    return len(self._captions) + len(self._extra)

  def __contains__(self, caption):
    return caption == "" or caption in self._row or caption in self._extra

  def attach(self, encoder):
    """Attaches `encoder` for on-the-fly lookups; it must produce this store's shapes."""
    if (encoder.max_length, encoder.dim) != (self.max_length, self.dim):
      raise ValueError(f"encoder gives [L={encoder.max_length}, D={encoder.dim}] embeddings but "
                       f"the store holds [L={self.max_length}, D={self.dim}]")
    if self.encoder_name and encoder.name != self.encoder_name:
      raise ValueError(f"the store was built with encoder {self.encoder_name!r}, not "
                       f"{encoder.name!r}")
    self.encoder = encoder

  @classmethod
  def build(cls, encoder, captions):
    """Encodes the distinct non-empty `captions` (first-seen order) with `encoder`."""
    unique = list(dict.fromkeys(c for c in captions if c != ""))
    emb, mask = encoder.encode(unique)
    return cls(captions=unique, embeddings=emb, masks=mask, encoder_name=encoder.name,
               encoder=encoder)

  def add(self, captions):
    """Encodes, with the attached encoder, the captions not yet stored (batched)."""
    new = [c for c in dict.fromkeys(captions) if c not in self]
    if new and self.encoder is None:
      raise ValueError(f"{len(new)} captions are not in the store and no encoder is attached")
    if new:
      emb, mask = self.encoder.encode(new)
      for caption, e, m in zip(new, emb, mask):
        self._extra[caption] = (_readonly(e), _readonly(m))
    return len(new)

  def lookup(self, caption):
    """Returns (emb float32 [L, D], mask bool [L]) for `caption` (read-only arrays)."""
    if caption == "":
      return (np.zeros((self.max_length, self.dim), np.float32),
              np.zeros((self.max_length,), bool))
    row = self._row.get(caption)
    if row is not None:
      return self._emb[row], self._mask[row]
    if caption in self._extra:
      return self._extra[caption]
    if self.encoder is None:
      raise KeyError(f"caption {caption!r} is not in the text embedding store "
                     f"({len(self)} captions); rebuild the store with it or attach an encoder "
                     "to encode unknown captions on the fly")
    self.add([caption])
    return self._extra[caption]

  def save(self, path):
    """Writes the store (on-the-fly additions included) to `path` (.safetensors), atomically."""
    captions = self.captions
    extra = list(self._extra.values())
    emb = np.concatenate([self._emb] + [e[None] for e, _ in extra], axis=0)
    mask = np.concatenate([self._mask] + [m[None] for _, m in extra], axis=0)
    metadata = {"format": FORMAT, "version": VERSION, "captions": json.dumps(captions),
                "max_length": str(self.max_length), "dim": str(self.dim),
                "encoder": self.encoder_name}
    metadata["sha256_index"] = index_sha256(metadata)
    metadata["sha256_embeddings"] = tensor_sha256(emb)
    metadata["sha256_masks"] = tensor_sha256(mask)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    save_file({"embeddings": emb, "masks": mask}, tmp, metadata=metadata)
    os.replace(tmp, path)

  @classmethod
  def load(cls, path, encoder=None):
    """Reads a store that `save` wrote, checking its checksums; attaches `encoder` if given.

    Raises:
      FileNotFoundError: `path` does not exist.
      CorruptStoreError (a ValueError): the file is unreadable, truncated, or a tensor or the
        caption index differs from what was written; the message names the file and the part.
      ValueError: the file is not a text embedding store, or of another format version.
    """
    if not os.path.isfile(path):
      raise FileNotFoundError(f"text embedding store {path!r} does not exist; build it with "
                              "TextEmbeddingStore.build(encoder, captions).save(path)")
    try:
      with safe_open(path, framework="numpy") as f:
        metadata = f.metadata() or {}
        tensors = ({name: f.get_tensor(name) for name in TENSORS}
                   if metadata.get("format") == FORMAT and metadata.get("version") == VERSION
                   else None)
    except Exception as e:  # safetensors' header / buffer errors: bytes flipped or cut off
      raise CorruptStoreError(f"text embedding store {path!r} is unreadable, corrupt or "
                              f"truncated ({type(e).__name__}: {e}); {_REBUILD}.") from e
    if metadata.get("format") != FORMAT:
      raise ValueError(f"{path!r} is not a text embedding store (no '{FORMAT}' metadata)")
    if metadata.get("version") != VERSION:
      raise ValueError(f"{path!r} has store format version {metadata.get('version')!r}; "
                       f"this code reads version {VERSION}: rebuild the store")
    _verify(path, metadata, tensors)
    try:  # cannot fail once verified; an unverified (old) store may hold anything
      store = cls(captions=json.loads(metadata["captions"]), embeddings=tensors["embeddings"],
                  masks=tensors["masks"], encoder_name=metadata.get("encoder", ""))
    except (KeyError, TypeError, ValueError) as e:
      raise CorruptStoreError(f"text embedding store {path!r} has an unreadable index ({e}); "
                              f"{_REBUILD}.") from e
    if encoder is not None:
      store.attach(encoder)
    return store

def _verify(path, metadata, tensors):
  """Checks the recorded sha256s; warns once for a store written without them."""
  recorded = {k: metadata.get(f"sha256_{k}") for k in TENSORS + ("index",)}
  if not any(recorded.values()):
    logging.warning("Text embedding store %s has no checksums (written by an older version): "
                    "loaded unverified. Delete it to have it rebuilt with checksums.", path)
    return
  actual = {name: tensor_sha256(array) for name, array in tensors.items()}
  actual["index"] = index_sha256(metadata)
  bad = [k for k in recorded if recorded[k] != actual[k]]
  if bad:
    what = " and ".join(("the caption index" if k == "index" else f"tensor {k!r}")
                        for k in bad)
    raise CorruptStoreError(f"text embedding store {path!r} is corrupt: the sha256 of {what} "
                            f"does not match the one recorded when it was written; {_REBUILD}.")


def load_or_build_store(text_cfg, captions, *, encoder=None):
  """The store holding `captions`, as the config's `text` section asks.

  If `text_cfg.store_path` names an existing file, it is loaded (it must come from the same
  encoder and max_length) and captions it lacks are encoded and saved into it. Otherwise the
  store is built (with `encoder`, or one loaded from `text_cfg`) and saved to `store_path`
  when that is set. Returns the store with its encoder attached if one was needed.
  """
  path = text_cfg.get("store_path", "")
  captions = list(dict.fromkeys(c for c in captions if c != ""))
  if path and os.path.isfile(path):
    store = TextEmbeddingStore.load(path)
    if (store.encoder_name, store.max_length) != (text_cfg.encoder, text_cfg.max_length):
      raise ValueError(
          f"text.store_path {path!r} holds {store.encoder_name!r} embeddings of length "
          f"{store.max_length}, but the config asks for {text_cfg.encoder!r} with "
          f"text.max_length={text_cfg.max_length}: delete the file or point text.store_path "
          "elsewhere")
    missing = [c for c in captions if c not in store]
    if missing:
      store.attach(encoder or encoder_lib.load_text_encoder(text_cfg))
      store.add(missing)
      store.save(path)
    return store
  store = TextEmbeddingStore.build(encoder or encoder_lib.load_text_encoder(text_cfg), captions)
  if path:
    store.save(path)
  return store
