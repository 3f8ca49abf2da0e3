"""Masked frame interpolation (Make-A-Video): the U-Net's frame-mask input, the training masks
and loss, filling masked frames, and an interpolation TSR stage in a tiny cascade.

Compiles: one U-Net apply, one loss gradient, and the two samplers of a tiny base -> interp-TSR
cascade (random weights saved as checkpoints, loaded with `Cascade.from_config`); the
fill_masked_frames checks reuse the TSR stage's compiled sampler.
"""
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cascade_testlib as tcs
from configs import default, imagen_video
from vdm_jax import config_utils
from vdm_jax.models import conditioning
from vdm_jax.models import registry
from vdm_jax.models.unet import presets as unet_presets
from vdm_jax.models.unet import spec as unet_spec
from vdm_jax.sample import cascade, sampler
from vdm_jax.train import objective

B, T, H, W, C = 2, 4, 8, 8, 3


def interp_model_cfg(**overrides):
  kw = dict(temporal_mixing=("conv", "conv"), temporal_conv_in_resblock=True,
            spatial_attention=(False, False), text_cross_attention=False,
            cond_aug_conditioning=True, frame_mask_conditioning=True)
  kw.update(overrides)
  return unet_presets.tiny(**kw)


def random_params(model, args, kw, seed=0):
  """Every parameter N(0, 1/fan_in) (norm scales near 1), shaped by eval_shape (no compile)."""
  abstract = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kw)))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    if path[-1].key == "scale":
      return jnp.asarray(1.0 + 0.1 * rng.standard_normal(leaf.shape), leaf.dtype)
    fan_in = max(1, math.prod(leaf.shape[:-1]))
    return jnp.asarray(rng.standard_normal(leaf.shape) / math.sqrt(fan_in), leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)["params"]


def model_kwargs(rng, frame_mask):
  return dict(text_emb=jnp.asarray(rng.standard_normal((B, 5, 16)), jnp.float32),
              fps=jnp.full((B,), 8.0), cond_aug_logsnr=jnp.full((B,), 5.0),
              frame_cond=jnp.asarray(rng.uniform(-1, 1, (B, T, H, W, C)), jnp.float32),
              frame_mask=jnp.asarray(frame_mask))


@pytest.fixture(scope="module")
def unet():
  cfg = interp_model_cfg()
  model = registry.family(cfg).module()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((B, T, H, W, C)), jnp.float32)
  logsnr = jnp.asarray([-1.0, 2.0])
  kw = model_kwargs(rng, np.array([[1, 0, 1, 0], [1, 1, 0, 0]], bool))
  params = random_params(model, (x, logsnr), kw)
  apply = jax.jit(lambda p, x, l, kw: model.apply({"params": p}, x, l, **kw))
  return model, params, apply, x, logsnr, kw


def test_unet_reads_known_frames_and_mask(unet):
  model, params, apply, x, logsnr, kw = unet
  out = np.asarray(apply(params, x, logsnr, kw))
  assert out.shape == (B, T, H, W, C) and np.all(np.isfinite(out))
  # Conv_in reads x (C) + known frames (C) + mask (1) channels.
  assert params["conv_in"]["kernel"].shape[-2] == 2 * C + 1
  mask = np.asarray(kw["frame_mask"])
  # A known frame's content changes the output; an unknown frame's content is ignored.
  cond = np.asarray(kw["frame_cond"])
  known, unknown = cond.copy(), cond.copy()
  known[0, 0] += 0.5
  unknown[0, 1] += 0.5
  assert mask[0, 0] and not mask[0, 1]
  out_known = np.asarray(apply(params, x, logsnr, dict(kw, frame_cond=jnp.asarray(known))))
  out_unknown = np.asarray(apply(params, x, logsnr, dict(kw, frame_cond=jnp.asarray(unknown))))
  assert np.abs(out_known - out).max() > 1e-3
  np.testing.assert_array_equal(out_unknown, out)
  # The mask itself is an input (a float 0/1 mask works like the bool one).
  flipped = dict(kw, frame_mask=jnp.asarray(~mask))
  assert np.abs(np.asarray(apply(params, x, logsnr, flipped)) - out).max() > 1e-3
  as_float = dict(kw, frame_mask=jnp.asarray(mask, jnp.float32))
  np.testing.assert_allclose(np.asarray(apply(params, x, logsnr, as_float)), out, atol=1e-5)


