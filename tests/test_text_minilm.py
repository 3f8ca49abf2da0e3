"""The packaged MiniLM in Flax against sentence-transformers, the null prompt, truncation, and the
errors of `load_text_encoder`. Golden values: tests/fixtures/text/make_minilm_golden.py."""
import os
import shutil
import warnings

import ml_collections
import numpy as np
import pytest

from vdm_jax import text
from vdm_jax.text import encoder as encoder_lib

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "text")
ATOL = 1e-4


def _cfg(**overrides):
  c = ml_collections.ConfigDict(dict(encoder="minilm", path="", max_length=16,
                                     dtype="float32", param_dtype="float32", batch_size=64))
  c.update(overrides)
  return c


@pytest.fixture(scope="module")
def golden():
  with np.load(os.path.join(FIXTURES, "minilm_golden.npz"), allow_pickle=False) as g:
    return {k: g[k] for k in g.files}


@pytest.fixture(scope="module")
def minilm(golden):
  assert int(golden["max_length"]) == 16
  return text.load_text_encoder(_cfg())


@pytest.fixture(scope="module")
def golden_run(minilm, golden):
  """One jitted call on the 4 golden sentences (batch bucket 4), warnings recorded."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    emb, mask = minilm.encode(list(golden["sentences"]))
  return emb, mask, caught


def test_attributes(minilm):
  assert (minilm.name, minilm.dim, minilm.max_length) == ("minilm", 384, 16)
  assert (minilm.pooling, minilm.normalize) == ("mean", True)


def test_tokenization_matches_sentence_transformers(minilm, golden):
  with pytest.warns(text.PromptTruncatedWarning):
    ids, mask = minilm.tokenize(list(golden["sentences"]))
  np.testing.assert_array_equal(ids, golden["input_ids"])
  np.testing.assert_array_equal(mask, golden["attention_mask"])


def test_token_embeddings_match_sentence_transformers(golden_run, golden):
  emb, mask, _ = golden_run
  assert emb.dtype == np.float32 and emb.shape == (4, 16, 384)
  assert mask.dtype == bool and mask.shape == (4, 16)
  np.testing.assert_array_equal(mask, golden["attention_mask"])
  np.testing.assert_allclose(emb, golden["token_embeddings"], atol=ATOL, rtol=0)
  assert np.all(emb[~mask] == 0.0), "padding positions must be zero"


def test_pooled_embedding_matches_sentence_transformers(minilm, golden):
  with pytest.warns(text.PromptTruncatedWarning):
    pooled = minilm.encode_pooled(list(golden["sentences"]))
  np.testing.assert_allclose(pooled, golden["sentence_embedding"], atol=ATOL, rtol=0)
  np.testing.assert_allclose(np.linalg.norm(pooled, axis=-1), 1.0, atol=1e-5)


def test_truncation_warns_once_naming_the_prompt(golden_run, golden):
  emb, mask, caught = golden_run
  cut = [w for w in caught if issubclass(w.category, text.PromptTruncatedWarning)]
  assert len(cut) == 1, [str(w.message) for w in caught]
  long_prompt = str(golden["sentences"][1])
  assert long_prompt in str(cut[0].message)
  assert all(str(golden["sentences"][i]) not in str(cut[0].message) for i in (0, 2, 3))
  assert mask[1].all() and emb.shape[1] == 16  # cut to max_length, [SEP] kept (see golden ids)


def test_short_prompts_do_not_warn(minilm, golden):
  prompts = [str(s) for i, s in enumerate(golden["sentences"]) if i != 1]
  with warnings.catch_warnings():
    warnings.simplefilter("error", text.PromptTruncatedWarning)
    minilm.tokenize(prompts)


def test_empty_prompt_is_the_null_condition(minilm, golden):
  prompts = ["", str(golden["sentences"][0]), str(golden["sentences"][2]), ""]
  emb, mask = minilm.encode(prompts)  # batch 4: the compiled shape of golden_run
  for row in (0, 3):
    assert not mask[row].any()
    assert np.all(emb[row] == 0.0)
  np.testing.assert_allclose(emb[1], golden["token_embeddings"][0], atol=ATOL, rtol=0)
  np.testing.assert_allclose(emb[2], golden["token_embeddings"][2], atol=ATOL, rtol=0)
  pooled = minilm.encode_pooled(["", str(golden["sentences"][0])])
  assert np.all(pooled[0] == 0.0)
  np.testing.assert_allclose(pooled[1], golden["sentence_embedding"][0], atol=ATOL, rtol=0)


def test_prompts_must_be_a_list_of_strings(minilm):
  with pytest.raises(TypeError, match="list of strings"):
    minilm.encode("a red circle")
  with pytest.raises(TypeError, match="must be a str"):
    minilm.encode(["ok", 3])


def test_packaged_minilm_dir_holds_the_weights():
  directory = text.packaged_minilm_dir()
  for name in ("model.safetensors", "tokenizer.json", "config.json"):
    assert os.path.isfile(os.path.join(directory, name)), name


@pytest.mark.parametrize("overrides,error,match", [
    (dict(encoder="clip"), ValueError, "text.encoder must be one of"),
    (dict(encoder="none"), ValueError, "unconditionally"),
    (dict(max_length=1), ValueError, ">= 2 for minilm"),
    (dict(max_length=0), ValueError, "positive int"),
    (dict(max_length=600), ValueError, "max_position_embeddings=512"),
    (dict(dtype="float16"), ValueError, "text.dtype must be one of"),
    (dict(encoder="t5", path=""), ValueError, "needs text.path"),
    (dict(path="/nonexistent/minilm"), FileNotFoundError, "/nonexistent/minilm.*does not exist"),
])
def test_bad_config_fails_clearly(overrides, error, match):
  with pytest.raises(error, match=match):
    text.load_text_encoder(_cfg(**overrides))


def test_directory_without_safetensors_names_what_is_missing(tmp_path):
  src = text.packaged_minilm_dir()
  for name in ("config.json", "tokenizer.json"):
    shutil.copy(os.path.join(src, name), tmp_path / name)
  (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
  with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors.*pytorch_model\.bin"):
    text.load_text_encoder(_cfg(path=str(tmp_path)))
  os.remove(tmp_path / "tokenizer.json")
  with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
    text.load_text_encoder(_cfg(path=str(tmp_path)))
  os.remove(tmp_path / "config.json")
  with pytest.raises(FileNotFoundError, match="has no config.json"):
    text.load_text_encoder(_cfg(path=str(tmp_path)))


def test_batch_bucketing():
  assert [encoder_lib._bucket(n, 64) for n in (1, 2, 3, 4, 5, 64)] == [1, 2, 4, 4, 8, 64]
  assert encoder_lib._bucket(5, 6) == 6
