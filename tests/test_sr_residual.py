"""SR stages that diffuse their residual over the upsampled low-resolution input
(`diffusion.lowres_residual_scale` s > 0): the transform, the loss it trains and the sampler.

A fake network makes the checks exact: its v output is the one whose x prediction is 0 in the
diffused space, i.e. "no detail beyond the naive upsampling".
"""
import jax
import jax.numpy as jnp

import numpy as np
import pytest

from configs import default
from vdm_jax import config_utils
from vdm_jax.diffusion import schedules
from vdm_jax.sample import sampler
from vdm_jax.sample import stage as stage_lib
from vdm_jax.train import objective


def sr_config(mode="spatial", scale=4.0, clip="static"):
  c = default.get_config()
  c.stage = "ssr" if mode == "spatial" else "tsr"
  c.frames, c.height, c.width = (4, 8, 8)
  c.model.lowres_conditioning = mode
  c.model.text_cross_attention = c.model.text_pooled_conditioning = False
  c.model.fps_conditioning = False
  c.data.lowres_frames, c.data.lowres_height, c.data.lowres_width = (
      (4, 4, 4) if mode == "spatial" else (2, 8, 8))
  c.diffusion.lowres_residual_scale = scale
  c.sample.clip = clip
  c.sample.num_steps = 4
  c.sample.guidance_weight = 0.0
  c.sharding.mesh_shape = (1, 1, 1)
  return c


class ZeroDetailModel:
  """v such that x_hat = alpha z - sigma v is `x_value` (0: exactly the naive upsampling)."""

  def __init__(self, x_value=0.0):
    self.x_value = x_value

  def apply(self, params, z, logsnr, **unused):
    del params, unused
    a, s = schedules.alpha_sigma(schedules.broadcast_logsnr(logsnr, z))
    return (a * z - self.x_value) / s


def _stage(config, model):
  from vdm_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  mesh = sharding_lib.create_mesh(config.sharding, jax.devices()[:1])
  return stage_lib.Stage(config=config, model=model, params={}, step=0, mesh=mesh,
                         param_shardings={}, text_encoder=None)


@pytest.mark.parametrize("mode", ["spatial", "temporal"])
def test_residual_round_trip(mode):
  c = sr_config(mode)
  rng = np.random.default_rng(0)
  video = rng.uniform(-1, 1, (2, 4, 8, 8, 3)).astype(np.float32)
  low_shape = (2, c.data.lowres_frames, c.data.lowres_height, c.data.lowres_width, 3)
  low = rng.uniform(-1, 1, low_shape).astype(np.float32)
  r = objective.to_residual(c, video, low)
  up = objective.lowres_upsampled(c, low, video.shape)
  np.testing.assert_allclose(r, 4.0 * (video - up), atol=1e-6)
  np.testing.assert_allclose(objective.from_residual(c, r, low), video, atol=1e-5)
  c.diffusion.lowres_residual_scale = 0.0          # off: the identity
  np.testing.assert_array_equal(objective.to_residual(c, video, low), video)


def test_loss_is_zero_when_video_is_the_upsampled_input():
  """The loss trains the residual: a video equal to its upsampled lowres has residual 0, which
  the zero-detail model predicts exactly (loss 0); the plain objective does not (loss > 0)."""
  c = sr_config("spatial")
  c.model.cond_aug_conditioning = False
  rng = np.random.default_rng(1)
  low = rng.uniform(-1, 1, (2, 4, 4, 4, 3)).astype(np.float32)
  video = np.asarray(objective.lowres_upsampled(c, low, (2, 4, 8, 8, 3)))
  batch = {"video": jnp.asarray(video), "lowres": jnp.asarray(low)}
  loss_fn = objective.make_loss_fn(c, ZeroDetailModel())
  loss, _ = loss_fn({}, batch, jax.random.key(0))
  assert float(loss) < 1e-8
  c.diffusion.lowres_residual_scale = 0.0
  plain, _ = objective.make_loss_fn(c, ZeroDetailModel())({}, batch, jax.random.key(0))
  assert float(plain) > 1e-2


@pytest.mark.parametrize("mode", ["spatial", "temporal"])
def test_sampler_adds_the_upsampled_input_back(mode):
  c = sr_config(mode, clip="none")
  low_shape = (3, c.data.lowres_frames, c.data.lowres_height, c.data.lowres_width, 3)
  low = np.random.default_rng(2).uniform(-0.9, 0.9, low_shape).astype(np.float32)
  out = sampler.sample_stage(_stage(c, ZeroDetailModel()), key=jax.random.key(0),
                             num_videos=3, lowres=low)
  np.testing.assert_allclose(out, objective.lowres_upsampled(c, low, out.shape), atol=1e-5)


def test_static_clipping_keeps_the_video_in_range():
  """A model that asks for far too much detail: static clipping bounds the residual so that
  the video (upsampled input + residual / s) stays within [-1, 1] and touches its bounds."""
  c = sr_config("spatial", clip="static")
  low = np.full((2, 4, 4, 4, 3), 0.5, np.float32)
  out = sampler.sample_stage(_stage(c, ZeroDetailModel(x_value=100.0)), key=jax.random.key(0),
                             num_videos=2, lowres=low)
  assert out.max() <= 1.0 + 1e-5 and out.max() >= 1.0 - 1e-5
  c.sample.clip = "none"
  wild = sampler.sample_stage(_stage(c, ZeroDetailModel(x_value=100.0)),
                              key=jax.random.key(0), num_videos=2, lowres=low)
  assert wild.max() > 10.0


def test_config_validation():
  c = sr_config("spatial", clip="dynamic")
  with pytest.raises(config_utils.ConfigError, match="sample.clip 'static' or 'none'"):
    config_utils.validate_config(c)
  c = sr_config("spatial")
  c.diffusion.lowres_residual_scale = -1.0
  with pytest.raises(config_utils.ConfigError, match="lowres_residual_scale=-1.0"):
    config_utils.validate_config(c)
  c = default.get_config()
  c.diffusion.lowres_residual_scale = 2.0
  with pytest.raises(config_utils.ConfigError, match="needs an SR stage"):
    config_utils.validate_config(c)

