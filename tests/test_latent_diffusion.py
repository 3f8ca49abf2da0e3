"""Latent diffusion (issue 21): the latent dataset builder, the latent pipeline, a latent stage's
config checks and its sampler, which decodes at the end. The tiny 3-D VAE (presets.CPU['tiny'],
4x in space and time) encodes 5 x 16 x 16 moving-shapes clips to 2 x 4 x 4 x 4 latents."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec
import ml_collections
import numpy as np
import pytest

from configs import latent as latent_config
from configs import vae as vae_config
import cascade_testlib
from vdm_jax import config_utils
from vdm_jax import errors
from vdm_jax import export
from vdm_jax import sharding as sharding_lib
from vdm_jax.cli import latents as latents_cli
from vdm_jax.data import build
from vdm_jax.data import latents
from vdm_jax.data import pipeline
from vdm_jax.models import registry
from vdm_jax.models.dit import presets as dit_presets
from vdm_jax.models.vae import AutoencoderKL, presets
from vdm_jax.sample import cascade
from vdm_jax.sample import sampler
from vdm_jax.sample import stage as stage_lib
from vdm_jax.train import objective

import vae_helpers                       # tests/vae_helpers.py

FRAMES, SIZE, FPS = 5, 16, 4.0
LATENT = (2, 4, 4, 4)                 # [T', H', W', C'] of a 5 x 16 x 16 clip


class FakeTextStore:
  """lookup(caption) -> (emb [L, D] with emb[0, 0] = the caption's length, mask)."""
  max_length, dim = 4, 3

  def lookup(self, caption):
    emb = np.zeros((self.max_length, self.dim), np.float32)
    emb[0, 0] = len(caption)
    return emb, np.arange(self.max_length) < 2


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """A tiny moving-shapes build, a random tiny VAE exported as a stage, and the latents of
  both splits built from them through `--mode=build_latents`'s function."""
  root = tmp_path_factory.mktemp("latent")
  ae = vae_config.get_config()
  ae.frames, ae.height, ae.width, ae.fps = FRAMES, SIZE, SIZE, FPS
  ae.model.update(presets.cpu("tiny"))
  fam = registry.family(ae.model)
  init = fam.init_fn(fam.module(), batch_like={"video": np.zeros((1, FRAMES, SIZE, SIZE, 3))})
  params = vae_helpers.random_params(jax.eval_shape(init, jax.random.key(0)), seed=0)
  exported = str(root / "exported")
  entry = export.write_stage(exported, "vae", params, ae)
  export.write_manifest(exported, {"stages": {"vae": dict(entry, step=7)}})

  c = latent_config.get_config(f"scale=tiny,autoencoder={exported}/vae,latents={root}/lat")
  c.data.data_dir = str(root / "data")
  c.data.num_train_examples, c.data.num_eval_examples = 6, 2
  c.data.source_frames, c.data.source_resolution, c.data.source_fps = 10, SIZE, 8.0
  c.frames, c.height, c.width, c.channels = LATENT
  c.fps = FPS
  c.model.out_channels = LATENT[-1]
  c.model.text_embed_dim, c.text.max_length = cascade_testlib.TEXT_DIM, 4
  m = c.model                          # the tiny U-Net, one level (a 4 x 4 latent)
  m.base_channels, m.num_groups, m.cond_embed_dim, m.head_dim = 8, 4, 32, 8
  m.channel_mult, m.spatial_attention, m.temporal_mixing = (1,), (True,), ("attention",)
  c.sharding.mesh_shape = (1, 1, 1)
  c.sample.num_steps = 2
  c.latent.batch_size = 4             # 6 train clips: a padded last batch
  c.train.batch_size = 2
  build.build_dataset(c)
  written = latents_cli.build_latents(c, progress=None)
  return c, params, written


def test_built_latents_are_the_encoders_means_and_the_stats_are_the_train_splits(built):
  c, params, written = built
  assert sorted(written) == ["test", "train"]
  model = AutoencoderKL(presets.spec(presets.cpu("tiny")))
  clips = {s: build.load_split_examples(c, s, 8) for s in ("train", "test")}
  # 5 frames at 4 fps of the 8-fps clips (every other frame), both splits in one call.
  x = np.concatenate([clips[s]["video"] for s in ("train", "test")])[:, :2 * FRAMES - 1:2]
  encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=AutoencoderKL.encode)[0])
  mean = np.asarray(encode(params, jnp.asarray(x.astype(np.float32) / 127.5 - 1.0)))
  means = {"train": mean[:6], "test": mean[6:]}
  z = means["train"].reshape(-1, LATENT[-1]).astype(np.float64)
  stats = latents.LatentStats(shift=-z.mean(0), scale=1 / z.std(0))
  for split, n in (("train", 6), ("test", 2)):
    data = latents.read_split(c.data.latents, split)
    assert data.captions == clips[split]["caption"]
    assert data.latents.shape == (n,) + LATENT
    np.testing.assert_allclose(data.latents, means[split], atol=1e-5)
    assert data.meta["fps"] == [FPS] * n and data.meta["video_shape"] == [FRAMES, SIZE, SIZE, 3]
    assert data.meta["autoencoder"]["step"] == 7
    # Both splits are normalized with the train split's statistics.
    np.testing.assert_allclose(data.stats.shift, stats.shift, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(data.stats.scale, stats.scale, rtol=1e-5)
  saved = latents.read_stats(c.latent.autoencoder)     # stored with the autoencoder
  assert saved["step"] == 7 and latents.LatentStats.from_dict(saved).equals(data.stats)


def test_stats_of_a_known_array_normalize_it_per_channel():
  # channel 0: 2 +- 3, channel 1: -1 +- 0.5 (half the values each side).
  signs = np.where(np.arange(4 * 3 * 2 * 2) % 2, 1.0, -1.0).reshape(4, 3, 2, 2, 1)
  z = np.concatenate([2 + 3 * signs, -1 + 0.5 * signs], axis=-1)
  stats = latents.compute_stats(z)
  np.testing.assert_allclose(stats.shift, [-2.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(stats.scale, [1 / 3, 2.0], rtol=1e-6)
  x = stats.normalize(z)
  np.testing.assert_allclose(x, np.concatenate([signs, signs], axis=-1), atol=1e-6)
  np.testing.assert_allclose(stats.denormalize(x), z, atol=1e-6)


def test_a_changed_latent_file_is_refused_naming_it(built, tmp_path):
  c, _, _ = built
  copy = tmp_path / "lat"
  copy.mkdir()
  for name in ("train.safetensors", "train.json"):
    shutil.copy(os.path.join(c.data.latents, name), copy / name)
  latents.read_split(str(copy), "train")      # an intact copy reads
  data = bytearray((copy / "train.safetensors").read_bytes())
  data[-3] ^= 0x10                            # one flipped bit in the last latent
  (copy / "train.safetensors").write_bytes(bytes(data))
  with pytest.raises(latents.LatentDataError, match=r"train\.safetensors.*sha256"):
    latents.read_split(str(copy), "train")


def test_the_pipeline_yields_normalized_latents_with_text_and_resumes(built):
  c, _, _ = built
  data = latents.read_split(c.data.latents, "train")
  store = FakeTextStore()
  it = pipeline.make_train_iterator(c, text_store=store, process_index=0, process_count=1)
  batch = next(it)
  assert batch["video"].shape == (2,) + LATENT and batch["video"].dtype == np.float32
  idx = batch["index"]
  np.testing.assert_allclose(batch["video"], data.stats.normalize(data.latents[idx]), rtol=1e-6)
  assert [int(v) for v in batch["text_emb"][:, 0, 0]] == [len(data.captions[i]) for i in idx]
  assert batch["text_mask"].shape == (2, 4) and not batch["is_image"].any()
  np.testing.assert_allclose(batch["fps"], FPS)
  state = it.get_state()
  expected = [next(it)["index"] for _ in range(4)]          # crosses the epoch (3 batches)
  resumed = pipeline.make_train_iterator(c, text_store=store, process_index=0, process_count=1)
  resumed.set_state(state)
  assert [next(resumed)["index"].tolist() for _ in range(4)] == [e.tolist() for e in expected]


def test_a_config_that_does_not_match_the_latents_fails_before_compiling(built, tmp_path):
  c, _, _ = built
  bad = c.copy_and_resolve_references()
  bad.frames, bad.channels = 3, 8
  bad.model.out_channels = 8
  with pytest.raises(errors.ConfigError, match=r"train\.json.*frames=3 \(latents: 2\), "
                                               r"channels=8 \(latents: 4\)"):
    config_utils.validate_config(bad)
  with pytest.raises(errors.ConfigError, match="frames=3"):
    pipeline.make_train_iterator(bad, process_index=0, process_count=1)
  config_utils.validate_config(bad, latent_files=False)    # what build_latents checks
  # Latents normalized with other statistics than the autoencoder's (rebuilt since).
  other = c.copy_and_resolve_references()
  other.latent.autoencoder = str(tmp_path)
  stats = latents.read_split(c.data.latents, "train").stats
  latents.write_stats(str(tmp_path), latents.LatentStats(stats.shift + 1, stats.scale), step=7,
                      params_sha256="", computed_on={})
  with pytest.raises(errors.ConfigError, match="normalized with other statistics"):
    config_utils.validate_config(other)


@pytest.mark.parametrize("kind, shape", [("3d", (4, 8, 8, 8)), ("2d", (13, 8, 8, 8))])
def test_the_shipped_latent_config_diffuses_its_autoencoders_latents(kind, shape):
  c = latent_config.get_config(f"kind={kind}")
  config_utils.validate_config(c)
  assert (c.frames, c.height, c.width, c.channels) == shape == (
      c.frames, c.height, c.width, c.model.out_channels)
  assert c.data.latents == f"{c.latent.autoencoder}/latents" and c.sample.clip == "none"


def test_the_pixel_twin_is_the_same_base_on_the_autoencoders_clips():
  latent_cfg = latent_config.get_config("kind=2d,factor=2")
  pixel = latent_config.get_config("kind=2d,factor=2,space=pixel")
  config_utils.validate_config(pixel)
  assert (pixel.frames, pixel.height, pixel.width, pixel.channels) == (13, 32, 32, 3)
  assert pixel.model.out_channels == 3 and not pixel.data.latents
  assert pixel.sample.clip != "none"
  same = lambda c: {k: v for k, v in c.model.to_dict().items() if k != "out_channels"}
  assert same(pixel) == same(latent_cfg) and pixel.train == latent_cfg.train
  assert pixel.data.data_dir == latent_cfg.data.data_dir and pixel.fps == latent_cfg.fps
  with pytest.raises(ValueError, match="space="):
    latent_config.get_config("kind=2d,space=voxel")


def test_a_latent_stage_samples_decoded_pixels_and_chains_into_a_pixel_sr_stage(built):
  c, vae_params, _ = built
  fam = registry.family(c.model)
  init = fam.init_fn(fam.module(), batch_like=fam.example_batch(c))
  params = vae_helpers.random_params(jax.eval_shape(init, jax.random.key(0)), seed=1)
  mesh = sharding_lib.create_mesh(c.sharding, jax.devices()[:1])
  stage = stage_lib.make_stage(c, params, NamedSharding(mesh, PartitionSpec()), step=1,
                               mesh=mesh, text_encoder=cascade_testlib.FakeTextEncoder())
  assert stage.codec.step == 7 and stage.codec.stats.equals(
      latents.read_split(c.data.latents, "train").stats)
  key = jax.random.key(0)
  videos = sampler.sample_stage(stage, key=key, prompts=cascade_testlib.PROMPTS)
  assert videos.shape == (2, FRAMES, SIZE, SIZE, 3)
  # The same sample as latents (the cached sampler, no decoding), decoded by hand.
  raw = sampler.sample_stage(stage_lib.Stage(**dict(vars(stage), codec=None)), key=key,
                             prompts=cascade_testlib.PROMPTS)
  assert raw.shape == (2,) + LATENT
  z = stage.codec.stats.denormalize(raw)
  model = AutoencoderKL(presets.spec(presets.cpu("tiny")))
  want = np.clip(jax.jit(lambda p, z: model.apply({"params": p}, z, method=AutoencoderKL.decode))(
      vae_params, jnp.asarray(z)), -1, 1)
  np.testing.assert_allclose(videos, want, atol=1e-5)
  # A cascade reads the latent base's output geometry through its autoencoder.
  assert tuple(stage_lib.video_config(c)[k] for k in ("frames", "height", "width",
                                                      "channels")) == (FRAMES, SIZE, SIZE, 3)
  ssr = cascade_testlib.tiny_cascade_config().cascade.stages["ssr1"]
  ssr.frames, ssr.fps = FRAMES, FPS
  ssr.data.lowres_frames, ssr.data.lowres_height = 0, SIZE
  ssr.data.lowres_width = SIZE
  cascade.check_chain([("base", c), ("ssr1", ssr)])
  ssr.data.lowres_height = ssr.data.lowres_width = LATENT[1]
  with pytest.raises(ValueError, match="does not chain"):
    cascade.check_chain([("base", c), ("ssr1", ssr)])


def test_a_transformer_diffuses_the_same_latents_and_its_samples_are_decoded(built):
  """The video transformer as the latent stage's denoiser: the latent pipeline's batch gives a
  finite training loss with gradients in every parameter, and its samples come out decoded."""
  c, _, _ = built
  c = c.copy_and_resolve_references()
  c.model = dit_presets.tiny(text_embed_dim=cascade_testlib.TEXT_DIM, out_channels=LATENT[-1])
  config_utils.validate_config(c)
  fam = registry.family(c.model)
  model = fam.module()
  init = fam.init_fn(model, batch_like=fam.example_batch(c))
  params = vae_helpers.random_params(jax.eval_shape(init, jax.random.key(0)), seed=2)
  store = FakeTextStore()
  store.dim = cascade_testlib.TEXT_DIM             # the width the sampler's text encoder gives
  batch = next(pipeline.make_train_iterator(c, text_store=store, process_index=0,
                                            process_count=1))
  batch = {k: jnp.asarray(v) for k, v in batch.items() if k != "index"}
  loss_fn = objective.make_loss_fn(c, model)
  (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, jax.random.key(1))
  assert np.isfinite(float(loss))
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
  mesh = sharding_lib.create_mesh(c.sharding, jax.devices()[:1])
  stage = stage_lib.make_stage(c, params, NamedSharding(mesh, PartitionSpec()), step=1,
                               mesh=mesh, text_encoder=cascade_testlib.FakeTextEncoder())
  videos = sampler.sample_stage(stage, key=jax.random.key(0), prompts=cascade_testlib.PROMPTS)
  assert videos.shape == (2, FRAMES, SIZE, SIZE, 3) and np.all(np.abs(videos) <= 1)


def test_an_exported_latent_stage_carries_its_autoencoder_and_statistics(built, tmp_path):
  """export_cascade writes a latent base with its autoencoder and latent_stats.json beside it
  (listed with sha256 in the manifest); the exported cascade samples what the trained stage
  samples, anywhere, and a changed statistics file is refused naming it."""
  c, _, _ = built
  root, out = str(tmp_path / "runs"), str(tmp_path / "exported")
  cascade_testlib.save_random_checkpoint(c, cascade.stage_workdir(root, "base"), seed=3,
                                         optimizer_state=False)
  config = ml_collections.ConfigDict({"cascade": {"order": ("base",), "stages": {"base": c}}})
  manifest = export.export_cascade(config, root, out, devices=jax.devices()[:1])
  ae = manifest["autoencoders"]["base"]
  assert ae["stats"] == "base_autoencoder/latent_stats.json" and ae["step"] == 7
  assert ae["stats"] in manifest["sha256"]
  saved = json.load(open(os.path.join(out, "base", "config.json"), encoding="utf-8"))
  assert saved["latent"]["autoencoder"] == "base_autoencoder"     # no machine path
  trained = cascade.Cascade.from_config(config, root,
                                        text_encoder=cascade_testlib.FakeTextEncoder(),
                                        devices=jax.devices()[:1])
  loaded = export.load_cascade(out, text_encoder=cascade_testlib.FakeTextEncoder(),
                               devices=jax.devices()[:1])
  assert loaded.stages[0].codec.stats.equals(trained.stages[0].codec.stats)
  want = trained.sample(cascade_testlib.PROMPTS)["base"]
  got = loaded.sample(cascade_testlib.PROMPTS)["base"]
  assert got.shape == (2, FRAMES, SIZE, SIZE, 3)
  np.testing.assert_allclose(got, want, atol=1e-6)
  stats = os.path.join(out, ae["stats"])
  with open(stats, "a", encoding="utf-8") as f:
    f.write(" ")
  with pytest.raises(export.IntegrityError, match="latent_stats.json is corrupt"):
    export.load_cascade(out, text_encoder=cascade_testlib.FakeTextEncoder(),
                        devices=jax.devices()[:1])
