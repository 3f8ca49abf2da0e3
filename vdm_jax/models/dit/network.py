"""The video diffusion transformer over spacetime patches (DiT, Latte, CogVideoX, Wan), Linen.

    model = VideoDiT(config=cfg.model)
    out = model.apply(params, x, logsnr, text_emb=..., text_mask=..., fps=..., train=False)
    # x [B, T, H, W, C] -> out [B, T, H, W, cfg.model.out_channels]

Layout:
  patchify    x (with an SR stage's upsampled low-resolution video, or masked interpolation's
              known frames + mask, concatenated on channels) cut into patches of
              patch_size = (pt, ph, pw): tokens [B, N, pt*ph*pw*C] with N = T/pt * H/ph * W/pw
              in row-major (time, height, width) order, then Dense -> hidden_dim.
  conditioning  emb = MLP(sin(logsnr)) [+ fps, conditioning-augmentation logSNR, guidance
              weight, pooled text] (the U-Net's `ConditioningEmbedding`, the same inputs).
  text        text_emb projected to hidden_dim (linear, or Wan's two-layer MLP).
  blocks      depth x adaLN-Zero blocks (DiT): with (shift, scale, gate) x 2 from the embedding,
                x += gate_a * SelfAttention(LN(x) * (1 + scale_a) + shift_a)
                x += CrossAttention(LN(x), text)                 (text_conditioning='cross')
                x += gate_m * MLP(LN(x) * (1 + scale_m) + shift_m)
              The modulation comes from each block's own Dense(emb) ('block', DiT / CogVideoX) or
              from one shared Dense(emb) plus each block's learned table ('shared', Wan). With
              text_conditioning='joint' (MM-DiT as CogVideoX) the text tokens join the
              self-attention, with their own (shift, scale, gate) x 2 ("expert" adaLN) and the
              same attention and MLP weights, and are carried from block to block.
              Self-attention: 'full' over all N tokens (and the text in joint mode), or
              'alternating' (Latte): even blocks attend within each frame, odd blocks across
              frames at each position. Sequence parallelism (sharding.sequence_parallel) keeps
              the stream's tokens sharded over the `sequence` mesh axis; around attention
              either the heads are sharded instead (Ulysses: all-to-alls) or, for full
              attention, the keys and values travel a ring (attention.ring_attention).
              Queries and keys are normalized per head (qk_norm) and rotated by 3D RoPE
              (rope.py) so attention sees relative (t, h, w) offsets; text tokens are not
              rotated. With model.scan_blocks the blocks run as one nn.scan over parameters
              stacked on a `layers` axis.
  output      LN(x) * (1 + scale) + shift from Dense(emb), Dense -> pt*ph*pw*out_channels
              (zero-initialized), unpatchify.

At initialization every gate, the cross-attention output and the output layer are zero: each
block is the identity on its residual stream (and on the text stream) and the model outputs
zeros. `is_image` [B] marks examples whose frames are independent images: their video tokens
attend only within their own frame (needs patch_size[0] == 1 when T > 1), so each frame is
computed as a one-frame clip would be: its frames are all rotated as time 0 (with joint text,
whose stream the frames share, the text reads the first frame: exact for an image tiled over
the frames, as image datasets feed them, and for one-frame clips). A one-frame clip costs only
its own tokens, which is how joint image-video training feeds images
(vdm_jax/train/objective.py); with `segment_ids` a row packs several clips and images, each
computed as if alone (see `VideoDiT.__call__`). Text padding (text_mask False) is masked out of
cross and joint attention; an all-padding caption adds nothing.
"""
from typing import Any, Optional, Tuple

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax.models import attention
from vdm_jax.models import attention_blocks
from vdm_jax.models import axes
from vdm_jax.models import conditioning
from vdm_jax.models import input_checks
from vdm_jax.models import layers
from vdm_jax.models import spec_common
from vdm_jax.models.dit import rope
from vdm_jax.models.dit import spec as dit_spec