def test_unet_rejects_bad_frame_inputs(unet):
  model, params, _, x, logsnr, kw = unet
  run = lambda **kw: model.apply({"params": params}, x, logsnr, **kw)  # noqa: E731
  with pytest.raises(ValueError, match="frame_cond must have the shape of x"):
    run(**dict(kw, frame_cond=kw["frame_cond"][:, :2]))
  with pytest.raises(ValueError, match="frame_mask must be bool or float"):
    run(**dict(kw, frame_mask=jnp.ones((B, T + 1), bool)))
  with pytest.raises(ValueError, match="frame_mask must be bool or float"):
    run(**dict(kw, frame_mask=jnp.ones((B, T), jnp.int32)))
  with pytest.raises(ValueError, match="needs `frame_mask`.*frame_mask_conditioning"):
    run(**{k: v for k, v in kw.items() if k != "frame_mask"})
  plain = registry.family(interp_model_cfg(frame_mask_conditioning=False)).module()
  with pytest.raises(ValueError, match="got `frame_cond`.*frame_mask_conditioning is off"):
    plain.init(jax.random.key(0), x, logsnr, **kw)
  with pytest.raises(ValueError, match="use one"):
    unet_spec.UNetSpec.from_config(interp_model_cfg(lowres_conditioning="temporal"))
  # Configs without the key (older ones) read it as off.
  cfg = interp_model_cfg()
  del cfg["frame_mask_conditioning"]
  assert not unet_spec.UNetSpec.from_config(cfg).frame_mask_conditioning


# -------------------------------------------------------------------------------- training


def test_mask_patterns():
  table = conditioning.frame_mask_table(("stride:2", "stride:4", "prefix:3", "none"), 8)
  np.testing.assert_array_equal(np.flatnonzero(table[0]), [0, 2, 4, 6])
  np.testing.assert_array_equal(np.flatnonzero(table[1]), [0, 4])
  np.testing.assert_array_equal(np.flatnonzero(table[2]), [0, 1, 2])
  assert not table[3].any()
  for bad, match in (("stride:8", "2 <= k < 8"), ("prefix:0", "1 <= m < 8"),
                     ("every:2", "unknown frame mask pattern")):
    with pytest.raises(ValueError, match=match):
      conditioning.frame_mask_table((bad,), 8)
  patterns, probs = ("stride:2", "prefix:3", "none"), np.array([0.6, 0.3, 0.1])
  masks = np.asarray(objective.draw_frame_masks(jax.random.key(0), patterns=patterns,
                                                probs=probs, batch_size=4000, frames=8))
  table = conditioning.frame_mask_table(patterns, 8)
  which = (masks[:, None, :] == table[None]).all(-1)          # [N, P]
  assert np.all(which.sum(1) == 1)                             # every mask is one pattern
  np.testing.assert_allclose(which.mean(0), probs, atol=0.03)  # at the configured rates
  cond, mask = conditioning.place_known_frames(jnp.ones((1, 2, 4, 4, 3)), frames=8)
  np.testing.assert_array_equal(np.flatnonzero(mask[0]), [0, 4])
  np.testing.assert_array_equal(np.asarray(cond)[0, :, 0, 0, 0], [1, 0, 0, 0, 1, 0, 0, 0])


def loss_config(cond_aug):
  """One-level U-Net without temporal layers: the smallest loss gradient to compile."""
  c = default.get_config()
  c.frames, c.height, c.width = T, H, W
  c.model = interp_model_cfg(cond_aug_conditioning=cond_aug, channel_mult=(1,),
                             spatial_attention=(False,), temporal_mixing=("none",),
                             temporal_conv_in_resblock=False)
  c.train.frame_mask_patterns, c.train.frame_mask_weights = ("stride:2", "prefix:1"), (1, 1)
  return c


