"""The autoencoder: encoder -> diagonal Gaussian posterior over latents -> decoder.

    model = AutoencoderKL(spec)
    mean, logvar = model.apply(v, video, method=AutoencoderKL.encode)   # [B, T', H', W', C']
    video = model.apply(v, z, method=AutoencoderKL.decode)              # [B, T, H, W, 3]
    recon, mean, logvar = model.apply(v, video, train=True, rngs={"sample": k})

Videos are [B, T, H, W, C] in [-1, 1]. The encoder is Stable Diffusion's (levels of residual
blocks, a strided conv between levels, a middle block with attention, 2 x latent channels of
moments), with causal 3-D convs and time downsamplers when `temporal_kernel=3` (see layers.py);
the decoder mirrors it with one more residual block per level. With `temporal_decoder`, every
decoder residual block is followed by a `TemporalResBlock` (its parameters are named
'*_temporal'), and the output gets a zero-initialized causal time conv: at initialization the
decoder is the per-frame one.
"""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm_jax.models.vae import layers
from vdm_jax.models.vae.discriminator import PatchDiscriminator3D
from vdm_jax.models.vae.spec import VAESpec


def kl_to_standard_normal(mean, logvar):
  """KL(N(mean, exp(logvar)) || N(0, 1)) summed over all but the batch axis: [B]."""
  kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
  return jnp.sum(kl.reshape(kl.shape[0], -1).astype(jnp.float32), axis=-1)


class Encoder(nn.Module):
  spec: VAESpec

  @nn.compact
  def __call__(self, x, train: bool = False):
    s = self.spec
    kw = dict(dtype=s.compute_dtype, param_dtype=s.params_dtype)
    blk = dict(kt=s.temporal_kernel, norm=s.norm, groups=s.norm_groups, dropout=s.dropout, **kw)
    start = layers.CACHE not in self.variables   # the first chunk of a video (or all of it)
    h = layers.CausalConv3D(s.channels[0], (s.temporal_kernel, 3, 3), name="conv_in", **kw)(
        x.astype(s.compute_dtype))
    for i, ch in enumerate(s.channels):
      for j in range(s.num_res_blocks):
        h = layers.ResBlock(ch, name=f"down{i}_res{j}", **blk)(h, train)
      if i < len(s.channels) - 1:
        h = layers.SpaceDown(ch, name=f"down{i}_space", **kw)(h)
        if s.time_down[i] and s.time_resample == "pool":
          h = layers.TimePool(name=f"down{i}_time")(h, start)
        elif s.time_down[i]:
          h = layers.TimeDown(name=f"down{i}_time", **kw)(h)
    h = _middle(s, h, train, blk, kw)
    h = nn.silu(layers.make_norm(s.norm, s.norm_groups, name="norm_out", **kw)(h))
    h = layers.CausalConv3D(2 * s.latent_channels, (s.temporal_kernel, 3, 3), name="conv_out",
                            **kw)(h)
    if s.quant_conv:
      h = layers.CausalConv3D(2 * s.latent_channels, (1, 1, 1), name="quant_conv", **kw)(h)
    mean, logvar = jnp.split(h.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, s.logvar_min, s.logvar_max)


def _middle(s: VAESpec, h, train, blk, kw, temporal: bool = False):
  kw = dict(kw)
  halo_axis = kw.pop("halo_axis", None)
  h = layers.ResBlock(h.shape[-1], name="mid_res0", **blk)(h, train)
  if temporal:
    h = _temporal(s, "mid_res0", kw, halo_axis)(h)
  if s.mid_attention:
    h = layers.FrameAttention(norm=s.norm, groups=s.norm_groups, name="mid_attn", **kw)(h)
  h = layers.ResBlock(h.shape[-1], name="mid_res1", **blk)(h, train)
  if temporal:
    h = _temporal(s, "mid_res1", kw, halo_axis)(h)
  return h


def _temporal(s: VAESpec, after: str, kw, halo_axis=None):
  return layers.TemporalResBlock(norm=s.norm, groups=s.norm_groups, name=f"{after}_temporal",
                                 halo_axis=halo_axis, **kw)


