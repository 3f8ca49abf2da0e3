"""Progressive-distillation targets and losses (vdm_jax/diffusion/distillation.py) against
direct computations with a closed-form teacher."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax import diffusion
from vdm_jax.diffusion import distillation as dist

import distill_toy as toy

SCHED = diffusion.LogSNRSchedule()


def _batch(n=6, seed=0):
  x, label = toy.sample_data(jax.random.key(seed), n)
  return x, {"label": label}


@pytest.mark.parametrize("lt,ls", [(-18.0, -5.0), (-2.0, 1.0), (3.0, 15.0), (-19.9, 19.9)])
def test_ddim_x_target_makes_one_ddim_step_land_on_z_s(lt, ls):
  z_t = jax.random.normal(jax.random.key(1), (4, 3, 2))
  z_s = jax.random.normal(jax.random.key(2), (4, 3, 2))
  logsnr_t, logsnr_s = jnp.full((4,), lt), jnp.full((4,), ls)
  x = dist.ddim_x_target(z_t=z_t, z_s=z_s, logsnr_t=logsnr_t, logsnr_s=logsnr_s)
  eps = diffusion.predict_eps_from_x(z=z_t, x=x, logsnr=logsnr_t)
  landed = diffusion.ddim_step(z_t=z_t, x_pred=x, eps_pred=eps, logsnr_t=logsnr_t,
                               logsnr_s=logsnr_s)
  chex.assert_trees_all_close(landed, z_s, atol=2e-4, rtol=2e-4)


def _teacher_step_by_hand(z, t_from, t_to, cond):
  """One teacher DDIM step written out (per-example times [B]): v -> (x, eps) -> z_to."""
  l_from, l_to = SCHED(t_from), SCHED(t_to)
  v = toy.teacher_fn(z, l_from, cond)
  a_f, s_f = diffusion.alpha_sigma(l_from[:, None])
  a_t, s_t = diffusion.alpha_sigma(l_to[:, None])
  x = a_f * z - s_f * v
  eps = s_f * z + a_f * v
  return a_t * x + s_t * eps, x


def test_target_x_equals_what_two_teacher_ddim_steps_imply():
  n = 4
  x0, cond = _batch(n=8)
  i = jnp.array([4, 4, 3, 3, 2, 2, 1, 1], jnp.float32)  # student steps from t = i / N
  t = i / n
  z_t = diffusion.q_sample(x=x0, eps=jax.random.normal(jax.random.key(3), x0.shape),
                           logsnr=SCHED(t))
  target = dist.progressive_target(teacher_fn=toy.teacher_fn, z_t=z_t, t=t,
                                   num_student_steps=n, schedule=SCHED, prediction="v",
                                   cond=cond)
  # Direct computation: two teacher steps i/N -> (2i-1)/2N -> (i-1)/N.
  z_mid, _ = _teacher_step_by_hand(z_t, t, (2 * i - 1) / (2 * n), cond)
  z_two, x_mid = _teacher_step_by_hand(z_mid, (2 * i - 1) / (2 * n), (i - 1) / n, cond)
  # One student DDIM step with the target lands where the teacher's two steps land.
  eps = diffusion.predict_eps_from_x(z=z_t, x=target["x"], logsnr=SCHED(t))
  landed = diffusion.ddim_step(z_t=z_t, x_pred=target["x"], eps_pred=eps, logsnr_t=SCHED(t),
                               logsnr_s=SCHED((i - 1) / n))
  chex.assert_trees_all_close(landed[:6], z_two[:6], atol=1e-4, rtol=1e-4)
  # Final step (t = 1/N): the sampler returns x; the target is the teacher's x after 2 steps.
  chex.assert_trees_all_close(target["x"][6:], x_mid[6:], atol=1e-5)
  np.testing.assert_array_equal(target["is_final"], i == 1)
  # The target differs from the teacher's own one-step x (it is a genuine 2-step target).
  _, x_one = _teacher_step_by_hand(z_t, t, (i - 1) / n, cond)
  assert float(jnp.min(jnp.max(jnp.abs(target["x"] - x_one), axis=1))) > 1e-3


def _oracle_student(n, prediction, guidance=None, clip="none"):
  """A student whose output is the progressive target: it samples in N what the teacher
  samples in 2N steps (with guidance and thresholding as given)."""
  def model_fn(z, logsnr, cond):
    t = jnp.round(SCHED.inverse(logsnr) * n) / n
    kw = {} if guidance is None else dict(uncond={"label": jnp.zeros_like(cond["label"])},
                                          guidance_weight=guidance)
    tgt = dist.progressive_target(teacher_fn=toy.teacher_fn, z_t=z, t=t, num_student_steps=n,
                                  schedule=SCHED, prediction="v", cond=cond, clip=clip, **kw)
    return diffusion.from_x_and_eps(prediction=prediction, x=tgt["x"], eps=tgt["eps"],
                                    logsnr=logsnr)
  return model_fn


@pytest.mark.parametrize("prediction,guidance,clip", [("eps", None, "none"),
                                                     ("v", 3.0, "dynamic")])
def test_oracle_student_sampler_reproduces_teacher_with_twice_the_steps(prediction, guidance,
                                                                        clip):
  n = 4
  _, cond = _batch()
  noise = jax.random.normal(jax.random.key(5), (6, 2))
  kw = dict(shape=(6, 2), key=jax.random.key(0), schedule=SCHED, init_noise=noise, cond=cond)
  gkw = {} if guidance is None else dict(uncond={"label": jnp.zeros_like(cond["label"])},
                                         guidance_weight=guidance)
  teacher = diffusion.sample(model_fn=toy.teacher_fn, num_steps=2 * n, prediction="v",
                             clip=clip, **kw, **gkw)
  # A thresholded teacher's steps are part of the target: the student samples unthresholded.
  student = diffusion.sample(model_fn=_oracle_student(n, prediction, guidance, clip),
                             num_steps=n, prediction=prediction, **kw)
  teacher_n = diffusion.sample(model_fn=toy.teacher_fn, num_steps=n, prediction="v", **kw,
                               **gkw)
  # eps -> x at logsnr -20 amplifies float32 round-off by e^10; v stays exact.
  chex.assert_trees_all_close(student, teacher, atol=2e-4 if prediction == "v" else 1e-3)
  if guidance is not None:
    return
  # ... whereas the teacher itself with N steps lands elsewhere.
  teacher_n = diffusion.sample(model_fn=toy.teacher_fn, num_steps=n, prediction="v", **kw)
  assert float(jnp.max(jnp.abs(teacher_n - teacher))) > 1e-2


def test_progressive_loss_is_zero_at_the_target_with_truncated_snr_weight():
  x0, cond = _batch(n=32)

  @jax.jit
  def losses(n):  # the student-step count is traced, as in the sharded distillation step
    kw = dict(teacher_fn=toy.teacher_fn, x=x0, key=jax.random.key(7), num_student_steps=n,
              schedule=SCHED, prediction="v", cond=cond)
    return (dist.progressive_distillation_loss(student_fn=_oracle_student(4, "v"), **kw),
            dist.progressive_distillation_loss(student_fn=toy.teacher_fn, **kw)[0])

  (loss, aux), loss_teacher = losses(jnp.int32(4))
  assert float(loss) < 1e-6
  # The teacher itself is not the student's optimum (one step != two steps).
  assert float(loss_teacher) > 1e-3
  # t lies on the student grid, the weight is max(SNR, 1).
  assert set(np.asarray(aux["t"]).tolist()) == {0.25, 0.5, 0.75, 1.0}
  np.testing.assert_allclose(aux["weight"], np.maximum(np.exp(aux["logsnr"]), 1.0), rtol=1e-5)


def test_sample_guidance_weight_range_and_errors():
  w = dist.sample_guidance_weight(jax.random.key(0), 1000, w_min=1.0, w_max=3.0)
  assert w.shape == (1000,) and float(w.min()) >= 1.0 and float(w.max()) <= 3.0
  assert float(w.max() - w.min()) > 1.5
  with pytest.raises(ValueError, match="w_min"):
    dist.sample_guidance_weight(jax.random.key(0), 4, w_min=2.0, w_max=1.0)
