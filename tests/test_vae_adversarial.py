"""Adversarial autoencoder training: the 3-D patch discriminator, its hinge losses and R1, the
one-backward-pass split of the two players' gradients, the warm-up, and the config checks."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import vae as vae_config
from vdm_jax import config_utils
from vdm_jax import errors
from vdm_jax.models import registry
from vdm_jax.models.vae import discriminator as disc_lib
from vdm_jax.models.vae import is_temporal_param
from vdm_jax.train import objective as train_objective
from vdm_jax.train import state as st
from vdm_jax.train import step as sp

import vae_helpers                       # tests/vae_helpers.py
from vae_helpers import FRAMES, SIZE, clips

ADV_W, R1_W, START = 0.3, 2.0, 10


def _config(**model):
  c = vae_helpers.tiny_config("adversarial=0.3", "tiny2d", **{"discriminator": (8, 16), **model})
  c.autoencoder.update(kl_weight=0.5, adversarial_weight=ADV_W, r1_weight=R1_W,
                       adversarial_start=START)
  return c


@pytest.fixture(scope="module")
def setup():
  c = _config()
  fam = registry.family(c.model)
  model = fam.module()
  return c, model, vae_helpers.filled_params(fam, model)


def test_the_discriminator_lives_beside_the_autoencoder_and_leaves_it_unchanged(setup):
  c, model, params = setup
  assert set(params) == {"encoder", "decoder", "discriminator"}
  plain = registry.family(_config(discriminator=()).model).module()
  x = jnp.asarray(clips(2))
  with_d = model.apply({"params": params}, x, sample_posterior=False)[0]
  without = plain.apply({"params": {k: v for k, v in params.items() if k != "discriminator"}},
                        x, sample_posterior=False)[0]
  np.testing.assert_array_equal(np.asarray(with_d), np.asarray(without))
  logits = model.apply({"params": params}, x, method="discriminate")
  assert logits.shape == (2, FRAMES, SIZE // 2, SIZE // 2, 1)     # one halving for (8, 16)
  one_frame = model.apply({"params": params}, x[:, :1], method="discriminate")
  assert one_frame.shape == (2, 1, SIZE // 2, SIZE // 2, 1)     # images of a joint batch
  with pytest.raises(ValueError, match="no discriminator"):
    plain.apply({"params": params}, x, method="discriminate")


def test_hinge_losses_and_r1_match_their_closed_forms():
  real = jnp.asarray([[[2.0], [0.5]], [[-1.0], [0.0]]])           # [B=2, 2 patches, 1]
  fake = jnp.asarray([[[-2.0], [0.5]], [[1.0], [-1.5]]])
  np.testing.assert_allclose(disc_lib.hinge_d_loss(real, fake),
                             [(0 + 0.5) / 2 + (0 + 1.5) / 2, (2 + 1) / 2 + (2 + 0) / 2])
  np.testing.assert_allclose(disc_lib.hinge_g_loss(fake), [0.75, 0.25])
  a = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 4, 4, 1)), jnp.float32)
  x = jnp.ones_like(a)
  # D(x) = a * x per patch: the gradient of its patch mean is a / N, so R1 = sum(a^2) / N^2.
  expected = np.sum(np.square(np.asarray(a)), axis=(1, 2, 3, 4)) / a[0].size ** 2
  np.testing.assert_allclose(disc_lib.r1_penalty(lambda v: a * v, x), expected, rtol=1e-5)


def _split(tree):
  return ({k: v for k, v in tree.items() if k != "discriminator"}, tree["discriminator"])


def test_one_backward_pass_gives_each_player_its_own_gradient(setup):
  c, model, params = setup
  loss_fn = train_objective.make_loss_fn(c, model)
  x = jnp.asarray(clips(2, seed=1))
  key = jax.random.key(5)
  got_fn = jax.jit(jax.value_and_grad(
      lambda p, step: loss_fn(p, {"video": x}, key, step=step), has_aux=True))

  def recon(p):
    sample_key, dropout_key = jax.random.split(key)
    return model.apply({"params": p}, x, train=True, rngs={"sample": sample_key,
                                                           "dropout": dropout_key})

  def d(p, v):
    return model.apply({"params": p}, v, method="discriminate")

  def ae_loss(ae, on):
    p = dict(ae, discriminator=params["discriminator"])
    r, mean, logvar = recon(p)
    rec = jnp.mean(jnp.abs(r - x), axis=(1, 2, 3, 4))
    kl = 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - 1 - logvar,
                       axis=(1, 2, 3, 4)) / x[0].size
    g = -jnp.mean(d(p, r), axis=(1, 2, 3, 4))
    return jnp.mean(rec + 0.5 * kl + on * ADV_W * g)

  def d_loss(dp, on):
    fake = recon(params)[0]
    p = dict(params, discriminator=dp)
    hinge = (jnp.mean(jax.nn.relu(1 - d(p, x)), axis=(1, 2, 3, 4))
             + jnp.mean(jax.nn.relu(1 + d(p, fake)), axis=(1, 2, 3, 4)))
    g = jax.grad(lambda v: jnp.sum(jnp.mean(d(p, v), axis=(1, 2, 3, 4))))(x)
    return jnp.mean(on * (hinge + 0.5 * R1_W * jnp.sum(jnp.square(g), axis=(1, 2, 3, 4))))

  want_fn = jax.jit(lambda ae, dp, on: (jax.value_and_grad(ae_loss)(ae, on),
                                        jax.grad(d_loss)(dp, on)))
  ae_params, d_params = _split(params)
  for step in (START - 1, START):           # the last warm-up step, the first adversarial one
    on = float(step >= START)
    (loss, aux), grads = got_fn(params, jnp.int32(step))
    (want_loss, want_ae), want_d = want_fn(ae_params, d_params, on)
    got_ae, got_d = _split(grads)
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-5)  # D adds no value
    for got, want in ((got_ae, want_ae), (got_d, want_d)):
      for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-4, atol=1e-6)
    d_moves = any(float(jnp.max(jnp.abs(g))) > 0.0 for g in jax.tree.leaves(got_d))
    assert d_moves == bool(on), step
    for name in ("g_adv", "d_loss", "r1", "d_real", "d_fake"):
      assert np.isfinite(float(aux["metrics"][name])), name


def test_the_train_step_passes_its_step_and_the_discriminator_learns_after_the_warm_up(setup):
  c, model, params = setup
  c = c.copy_and_resolve_references()
  # A generator that hardly answers back (tiny weight): the discriminator's learning alone.
  c.autoencoder.adversarial_weight = 1e-4
  loss_fn = train_objective.make_loss_fn(c, model)
  tx = optax.adam(3e-3)
  step = jax.jit(lambda s, b: sp.train_step(s, b, loss_fn=loss_fn, tx=tx,
                                            lr_schedule=lambda _: 3e-3, seed=0, ema_decay=0.9))
  state = st.create_train_state(params, tx)
  batch = {"video": jnp.asarray(clips(4, seed=2))}
  gaps = []
  for i in range(START + 30):
    before = state.params["discriminator"]
    state, metrics = step(state, batch)
    moved = any(bool(jnp.any(a != b)) for a, b in zip(
        jax.tree.leaves(before), jax.tree.leaves(state.params["discriminator"])))
    assert moved == (i >= START), i          # frozen in the warm-up, trained after it
    gaps.append(float(metrics["d_real"] - metrics["d_fake"]))
  # After the warm-up the discriminator separates real clips from reconstructions.
  assert gaps[-1] > gaps[START] + 0.5, gaps[START::5]


def test_the_temporal_decoder_trains_the_discriminator_with_its_temporal_layers():
  c = _config(temporal_decoder=True)
  fam = registry.family(c.model)
  abstract = fam.abstract_params(frames=FRAMES, height=SIZE, width=SIZE)
  labels = jax.tree_util.tree_flatten_with_path(fam.trainable_labels(abstract, "temporal"))[0]
  trainable = [jax.tree_util.keystr(p) for p, v in labels if v == "trainable"]
  assert any("discriminator" in p for p in trainable)
  assert not any("encoder" in p for p in trainable)
  assert is_temporal_param("discriminator/conv_0/kernel")
  assert not is_temporal_param("decoder/up0_res0/conv1/kernel")


def test_bad_adversarial_configs_fail_before_compiling():
  config_utils.validate_config(vae_config.get_config("kind=2d,factor=2,adversarial=0.1"))
  for change, message in [
      (lambda c: setattr(c.model, "discriminator", ()), "needs a discriminator"),
      (lambda c: c.autoencoder.update(adversarial_weight=0.0), "would never train"),
      (lambda c: c.autoencoder.update(r1_weight=-1.0), "autoencoder.r1_weight"),
      (lambda c: setattr(c.model, "discriminator", (32, 0)), "model.discriminator"),
  ]:
    c = vae_config.get_config("kind=2d,adversarial=0.1")
    change(c)
    with pytest.raises(errors.ConfigError, match=message):
      config_utils.validate_config(c)
  with pytest.raises(ValueError, match="adversarial=W"):
    vae_config.get_config("adversarial=-1")
