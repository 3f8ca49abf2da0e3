"""Joint image-video training of the video transformer on packed rows (train.pack_images):
the packed loss's arithmetic, and the real objective and train step on a packed joint batch."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dit as dit_config
from vdm_jax import config_utils
from vdm_jax import diffusion
from vdm_jax import errors
from vdm_jax.data import IMAGE_PREFIX
from vdm_jax.diffusion import parameterization as param
from vdm_jax.diffusion import schedules
from vdm_jax.models import registry
from vdm_jax.models.dit import presets
from vdm_jax.train import objective


def test_packed_loss_is_the_mean_of_each_segments_own_loss():
  """Each segment is noised at its own logSNR (all its frames alike), its loss is its frames'
  weighted MSE, padding frames count nowhere, the loss is the mean over segments."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 5, 3, 3, 2)), jnp.float32)
  eps = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
  seg = jnp.array([[0, 0, 0, 1, 2], [0, 0, 1, 1, -1]], jnp.int32)
  seen = {}

  net = lambda z: 0.5 * z + 0.1 * jnp.sin(z)     # a per-pixel stand-in network

  def model_fn(z, logsnr, cond):
    seen["z"], seen["logsnr"] = z, logsnr
    return net(z)
  schedule = schedules.LogSNRSchedule("cosine")
  loss, aux = diffusion.packed_diffusion_loss(
      model_fn=model_fn, x=x, segment_ids=seg, num_segments=3, key=jax.random.key(1),
      schedule=schedule, prediction="v", weighting="v_mse", noise_fn=lambda k, s, d: eps)
  logsnr = seen["logsnr"]                                                # [B, S]
  assert logsnr.shape == (2, 3) and len(set(np.asarray(logsnr).ravel().tolist())) == 6
  want, valid = [], []
  for b in range(2):
    for s in range(3):
      frames = np.nonzero(np.asarray(seg[b]) == s)[0]
      if not len(frames):
        valid.append(0.0)
        want.append(0.0)
        continue
      ls = jnp.full((len(frames),), logsnr[b, s])
      z = schedules.q_sample(x=x[b, frames], eps=eps[b, frames], logsnr=ls)
      np.testing.assert_allclose(seen["z"][b, frames], z, rtol=1e-6, atol=1e-6)
      target = param.from_x_and_eps(prediction="v", x=x[b, frames], eps=eps[b, frames],
                                    logsnr=ls)
      mse = jnp.mean(jnp.square(net(z) - target))
      want.append(float(mse * diffusion.loss_weight(logsnr[b, s], "v_mse", prediction="v")
                        / diffusion.loss_weight(logsnr[b, s], "constant", prediction="v")))
      valid.append(1.0)
  np.testing.assert_allclose(aux["loss_per_example"], want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(aux["valid"], valid)
  np.testing.assert_allclose(float(loss), np.sum(want) / np.sum(valid), rtol=1e-5)
  # The padding frame's content changes nothing.
  loss2, _ = diffusion.packed_diffusion_loss(
      model_fn=model_fn, x=x.at[1, 4].set(9.0), segment_ids=seg, num_segments=3,
      key=jax.random.key(1), schedule=schedule, prediction="v", weighting="v_mse",
      noise_fn=lambda k, s, d: eps)
  np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6)


def _joint_config():
  c = dit_config.get_config()
  c.frames, c.height, c.width = 3, 8, 8
  c.model = presets.tiny()
  c.data.images_per_video = 2
  c.train.pack_images = True
  return c


def _joint_batch(c, b=2, k=2, seed=0):
  rng = np.random.default_rng(seed)
  d = c.model.text_embed_dim
  out = {"video": rng.uniform(-1, 1, (b, c.frames, 8, 8, 3)), "fps": np.full((b,), 4.0),
         "text_emb": rng.standard_normal((b, 4, d)), "text_mask": np.ones((b, 4), bool),
         IMAGE_PREFIX + "video": rng.uniform(-1, 1, (b * k, 1, 8, 8, 3)),
         IMAGE_PREFIX + "fps": np.zeros((b * k,)),
         IMAGE_PREFIX + "is_image": np.ones((b * k,), bool),
         IMAGE_PREFIX + "text_emb": rng.standard_normal((b * k, 4, d)),
         IMAGE_PREFIX + "text_mask": np.ones((b * k, 4), bool)}
  return {key: jnp.asarray(v, jnp.float32) if v.dtype == np.float64 else jnp.asarray(v)
          for key, v in out.items()}


def test_packed_joint_objective_trains_each_example():
  """The packed objective gives one loss per video and per image (row_is_image marks the
  images), and each image's gradient reaches the parameters through its own segment."""
  c = _joint_config()
  config_utils.validate_config(c)
  model = registry.family(c.model).module()
  batch = _joint_batch(c)
  params = nn.unbox(jax.jit(registry.family(c.model).init_fn(model, batch_like=batch))(
      jax.random.key(0)))
  loss_fn = objective.make_loss_fn(c, model)
  step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))     # compiled once, used twice
  (loss, aux), grads = step(params, batch, jax.random.key(2))
  assert aux["loss_per_example"].shape == (2 * 3,)
  np.testing.assert_array_equal(aux["row_is_image"], [False, True, True] * 2)
  np.testing.assert_allclose(float(loss), float(jnp.mean(aux["loss_per_example"])), rtol=1e-6)
  assert np.isfinite(float(loss))
  assert float(jnp.abs(grads["proj_out"]["kernel"]).max()) > 0
  # Image b * K + j is segment j + 1 of row b: changing image 1 changes loss entry 0 * 3 + 2
  # only (the model outputs zeros at init, so each entry reads its own example).
  moved = dict(batch)
  moved[IMAGE_PREFIX + "video"] = batch[IMAGE_PREFIX + "video"].at[1].multiply(-0.5)
  (_, aux_moved), _ = step(params, moved, jax.random.key(2))
  changed = np.abs(np.asarray(aux_moved["loss_per_example"] - aux["loss_per_example"])) > 1e-6
  np.testing.assert_array_equal(changed, [False, False, True, False, False, False])


def test_pack_images_config_errors():
  c = _joint_config()
  c.data.images_per_video = 0
  with pytest.raises(errors.ConfigError, match="no images to pack"):
    config_utils.validate_config(c)
  from configs import demo  # pylint: disable=g-import-not-at-top
  u = demo.get_config().cascade.stages["base"]
  u.data.images_per_video = 2
  u.train.pack_images = True
  with pytest.raises(errors.ConfigError, match="needs model.family='dit'"):
    config_utils.validate_config(u)
