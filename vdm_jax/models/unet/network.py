"""The factorized space-time U-Net of Video Diffusion Models / Imagen Video (Flax Linen).

    model = SpaceTimeUNet(config=cfg.model)
    out = model.apply(params, x, logsnr, text_emb=..., text_mask=..., fps=..., train=False)
    # x [B, T, H, W, C] -> out [B, T, H, W, cfg.model.out_channels]

Layout (levels l = 0..L-1 with channels base_channels * channel_mult[l]):
  conv_in (3x3 per frame)
  down:   per level num_res_blocks x [ResBlock -> mixers(l)], then a spatial 2x downsample
          (not after the last level); every output is kept as a skip connection.
  middle: ResBlock -> mixers(L-1) -> ResBlock
  up:     per level (reversed) num_res_blocks + 1 x [concat skip -> ResBlock -> mixers(l)],
          then a spatial 2x upsample (not after level 0).
  out:    GroupNorm -> SiLU -> conv_out (3x3 per frame)
  mixers(l) (after every ResBlock; with mixers='last_block' after a level's last ResBlock in
             each path only) =
              [SpatialSelfAttention]  if spatial_attention[l]
              [TextCrossAttention]    if cross-attention at l (text_cross_attention: the
                                      spatial-attention levels, or cross_attention_levels)
            + TemporalSelfAttention | TemporalConvBlock | nothing  per temporal_mixing[l]
              ('attention' | 'conv' | 'none'), or SpaceTimeSelfAttention ('spacetime': full
              attention over T*H*W with relative space-time positions, for a coarse level)
  ResBlocks of levels whose temporal_mixing is not 'none' also carry a 3x1x1 temporal conv
  when temporal_conv_in_resblock is set (after its second 3x3 conv; with pseudo3d_convs after
  each of its two, Make-A-Video's pseudo-3D convolutions). Time is never downsampled. Norms and
  spatial layers see one frame at a time, so with temporal_mixing 'none' everywhere the network
  is an image model applied per frame, and `is_image` examples (joint image-video training) are
  processed exactly that way: temporal attention masked to self, temporal convs bypassed.

Conditioning: FiLM embedding = MLP(sin(logsnr)) + optional fps, conditioning-augmentation
logSNR and guidance-weight embeddings + Dense(masked mean of text) (see conditioning.py), and
with `frame_position='sinusoidal'` + MLP(sin(frame index)) per frame (absolute time, which the
relative positions of temporal attention do not give; the paper models have none); the
low-resolution video of an SR stage is resized to the input geometry and concatenated on
channels. With `frame_mask_conditioning` (masked frame interpolation, Make-A-Video) the known
frames `frame_cond` (zeroed where unknown) and the per-frame mask `frame_mask` broadcast over
space are concatenated on channels (C + 1 extra input channels). Inputs are validated before
tracing any layer: a missing input that the config requires, or an input given that the config
does not use, raises ValueError naming it.

Rematerialization: `model.remat` none | block | full (policies in unet_spec.py), applied to
every residual, attention and temporal block.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vdm_jax.models import attention_blocks
from vdm_jax.models import axes
from vdm_jax.models import conditioning
from vdm_jax.models import input_checks
from vdm_jax.models import spec_common
from vdm_jax.models import layers
from vdm_jax.models.unet import spec as unet_spec

_WHY = {"text_emb": "text_cross_attention or text_pooled_conditioning",
        "text_mask": "text_cross_attention or text_pooled_conditioning"}


class SpaceTimeUNet(nn.Module):
  """Factorized space-time U-Net. `config` is the `model` section of an experiment config."""
  config: Any

  @nn.compact
  def __call__(self, x, logsnr, *, text_emb=None, text_mask=None, fps=None,
               cond_aug_logsnr=None, lowres_video=None, is_image=None, guidance_weight=None,
               frame_cond=None, frame_mask=None, train=False):
    """Predicts the diffusion target for a noisy video.

    Args:
      x: [B, T, H, W, C] noisy video.
      logsnr: [B] log signal-to-noise ratio of x.
      text_emb: [B, L, text_embed_dim] token embeddings (text_cross_attention or
        text_pooled_conditioning).
      text_mask: [B, L] bool, True = real token; default all True.
      fps: [B] frame rate (fps_conditioning).
      cond_aug_logsnr: [B] logSNR of the noise added to lowres_video (cond_aug_conditioning).
      lowres_video: [B, T', H', W', C'] previous-stage video (lowres_conditioning != 'none').
      is_image: [B] bool, examples that are independent images, not videos; default False.
      guidance_weight: [B] guidance weight (guidance_weight_conditioning).
      frame_cond: [B, T, H, W, C] known frames, any values where unknown
        (frame_mask_conditioning).
      frame_mask: [B, T] bool or 0/1 float, 1 = frame t of frame_cond is known
        (frame_mask_conditioning).
      train: enables dropout (rng stream 'dropout').

    Returns:
      [B, T, H, W, out_channels] float32.
    """
    spec = unet_spec.UNetSpec.from_config(self.config)
    input_checks.check_inputs(
        "SpaceTimeUNet", spec, unet_spec.INPUT_FLAGS, x, logsnr, why=_WHY, text_emb=text_emb,
        text_mask=text_mask, fps=fps, cond_aug_logsnr=cond_aug_logsnr, lowres_video=lowres_video,
        is_image=is_image, guidance_weight=guidance_weight, frame_cond=frame_cond,
        frame_mask=frame_mask)
    b, t, h, w, _ = x.shape
    dt, pdt = spec.compute_dtype, spec.params_dtype
    kw = dict(dtype=dt, param_dtype=pdt)
    if is_image is None:
      is_image = jnp.zeros((b,), jnp.bool_)
    if spec.needs_text and text_mask is None:
      text_mask = jnp.ones(text_emb.shape[:2], jnp.bool_)

    emb = conditioning.ConditioningEmbedding(spec.cond_embed_dim, name="cond", **kw)(
        logsnr, fps=fps, cond_aug_logsnr=cond_aug_logsnr, guidance_weight=guidance_weight,
        text=text_emb if spec.text_pooled_conditioning else None, text_mask=text_mask)
    if spec.frame_position == "sinusoidal":
      # Each frame's absolute index, embedded like logSNR and added to its FiLM embedding
      # ([B, E] -> [B, T, E]); independent images (is_image) get none.
      frames = layers.ScalarEmbedding(spec.cond_embed_dim, name="frame_position", **kw)(
          jnp.arange(t, dtype=jnp.float32))                          # [T, E]
      frames = jnp.where(is_image[:, None, None], 0.0, frames[None].astype(emb.dtype))
      emb = emb[:, None, :] + frames
    text = None
    if spec.text_cross_attention:
      text = nn.LayerNorm(dtype=dt, param_dtype=pdt, name="text_norm",
                          scale_init=layers.partitioned(nn.initializers.ones_init(),
                                                        (axes.NORM,)),
                          bias_init=layers.partitioned(nn.initializers.zeros_init(),
                                                       (axes.NORM,)))(text_emb)

    if spec.lowres_conditioning != "none":
      low = conditioning.upsample_lowres(
          lowres_video, mode=spec.lowres_conditioning, frames=t, height=h, width=w,
          temporal_method=spec.lowres_temporal_upsample)
      x = jnp.concatenate([x, low.astype(x.dtype)], axis=-1)
    if spec.frame_mask_conditioning:
      known = conditioning.frame_mask_channels(frame_cond, frame_mask)   # [B, T, H, W, C + 1]
      x = jnp.concatenate([x, known.astype(x.dtype)], axis=-1)
    x = layers.constrain_video(x.astype(dt))

    blocks = _Blocks(spec, train)
    hid = layers.conv(spec.base_channels, (3, 3), names_io=(None, axes.MLP),
                      name="conv_in", **kw)(x)
    skips = [hid]
    for level in range(spec.num_levels):
      for i in range(spec.num_res_blocks):
        hid = blocks.res(level, f"down{level}_res{i}")(hid, emb, is_image)
        if spec.mixes_after(i, spec.num_res_blocks):
          hid = blocks.mix(level, f"down{level}_{i}", hid, text, text_mask, is_image)
        skips.append(hid)
      if level < spec.num_levels - 1:
        hid = layers.Downsample(spec.level_channels(level), name=f"down{level}_resample",
                                **kw)(hid)
        skips.append(hid)

    last = spec.num_levels - 1
    hid = blocks.res(last, "mid_res0")(hid, emb, is_image)
    hid = blocks.mix(last, "mid", hid, text, text_mask, is_image)
    hid = blocks.res(last, "mid_res1")(hid, emb, is_image)

    for level in reversed(range(spec.num_levels)):
      for i in range(spec.num_res_blocks + 1):
        hid = jnp.concatenate([hid, skips.pop()], axis=-1)
        hid = blocks.res(level, f"up{level}_res{i}")(hid, emb, is_image)
        if spec.mixes_after(i, spec.num_res_blocks + 1):
          hid = blocks.mix(level, f"up{level}_{i}", hid, text, text_mask, is_image)
      if level > 0:
        hid = layers.Upsample(spec.level_channels(level), name=f"up{level}_resample",
                              **kw)(hid)

    hid = layers.FrameGroupNorm(spec.num_groups, name="norm_out", **kw)(hid)
    # The few input/output channels (3, 6, ...) are never sharded: named None.
    out = layers.conv(spec.out_channels, (3, 3), names_io=(axes.EMBED, None),
                      name="conv_out", **kw)(nn.silu(hid))
    return out.astype(jnp.float32)


class _Blocks:
  """Creates the (optionally rematerialized) blocks of one U-Net level inside its parent."""

  def __init__(self, spec, train):
    self.spec = spec
    self.deterministic = not train
    policy = spec_common.REMAT_POLICIES.get(spec.remat)
    wrap = (lambda cls: nn.remat(cls, policy=policy)) if policy is not None else (lambda c: c)
    self.res_cls = wrap(layers.ResBlock)
    self.spatial_cls = wrap(attention_blocks.SpatialSelfAttention)
    self.cross_cls = wrap(attention_blocks.TextCrossAttention)
    self.temporal_attn_cls = wrap(attention_blocks.TemporalSelfAttention)
    self.temporal_conv_cls = wrap(layers.TemporalConvBlock)
    self.spacetime_attn_cls = wrap(attention_blocks.SpaceTimeSelfAttention)
    self.kw = dict(dtype=spec.compute_dtype, param_dtype=spec.params_dtype)

  def res(self, level, name):
    s = self.spec
    temporal = s.temporal_conv_in_resblock and s.temporal_mixing[level] != "none"
    return self.res_cls(s.level_channels(level), s.num_groups, dropout=s.dropout,
                        temporal_conv=temporal, temporal_conv_after_each=s.pseudo3d_convs,
                        deterministic=self.deterministic, name=name, **self.kw)

  def _attn_kw(self, channels):
    heads, dim = self.spec.heads(channels)
    return dict(num_heads=heads, head_dim=dim, num_groups=self.spec.num_groups,
                implementation=self.spec.attention_impl, **self.kw)

  def mix(self, level, prefix, x, text, text_mask, is_image):
    """Spatial attention (+ text cross-attention) and temporal mixing of one level."""
    s = self.spec
    c = x.shape[-1]
    if s.spatial_attention[level]:
      x = self.spatial_cls(name=f"{prefix}_spatial_attn", **self._attn_kw(c))(x)
    if s.cross_attention_at(level):
      x = self.cross_cls(name=f"{prefix}_cross_attn", **self._attn_kw(c))(x, text, text_mask)
    mode = s.temporal_mixing[level]
    if mode == "attention":
      attn = self.temporal_attn_cls(num_buckets=s.rel_pos_buckets,
                                    max_distance=s.rel_pos_max_distance,
                                    position=s.temporal_position,
                                    text_bias=s.temporal_text_bias,
                                    text_bias_pooling=s.temporal_text_bias_pooling,
                                    name=f"{prefix}_temporal_attn", **self._attn_kw(c))
      x = (attn(x, is_image, text, text_mask) if s.temporal_text_bias else attn(x, is_image))
    elif mode == "spacetime":
      x = self.spacetime_attn_cls(num_buckets=s.rel_pos_buckets,
                                  max_distance=s.rel_pos_max_distance,
                                  name=f"{prefix}_spacetime_attn", **self._attn_kw(c))(x, is_image)
    elif mode == "conv":
      x = self.temporal_conv_cls(s.num_groups, name=f"{prefix}_temporal_conv", **self.kw)(
          x, is_image)
    return x
