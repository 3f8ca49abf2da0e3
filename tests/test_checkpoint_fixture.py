"""Trained weights written before a change still load and sample the same videos after it.

The tiny test cascade (base -> tsr1 -> ssr1, random weights from fixed seeds) is
- checkpointed with orbax into a temporary directory, restored through
  `Cascade.from_config` (orbax layout, config item, checksums, parameter names) and sampled;
- loaded from tests/fixtures/tiny_cascade/exported/: the same weights as exported by the code
  of the commit its manifest names (safetensors + config JSON + manifest; configs from before
  `model.family` existed), and sampled.
Both must give the videos of tests/fixtures/tiny_cascade/samples.npz, recorded at the commit
its `made_by` names. Both fixtures are made by tests/fixtures/tiny_cascade/make_fixtures.py.
No orbax checkpoint or run directory is committed. A change of checkpointing, restoring or
sampling that alters these videos breaks users' trained models: it needs a migration, not new
fixtures.
"""
import hashlib
import os

import jax
import numpy as np

from cascade_testlib import TEXT_DIM, save_random_checkpoint, tiny_cascade_config
from vdm_jax import export
from vdm_jax.sample import cascade as cascade_lib

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "tiny_cascade")
GOLDEN = os.path.join(FIXTURES, "samples.npz")
EXPORTED = os.path.join(FIXTURES, "exported")
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


def write_checkpoints(root) -> object:
  """The tiny cascade's config, with every stage checkpointed under root/<stage> (stage i's
  weights from seed i, optimizer moments zero)."""
  config = tiny_cascade_config()
  for i, name in enumerate(config.cascade.order):
    save_random_checkpoint(config.cascade.stages[name], os.path.join(root, name), seed=i,
                           optimizer_state=False)
  return config


def sample_cascade(config, root) -> dict:
  """Every stage's videos for PROMPTS with the config's seeds."""
  cascade = cascade_lib.Cascade.from_config(config, root, text_encoder=HashTextEncoder(),
                                            devices=jax.devices()[:1])
  out = cascade.sample(PROMPTS)
  return {name: np.asarray(v) for name, v in out.items()}


def test_checkpoints_restore_and_sample_the_recorded_videos(tmp_path):
  root = str(tmp_path / "cascade")
  assert_golden(sample_cascade(write_checkpoints(root), root))


def assert_golden(got):
  """Every stage's videos equal the recorded ones."""
  expected = np.load(GOLDEN)
  assert sorted(got) == sorted(k for k in expected.files if k != "made_by") == [
      "base", "ssr1", "tsr1"]
  for name in ("base", "tsr1", "ssr1"):
    assert got[name].shape == expected[name].shape, name
    np.testing.assert_allclose(got[name], expected[name], atol=1e-4, rtol=0, err_msg=name)


def test_cascade_exported_by_an_earlier_commit_loads_and_samples_the_recorded_videos():
  manifest = export.read_manifest(EXPORTED)
  assert manifest["recipe"]["commit"], "the fixture names the commit that wrote it"
  cascade = export.load_cascade(EXPORTED, text_encoder=HashTextEncoder(),
                                devices=jax.devices()[:1])
  assert cascade.names == ["base", "tsr1", "ssr1"]
  assert_golden({k: np.asarray(v) for k, v in cascade.sample(PROMPTS).items()})