class Decoder(nn.Module):
  """The decoder. With `halo_axis` it runs inside `shard_map` on one time shard of the latents
  (after the first latent), every causal layer taking its past frames from the previous device
  (`layers.halo_past`), the first device from the cache of the first latent."""
  spec: VAESpec
  halo_axis: Optional[str] = None

  @nn.compact
  def __call__(self, z, train: bool = False):
    s = self.spec
    kw = dict(dtype=s.compute_dtype, param_dtype=s.params_dtype)
    halo = dict(halo_axis=self.halo_axis)
    blk = dict(kt=s.temporal_kernel, norm=s.norm, groups=s.norm_groups, dropout=s.dropout,
               **halo, **kw)
    mix = s.temporal_decoder
    start = layers.CACHE not in self.variables   # the first chunk of a video (or all of it)
    h = z.astype(s.compute_dtype)
    if s.quant_conv:
      h = layers.CausalConv3D(s.latent_channels, (1, 1, 1), name="post_quant_conv", **kw)(h)
    h = layers.CausalConv3D(s.channels[-1], (s.temporal_kernel, 3, 3), name="conv_in", **halo,
                            **kw)(h)
    h = _middle(s, h, train, blk, dict(kw, **halo), temporal=mix)
    for i in reversed(range(len(s.channels))):
      for j in range(s.num_res_blocks + 1):
        h = layers.ResBlock(s.channels[i], name=f"up{i}_res{j}", **blk)(h, train)
        if mix:
          h = _temporal(s, f"up{i}_res{j}", kw, self.halo_axis)(h)
      if i > 0:
        h = layers.SpaceUp(s.channels[i], name=f"up{i}_space", **kw)(h)
        if s.time_down[i - 1] and s.time_resample == "pool":
          h = layers.time_repeat(h, start)
        elif s.time_down[i - 1]:
          h = layers.TimeUp(name=f"up{i}_time", **halo, **kw)(h)
    h = nn.silu(layers.make_norm(s.norm, s.norm_groups, name="norm_out", **kw)(h))
    h = layers.CausalConv3D(s.image_channels, (s.temporal_kernel, 3, 3), name="conv_out",
                            **halo, **kw)(h)
    if mix:   # Stable Video Diffusion's output time conv, as a residual that starts at zero
      h = h + layers.CausalConv3D(s.image_channels, (3, 1, 1), zero_init=True,
                                  name="conv_out_temporal", **halo, **kw)(h)
    return h.astype(jnp.float32)


class AutoencoderKL(nn.Module):
  """Encoder + decoder of `spec` (see the module docstring)."""
  spec: VAESpec

  def setup(self):
    self.encoder = Encoder(self.spec)
    self.decoder = Decoder(self.spec)
    if self.spec.discriminator:
      self.discriminator = PatchDiscriminator3D(
          tuple(int(c) for c in self.spec.discriminator), dtype=self.spec.compute_dtype,
          param_dtype=self.spec.params_dtype)

  def discriminate(self, x):
    """Patch logits [B, T, H', W', 1] of the adversarial-training discriminator (discriminator.py)
    on videos [B, T, H, W, C] in [-1, 1]; needs `model.discriminator`."""
    if not self.spec.discriminator:
      raise ValueError("this autoencoder has no discriminator: set model.discriminator, e.g. "
                       "(32, 64, 128)")
    return self.discriminator(x)

  def encode(self, x, train: bool = False):
    """[B, T, H, W, C] -> (mean, logvar), each [B, T', H', W', latent_channels] float32."""
    return self.encoder(x, train)

  def decode(self, z, train: bool = False):
    """[B, T', H', W', latent_channels] -> [B, T, H, W, C] float32."""
    return self.decoder(z, train)

  def __call__(self, x, train: bool = False, sample_posterior: bool = True):
    """(reconstruction, mean, logvar): decodes a posterior sample (rng 'sample') or the mean."""
    mean, logvar = self.encode(x, train)
    z = mean
    if sample_posterior:
      eps = jax.random.normal(self.make_rng("sample"), mean.shape, jnp.float32)
      z = mean + jnp.exp(0.5 * logvar) * eps
    recon = self.decode(z, train)
    if self.spec.discriminator and self.is_initializing():
      self.discriminate(x)              # creates its parameters
    return recon, mean, logvar
