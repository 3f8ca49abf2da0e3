"""A 3-D patch discriminator for adversarial autoencoder training, and its losses.

The discriminator (`model.discriminator` = its widths, e.g. (32, 64, 128); empty = none) is the
patch GAN of taming-transformers / Stable Diffusion's autoencoder made 3-D, as MAGVIT's and
Stable Video Diffusion's temporal-decoder discriminators: 3 x 4 x 4 convolutions that halve
height and width at every width but the last, LeakyReLU(0.2), and a final 3 x 3 x 3 convolution
to one logit per space-time patch [B, T, H / 2^(n-1), W / 2^(n-1), 1]. Time is 'SAME'-padded
and never strided, so a one-frame image of a joint batch goes through it too. No
normalization: the R1 penalty (`autoencoder.r1_weight`) keeps it in check instead.

Its parameters live in the autoencoder's own tree under 'discriminator' (created at
initialization only when `model.discriminator` is set), so the train state, checkpoints, the
optimizer, EMA and sharding carry them like any other, and encode / decode never read them.

The two players share one backward pass (`objective.make_loss_fn`): the generator's term sees
the discriminator through `stop_gradient` and the discriminator's terms see the reconstruction
through `stop_gradient`, so the gradient of the sum is the autoencoder's gradient of its loss
and the discriminator's gradient of its loss, and one optax update is the simultaneous update
of both.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm_jax.models import axes
from vdm_jax.models.layers import partitioned

Dtype = Any


def _conv(features, kernel, strides, name, dtype, param_dtype):
  names = (axes.CONV_SPACE,) + (None,) * (len(kernel) - 1) + (axes.EMBED, axes.MLP)
  return nn.Conv(features, kernel, strides=strides, padding="SAME", dtype=dtype,
                 param_dtype=param_dtype, name=name,
                 kernel_init=partitioned(nn.initializers.lecun_normal(), names),
                 bias_init=partitioned(nn.initializers.zeros_init(), (axes.MLP,)))


class PatchDiscriminator3D(nn.Module):
  """[B, T, H, W, C] in [-1, 1] -> patch logits [B, T, H', W', 1] float32 (see module doc)."""
  channels: Sequence[int]
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = x.astype(self.dtype)
    n = len(self.channels)
    for i, c in enumerate(self.channels):
      stride = (1, 2, 2) if i < n - 1 else (1, 1, 1)
      h = _conv(int(c), (3, 4, 4), stride, f"conv_{i}", self.dtype, self.param_dtype)(h)
      h = nn.leaky_relu(h, 0.2)
    h = _conv(1, (3, 3, 3), (1, 1, 1), "conv_out", self.dtype, self.param_dtype)(h)
    return h.astype(jnp.float32)


def hinge_d_loss(logits_real, logits_fake):
  """The discriminator's hinge loss per example [B]: mean relu(1 - D(x)) + mean relu(1 + D(x'))."""
  axes_ = tuple(range(1, logits_real.ndim))
  return (jnp.mean(jax.nn.relu(1.0 - logits_real), axis=axes_)
          + jnp.mean(jax.nn.relu(1.0 + logits_fake), axis=axes_))


def hinge_g_loss(logits_fake):
  """The generator's hinge loss per example [B]: - mean D(x')."""
  return -jnp.mean(logits_fake, axis=tuple(range(1, logits_fake.ndim)))


def r1_penalty(d_fn, x):
  """R1 (Mescheder et al. 2018) per example [B]: |d/dx mean_patches D(x)|^2 on real data x, the
  gradient taken per example (the examples are independent, so one gradient of the batch sum)."""
  grad = jax.grad(lambda v: jnp.sum(jnp.mean(d_fn(v), axis=tuple(range(1, x.ndim)))))(x)
  return jnp.sum(jnp.square(grad), axis=tuple(range(1, x.ndim)))
