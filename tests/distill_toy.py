"""A toy diffusion problem with closed-form denoisers, shared by the distillation tests.

Data: x in R^2 from a two-class Gaussian mixture, p(x | c) = N(mu_c, s^2 I), classes equally
likely. With z = alpha x + sigma eps the optimal denoisers are closed form:
  E[x | z, c] = mu_c + k (z - alpha mu_c),   k = alpha s^2 / (alpha^2 s^2 + sigma^2)
  E[x | z]    = sum_c r_c(z) E[x | z, c],    r_c ∝ N(z; alpha mu_c, (alpha^2 s^2 + sigma^2) I).
The teacher outputs v = (alpha z - x) / sigma; cond is {'label': one-hot [B, 2]}, and an
all-zero label is the unconditional model (the null condition of classifier-free guidance).
"""
import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax.diffusion import parameterization as param
from vdm_jax.diffusion.schedules import alpha_sigma

MU = np.array([[1.0, 0.5], [-0.5, -1.0]], np.float32)  # [2 classes, 2 dims]
S = 0.3


def _ab(logsnr):
  a, s = alpha_sigma(logsnr)
  return a[:, None], s[:, None]


def conditional_x(z, logsnr, label):
  """E[x | z, c] for one-hot labels [B, 2]; z [B, 2] -> [B, 2]."""
  a, s = _ab(logsnr)
  mu = label @ MU
  k = a * S**2 / (a**2 * S**2 + s**2)
  return mu + k * (z - a * mu)


def unconditional_x(z, logsnr):
  """E[x | z] of the mixture; z [B, 2] -> [B, 2]."""
  a, s = _ab(logsnr)
  var = a**2 * S**2 + s**2                                   # [B, 1]
  d2 = jnp.sum((z[:, None, :] - a[:, None] * MU[None]) ** 2, axis=-1)  # [B, 2]
  r = jax.nn.softmax(-0.5 * d2 / var, axis=-1)               # [B, 2]
  xs = jnp.stack([conditional_x(z, logsnr, jnp.broadcast_to(jnp.eye(2)[c], z.shape))
                  for c in range(2)], axis=1)                # [B, 2, 2]
  return jnp.sum(r[..., None] * xs, axis=1)


def teacher_fn(z, logsnr, cond):
  """v-prediction of the optimal denoiser; label all-zero -> unconditional."""
  label = cond["label"]
  has = jnp.sum(label, axis=-1, keepdims=True) > 0
  x = jnp.where(has, conditional_x(z, logsnr, label), unconditional_x(z, logsnr))
  return param.predict_v_from_x(z=z, x=x, logsnr=logsnr)


def guided_x_reference(z, logsnr, label, w):
  """(1 + w) E[x | z, c] - w E[x | z], written out directly; w [B]."""
  w = jnp.asarray(w, jnp.float32)[:, None]
  return (1 + w) * conditional_x(z, logsnr, label) - w * unconditional_x(z, logsnr)


def sample_data(key, n):
  """(x [n, 2], one-hot labels [n, 2])."""
  kc, kx = jax.random.split(key)
  c = jax.random.randint(kc, (n,), 0, 2)
  label = jax.nn.one_hot(c, 2)
  x = label @ MU + S * jax.random.normal(kx, (n, 2))
  return x, label