Dtype = Any
TOKEN_AXES = (axes.BATCH, axes.TOKENS, axes.CHANNELS)
# Queries, keys and values of self-attention: sequence parallelism maps these (Ulysses: heads
# over `sequence`; ring: tokens), see vdm_jax.models.axes.SEQUENCE_PARALLEL_RULES.
_ATTN_AXES = (axes.BATCH, axes.ATTN_TOKENS, axes.ATTN_HEADS, axes.KV)
_QKV_AXES = (axes.BATCH, axes.TOKENS, axes.HEADS, axes.KV)
_WHY = {"text_emb": "text_conditioning or text_pooled_conditioning",
        "text_mask": "text_conditioning or text_pooled_conditioning"}


def patchify(x, patch_size):
  """[B, T, H, W, C] -> [B, T/pt * H/ph * W/pw, pt*ph*pw*C] (row-major t, h, w tokens)."""
  pt, ph, pw = patch_size
  return einops.rearrange(x, "b (t pt) (h ph) (w pw) c -> b (t h w) (pt ph pw c)",
                          pt=pt, ph=ph, pw=pw)


def unpatchify(tokens, patch_size, grid):
  """The inverse of `patchify`: [B, N, pt*ph*pw*C] -> [B, T, H, W, C] for a (t, h, w) grid."""
  pt, ph, pw = patch_size
  t, h, w = grid
  return einops.rearrange(tokens, "b (t h w) (pt ph pw c) -> b (t pt) (h ph) (w pw) c",
                          t=t, h=h, w=w, pt=pt, ph=ph, pw=pw)


def _layer_norm(name, dtype, param_dtype, affine=False):
  if not affine:
    return nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=dtype,
                        param_dtype=param_dtype, name=name)
  return nn.LayerNorm(epsilon=1e-6, dtype=dtype, param_dtype=param_dtype, name=name,
                      scale_init=layers.partitioned(nn.initializers.ones_init(), (axes.NORM,)),
                      bias_init=layers.partitioned(nn.initializers.zeros_init(), (axes.NORM,)))


def _modulate(x, shift, scale):
  return x * (1.0 + scale) + shift


class HeadNorm(nn.Module):
  """Query/key normalization over each head's features: 'rms' (RMSNorm) or 'layer'
  (LayerNorm), with a learned per-feature scale (and bias for 'layer')."""
  kind: str
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):                                          # [B, L, heads, D]
    d = x.shape[-1]
    scale = self.param("scale", layers.partitioned(nn.initializers.ones_init(), (axes.KV,)),
                       (d,), self.param_dtype)
    xf = x.astype(jnp.float32)
    if self.kind == "layer":
      xf = xf - jnp.mean(xf, axis=-1, keepdims=True)
    y = xf * jnp.reciprocal(jnp.sqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + 1e-6))
    y = y * scale.astype(jnp.float32)
    if self.kind == "layer":
      y = y + self.param("bias", layers.partitioned(nn.initializers.zeros_init(), (axes.KV,)),
                         (d,), self.param_dtype).astype(jnp.float32)
    return y.astype(self.dtype)


