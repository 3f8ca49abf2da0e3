"""Checkpoints written by earlier code still restore and sample the same videos.

tests/fixtures/checkpoints/tiny_cascade/ holds the tiny test cascade (base -> tsr1 -> ssr1,
random weights) as written by the commit named in its MADE_BY.json, with the videos it sampled
then (samples.npz). The current code must restore those checkpoints (orbax layout, config item,
parameter names) and sample the same videos from the same key. A change that breaks this
breaks every user's trained checkpoints: it needs a migration, not a new fixture.
"""
import hashlib
import os
import shutil

import jax
import numpy as np

from cascade_testlib import TEXT_DIM, tiny_cascade_config
from vdm_jax import cascade as cascade_lib

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "checkpoints",
                       "tiny_cascade")
PROMPTS = ["a large red circle moving left quickly on a black background",
           "a large blue square moving down quickly on a white background"]


class HashTextEncoder:
  """Per-prompt embeddings [N, 4, TEXT_DIM] seeded by the prompt's sha256 (the same in every
  process, unlike Python's salted `hash`)."""
  dim = TEXT_DIM

  def encode(self, prompts):
    emb = np.stack([np.random.default_rng(
        int(hashlib.sha256(p.encode()).hexdigest()[:8], 16)).normal(size=(4, TEXT_DIM))
                    for p in prompts]).astype(np.float32)
    return emb, np.ones(emb.shape[:2], bool)


def fixture_config():
  return tiny_cascade_config()


def sample_fixture(config, root) -> dict:
  """Every stage's videos for PROMPTS with the config's seeds (the cascade restores each
  stage's newest checkpoint under root/<stage>)."""
  cascade = cascade_lib.Cascade.from_config(config, root, text_encoder=HashTextEncoder(),
                                            devices=jax.devices()[:1])
  out = cascade.sample(PROMPTS)            # the config's seeds
  return {name: np.asarray(v) for name, v in out.items()}


def test_old_checkpoints_restore_and_sample_the_same_videos(tmp_path):
  root = str(tmp_path / "cascade")
  shutil.copytree(FIXTURE, root)          # restoring may write (manifests): work on a copy
  expected = np.load(os.path.join(FIXTURE, "samples.npz"))
  got = sample_fixture(fixture_config(), root)
  assert sorted(got) == sorted(expected.files) == ["base", "ssr1", "tsr1"]
  for name in expected.files:
    assert got[name].shape == expected[name].shape, name
    np.testing.assert_allclose(got[name], expected[name], atol=1e-4, rtol=0, err_msg=name)
