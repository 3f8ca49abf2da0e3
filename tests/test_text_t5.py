"""The Flax T5 v1.1 encoder against transformers' PyTorch T5EncoderModel on a tiny random model,
loaded through `load_text_encoder` (single file and sharded). Golden values and the model:
tests/fixtures/text/make_tiny_t5.py."""
import json
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from safetensors.numpy import load_file
from safetensors.numpy import save_file

from vdm_jax import text
from vdm_jax.models import text_encoders

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "text")
TINY_T5 = os.path.join(FIXTURES, "tiny_t5")
ATOL = 1e-4


def _cfg(**overrides):
  c = ml_collections.ConfigDict(dict(encoder="t5", path=TINY_T5, max_length=12,
                                     dtype="float32", param_dtype="float32", batch_size=64))
  c.update(overrides)
  return c


@pytest.fixture(scope="module")
def golden():
  with np.load(os.path.join(FIXTURES, "t5_golden.npz"), allow_pickle=False) as g:
    return {k: g[k] for k in g.files}


@pytest.fixture(scope="module")
def t5(golden):
  assert int(golden["max_length"]) == 12
  return text.load_text_encoder(_cfg())


def _copy_without_weights(dst):
  for name in ("config.json", "spiece.model"):
    shutil.copy(os.path.join(TINY_T5, name), dst / name)


def test_module_matches_transformers_on_token_ids(t5, golden):
  assert isinstance(t5.module, text_encoders.T5Encoder)
  assert (t5.module.d_model, t5.module.num_layers, t5.module.feed_forward_proj) == (
      32, 2, "gated-gelu")
  hidden = jax.jit(t5.module.apply)(t5.params, golden["ids"], golden["ids_mask"])
  chex.assert_shape(hidden, golden["ids_hidden"].shape)
  np.testing.assert_allclose(hidden, golden["ids_hidden"], atol=ATOL, rtol=0)


def test_encode_matches_transformers_tokenizer_and_model(t5, golden):
  prompts = [str(p) for p in golden["prompts"]]
  ids, mask = t5.tokenize([prompts[0], prompts[2]])  # the long prompt warns: tested below
  np.testing.assert_array_equal(ids, golden["prompt_ids"][[0, 2]])
  with pytest.warns(text.PromptTruncatedWarning, match="bouncing off the left wall"):
    emb, mask = t5.encode(prompts)
  np.testing.assert_array_equal(mask, golden["prompt_mask"])
  expected = golden["prompt_hidden"] * golden["prompt_mask"][..., None]
  np.testing.assert_allclose(emb, expected, atol=ATOL, rtol=0)
  assert (t5.dim, t5.max_length) == (32, 12)


def test_relative_position_buckets_match_transformers(golden):
  relative = golden["relative_positions"]  # -600..600
  n = int(relative.max()) + 1
  for buckets, distance in ((32, 128), (8, 16)):
    table = text_encoders.t5_relative_position_buckets(n, num_buckets=buckets,
                                                       max_distance=distance)
    mine = np.concatenate([table[::-1, 0][:-1], table[0]])  # [i, j] buckets j - i
    np.testing.assert_array_equal(mine, golden[f"buckets_{buckets}_{distance}"])


def test_chunked_batches_and_empty_prompt(t5, golden):
  prompts = [str(golden["prompts"][0]), "", str(golden["prompts"][2])]
  small = text.load_text_encoder(_cfg(batch_size=2))
  emb, mask = small.encode(prompts)
  ref_emb, ref_mask = t5.encode(prompts)
  np.testing.assert_allclose(emb, ref_emb, atol=1e-6, rtol=0)
  np.testing.assert_array_equal(mask, ref_mask)
  assert not mask[1].any() and np.all(emb[1] == 0.0)
  np.testing.assert_allclose(emb[2], golden["prompt_hidden"][2] * golden["prompt_mask"][2, :, None],
                             atol=ATOL, rtol=0)
  empty_emb, empty_mask = t5.encode([])
  assert empty_emb.shape == (0, 12, 32) and empty_mask.shape == (0, 12)


def test_sharded_checkpoint_loads_the_same_params(t5, tmp_path):
  tensors = load_file(os.path.join(TINY_T5, "model.safetensors"))
  names = sorted(tensors)
  shards = {"model-00001-of-00002.safetensors": names[::2],
            "model-00002-of-00002.safetensors": names[1::2]}
  weight_map = {}
  for shard, keys in shards.items():
    save_file({k: tensors[k] for k in keys}, str(tmp_path / shard), metadata={"format": "pt"})
    weight_map.update({k: shard for k in keys})
  (tmp_path / "model.safetensors.index.json").write_text(
      json.dumps({"metadata": {}, "weight_map": weight_map}))
  _copy_without_weights(tmp_path)
  sharded = text.load_text_encoder(_cfg(path=str(tmp_path)))
  chex.assert_trees_all_equal(sharded.params, t5.params)

  os.remove(tmp_path / "model-00002-of-00002.safetensors")
  with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors.*missing"):
    text.load_text_encoder(_cfg(path=str(tmp_path)))


def test_bfloat16_compute_and_params(t5, golden):
  bf16 = text.load_text_encoder(_cfg(dtype="bfloat16", param_dtype="bfloat16"))
  leaves = jax.tree.leaves(bf16.params)
  assert all(leaf.dtype == jnp.bfloat16 for leaf in leaves)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(t5.params))
  hidden = jax.jit(bf16.module.apply)(bf16.params, golden["ids"], golden["ids_mask"])
  assert hidden.dtype == jnp.bfloat16
  err = np.abs(np.asarray(hidden, np.float32) - golden["ids_hidden"])
  assert err.max() < 0.1 * np.abs(golden["ids_hidden"]).max(), err.max()


def test_weights_of_another_model_fail_clearly(tmp_path):
  _copy_without_weights(tmp_path)
  tensors = load_file(os.path.join(TINY_T5, "model.safetensors"))
  config = json.loads((tmp_path / "config.json").read_text())
  config["d_ff"] = 48  # the weights say 64
  (tmp_path / "config.json").write_text(json.dumps(config))
  save_file(tensors, str(tmp_path / "model.safetensors"))
  with pytest.raises(ValueError, match="wi_0.weight.*different models"):
    text.load_text_encoder(_cfg(path=str(tmp_path)))

  config["d_ff"] = 64
  (tmp_path / "config.json").write_text(json.dumps(config))
  del tensors["encoder.final_layer_norm.weight"]
  save_file(tensors, str(tmp_path / "model.safetensors"))
  with pytest.raises(ValueError, match="lacks 1 tensors.*encoder.final_layer_norm.weight"):
    text.load_text_encoder(_cfg(path=str(tmp_path)))


def test_missing_files_are_named(tmp_path):
  _copy_without_weights(tmp_path)
  with pytest.raises(FileNotFoundError, match=r"holds no \*\.safetensors"):
    text.load_text_encoder(_cfg(path=str(tmp_path)))
  os.remove(tmp_path / "spiece.model")
  with pytest.raises(FileNotFoundError, match="neither spiece.model nor tokenizer.json"):
    text.load_text_encoder(_cfg(path=str(tmp_path)))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    text.load_text_encoder(_cfg(path=str(tmp_path / "absent")))
  config = json.loads(open(os.path.join(TINY_T5, "config.json")).read())
  config["model_type"] = "bert"
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="expects a T5 checkpoint"):
    text.load_text_encoder(_cfg(path=str(tmp_path)))