class SelfAttention(nn.Module):
  """Self-attention over video tokens (and the text tokens in joint mode).

  kind 'full': all N tokens; 'spatial': the tokens of each frame; 'temporal': each spatial
  position's tokens across frames. Call: (x [B, N, D], angles [(B,) N, head_dim / 2], text
  [B, L, D] or None (joint mode), mask: the attend mask of this kind (`attention_masks`) or
  None) -> (x branch [B, N, D], text branch [B, L, D] or None).
  """
  num_heads: int
  kind: str
  grid: Tuple[int, int, int]
  qk_norm: str = "rms"
  implementation: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, angles, text=None, mask=None):
    b, n, d = x.shape
    heads, head_dim = self.num_heads, d // self.num_heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    tokens = x if text is None else jnp.concatenate([text, x], axis=1)
    num_text = 0 if text is None else text.shape[1]

    def proj(name):
      return attention_blocks.HeadProjection(heads, head_dim, name=name, **kw)(tokens)
    q, k, v = proj("query"), proj("key"), proj("value")
    if self.qk_norm != "none":
      q = HeadNorm(self.qk_norm, name="query_norm", **kw)(q)
      k = HeadNorm(self.qk_norm, name="key_norm", **kw)(k)
    # Rotate the video tokens only (text has no position).
    q = jnp.concatenate([q[:, :num_text], rope.apply_rotary(q[:, num_text:], angles)], axis=1)
    k = jnp.concatenate([k[:, :num_text], rope.apply_rotary(k[:, num_text:], angles)], axis=1)
    q, k, v = (nn.with_logical_constraint(a, _ATTN_AXES) for a in (q, k, v))

    t, h, w = self.grid
    s = h * w
    if self.kind == "full":
      ring = ring_axis()
      if ring is not None:
        out = attention.ring_attention(q, k, v, mask=mask, axis_name=ring)
      else:
        out = attention.dot_product_attention(q, k, v, mask=mask,
                                              implementation=self.implementation)
    else:
      group = ("b (t s) n d -> (b t) s n d" if self.kind == "spatial"
               else "b (t s) n d -> (b s) t n d")
      ungroup = ("(b t) s n d -> b (t s) n d" if self.kind == "spatial"
                 else "(b s) t n d -> b (t s) n d")
      q, k, v = (einops.rearrange(a, group, t=t, s=s) for a in (q, k, v))
      if self.kind == "spatial":
        mask = None                       # a frame belongs to one example
      out = attention.dot_product_attention(q, k, v, mask=mask,
                                            implementation=self.implementation)
      out = einops.rearrange(out, ungroup, b=b, t=t, s=s)
    out = nn.with_logical_constraint(out, _ATTN_AXES)
    out = attention_blocks.OutProjection(d, name="out", **kw)(out)   # [B, L + N, D]
    out = nn.with_logical_constraint(out, TOKEN_AXES)
    if text is None:
      return out, None
    return out[:, num_text:], out[:, :num_text]


def ring_axis():
  """The mesh axis that the active logical rules shard attention tokens over (ring attention,
  sharding.sequence_parallel='ring'), or None: no rules, no such axis, or an axis of size 1."""
  entry = nn.logical_to_mesh_axes((axes.ATTN_TOKENS,))[0]
  if entry is None:
    return None
  names = (entry,) if isinstance(entry, str) else tuple(entry)
  if len(names) != 1:
    raise ValueError(f"ring attention runs over one mesh axis; the rules map "
                     f"{axes.ATTN_TOKENS!r} to {names}")
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or names[0] not in mesh.axis_names or mesh.shape[names[0]] == 1:
    return None
  return names[0]


def attention_masks(b, grid, *, num_text, text_mask, is_image, video_seg=None, text_seg=None,
                    frame_seg=None):
  """The attend masks of one forward pass, by kind (None: nothing masked):
    'full'      [B, 1, L + N, L + N] over [joint text; video] tokens;
    'temporal'  [B * H'W', 1, T', T'] frames at each position (alternating layout);
    'cross'     [B, 1, N | 1, L] video tokens to text tokens (cross-attention).
  Unpacked: text padding, and an `is_image` row's frames kept apart (`_full_mask`). Packed
  (video_seg [B, N], text_seg [B, L], frame_seg [B, T'] given): tokens attend within their
  own segment (and its valid text) only."""
  t, h, w = grid
  if video_seg is None:
    temporal = None
    if is_image is not None and t > 1:
      # Frames of an independent image attend to themselves only.
      own = jnp.eye(t, dtype=jnp.bool_)[None, None] | ~is_image[:, None, None, None]
      temporal = jnp.broadcast_to(own[:, None], (b, h * w, 1, t, t)).reshape(b * h * w, 1, t, t)
    return {"full": _full_mask(b, grid, num_text, text_mask, is_image),
            "temporal": temporal,
            "cross": None if text_mask is None else text_mask[:, None, None, :]}
  seg = video_seg if not num_text else jnp.concatenate([text_seg, video_seg], axis=1)
  full = seg[:, None, :, None] == seg[:, None, None, :]
  if num_text:
    full = full & jnp.concatenate([text_mask, jnp.ones_like(video_seg, jnp.bool_)],
                                  axis=1)[:, None, None, :]
  same = frame_seg[:, :, None] == frame_seg[:, None, :]                  # [B, T', T']
  temporal = jnp.broadcast_to(same[:, None, None], (b, h * w, 1, t, t)).reshape(
      b * h * w, 1, t, t)
  cross = None
  if text_seg is not None:
    cross = (video_seg[:, None, :, None] == text_seg[:, None, None, :]) & text_mask[:, None,
                                                                                  None, :]
  return {"full": full, "temporal": temporal, "cross": cross}


