"""Attention blocks of the factorized space-time U-Net.

  SpatialSelfAttention   each frame's H*W positions attend to each other.
  TemporalSelfAttention  each spatial position's T frames attend to each other, with a learned
                         T5-style relative position bias (optionally Shaw et al.'s relative
                         key/value vectors too) and a frame mask (self-only for the
                         examples flagged `is_image`). Zero-initialized output: identity at init.
  SpaceTimeSelfAttention all T*H*W positions attend to each other (relative space-time
                         positions); for the coarsest level of a small model.
  TextCrossAttention     every position attends to the text tokens, padding masked out.

All are residual (x + attention(GroupNorm(x))) over [B, T, H, W, C] and use the one
dispatcher `vdm_jax.models.attention.dot_product_attention`.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm_jax.models import attention
from vdm_jax.models import axes
from vdm_jax.models import layers

Dtype = Any
_QKV_AXES = (axes.BATCH, axes.TOKENS, axes.HEADS, axes.KV)


class HeadProjection(nn.Module):
  """[..., C] -> [..., N, D] with a kernel named (EMBED, HEADS, KV).

  (nn.DenseGeneral reshapes a flat boxed kernel, which breaks its logical sharding constraint
  under an active mesh; this keeps the kernel 3-D throughout.)
  """
  num_heads: int
  head_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    shape = (x.shape[-1], self.num_heads, self.head_dim)
    kernel = self.param("kernel", layers.partitioned(
        nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2)),
        (axes.EMBED, axes.HEADS, axes.KV)), shape, self.param_dtype)
    bias = self.param("bias", layers.partitioned(nn.initializers.zeros_init(),
                                                 (axes.HEADS, axes.KV)),
                      shape[1:], self.param_dtype)
    y = jnp.einsum("...c,cnd->...nd", x.astype(self.dtype), kernel.astype(self.dtype))
    return y + bias.astype(self.dtype)


class OutProjection(nn.Module):
  """[..., N, D] -> [..., features] with a kernel named (HEADS, KV, EMBED)."""
  features: int
  zero_init: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    shape = x.shape[-2:] + (self.features,)
    init = (nn.initializers.zeros_init() if self.zero_init
            else nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2))
    kernel = self.param("kernel", layers.partitioned(init, (axes.HEADS, axes.KV, axes.EMBED)),
                        shape, self.param_dtype)
    bias = self.param("bias", layers.partitioned(nn.initializers.zeros_init(), (axes.EMBED,)),
                      (self.features,), self.param_dtype)
    y = jnp.einsum("...nd,ndc->...c", x.astype(self.dtype), kernel.astype(self.dtype))
    return y + bias.astype(self.dtype)


class MultiHeadAttention(nn.Module):
  """Projections around `dot_product_attention`.

  Call: (x [B, Lq, C], context [B, Lk, Cc], bias, mask) -> [B, Lq, out_features].
  """
  num_heads: int
  head_dim: int
  out_features: int
  implementation: str = "xla"
  zero_init_out: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _proj(self, name):
    return HeadProjection(self.num_heads, self.head_dim, self.dtype, self.param_dtype,
                          name=name)

  @nn.compact
  def __call__(self, x, context, *, bias=None, mask=None, rel_kv=None):
    """rel_kv: optional (rel_k, rel_v), each [Lq, Lk, N, D]: relative position vectors added
    to keys and values (`attention.relative_dot_product_attention`, XLA)."""
    q = nn.with_logical_constraint(self._proj("query")(x), _QKV_AXES)
    k = nn.with_logical_constraint(self._proj("key")(context), _QKV_AXES)
    v = nn.with_logical_constraint(self._proj("value")(context), _QKV_AXES)
    if rel_kv is not None:
      out = attention.relative_dot_product_attention(q, k, v, *rel_kv, bias=bias, mask=mask)
    else:
      out = attention.dot_product_attention(q, k, v, bias=bias, mask=mask,
                                            implementation=self.implementation)
    out = nn.with_logical_constraint(out, _QKV_AXES)
    return OutProjection(self.out_features, self.zero_init_out, self.dtype, self.param_dtype,
                         name="out")(out)


def frame_offset_buckets(frames, *, num_buckets: int, max_distance: int):
  """[Tq, Tk] T5 log bucket of key frame - query frame for frame indices `frames` [T]."""
  return attention.relative_position_buckets(frames[None, :] - frames[:, None],
                                             num_buckets=num_buckets, max_distance=max_distance)


class RelativePositionBias(nn.Module):
  """Learned bias per (head, T5 log bucket of key frame - query frame) -> [1, N, T, T]."""
  num_heads: int
  num_buckets: int
  max_distance: int
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, num_frames):
    table = self.param(
        "table", layers.partitioned(nn.initializers.normal(0.02),
                                    (axes.REL_BUCKETS, axes.HEADS)),
        (self.num_buckets, self.num_heads), self.param_dtype)
    buckets = frame_offset_buckets(jnp.arange(num_frames), num_buckets=self.num_buckets,
                                   max_distance=self.max_distance)  # [Tq, Tk]
    bias = jnp.take(table, buckets, axis=0)                         # [Tq, Tk, N]
    return jnp.transpose(bias, (2, 0, 1))[None].astype(jnp.float32)


class RelativePositionVectors(nn.Module):
  """Shaw et al. (2018) relative position representations: a learned key vector and value
  vector per (head, T5 log bucket of key frame - query frame) -> ([T, T, N, D], [T, T, N, D])."""
  num_heads: int
  head_dim: int
  num_buckets: int
  max_distance: int
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, num_frames):
    shape = (self.num_buckets, self.num_heads, self.head_dim)
    names = (axes.REL_BUCKETS, axes.HEADS, axes.KV)
    init = layers.partitioned(nn.initializers.normal(0.02), names)
    key_table = self.param("key", init, shape, self.param_dtype)
    value_table = self.param("value", init, shape, self.param_dtype)
    buckets = frame_offset_buckets(jnp.arange(num_frames), num_buckets=self.num_buckets,
                                   max_distance=self.max_distance)  # [Tq, Tk]
    return jnp.take(key_table, buckets, axis=0), jnp.take(value_table, buckets, axis=0)


class _AttentionSettings(nn.Module):
  """Fields shared by the three blocks."""
  num_heads: int
  head_dim: int
  num_groups: int
  implementation: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _norm(self, x):
    return layers.FrameGroupNorm(self.num_groups, self.dtype, self.param_dtype, name="norm")(x)

  def _mha(self, channels, *, implementation=None, zero_init_out=False):
    return MultiHeadAttention(self.num_heads, self.head_dim, channels,
                              implementation=implementation or self.implementation,
                              zero_init_out=zero_init_out, dtype=self.dtype,
                              param_dtype=self.param_dtype, name="attention")


class SpatialSelfAttention(_AttentionSettings):
  """x + attention over the H*W positions of each frame. (x [B, T, H, W, C]) -> same."""

  @nn.compact
  def __call__(self, x):
    b, t, h, w, c = x.shape
    tokens = self._norm(x).reshape(b * t, h * w, c)
    out = self._mha(c)(tokens, tokens)
    return layers.constrain_video(x + out.reshape(x.shape).astype(x.dtype))


class TemporalSelfAttention(_AttentionSettings):
  """x + attention over the T frames at each spatial position.

  Call: (x [B, T, H, W, C], is_image [B] bool) -> [B, T, H, W, C]. Examples with is_image
  attend only to their own frame. 'splash' takes no bias, so this block uses 'xla' then
  (T is short: the cost is T^2 per position).

  position: how frame order enters. 'bias': a learned scalar per head and T5 bucket of the
  frame offset, added to the logits (what lucidrains' video-diffusion-pytorch does). 'shaw':
  that bias plus Shaw et al.'s relative vectors on keys and values (the relative position
  embeddings VDM cites), so each frame's output also says from which offset its content came.
  """
  num_buckets: int = 32
  max_distance: int = 128
  position: str = "bias"
  text_bias: bool = False
  text_bias_pooling: str = "mean"

  @nn.compact
  def __call__(self, x, is_image, text=None, text_mask=None):
    b, t, h, w, c = x.shape
    tokens = jnp.transpose(self._norm(x), (0, 2, 3, 1, 4)).reshape(b * h * w, t, c)
    bias = RelativePositionBias(self.num_heads, self.num_buckets, self.max_distance,
                                self.param_dtype, name="rel_pos")(t)       # [1, N, T, T]
    if self.text_bias:
      bias = jnp.repeat(bias + self._text_bias(text, text_mask, t), h * w, axis=0)
    eye = jnp.eye(t, dtype=jnp.bool_)
    mask = jnp.where(is_image[:, None, None, None], eye, jnp.ones_like(eye))  # [B, 1, T, T]
    mask = jnp.repeat(mask, h * w, axis=0)                                     # [B*H*W, 1, T, T]
    impl = "xla" if self.implementation == "splash" else self.implementation
    rel_kv = None
    if self.position == "shaw":
      rel_kv = RelativePositionVectors(self.num_heads, self.head_dim, self.num_buckets,
                                       self.max_distance, self.param_dtype, name="rel_kv")(t)
    elif self.position != "bias":
      raise ValueError(f"unknown temporal position {self.position!r}; use 'bias' or 'shaw'")
    out = self._mha(c, implementation=impl, zero_init_out=True)(
        tokens, tokens, bias=bias, mask=mask, rel_kv=rel_kv)                   # [B*H*W, T, C]
    out = jnp.transpose(out.reshape(b, h, w, t, c), (0, 3, 1, 2, 4))
    return layers.constrain_video(x + out.astype(x.dtype))

  def _text_bias(self, text, text_mask, t):
    """[B, N, T, T]: a zero-initialized linear map of the pooled caption tokens to one bias per
    (bucket, head). The buckets are signed, so the caption can make attention look to the past
    or the future: with it, the gradient that breaks the model's time-reversal symmetry is first
    order in the difference between two captions (e.g. 'left' / 'right'); through the shared
    table alone, a clip and its reverse cancel it (experiments/recipe/README.md).

    text_bias_pooling: 'mean', the masked mean of the tokens; 'attention', weights
    softmax(w . token) over the caption's tokens with w learned from zero (so it starts as the
    mean): the pool can come to rest on the word that says the direction, whose contextual
    embedding differs between captions far more than the whole caption's mean does."""
    if text is None or text_mask is None:
      raise ValueError("TemporalSelfAttention(text_bias=True) needs the text tokens and mask")
    text = text.astype(jnp.float32)
    if self.text_bias_pooling == "mean":
      pooled = layers.masked_mean(text, text_mask)                                # [B, D]
    elif self.text_bias_pooling == "attention":
      score = layers.dense(1, names=(axes.EMBED, None), zero_init=True,
                           param_dtype=self.param_dtype, name="text_bias_pool")(text)[..., 0]
      score = jnp.where(text_mask, score.astype(jnp.float32), -1e9)
      weights = jax.nn.softmax(score, axis=-1) * text_mask                        # [B, L]
      pooled = jnp.einsum("bl,bld->bd", weights, text)
    else:
      raise ValueError(f"unknown text_bias_pooling {self.text_bias_pooling!r}; use 'mean' or "
                       "'attention'")
    per_bucket = layers.dense(self.num_buckets * self.num_heads, names=(axes.EMBED, None),
                              zero_init=True, param_dtype=self.param_dtype,
                              name="text_bias")(pooled)
    per_bucket = per_bucket.reshape(-1, self.num_buckets, self.num_heads)
    buckets = frame_offset_buckets(jnp.arange(t), num_buckets=self.num_buckets,
                                   max_distance=self.max_distance)                # [Tq, Tk]
    return jnp.transpose(per_bucket[:, buckets], (0, 3, 1, 2)).astype(jnp.float32)


