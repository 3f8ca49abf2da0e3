"""Text encoders in Flax Linen: a BERT-style encoder (MiniLM) and a T5 v1.1 encoder.

Both map token ids `[B, L]` and a padding mask `[B, L]` (True = real token) to token embeddings
`[B, L, D]`. Weights come from Hugging Face safetensors checkpoints, converted by
`vdm_jax/text/convert.py`; the parameter names here are ours, the layout is:

  dense kernels   [D_in, D_out]        axes (EMBED, MLP) or (MLP, EMBED)
  q/k/v kernels   [D, H, Dh]           axes (EMBED, HEADS, KV)
  out kernel      [H, Dh, D]           axes (HEADS, KV, EMBED)
  embeddings      [V, D]               axes (VOCAB, EMBED)
  norm scales     [D]                  axes (NORM,)
  T5 rel. bias    [buckets, H]         axes (REL_BUCKETS, HEADS)

`dtype` is the compute dtype (bfloat16 on accelerators), `param_dtype` the storage dtype
(float32 by default). Attention logits and softmax, and all norms, run in float32.
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax.models import axes

Dtype = Any
_NEG_INF = -1e9  # added to masked-out attention logits (float32)


def _dense_init(stddev):
  return nn.initializers.normal(stddev=stddev)


def padding_bias(mask):
  """Additive attention bias from a padding mask: `[B, L]` bool -> `[B, 1, 1, L]` float32."""
  return jnp.where(mask, 0.0, _NEG_INF).astype(jnp.float32)[:, None, None, :]


def mean_pool(hidden, mask, *, normalize=True):
  """Masked mean over tokens (sentence-transformers pooling): `[B, L, D]`, `[B, L]` -> `[B, D]`.

  With `normalize`, each row is divided by its L2 norm (clamped at 1e-12, as
  `torch.nn.functional.normalize`). A row whose mask is all False gives zeros.
  """
  hidden = hidden.astype(jnp.float32)
  weights = mask.astype(jnp.float32)[..., None]  # [B, L, 1]
  summed = jnp.sum(hidden * weights, axis=1)
  pooled = summed / jnp.maximum(jnp.sum(weights, axis=1), 1e-9)
  if normalize:
    norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
    pooled = pooled / jnp.maximum(norm, 1e-12)
  return pooled


class SelfAttention(nn.Module):
  """Multi-head self-attention with an additive float32 bias `[B or 1, H or 1, L, L]`.

  `scale` multiplies the logits: 1/sqrt(head_dim) for BERT, 1.0 for T5 (folded into init).
  """
  num_heads: int
  head_dim: int
  use_bias: bool
  scale: float
  init_std: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, bias):
    features = x.shape[-1]

    def proj(name):
      return nn.DenseGeneral(
          (self.num_heads, self.head_dim), use_bias=self.use_bias, dtype=self.dtype,
          param_dtype=self.param_dtype, name=name,
          kernel_init=nn.with_logical_partitioning(
              _dense_init(self.init_std), (axes.EMBED, axes.HEADS, axes.KV)),
          bias_init=nn.with_logical_partitioning(
              nn.initializers.zeros, (axes.HEADS, axes.KV)))(x)  # [B, L, H, Dh]

    q, k, v = proj("query"), proj("key"), proj("value")
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * self.scale
    probs = jax.nn.softmax(logits + bias, axis=-1).astype(self.dtype)  # [B, H, Lq, Lk]
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    return nn.DenseGeneral(
        features, axis=(-2, -1), use_bias=self.use_bias, dtype=self.dtype,
        param_dtype=self.param_dtype, name="out",
        kernel_init=nn.with_logical_partitioning(
            _dense_init(self.init_std), (axes.HEADS, axes.KV, axes.EMBED)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes.NORM,)))(out)


def _dense(features, *, use_bias, in_axis, out_axis, init_std, dtype, param_dtype, name):
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(_dense_init(init_std), (in_axis, out_axis)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (out_axis,)))


def _embed(num, features, *, init_std, param_dtype, name):
  return nn.Embed(
      num, features, param_dtype=param_dtype, name=name,
      embedding_init=nn.with_logical_partitioning(
          _dense_init(init_std), (axes.VOCAB, axes.EMBED)))


def _layer_norm(eps, dtype, param_dtype, name):
  return nn.LayerNorm(
      epsilon=eps, dtype=jnp.float32, param_dtype=param_dtype, use_fast_variance=False,
      name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axes.NORM,)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes.NORM,)))


def _constrain(x):
  return nn.with_logical_constraint(x, (axes.BATCH, axes.TEXT_LENGTH, axes.CHANNELS))


class BertEncoder(nn.Module):
  """BERT encoder (post-norm, learned absolute positions, exact GELU), e.g. all-MiniLM-L6-v2.

  Call: `(input_ids [B, L] int, mask [B, L] bool) -> last hidden state [B, L, hidden_size]`.
  Token type ids are all 0 (single sentences). Dropout is not applied (inference only).
  """
  vocab_size: int = 30522
  hidden_size: int = 384
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 1536
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids, mask):
    batch, length = input_ids.shape
    if length > self.max_position_embeddings:
      raise ValueError(f"sequence length {length} exceeds max_position_embeddings "
                       f"{self.max_position_embeddings}; lower text.max_length")
    kw = dict(init_std=0.02, param_dtype=self.param_dtype)
    x = (_embed(self.vocab_size, self.hidden_size, name="word_embeddings", **kw)(input_ids)
         + _embed(self.max_position_embeddings, self.hidden_size, name="position_embeddings",
                  **kw)(jnp.arange(length))[None]
         + _embed(self.type_vocab_size, self.hidden_size, name="token_type_embeddings",
                  **kw)(jnp.zeros((1, length), jnp.int32)))
    x = _layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, "embeddings_norm")(x)
    x = _constrain(x.astype(self.dtype))  # [B, L, D]
    bias = padding_bias(mask)
    head_dim = self.hidden_size // self.num_heads
    dense_kw = dict(use_bias=True, init_std=0.02, dtype=self.dtype, param_dtype=self.param_dtype)
    for i in range(self.num_layers):
      attn = SelfAttention(self.num_heads, head_dim, use_bias=True, scale=head_dim ** -0.5,
                           dtype=self.dtype, param_dtype=self.param_dtype,
                           name=f"layer_{i}_attention")(x, bias)
      x = _layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype,
                      f"layer_{i}_attention_norm")(x + attn).astype(self.dtype)
      h = _dense(self.intermediate_size, in_axis=axes.EMBED, out_axis=axes.MLP,
                 name=f"layer_{i}_intermediate", **dense_kw)(x)
      h = jax.nn.gelu(h, approximate=False)
      h = _dense(self.hidden_size, in_axis=axes.MLP, out_axis=axes.EMBED,
                 name=f"layer_{i}_output", **dense_kw)(h)
      x = _layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype,
                      f"layer_{i}_output_norm")(x + h).astype(self.dtype)
      x = _constrain(x)
    return x


def t5_relative_position_buckets(length, *, num_buckets, max_distance):
  """Bidirectional T5 relative-position buckets, `[L, L]` int32 (numpy, computed at trace time).

  Entry [i, j] buckets the distance j - i: half the buckets for each sign, the first half of
  those exact, the rest logarithmic up to `max_distance` (beyond it, the last bucket).
  Matches `T5Attention._relative_position_bucket(bidirectional=True)` (float32 log).
  """
  pos = np.arange(length, dtype=np.int64)
  relative = pos[None, :] - pos[:, None]  # memory - query
  half = num_buckets // 2
  buckets = (relative > 0).astype(np.int64) * half
  relative = np.abs(relative)
  max_exact = half // 2
  safe = np.maximum(relative, 1).astype(np.float32)
  log_ratio = np.float32(math.log(max_distance / max_exact))  # a Python float in Hugging Face
  large = max_exact + (np.log(safe / np.float32(max_exact)) / log_ratio
                       * np.float32(half - max_exact)).astype(np.int64)
  large = np.minimum(large, half - 1)
  buckets += np.where(relative < max_exact, relative, large)
  return buckets.astype(np.int32)


class T5RMSNorm(nn.Module):
  """T5 layer norm: scale * x / sqrt(mean(x^2) + eps), no mean subtraction, no bias."""
  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (axes.NORM,)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return (scale.astype(jnp.float32) * x32).astype(self.dtype)


class T5Encoder(nn.Module):
  """T5 v1.1 encoder stack (pre-norm RMSNorm, relative position bias shared from the first
  layer, gated-GELU or ReLU FFN, no biases, unscaled attention logits).

  Call: `(input_ids [B, L] int, mask [B, L] bool) -> last hidden state [B, L, d_model]`.
  `feed_forward_proj` is Hugging Face's: "gated-gelu" (v1.1, tanh GELU), "relu" (original T5),
  or "gated-relu"/"gelu"/"gated-gelu_new".
  """
  vocab_size: int = 32128
  d_model: int = 4096
  d_kv: int = 64
  num_heads: int = 64
  d_ff: int = 10240
  num_layers: int = 24
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  feed_forward_proj: str = "gated-gelu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _activation(self):
    name = self.feed_forward_proj.split("-")[-1]
    acts = {"gelu": lambda h: jax.nn.gelu(h, approximate=True),
            "gelu_new": lambda h: jax.nn.gelu(h, approximate=True),
            "relu": jax.nn.relu}
    if name not in acts:
      raise ValueError(f"unsupported T5 feed_forward_proj {self.feed_forward_proj!r}; "
                       f"expected [gated-]gelu or [gated-]relu")
    return acts[name], self.feed_forward_proj.startswith("gated-")

  def _position_bias(self, length):
    """The first layer's relative position bias, `[1, H, L, L]` float32."""
    table = self.param(
        "relative_attention_bias",
        nn.with_logical_partitioning(nn.initializers.normal(self.d_model ** -0.5),
                                     (axes.REL_BUCKETS, axes.HEADS)),
        (self.relative_attention_num_buckets, self.num_heads), self.param_dtype)
    buckets = t5_relative_position_buckets(
        length, num_buckets=self.relative_attention_num_buckets,
        max_distance=self.relative_attention_max_distance)
    bias = jnp.take(table.astype(jnp.float32), jnp.asarray(buckets), axis=0)  # [L, L, H]
    return jnp.transpose(bias, (2, 0, 1))[None]

  @nn.compact
  def __call__(self, input_ids, mask):
    _, length = input_ids.shape
    act, gated = self._activation()
    x = _embed(self.vocab_size, self.d_model, init_std=1.0, param_dtype=self.param_dtype,
               name="shared")(input_ids)
    x = _constrain(x.astype(self.dtype))  # [B, L, D]
    bias = self._position_bias(length) + padding_bias(mask)  # [B, H, L, L]
    norm_kw = dict(eps=self.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype)
    dense_kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
    for i in range(self.num_layers):
      h = T5RMSNorm(name=f"block_{i}_attention_norm", **norm_kw)(x)
      x = x + SelfAttention(self.num_heads, self.d_kv, use_bias=False, scale=1.0,
                            init_std=self.d_model ** -0.5, dtype=self.dtype,
                            param_dtype=self.param_dtype, name=f"block_{i}_attention")(h, bias)
      h = T5RMSNorm(name=f"block_{i}_mlp_norm", **norm_kw)(x)
      wi = _dense(self.d_ff, in_axis=axes.EMBED, out_axis=axes.MLP,
                  init_std=self.d_model ** -0.5, name=f"block_{i}_wi_0", **dense_kw)(h)
      wi = act(wi)
      if gated:
        wi = wi * _dense(self.d_ff, in_axis=axes.EMBED, out_axis=axes.MLP,
                         init_std=self.d_model ** -0.5, name=f"block_{i}_wi_1", **dense_kw)(h)
      x = x + _dense(self.d_model, in_axis=axes.MLP, out_axis=axes.EMBED,
                     init_std=self.d_ff ** -0.5, name=f"block_{i}_wo", **dense_kw)(wi)
      x = _constrain(x)
    return T5RMSNorm(name="final_norm", **norm_kw)(x)