def _per_token(values, seg):
  """values [B, S, ...] of each segment -> [B, L, ...] of each token of segment ids seg [B, L]
  (padding tokens, id -1, get segment 0's: their outputs are ignored)."""
  index = jnp.clip(seg, 0, values.shape[1] - 1)
  index = index.reshape(index.shape + (1,) * (values.ndim - 2))
  return jnp.take_along_axis(values, index, axis=1)


def _full_mask(b, grid, num_text, text_mask, is_image):
  """The attend mask of full attention (None when nothing is masked): padded text keys are
  masked out ([B, 1, 1, L + N], a key-padding mask, which every attention implementation
  takes), and an image example's video tokens see only their own frame (and the text), its
  text tokens the text and its first frame ([B, 1, L + N, L + N])."""
  t, h, w = grid
  n = t * h * w
  image = is_image is not None and t > 1
  keys = None
  if num_text and text_mask is not None:
    keys = jnp.concatenate([text_mask, jnp.ones((b, n), jnp.bool_)], axis=1)[:, None, None, :]
  if not image:
    return keys
  frame = jnp.arange(n) // (h * w)
  same = frame[:, None] == frame[None, :]                            # [N, N]
  video = same[None, None] | ~is_image[:, None, None, None]          # [B, 1, N, N]
  if num_text == 0:
    return video
  top = jnp.ones((b, 1, num_text, num_text + n), jnp.bool_)
  if image:
    # An image row's text reads its first frame only, so its text stream is the one-frame
    # clip's; exact for images tiled over the frames (what image datasets feed) and one-frame
    # clips.
    first = jnp.concatenate([jnp.ones((num_text,), jnp.bool_), frame == 0])
    top = top & (first[None, None, None, :] | ~is_image[:, None, None, None])
  bottom = jnp.concatenate([jnp.ones((b, 1, n, num_text), jnp.bool_), video], axis=-1)
  mask = jnp.concatenate([top, bottom], axis=2)
  return mask if keys is None else mask & keys


class CrossAttention(nn.Module):
  """Video tokens attend to the text tokens: the branch (zero-initialized output) of
  x += CrossAttention(LN(x), text). Call: (x [B, N, D], text [B, L, D], mask [B, 1, N | 1, L])."""
  num_heads: int
  qk_norm: str = "rms"
  implementation: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, text, mask):
    d = x.shape[-1]
    heads, head_dim = self.num_heads, d // self.num_heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = _layer_norm("norm", affine=True, **kw)(x)
    q = attention_blocks.HeadProjection(heads, head_dim, name="query", **kw)(h)
    k = attention_blocks.HeadProjection(heads, head_dim, name="key", **kw)(text)
    v = attention_blocks.HeadProjection(heads, head_dim, name="value", **kw)(text)
    if self.qk_norm != "none":
      q = HeadNorm(self.qk_norm, name="query_norm", **kw)(q)
      k = HeadNorm(self.qk_norm, name="key_norm", **kw)(k)
    q, k, v = (nn.with_logical_constraint(a, _QKV_AXES) for a in (q, k, v))
    out = attention.dot_product_attention(q, k, v, mask=mask,
                                          implementation=self.implementation)
    return attention_blocks.OutProjection(d, zero_init=True, name="out", **kw)(out)


class Mlp(nn.Module):
  """Dense(mlp_dim) -> GELU (tanh) -> Dense(hidden)."""
  mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = layers.dense(self.mlp_dim, name="up", **kw)(x)
    h = nn.gelu(h, approximate=True)
    return layers.dense(x.shape[-1], names=(axes.MLP, axes.EMBED), name="down", **kw)(h)