class SpaceTimeRelativePosition(nn.Module):
  """Relative position of two space-time tokens (frame offset in T5 buckets, row and column
  offsets clipped to +-max_offset): a learned bias per head [1, N, L, L] and Shaw et al. key
  and value vectors [L, L, N, D] for tokens ordered (frame, row, column), L = T * H * W."""
  num_heads: int
  head_dim: int
  num_buckets: int
  max_distance: int
  max_offset: int
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, frames, height, width):
    s = 2 * self.max_offset + 1
    names = (axes.REL_BUCKETS, axes.CONV_SPACE, axes.CONV_SPACE, axes.HEADS)
    init = nn.initializers.normal(0.02)
    bias_table = self.param("bias", layers.partitioned(init, names),
                            (self.num_buckets, s, s, self.num_heads), self.param_dtype)
    vec_shape = (self.num_buckets, s, s, self.num_heads, self.head_dim)
    key_table = self.param("key", layers.partitioned(init, names + (axes.KV,)), vec_shape,
                           self.param_dtype)
    value_table = self.param("value", layers.partitioned(init, names + (axes.KV,)), vec_shape,
                             self.param_dtype)
    ft, fy, fx = (a.reshape(-1) for a in jnp.meshgrid(
        jnp.arange(frames), jnp.arange(height), jnp.arange(width), indexing="ij"))
    bt = frame_offset_buckets(ft, num_buckets=self.num_buckets,
                              max_distance=self.max_distance)                      # [L, L]
    by = jnp.clip(fy[None, :] - fy[:, None], -self.max_offset, self.max_offset) + self.max_offset
    bx = jnp.clip(fx[None, :] - fx[:, None], -self.max_offset, self.max_offset) + self.max_offset
    bias = jnp.transpose(bias_table[bt, by, bx], (2, 0, 1))[None].astype(jnp.float32)
    return bias, (key_table[bt, by, bx], value_table[bt, by, bx]), ft