def test_loss_feeds_masked_frames_and_trains_the_new_channels():
  rng = np.random.default_rng(1)
  batch = {"video": rng.uniform(-1, 1, (4, T, H, W, C)).astype(np.float32),
           "fps": np.full((4,), 8.0, np.float32),
           "is_image": np.array([False, False, False, True]),
           "text_emb": rng.standard_normal((4, 5, 16)).astype(np.float32),
           "text_mask": np.ones((4, 5), bool)}
  seen = tcs.inputs_seen_by_model(loss_config(False), batch)
  mask = np.asarray(seen["frame_mask"])
  allowed = [[1, 0, 1, 0], [1, 0, 0, 0]]
  assert all(row.astype(int).tolist() in allowed for row in mask[:3])
  assert not mask[3].any()                                      # images: nothing known
  np.testing.assert_array_equal(seen["frame_cond"],
                                np.where(mask[..., None, None, None], batch["video"], 0.0))
  seen = tcs.inputs_seen_by_model(loss_config(True), batch)
  m = np.asarray(seen["frame_mask"])[..., None, None, None]
  assert seen["cond_aug_logsnr"].shape == (4,)
  assert np.all(np.asarray(seen["frame_cond"])[~np.broadcast_to(m, batch["video"].shape)] == 0)
  assert not np.allclose(np.where(m, seen["frame_cond"], 0), np.where(m, batch["video"], 0))

  config = loss_config(True)
  model = registry.family(config.model).module()
  init = registry.family(config.model).init_fn(model, batch_like=batch)
  params = jax.tree.map(lambda a: jnp.full(a.shape, 0.05, a.dtype),
                        nn.unbox(jax.eval_shape(init, jax.random.key(0))))
  loss_fn = objective.make_loss_fn(config, model)
  (loss, _), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      params, batch, jax.random.key(2))
  assert np.isfinite(float(loss)) and float(loss) > 0
  g = np.abs(np.asarray(grads["conv_in"]["kernel"])).sum(axis=(0, 1, -1))  # per input channel
  assert g.shape == (2 * C + 1,) and np.all(g[C:] > 0)      # known frames and mask channels


def test_config_checks():
  c = imagen_video.stage_config("tsr1", "cpu", tsr="interp")
  config_utils.validate_config(c)
  assert c.model.lowres_conditioning == "none" and c.model.frame_mask_conditioning
  assert "stride:2" in c.train.frame_mask_patterns
  # The CPU-scale stage traces (eval_shape: nothing compiled) to its output shape.
  shape = (1, c.frames, c.height, c.width, c.channels)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  vec = jax.ShapeDtypeStruct((1,), jnp.float32)
  kw = dict(text_emb=jax.ShapeDtypeStruct((1, 4, c.model.text_embed_dim), jnp.float32),
            fps=vec, cond_aug_logsnr=vec, frame_cond=x,
            frame_mask=jax.ShapeDtypeStruct(shape[:2], jnp.bool_))
  model = registry.family(c.model).module()
  out = jax.eval_shape(lambda x, l, kw: model.init_with_output(jax.random.key(0), x, l, **kw)[0],
                       x, vec, kw)
  assert out.shape == shape
  c.train.frame_mask_patterns = ("stride:4", "none")
  c.train.frame_mask_weights = (1.0, 1.0)
  with pytest.raises(config_utils.ConfigError, match="must include 'stride:2'"):
    config_utils.validate_config(c)
  c.train.frame_mask_patterns = ("stride:2", "prefix:8")  # the crop window has 8 frames
  with pytest.raises(config_utils.ConfigError, match="1 <= m < 8"):
    config_utils.validate_config(c)
  c.train.frame_mask_patterns = ("stride:2",)
  with pytest.raises(config_utils.ConfigError, match="one non-negative weight per pattern"):
    config_utils.validate_config(c)
  with pytest.raises(ValueError, match="tsr="):
    imagen_video.get_config("stage=tsr1,tsr=flow")
  # Defaults unchanged: Imagen Video's lowres-conditioned TSR.
  assert imagen_video.stage_config("tsr1", "cpu").model.lowres_conditioning == "temporal"


# ---------------------------------------------------------------------- sampling and cascade


def tiny_interp_cascade_config(data_dir):
  return tcs.tiny_cascade_config(data_dir, stages=("base", "tsr1"), tsr="interp")


@pytest.fixture(scope="module")
def interp_cascade(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("interp_cascade"))
  config = tiny_interp_cascade_config(os.path.join(root, "data"))
  for name, c in cascade.stage_configs(config):
    tcs.save_random_checkpoint(c, cascade.stage_workdir(root, name))
  return config, cascade.Cascade.from_config(config, root, text_encoder=tcs.FakeTextEncoder(),
                                             devices=jax.devices()[:1])


def assert_filled(out, given, mask):
  """Exactly the given frames where known; finite, non-zero, new content elsewhere."""
  np.testing.assert_array_equal(out[mask], given[mask])
  rest = out[~mask]
  assert np.all(np.isfinite(rest)) and np.abs(rest).mean() > 1e-3
  assert not np.allclose(rest, given[~mask])