class DiTBlock(nn.Module):
  """One adaLN-Zero block (see the module docstring).

  Call: (x [B, N, D], text [B, L, D] or None, cond, angles [(B,) N, head_dim / 2], masks
  (`attention_masks`), segments: None or (video_seg [B, N], text_seg [B, L]) of a packed
  batch) -> (x, text). `cond` is the embedding [B, E] (modulation 'block') or the shared
  modulation [B, M, D] ('shared'), M = 6 (12 when joint); packed, [B, S, ...] per segment and
  each token takes its segment's.
  """
  num_heads: int
  mlp_dim: int
  kind: str
  grid: Tuple[int, int, int]
  text_conditioning: str = "cross"
  modulation: str = "block"
  qk_norm: str = "rms"
  implementation: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, text, cond, angles, masks, segments=None):
    d = x.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    joint = self.text_conditioning == "joint"
    m = 12 if joint else 6
    if self.modulation == "block":
      mod = layers.dense(m * d, zero_init=True, name="modulation", **kw)(nn.silu(cond))
      mod = mod.reshape(mod.shape[:-1] + (m, d))                     # [B, (S,) M, D]
    else:
      table = self.param("modulation", layers.partitioned(nn.initializers.zeros_init(),
                                                          (None, axes.EMBED)),
                         (m, d), self.param_dtype)
      mod = cond + table.astype(cond.dtype)
    if segments is None:
      video_mod = text_mod = mod[:, None].astype(self.dtype)         # [B, 1, M, D]
    else:
      video_mod = _per_token(mod, segments[0]).astype(self.dtype)     # [B, N, M, D]
      text_mod = None if segments[1] is None else _per_token(mod, segments[1]).astype(
          self.dtype)
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = (video_mod[:, :, i] for i in range(6))

    norm = _layer_norm("norm", **kw)
    h = _modulate(norm(x), shift_a, scale_a)
    th = None
    if joint:
      t_shift_a, t_scale_a, t_gate_a, t_shift_m, t_scale_m, t_gate_m = (
          text_mod[:, :, i] for i in range(6, 12))
      th = _modulate(norm(text), t_shift_a, t_scale_a)
    kind_mask = masks["full"] if self.kind == "full" else masks["temporal"]
    attn, text_attn = SelfAttention(self.num_heads, self.kind, self.grid, self.qk_norm,
                                    self.implementation, name="attn", **kw)(
                                        h, angles, th, kind_mask)
    x = x + gate_a * attn
    if joint:
      text = text + t_gate_a * text_attn
    if self.text_conditioning == "cross":
      x = x + CrossAttention(self.num_heads, self.qk_norm, self.implementation,
                             name="cross_attn", **kw)(x, text, masks["cross"])
    mlp = Mlp(self.mlp_dim, name="mlp", **kw)
    x = x + gate_m * mlp(_modulate(norm(x), shift_m, scale_m))
    if joint:
      text = text + t_gate_m * mlp(_modulate(norm(text), t_shift_m, t_scale_m))
      text = nn.with_logical_constraint(text, (axes.BATCH, axes.TEXT_LENGTH, axes.CHANNELS))
    return nn.with_logical_constraint(x, TOKEN_AXES), text


class _BlockGroup(nn.Module):
  """One step of the scanned blocks (model.scan_blocks): a block of each of `kinds` in turn
  (('full',) or ('spatial', 'temporal')); carry (x, text)."""
  block_cls: Any
  kinds: Tuple[str, ...]
  block_kw: Any

  @nn.compact
  def __call__(self, carry, cond, angles, masks, segments):
    x, text = carry
    for i, kind in enumerate(self.kinds):
      x, text = self.block_cls(kind=kind, name=f"block{i}", **self.block_kw)(
          x, text, cond, angles, masks, segments)
    return (x, text), None


