"""The autoencoder family (model.family='vae') through the shared training path: its objective,
its metrics in the train step, its refusal where a denoiser is needed, its config checks and
its reconstruction scores."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import vae as vae_config
from vdm_jax import config_utils
from vdm_jax import errors
from vdm_jax.data import IMAGE_PREFIX
from vdm_jax.eval import autoencoder as ae_eval
from vdm_jax.models import registry
from vdm_jax.models.vae import AutoencoderKL, kl_to_standard_normal
from vdm_jax.models.vae import objective as vae_objective
from vdm_jax.sample import stage as stage_lib
from vdm_jax.train import objective as train_objective
from vdm_jax.train import state as st
from vdm_jax.train import step as sp

import vae_helpers                       # tests/vae_helpers.py
from vae_helpers import FRAMES, SIZE, clips

KL_WEIGHT = 0.5


def _config(**model):
  c = vae_helpers.tiny_config(**model)
  c.autoencoder.kl_weight = KL_WEIGHT
  return c


@pytest.fixture(scope="module")
def setup():
  c = _config()
  fam = registry.family(c.model)
  model = fam.module()
  return c, fam, model, vae_helpers.filled_params(fam, model)


def test_the_loss_is_reconstruction_plus_weighted_kl_per_value_over_videos_and_images(setup):
  c, _, model, params = setup
  loss_fn = train_objective.make_loss_fn(c, model)      # dispatches to the family's objective
  videos, images = clips(2), clips(4, seed=1)[:, :1]  # 2 clips, 2 extra images per clip
  key = jax.random.key(3)
  loss, aux = loss_fn(params, {"video": videos, IMAGE_PREFIX + "video": images}, key)  # eager

  def expected(x, k):
    sample_key, dropout_key = jax.random.split(k)
    recon, mean, logvar = model.apply({"params": params}, jnp.asarray(x), train=True,
                                      rngs={"sample": sample_key, "dropout": dropout_key})
    rec = np.mean(np.abs(np.asarray(recon) - x), axis=(1, 2, 3, 4))
    kl = np.asarray(kl_to_standard_normal(mean, logvar)) / x[0].size
    mse = np.mean(np.square(np.asarray(recon) - x), axis=(1, 2, 3, 4))
    return rec + KL_WEIGHT * kl, rec, mse

  want_v, rec_v, mse_v = expected(videos, key)
  want_i, rec_i, mse_i = expected(images, jax.random.fold_in(key, vae_objective.IMAGE_SALT))
  per_example = np.asarray(aux["loss_per_example"])
  np.testing.assert_allclose(per_example, np.concatenate([want_v, want_i]), rtol=1e-4)
  assert float(loss) == pytest.approx(per_example.mean(), rel=1e-5)
  assert np.asarray(aux["row_is_image"]).tolist() == [False] * 2 + [True] * 4
  assert float(aux["metrics"]["rec"]) == pytest.approx(np.concatenate([rec_v, rec_i]).mean(),
                                                       rel=1e-4)
  psnr = 10 * np.log10(4 / np.concatenate([mse_v, mse_i]))
  assert float(aux["metrics"]["psnr"]) == pytest.approx(psnr.mean(), rel=1e-4)
  assert float(aux["metrics"]["kl"]) > 0


def test_the_train_step_lowers_the_loss_and_reports_the_objectives_metrics(setup):
  c, _, model, params = setup
  loss_fn = train_objective.make_loss_fn(c, model)
  tx = optax.adam(3e-3)
  step = jax.jit(lambda s, b: sp.train_step(s, b, loss_fn=loss_fn, tx=tx,
                                            lr_schedule=lambda _: 3e-3, seed=0, ema_decay=0.9))
  state = st.create_train_state(params, tx)
  batch = {"video": jnp.asarray(clips(2, seed=2))}
  history = []
  for _ in range(40):
    state, metrics = step(state, batch)
    history.append({k: float(metrics[k]) for k in ("loss", "rec", "kl", "psnr")})
  assert history[-1]["loss"] < 0.5 * history[0]["loss"], history[::10]
  assert history[-1]["psnr"] > history[0]["psnr"] + 3.0, history[::10]


def test_an_autoencoder_is_refused_where_a_denoiser_is_needed(setup):
  c, fam, model, params = setup
  assert not fam.is_denoiser and fam.name == "vae"
  assert registry.family(vae_config.default.get_config().model).is_denoiser
  with pytest.raises(errors.ConfigError, match="sampling needs a denoiser.*'vae'"):
    stage_lib.make_stage(c, params, None, step=0, mesh=None)
  del model


def test_the_temporal_decoder_trains_only_its_temporal_layers():
  c = _config(temporal_kernel=1, time_down=(False, False), temporal_decoder=True)
  fam = registry.family(c.model)
  abstract = fam.abstract_params(frames=FRAMES, height=SIZE, width=SIZE)
  labels = jax.tree_util.tree_flatten_with_path(fam.trainable_labels(abstract, "temporal"))[0]
  trainable = sorted(jax.tree_util.keystr(p) for p, v in labels if v == "trainable")
  assert trainable and all("_temporal" in p for p in trainable)
  assert any("conv_out_temporal" in p for p in trainable)
  assert any("decoder" in p and "up0_res0_temporal" in p for p in trainable)
  assert not any("encoder" in p.split("decoder")[0] for p in trainable)
  assert len(trainable) < len(labels)


def test_bad_autoencoder_configs_fail_before_compiling():
  config_utils.validate_config(vae_config.get_config())          # the shipped config is valid
  config_utils.validate_config(vae_config.get_config("kind=temporal_decoder,images=2"))
  config_utils.validate_config(vae_config.get_config("kind=temporal_decoder,factor=2"))
  with pytest.raises(ValueError, match="factor=4\\|2"):
    vae_config.get_config("kind=3d,factor=2")          # the 3-D preset has one compression
  for change, message in [
      (lambda c: c.autoencoder.update(reconstruction="l3"), "autoencoder.reconstruction"),
      (lambda c: c.autoencoder.update(kl_weight=-1.0), "autoencoder.kl_weight"),
      (lambda c: setattr(c.data, "crop_frames", 8), "data.crop_.*1 \\+ 4k frames"),
      (lambda c: c.autoencoder.update(perceptual=1.0), "autoencoder.perceptual is not a key"),
  ]:
    c = vae_config.get_config()
    change(c)
    with pytest.raises(errors.ConfigError, match=message):
      config_utils.validate_config(c)
  with pytest.raises(ValueError, match="kind="):
    vae_config.get_config("kind=4d")


def test_reconstruction_metrics_separate_a_steady_error_from_a_flickering_one():
  real = np.zeros((2, 6, 4, 4, 3), np.float32)
  steady = ae_eval.reconstruction_metrics(real, real + 0.1)
  sign = np.where(np.arange(6) % 2 == 0, 1.0, -1.0)[None, :, None, None, None]
  flicker = ae_eval.reconstruction_metrics(real, real + 0.1 * sign)
  assert steady["psnr"] == pytest.approx(10 * np.log10(4 / 0.01), rel=1e-5)
  assert flicker["psnr"] == pytest.approx(steady["psnr"], rel=1e-5)
  assert steady["error_flicker"] == pytest.approx(0.0, abs=1e-7)
  assert flicker["error_flicker"] == pytest.approx(0.2, rel=1e-5)
  assert len(steady["psnr_per_frame"]) == 6


def test_reconstruct_decodes_the_posterior_mean_in_padded_batches(setup):
  _, _, model, params = setup
  videos = clips(3, seed=4)
  got = ae_eval.reconstruct(model, params, videos, batch_size=2)
  mean, _ = model.apply({"params": params}, jnp.asarray(videos), method=AutoencoderKL.encode)
  want = model.apply({"params": params}, mean, method=AutoencoderKL.decode)
  np.testing.assert_allclose(got, np.asarray(want), atol=1e-5)
