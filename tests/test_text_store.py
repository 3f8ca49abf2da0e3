"""TextEmbeddingStore: build (dedupe), lookup equals direct encode, save/load round trip in
safetensors, clear errors, on-the-fly encoding. Uses the tiny T5 fixture as the encoder."""
import json
import os

import ml_collections
import numpy as np
import pytest
from safetensors import safe_open

from vdm_jax import text

TINY_T5 = os.path.join(os.path.dirname(__file__), "fixtures", "text", "tiny_t5")
CAPTIONS = ["a red circle moving left", "a blue square moving up", "a red circle moving left",
            "", "a green triangle moving right", "a blue square moving up"]
UNIQUE = ["a red circle moving left", "a blue square moving up", "a green triangle moving right"]


@pytest.fixture(scope="module")
def encoder():
  return text.load_text_encoder(ml_collections.ConfigDict(
      dict(encoder="t5", path=TINY_T5, max_length=24, batch_size=4)))


@pytest.fixture(scope="module")
def store(encoder):
  return text.TextEmbeddingStore.build(encoder, CAPTIONS)


def test_build_dedupes_and_skips_the_empty_caption(store, encoder):
  assert store.captions == UNIQUE
  assert len(store) == 3
  assert (store.max_length, store.dim) == (encoder.max_length, encoder.dim) == (24, 32)
  assert "" in store and "a purple star" not in store


def test_lookup_equals_direct_encode(store, encoder):
  emb, mask = encoder.encode(UNIQUE)
  for i, caption in enumerate(UNIQUE):
    got_emb, got_mask = store.lookup(caption)
    assert got_emb.dtype == np.float32 and got_emb.shape == (24, 32)
    assert got_mask.dtype == bool and got_mask.shape == (24,)
    np.testing.assert_allclose(got_emb, emb[i], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(got_mask, mask[i])
  with pytest.raises(ValueError):
    store.lookup(UNIQUE[0])[0][0, 0] = 1.0  # read-only: the pipeline cannot corrupt the store


def test_empty_caption_is_the_null_condition(store):
  emb, mask = store.lookup("")
  assert emb.shape == (24, 32) and np.all(emb == 0.0) and not mask.any()


def test_save_load_round_trip(store, tmp_path):
  path = str(tmp_path / "captions.safetensors")
  store.save(path)
  with safe_open(path, framework="numpy") as f:  # the documented layout, not a pickle
    assert set(f.keys()) == {"embeddings", "masks"}
    assert json.loads(f.metadata()["captions"]) == UNIQUE
  loaded = text.TextEmbeddingStore.load(path)
  assert loaded.captions == UNIQUE and loaded.encoder is None
  assert (loaded.max_length, loaded.dim, loaded.encoder_name) == (24, 32, "t5")
  for caption in UNIQUE:
    for a, b in zip(loaded.lookup(caption), store.lookup(caption)):
      np.testing.assert_array_equal(a, b)


def test_unknown_caption_without_encoder_raises_key_error(store, tmp_path):
  path = str(tmp_path / "s.safetensors")
  store.save(path)
  loaded = text.TextEmbeddingStore.load(path)
  with pytest.raises(KeyError, match="'a purple star' is not in the text embedding store"):
    loaded.lookup("a purple star")


def test_attached_encoder_encodes_unknown_captions_and_saves_them(store, encoder, tmp_path):
  path = str(tmp_path / "s.safetensors")
  store.save(path)
  loaded = text.TextEmbeddingStore.load(path, encoder=encoder)
  emb, mask = loaded.lookup("a purple star")
  ref_emb, ref_mask = encoder.encode(["a purple star"])
  np.testing.assert_allclose(emb, ref_emb[0], atol=1e-6, rtol=0)
  np.testing.assert_array_equal(mask, ref_mask[0])
  assert "a purple star" in loaded and len(loaded) == 4
  loaded.save(path)
  again = text.TextEmbeddingStore.load(path)
  assert again.captions == UNIQUE + ["a purple star"]
  np.testing.assert_array_equal(again.lookup("a purple star")[0], emb)


def test_bad_files_and_mismatched_encoders_fail_clearly(store, tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    text.TextEmbeddingStore.load(str(tmp_path / "absent.safetensors"))
  other = str(tmp_path / "weights.safetensors")
  os.link(os.path.join(TINY_T5, "model.safetensors"), other)
  with pytest.raises(ValueError, match="not a text embedding store"):
    text.TextEmbeddingStore.load(other)

  class Wider:
    name, max_length, dim = "t5", 24, 64
  with pytest.raises(ValueError, match="D=64.*D=32"):
    store.attach(Wider())

  class OtherModel:
    name, max_length, dim = "minilm", 24, 32
  with pytest.raises(ValueError, match="built with encoder 't5'"):
    store.attach(OtherModel())


def test_load_or_build_store_through_the_config(encoder, tmp_path):
  path = str(tmp_path / "store.safetensors")
  cfg = ml_collections.ConfigDict(dict(encoder="t5", path=TINY_T5, max_length=24, batch_size=4,
                                       store_path=path))
  built = text.load_or_build_store(cfg, CAPTIONS, encoder=encoder)
  assert built.captions == UNIQUE and os.path.isfile(path)

  grown = text.load_or_build_store(cfg, UNIQUE + ["a purple star"])  # loads the encoder itself
  assert grown.captions == UNIQUE + ["a purple star"]
  assert text.TextEmbeddingStore.load(path).captions == UNIQUE + ["a purple star"]
  ref_emb, _ = encoder.encode(["a purple star"])
  np.testing.assert_allclose(grown.lookup("a purple star")[0], ref_emb[0], atol=1e-6, rtol=0)

  cfg.path = str(tmp_path / "no_such_model")  # all captions stored: no encoder is loaded
  cached = text.load_or_build_store(cfg, ["a blue square moving up", "a purple star"])
  assert cached.encoder is None and len(cached) == 4
  with pytest.raises(FileNotFoundError, match="no_such_model"):
    text.load_or_build_store(cfg, ["an unseen caption"])

  cfg.max_length = 16
  with pytest.raises(ValueError, match="text.max_length=16.*delete the file"):
    text.load_or_build_store(cfg, UNIQUE)