class VideoDiT(nn.Module):
  """The video diffusion transformer. `config` is the `model` section (family 'dit')."""
  config: Any

  @nn.compact
  def __call__(self, x, logsnr, *, text_emb=None, text_mask=None, fps=None,
               cond_aug_logsnr=None, lowres_video=None, is_image=None, guidance_weight=None,
               frame_cond=None, frame_mask=None, segment_ids=None, train=False):
    """Predicts the diffusion target for a noisy video; the inputs are the U-Net's (see
    `vdm_jax.models.unet.network.SpaceTimeUNet`). Returns [B, T, H, W, out_channels] float32.

    Packed sequences: with `segment_ids` [B, T] int (the example each frame belongs to, 0..S-1
    in contiguous runs; -1 for padding frames) each row holds S examples of any lengths (clips
    and one-frame images) one after another in time, and the per-example inputs are per
    segment: logsnr, fps, cond_aug_logsnr, guidance_weight [B, S], text_emb [B, S, L, D],
    text_mask [B, S, L]. Tokens attend within their segment only, its time positions start at
    0 and it is conditioned on its own inputs, so each example's frames come out as if it ran
    alone (`tests/test_dit.py`). Not with lowres_video or is_image.
    """
    del train   # no dropout
    spec = dit_spec.DiTSpec.from_config(self.config)
    packed = segment_ids is not None
    per_segment = dict(fps=fps, cond_aug_logsnr=cond_aug_logsnr,
                       guidance_weight=guidance_weight)
    if packed:
      b, num_seg = _check_packed(x, logsnr, segment_ids, text_emb, text_mask, lowres_video,
                                 is_image, per_segment)
      flat = lambda a: None if a is None else a.reshape((b * num_seg,) + a.shape[2:])
      per_example_flags = {k: v for k, v in dit_spec.INPUT_FLAGS.items()
                           if k not in ("frame_cond", "frame_mask")}
      input_checks.check_inputs(
          "VideoDiT", spec, per_example_flags,
          jax.ShapeDtypeStruct((b * num_seg,) + x.shape[1:], x.dtype), flat(logsnr), why=_WHY,
          text_emb=flat(text_emb), text_mask=flat(text_mask), lowres_video=None, is_image=None,
          frame_cond=None, frame_mask=None, **{k: flat(v) for k, v in per_segment.items()})
      input_checks.check_inputs(
          "VideoDiT", spec, {"frame_cond": "frame_mask_conditioning",
                             "frame_mask": "frame_mask_conditioning"},
          x, jnp.zeros((x.shape[0],)), text_emb=None, text_mask=None, lowres_video=None,
          is_image=None, frame_cond=frame_cond, frame_mask=frame_mask, fps=None,
          cond_aug_logsnr=None, guidance_weight=None)
    else:
      input_checks.check_inputs(
          "VideoDiT", spec, dit_spec.INPUT_FLAGS, x, logsnr, why=_WHY, text_emb=text_emb,
          text_mask=text_mask, lowres_video=lowres_video, is_image=is_image,
          frame_cond=frame_cond, frame_mask=frame_mask, **per_segment)
    b, t, h, w, _ = x.shape
    pt, ph, pw = spec.patch_size
    if is_image is not None and pt > 1 and t > 1:
      raise ValueError(f"is_image marks frames that are independent images, but "
                       f"model.patch_size={spec.patch_size} merges {pt} frames per token; feed "
                       "images as one-frame clips (joint training does) or drop is_image")
    dt, pdt = spec.compute_dtype, spec.params_dtype
    kw = dict(dtype=dt, param_dtype=pdt)
    d = spec.hidden_dim
    if spec.needs_text and text_mask is None:
      text_mask = jnp.ones(text_emb.shape[:-1], jnp.bool_)

    if spec.lowres_conditioning != "none":
      low = conditioning.upsample_lowres(
          lowres_video, mode=spec.lowres_conditioning, frames=t, height=h, width=w,
          temporal_method=spec.lowres_temporal_upsample)
      x = jnp.concatenate([x, low.astype(x.dtype)], axis=-1)
    if spec.frame_mask_conditioning:
      known = conditioning.frame_mask_channels(frame_cond, frame_mask)
      x = jnp.concatenate([x, known.astype(x.dtype)], axis=-1)
    grid = (t // pt, h // ph, w // pw)
    tokens = patchify(x.astype(dt), spec.patch_size)                 # [B, N, P]
    hid = layers.dense(d, names=(None, axes.EMBED), name="patch_embed", **kw)(tokens)
    hid = nn.with_logical_constraint(hid, TOKEN_AXES)

    # Per-example inputs; packed: per segment, embedded as B * S rows.
    lead = (b, num_seg) if packed else (b,)
    rows = (lambda a: None if a is None else a.reshape((-1,) + a.shape[len(lead):]))
    emb = conditioning.ConditioningEmbedding(spec.cond_embed_dim, name="cond", **kw)(
        rows(logsnr), fps=rows(fps), cond_aug_logsnr=rows(cond_aug_logsnr),
        guidance_weight=rows(guidance_weight),
        text=rows(text_emb) if spec.text_pooled_conditioning else None,
        text_mask=rows(text_mask))
    emb = emb.reshape(lead + emb.shape[1:])                          # [B, (S,) E]
    text = None
    if spec.text_conditioning != "none":
      text_tokens = text_emb.reshape((b, -1, text_emb.shape[-1]))   # [B, (S *) L, D]
      text = layers.dense(d, name="text_in", **kw)(text_tokens.astype(dt))
      if spec.text_projection == "mlp":
        text = layers.dense(d, name="text_out", **kw)(nn.gelu(text, approximate=True))
    flat_text_mask = None if text_mask is None else text_mask.reshape((b, -1))
    cond = emb
    if spec.modulation == "shared":
      m = 12 if spec.joint else 6
      cond = layers.dense(m * d, zero_init=True, name="modulation", **kw)(nn.silu(emb))
      cond = cond.reshape(lead + (m, d))

    positions = rope.grid_positions(grid)                            # [N, 3]
    segments = None
    num_text = text.shape[1] if spec.joint else 0
    if packed:
      frame_seg = segment_ids[:, ::pt].astype(jnp.int32)             # [B, T']
      video_seg = jnp.repeat(frame_seg, grid[1] * grid[2], axis=1)   # [B, N]
      text_seg = None
      if text is not None:
        text_seg = jnp.broadcast_to(jnp.repeat(jnp.arange(num_seg), text_emb.shape[2])[None],
                                    (b, text.shape[1]))
      segments = (video_seg, text_seg)
      masks = attention_masks(b, grid, num_text=num_text, text_mask=flat_text_mask,
                              is_image=None, video_seg=video_seg, text_seg=text_seg,
                              frame_seg=frame_seg)
      # Each segment's time positions start at 0.
      frame = jnp.arange(grid[0])
      starts = jnp.concatenate([jnp.ones((b, 1), jnp.bool_),
                                frame_seg[:, 1:] != frame_seg[:, :-1]], axis=1)
      first = jax.lax.cummax(jnp.where(starts, frame[None], 0), axis=1)
      local_t = jnp.repeat(frame[None] - first, grid[1] * grid[2], axis=1)   # [B, N]
      space = jnp.broadcast_to(positions[None, :, 1:], (b,) + positions[:, 1:].shape)
      pos = jnp.concatenate([local_t[..., None], space], axis=-1)            # [B, N, 3]
      angles = rope.angles_at(pos, spec.head_dim, float(spec.rope_theta))    # [B, N, D / 2]
    else:
      masks = attention_masks(b, grid, num_text=num_text,
                              text_mask=flat_text_mask if text is not None else None,
                              is_image=is_image)
      angles = rope.angles_at(positions, spec.head_dim, float(spec.rope_theta))   # [N, D / 2]
      if is_image is not None and grid[0] > 1:
        # Every frame of an image row is an image at time 0 (text keys, which are not
        # rotated, then see each frame as a one-frame clip's tokens).
        still = rope.angles_at(positions * np.array([0, 1, 1]), spec.head_dim,
                               float(spec.rope_theta))
        angles = jnp.where(is_image[:, None, None], still[None], angles[None])  # [B, N, D/2]
    block_cls = DiTBlock
    policy = spec_common.REMAT_POLICIES.get(spec.remat)
    if policy is not None:
      block_cls = nn.remat(DiTBlock, policy=policy)
    block_kw = dict(num_heads=spec.num_heads, mlp_dim=spec.mlp_dim, grid=grid,
                    text_conditioning=spec.text_conditioning, modulation=spec.modulation,
                    qk_norm=spec.qk_norm, implementation=spec.attention_impl, **kw)
    if spec.scan_blocks:
      kinds = ("full",) if spec.attention_layout == "full" else ("spatial", "temporal")
      scanned = nn.scan(_BlockGroup, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(nn.broadcast,) * 4, length=spec.depth // len(kinds),
                        metadata_params={nn.PARTITION_NAME: axes.LAYERS})
      (hid, text), _ = scanned(block_cls=block_cls, kinds=kinds, block_kw=block_kw,
                               name="blocks")((hid, text), cond, angles, masks, segments)
    else:
      for i in range(spec.depth):
        hid, text = block_cls(kind=spec.block_kind(i), name=f"block{i}", **block_kw)(
            hid, text, cond, angles, masks, segments)

    final = layers.dense(2 * d, zero_init=True, name="final_modulation", **kw)(nn.silu(emb))
    final = final.reshape(lead + (2, d)).astype(dt)
    final = final[:, None] if not packed else _per_token(final, segments[0])  # [B, 1|N, 2, D]
    hid = _modulate(_layer_norm("norm_out", **kw)(hid), final[:, :, 0], final[:, :, 1])
    out = layers.dense(pt * ph * pw * spec.out_channels, names=(axes.EMBED, None),
                       zero_init=True, name="proj_out", **kw)(hid)
    return unpatchify(out, spec.patch_size, grid).astype(jnp.float32)


def _check_packed(x, logsnr, segment_ids, text_emb, text_mask, lowres_video, is_image,
                  per_segment):
  """(B, S) of a packed call; ValueError for inputs that do not fit the packed layout."""
  if x.ndim != 5:
    raise ValueError(f"x must be a video [B, T, H, W, C], got shape {x.shape}")
  b, t = x.shape[:2]
  if segment_ids.shape != (b, t) or not jnp.issubdtype(segment_ids.dtype, jnp.integer):
    raise ValueError(f"segment_ids must be int [B, T] = {(b, t)}, got {segment_ids.dtype} "
                     f"{segment_ids.shape}")
  if logsnr.ndim != 2 or logsnr.shape[0] != b:
    raise ValueError(f"packed (segment_ids given): logsnr must be [B, S] with B={b}, got "
                     f"{logsnr.shape}")
  num_seg = logsnr.shape[1]
  for name, value in per_segment.items():
    if value is not None and value.shape != (b, num_seg):
      raise ValueError(f"packed: {name} must be [B, S] = {(b, num_seg)}, got {value.shape}")
  if text_emb is not None and (text_emb.ndim != 4 or text_emb.shape[:2] != (b, num_seg)):
    raise ValueError(f"packed: text_emb must be [B, S, L, D] with B, S = {(b, num_seg)}, got "
                     f"{text_emb.shape}")
  if text_mask is not None and (text_emb is None or text_mask.shape != text_emb.shape[:3]):
    raise ValueError(f"packed: text_mask must be [B, S, L] like text_emb, got "
                     f"{text_mask.shape}")
  if lowres_video is not None or is_image is not None:
    raise ValueError("packed sequences take neither lowres_video (an SR stage) nor is_image "
                     "(pack images as one-frame segments instead)")
  return b, num_seg


def token_count(spec: dit_spec.DiTSpec, *, frames: int, height: int, width: int,
                text_length: Optional[int] = None) -> int:
  """Tokens one self-attention sees in full attention: video patches (+ text when joint)."""
  pt, ph, pw = spec.patch_size
  n = (frames // pt) * (height // ph) * (width // pw)
  return n + (int(text_length or 0) if spec.joint else 0)
