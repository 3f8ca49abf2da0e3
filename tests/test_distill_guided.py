"""Guided distillation (stage one, Meng et al. 2022) on a toy problem with closed-form
conditional and unconditional denoisers: the loss's optimum is the guided output, and a small
w-conditioned MLP trained on it reproduces the classifier-free-guided teacher, sampling with
one network evaluation per step."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vdm_jax import diffusion
from vdm_jax.diffusion import distillation as dist
from vdm_jax.distill import make_student_model_fn

import distill_toy as toy

SCHED = diffusion.LogSNRSchedule()
W_MIN, W_MAX = 0.0, 4.0
TRAIN_STEPS = 600


class ToyStudent(nn.Module):
  """v-prediction MLP of (z [B, 2], logsnr [B], one-hot label [B, 2], guidance weight [B])."""

  @nn.compact
  def __call__(self, z, logsnr, *, label, guidance_weight, train=False):
    del train
    l = logsnr[:, None] / 10.0
    h = jnp.concatenate([z, l, jnp.tanh(2 * l), guidance_weight[:, None] / 4.0, label], -1)
    for _ in range(3):
      h = nn.silu(nn.Dense(128)(h))
    return nn.Dense(2)(h)


def _guided_loss(student_fn, key, n=512):
  """Stage-one loss of `student_fn(z, logsnr, {'label', 'guidance_weight'})` on fresh draws."""
  kd, kw, kl = jax.random.split(key, 3)
  x, label = toy.sample_data(kd, n)
  w = dist.sample_guidance_weight(kw, n, w_min=W_MIN, w_max=W_MAX)
  cond = {"label": label}
  return dist.guided_distillation_loss(
      student_fn=student_fn, teacher_fn=toy.teacher_fn, x=x, key=kl, cond=cond,
      uncond={"label": jnp.zeros_like(label)}, student_cond=dict(cond, guidance_weight=w),
      guidance_weight=w, schedule=SCHED)


def _reference_student(z, logsnr, c):
  """The guided output written out in closed form, as a v-prediction."""
  x = toy.guided_x_reference(z, logsnr, c["label"], c["guidance_weight"])
  return diffusion.predict_v_from_x(z=z, x=x, logsnr=logsnr)


def _conditional_student(z, logsnr, c):
  """Ignores w: the unguided conditional teacher."""
  return toy.teacher_fn(z, logsnr, {"label": c["label"]})


def test_guided_teacher_x_is_the_cfg_combination_of_closed_form_denoisers():
  x, label = toy.sample_data(jax.random.key(0), 16)
  logsnr = SCHED(jnp.linspace(0.05, 0.95, 16))
  z = diffusion.q_sample(x=x, eps=jax.random.normal(jax.random.key(1), x.shape), logsnr=logsnr)
  w = jnp.linspace(0.0, 4.0, 16)
  got = dist.guided_teacher_x(teacher_fn=toy.teacher_fn, z=z, logsnr=logsnr, prediction="v",
                              cond={"label": label}, uncond={"label": jnp.zeros_like(label)},
                              guidance_weight=w)
  np.testing.assert_allclose(got, toy.guided_x_reference(z, logsnr, label, w), atol=1e-4)


def test_the_guided_output_is_the_exact_optimum_of_the_stage_one_loss():
  shifted = lambda z, l, c: _reference_student(z, l, c) + 0.01

  @jax.jit
  def losses(k):  # the same draws for every candidate student
    return (_guided_loss(_reference_student, k), _guided_loss(_conditional_student, k)[0],
            _guided_loss(shifted, k)[0])

  (loss_opt, aux), loss_cond, loss_shift = losses(jax.random.key(2))
  assert float(loss_opt) < 1e-8
  # Any other output costs more: the conditional teacher, or the optimum moved a little.
  assert float(loss_cond) > 0.1 and float(loss_shift) > 1e-6
  np.testing.assert_allclose(aux["weight"], np.maximum(np.exp(aux["logsnr"]), 1.0), rtol=1e-5)


@pytest.fixture(scope="module")
def trained_student():
  model = ToyStudent()
  params = model.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,)),
                      label=jnp.zeros((1, 2)), guidance_weight=jnp.zeros((1,)))["params"]
  tx = optax.adam(optax.cosine_decay_schedule(3e-3, TRAIN_STEPS))

  def loss(p, key):
    return _guided_loss(lambda z, l, c: model.apply({"params": p}, z, l, **c), key)[0]

  @jax.jit
  def train(p):
    def body(carry, k):
      p, o = carry
      g = jax.grad(loss)(p, k)
      u, o = tx.update(g, o, p)
      return (optax.apply_updates(p, u), o), None
    keys = jax.random.split(jax.random.key(1), TRAIN_STEPS)
    return jax.lax.scan(body, (p, tx.init(p)), keys)[0][0]

  return model, train(params)


def test_w_conditioned_student_learns_the_guided_teacher(trained_student):
  model, params = trained_student
  student = lambda z, l, c: model.apply({"params": params}, z, l, **c)
  loss_student, loss_cond = jax.jit(lambda k: (_guided_loss(student, k)[0], _guided_loss(
      _conditional_student, k)[0]))(jax.random.key(9))
  assert float(loss_student) < 0.02 * float(loss_cond), (loss_student, loss_cond)


class _CountingModel:
  """Wraps a Linen module; records the batch size of every traced call."""

  def __init__(self, model):
    self.model, self.batches = model, []

  def apply(self, variables, z, *args, **kwargs):
    self.batches.append(z.shape[0])
    return self.model.apply(variables, z, *args, **kwargs)


@pytest.mark.parametrize("w", [1.0, 3.0])
def test_distilled_student_samples_like_the_guided_teacher_in_one_call_per_step(
    trained_student, w):
  model, params = trained_student
  b = 64
  _, label = toy.sample_data(jax.random.key(3), b)
  teacher_batches = []

  def teacher_fn(z, l, c):
    teacher_batches.append(z.shape[0])
    return toy.teacher_fn(z, l, c)

  kw = dict(shape=(b, 2), key=jax.random.key(0), schedule=SCHED, num_steps=16,
            init_noise=jax.random.normal(jax.random.key(4), (b, 2)), cond={"label": label})
  guided = diffusion.sample(model_fn=teacher_fn, uncond={"label": jnp.zeros_like(label)},
                            guidance_weight=w, **kw)
  counting = _CountingModel(model)
  student = diffusion.sample(model_fn=make_student_model_fn(counting, params, guidance_weight=w),
                             **kw)
  unguided = diffusion.sample(model_fn=toy.teacher_fn, **kw)
  # The guided teacher evaluates [cond; uncond] (2B rows) per step; the student B rows.
  assert set(teacher_batches) == {2 * b} and set(counting.batches) == {b}
  err = float(jnp.mean(jnp.abs(student - guided)))
  gap = float(jnp.mean(jnp.abs(unguided - guided)))
  assert err < 0.25 * gap, (err, gap)