def test_interp_tsr_stage_in_a_cascade(interp_cascade):
  config, casc = interp_cascade
  base, tsr = casc.stages
  assert tsr.is_sr and tsr.uses_frame_masks and not base.uses_frame_masks
  videos = casc.sample(tcs.PROMPTS)
  assert videos["base"].shape == (2, 4, 8, 8, 3) and videos["tsr1"].shape == (2, 8, 8, 8, 3)
  known = np.zeros((2, 8), bool)
  known[:, ::2] = True
  upsampled = np.repeat(videos["base"], 2, axis=1)
  assert_filled(videos["tsr1"], upsampled, known)   # base frames at 0, 2, 4, 6

  kw = casc.settings[1].sampler_kwargs()           # the cascade's settings: no new compile
  compiled = len(tsr.jit_cache)
  rng = np.random.default_rng(3)
  video = rng.uniform(-1, 1, (2, 8, 8, 8, 3)).astype(np.float32)
  for mask in (known, np.arange(8)[None].repeat(2, 0) < 3):      # interpolation, extrapolation
    out = sampler.fill_masked_frames(tsr, key=jax.random.key(5), video=video, frame_mask=mask,
                                     prompts=tcs.PROMPTS, **kw)
    assert_filled(out, video, mask)
    other = np.where(mask[..., None, None, None], video, 0.0)  # unknown frames are not read
    again = sampler.fill_masked_frames(tsr, key=jax.random.key(5), video=other,
                                       frame_mask=mask, prompts=tcs.PROMPTS, **kw)
    np.testing.assert_array_equal(again, out)
  assert len(tsr.jit_cache) == compiled

  with pytest.raises(ValueError, match="no model.frame_mask_conditioning"):
    sampler.fill_masked_frames(base, key=jax.random.key(0), video=video[:, :4],
                               frame_mask=known[:, :4], prompts=tcs.PROMPTS)
  with pytest.raises(ValueError, match="needs the previous stage's video"):
    sampler.sample_stage(tsr, key=jax.random.key(0), prompts=tcs.PROMPTS)
  with pytest.raises(ValueError, match="frame_mask must be bool"):
    sampler.fill_masked_frames(tsr, key=jax.random.key(0), video=video,
                               frame_mask=known[:, :4], prompts=tcs.PROMPTS)

  # The chain check: the stage must train on the stride it samples with.
  named = [(n, c.copy_and_resolve_references()) for n, c in cascade.stage_configs(config)]
  cascade.check_chain(named)
  named[1][1].train.frame_mask_patterns = ("stride:4", "none")
  with pytest.raises(ValueError, match=r"tsr1 \(tsr, interpolation\).*'stride:2'"):
    cascade.check_chain(named)


def test_periodic_training_samples_of_an_interp_stage(interp_cascade, tmp_path):
  """train.sample_every on a frame-mask stage: the training rows' frames at the first kept
  pattern (stride:2) are the known frames, and the videos are written."""
  from vdm_jax.train import samples  # pylint: disable=g-import-not-at-top
  config, casc = interp_cascade
  stage = casc.stages[1]
  c = stage.config
  periodic = samples.PeriodicSampler(c, stage.model, workdir=str(tmp_path), mesh=stage.mesh,
                                     param_shardings=stage.param_shardings, text_encoder=None)
  n = len(c.sample.prompts)
  rng = np.random.default_rng(3)
  video = rng.uniform(-1, 1, (n, c.frames, c.height, c.width, 3)).astype(np.float32)
  emb, mask = tcs.FakeTextEncoder().encode(["a red circle"] * n)
  batch = {"video": video, "text_emb": emb, "text_mask": mask,
           "fps": np.full((n,), c.fps, np.float32), "is_image": np.zeros((n,), bool),
           "lowres": video[:, ::2]}
  cond, lines = periodic.sample_conditioning(batch)
  known = np.arange(c.frames) % 2 == 0
  np.testing.assert_array_equal(np.asarray(cond["frame_mask"]), np.broadcast_to(known, (n, 8)))
  np.testing.assert_array_equal(np.asarray(cond["frame_cond"])[:, known], video[:, known])
  assert not np.asarray(cond["frame_cond"])[:, ~known].any()
  assert lines[0].startswith("frames stride:2 known")
  paths = periodic(1, stage.params, batch=batch)
  assert paths and all(os.path.getsize(p) > 0 for p in paths)