class SpaceTimeSelfAttention(_AttentionSettings):
  """x + attention over all T * H * W positions of a clip (not factorized), with relative
  space-time positions (`SpaceTimeRelativePosition`): a token can look up the content at a
  given (frame, row, column) offset, i.e. follow a motion. Meant for a U-Net's coarsest level
  (cost (T H W)^2): `temporal_mixing = 'spacetime'` there replaces temporal attention.

  Call: (x [B, T, H, W, C], is_image [B] bool) -> [B, T, H, W, C]; examples with is_image
  attend within their own frame. Zero-initialized output: identity at init.
  """
  num_buckets: int = 32
  max_distance: int = 128
  max_offset: int = 4

  @nn.compact
  def __call__(self, x, is_image):
    b, t, h, w, c = x.shape
    tokens = self._norm(x).reshape(b, t * h * w, c)
    bias, rel_kv, frame = SpaceTimeRelativePosition(
        self.num_heads, self.head_dim, self.num_buckets, self.max_distance, self.max_offset,
        self.param_dtype, name="rel_pos")(t, h, w)
    same_frame = frame[:, None] == frame[None, :]                              # [L, L]
    mask = jnp.where(is_image[:, None, None, None], same_frame,
                     jnp.ones_like(same_frame))                                # [B, 1, L, L]
    out = self._mha(c, zero_init_out=True)(tokens, tokens, bias=bias, mask=mask,
                                           rel_kv=rel_kv)
    return layers.constrain_video(x + out.reshape(x.shape).astype(x.dtype))


class TextCrossAttention(_AttentionSettings):
  """x + attention from every position to the text tokens.

  Call: (x [B, T, H, W, C], text [B, L, D], text_mask [B, L] bool) -> [B, T, H, W, C].
  Padded tokens (mask False) get zero weight; an all-padding caption adds nothing.
  """

  @nn.compact
  def __call__(self, x, text, text_mask):
    b, t, h, w, c = x.shape
    tokens = self._norm(x).reshape(b, t * h * w, c)
    mask = text_mask[:, None, None, :]                              # [B, 1, 1, L]
    out = self._mha(c)(tokens, text.astype(self.dtype), mask=mask)
    return layers.constrain_video(x + out.reshape(x.shape).astype(x.dtype))
