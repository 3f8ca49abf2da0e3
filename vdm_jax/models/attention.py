"""One attention dispatcher for every attention in the models.

`dot_product_attention(q, k, v, *, bias, mask, implementation)` computes

    softmax(q k^T / sqrt(D) + bias, masked) v

for q [B, Lq, N, D], k and v [B, Lk, N, D] (jax.nn's BTNH layout), an additive `bias`
broadcastable to [B, N, Lq, Lk] and a boolean `mask` broadcastable to [B, N, Lq, Lk]
(True = attend). A query row whose keys are all masked out returns zeros (every
implementation), so a caption that is all padding (classifier-free guidance's empty prompt)
is well defined and its gradients are finite.

Implementations:
  'xla'    our own einsum + softmax reference; logits and softmax in float32, any input dtype,
           any platform. The default, and the reference the others are tested against.
  'cudnn'  cuDNN flash attention through `jax.nn.dot_product_attention(...,
           implementation='cudnn')`. GPU only, bfloat16/float16 inputs only. The mask is folded
           into the bias (a large negative number where masked); the bias is passed with full
           [.., Lq, Lk] extents. cuDNN limits (jax 0.10): head dim <= 256 on Hopper (128 before)
           and a multiple of 8; with a bias in training, Lq and Lk must be even.
  'splash' The Pallas splash-attention kernel (jax.experimental.pallas.ops.tpu), TPU only,
           imported lazily. It takes no additive bias (use 'xla' for attention with a relative
           position bias: the U-Net does so for temporal attention, whose sequences are short);
           a key-padding mask (shape [B, 1, 1, Lk], e.g. text padding) becomes splash segment
           ids; other masks are refused. Sequences are padded to the 128-token block size.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

IMPLEMENTATIONS = ("xla", "cudnn", "splash")
_SPLASH_BLOCK = 128


def dot_product_attention(q, k, v, *, bias=None, mask=None, implementation="xla"):
  """Multi-head scaled dot-product attention.

  Args:
    q: [B, Lq, N, D] queries.
    k: [B, Lk, N, D] keys.
    v: [B, Lk, N, D] values.
    bias: optional additive logits bias, broadcastable to [B, N, Lq, Lk].
    mask: optional bool mask broadcastable to [B, N, Lq, Lk]; True = attend.
    implementation: 'xla' | 'cudnn' | 'splash' (see the module docstring).

  Returns:
    [B, Lq, N, D] in the dtype of `v`.
  """
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"q, k, v must be [B, L, heads, head_dim]; got {q.shape}, {k.shape}, "
                     f"{v.shape}")
  if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(f"incompatible q {q.shape}, k {k.shape}, v {v.shape}")
  for name, a in (("bias", bias), ("mask", mask)):
    if a is not None and a.ndim != 4:
      raise ValueError(f"{name} must be 4-D, broadcastable to [B, N, Lq, Lk]; got {a.shape}")
  if mask is not None and mask.dtype != jnp.bool_:
    raise ValueError(f"mask must be bool (True = attend); got {mask.dtype}")

  row_valid = None
  if mask is not None:
    # Rows with no valid key attend to everything and are zeroed afterwards, so no
    # implementation ever normalizes an empty row (NaN in the softmax or its gradient).
    row_valid = jnp.any(mask, axis=-1, keepdims=True)           # [B|1, N|1, Lq|1, 1]
    mask = mask | ~row_valid

  if implementation == "xla":
    out = _xla_attention(q, k, v, bias, mask)
  elif implementation == "cudnn":
    out = _cudnn_attention(q, k, v, bias, mask)
  elif implementation == "splash":
    _require_platform("tpu", "splash")
    out = _splash_attention(q, k, v, bias, mask)
  else:
    raise ValueError(f"unknown attention implementation {implementation!r}; "
                     f"use one of {IMPLEMENTATIONS}")

  if row_valid is not None:
    keep = jnp.transpose(row_valid, (0, 2, 1, 3))                # [B|1, Lq|1, N|1, 1]
    out = jnp.where(keep, out, jnp.zeros((), out.dtype))
  return out


def ring_attention(q, k, v, *, mask=None, axis_name: str):
  """Ring attention (sequence parallelism): `dot_product_attention` with the query, key and
  value token axes sharded over mesh axis `axis_name`; under the active mesh (jax.set_mesh).

  Each device keeps its block of queries and passes its block of keys and values around the
  ring (`ppermute`), one step per device, accumulating the softmax online in float32 (running
  max, normalizer and weighted sum), so no device ever holds the full key sequence. The mask
  (broadcastable to [B, N, Lq, Lk]) is sharded by query block; each step reads the columns of
  the key block it holds. Lq and Lk must be divisible by the axis size. Same arguments and
  result as `dot_product_attention` (a row whose keys are all masked returns zeros).
  """
  if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(f"incompatible q {q.shape}, k {k.shape}, v {v.shape}")
  mesh = jax.sharding.get_abstract_mesh()
  if axis_name not in mesh.axis_names:
    raise ValueError(f"ring attention over mesh axis {axis_name!r}, but the active mesh has "
                     f"axes {mesh.axis_names}; run under jax.set_mesh(mesh)")
  size = mesh.shape[axis_name]
  lq, lk = q.shape[1], k.shape[1]
  if lq % size or lk % size:
    raise ValueError(f"ring attention over {size} devices needs query and key lengths "
                     f"divisible by {size}, got {lq} and {lk}")
  row_valid = None
  if mask is not None:
    if mask.dtype != jnp.bool_ or mask.ndim != 4:
      raise ValueError(f"mask must be a 4-D bool array, got {mask.dtype} {mask.shape}")
    row_valid = jnp.any(mask, axis=-1, keepdims=True)
    mask = jnp.broadcast_to(mask | ~row_valid, mask.shape[:2] + (lq, lk))
  seq = jax.sharding.PartitionSpec(None, axis_name, None, None)
  mask_spec = jax.sharding.PartitionSpec(None, None, axis_name, None)

  def local(q, k, v, mask):
    n = jax.lax.axis_size(axis_name)
    me = jax.lax.axis_index(axis_name)
    block = k.shape[1]
    scale = 1.0 / np.sqrt(q.shape[-1])
    low = jnp.finfo(jnp.float32).min
    b, nq, heads, d = q.shape
    out = jnp.zeros((b, heads, nq, d), jnp.float32)
    run_max = jnp.full((b, heads, nq, 1), low, jnp.float32)
    norm = jnp.zeros((b, heads, nq, 1), jnp.float32)
    ring = [(i, (i + 1) % n) for i in range(n)]

    def step(carry, s):
      out, run_max, norm, k, v = carry
      owner = (me - s) % n                       # whose key block this device holds now
      logits = jnp.einsum("bqnd,bknd->bnqk", q, k, preferred_element_type=jnp.float32) * scale
      if mask is not None:
        cols = jax.lax.dynamic_slice_in_dim(mask, owner * block, block, axis=3)
        logits = jnp.where(cols, logits, low)
      new_max = jnp.maximum(run_max, jnp.max(logits, axis=-1, keepdims=True))
      p = jnp.exp(logits - new_max)
      keep = jnp.exp(run_max - new_max)
      norm = norm * keep + jnp.sum(p, axis=-1, keepdims=True)
      out = out * keep + jnp.einsum("bnqk,bknd->bnqd", p, v.astype(jnp.float32))
      k, v = jax.lax.ppermute((k, v), axis_name, ring)
      return (out, new_max, norm, k, v), None
    (out, _, norm, _, _), _ = jax.lax.scan(step, (out, run_max, norm, k, v), jnp.arange(n))
    return jnp.transpose(out / norm, (0, 2, 1, 3)).astype(v.dtype)

  if mask is None:
    fn = jax.shard_map(lambda q, k, v: local(q, k, v, None), in_specs=(seq, seq, seq),
                       out_specs=seq, axis_names={axis_name}, check_vma=False)
    out = fn(q, k, v)
  else:
    fn = jax.shard_map(local, in_specs=(seq, seq, seq, mask_spec), out_specs=seq,
                       axis_names={axis_name}, check_vma=False)
    out = fn(q, k, v, mask)
  if row_valid is not None:
    keep = jnp.transpose(row_valid, (0, 2, 1, 3))
    out = jnp.where(keep, out, jnp.zeros((), out.dtype))
  return out


def relative_dot_product_attention(q, k, v, rel_k, rel_v, *, bias=None, mask=None):
  """Attention with relative position representations on keys and values (Shaw et al. 2018).

  logits[q, k] = q . (k + rel_k[q, k]) / sqrt(D) + bias;  out[q] = sum_k p[q, k] (v[k] +
  rel_v[q, k]). The value term tells each query which offset its content came from (a bias
  alone only weighs the frames). Plain XLA einsums: meant for short sequences (frames).

  Args:
    q, k, v: [B, Lq|Lk, N, D] as for `dot_product_attention`.
    rel_k, rel_v: [Lq, Lk, N, D] the learned vector of each (query, key) offset.
    bias, mask: as for `dot_product_attention`.
  Returns:
    [B, Lq, N, D] in the dtype of `v`.
  """
  if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(f"incompatible q {q.shape}, k {k.shape}, v {v.shape}")
  want = (q.shape[1], k.shape[1]) + q.shape[2:]
  if rel_k.shape != want or rel_v.shape != want:
    raise ValueError(f"rel_k {rel_k.shape} and rel_v {rel_v.shape} must be [Lq, Lk, N, D] = "
                     f"{want}")
  if mask is not None and mask.dtype != jnp.bool_:
    raise ValueError(f"mask must be bool (True = attend); got {mask.dtype}")
  scale = 1.0 / np.sqrt(q.shape[-1])
  logits = (jnp.einsum("bqnd,bknd->bnqk", q, k, preferred_element_type=jnp.float32)
            + jnp.einsum("bqnd,qknd->bnqk", q, rel_k.astype(q.dtype),
                         preferred_element_type=jnp.float32)) * scale
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  row_valid = None
  if mask is not None:
    row_valid = jnp.any(mask, axis=-1, keepdims=True)
    logits = jnp.where(mask | ~row_valid, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = (jnp.einsum("bnqk,bknd->bqnd", probs, v)
         + jnp.einsum("bnqk,qknd->bqnd", probs, rel_v.astype(v.dtype)))
  if row_valid is not None:
    keep = jnp.transpose(row_valid, (0, 2, 1, 3))
    out = jnp.where(keep, out, jnp.zeros((), out.dtype))
  return out


def _xla_attention(q, k, v, bias, mask):
  """Reference attention: float32 logits and softmax, einsum contractions."""
  scale = 1.0 / np.sqrt(q.shape[-1])
  logits = jnp.einsum("bqnd,bknd->bnqk", q, k, preferred_element_type=jnp.float32)
  logits = logits * scale
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bnqk,bknd->bqnd", probs, v)


def _require_platform(platform, implementation):
  found = jax.devices()[0].platform
  if found != platform:
    raise RuntimeError(
        f"attention implementation {implementation!r} needs a {platform.upper()}, but the "
        f"default backend is {found!r}; set model.attention_impl='xla' on this machine")


def _cudnn_attention(q, k, v, bias, mask):
  """cuDNN flash attention; the mask is folded into an additive bias."""
  _require_platform("gpu", "cudnn")
  if q.dtype not in (jnp.bfloat16, jnp.float16):
    raise ValueError(f"attention implementation 'cudnn' needs bfloat16 or float16 inputs, got "
                     f"{q.dtype}; set model.dtype='bfloat16' (or attention_impl='xla')")
  lq, lk = q.shape[1], k.shape[1]
  if mask is not None:
    # cuDNN works around a bug with -(2**40) rather than the dtype's lowest value.
    neg = jnp.asarray(-(2 ** 40) if q.dtype == jnp.bfloat16 else -(2 ** 14), q.dtype)
    base = jnp.zeros((), q.dtype) if bias is None else bias.astype(q.dtype)
    bias = jnp.where(mask, base, neg)
  if bias is not None:
    bias = jnp.broadcast_to(bias.astype(q.dtype), bias.shape[:2] + (lq, lk))
  return jax.nn.dot_product_attention(q, k, v, bias=bias, implementation="cudnn")


def _splash_attention(q, k, v, bias, mask, *, interpret=False):
  """Splash attention (Pallas, TPU). `interpret=True` runs the kernel interpreted (tests)."""
  if bias is not None:
    raise ValueError("attention implementation 'splash' takes no additive bias (relative "
                     "position bias); use 'xla' for this attention")
  b, lq, n, d = q.shape
  lk = k.shape[1]
  if mask is not None and (mask.shape[1] != 1 or mask.shape[2] != 1):
    raise ValueError("attention implementation 'splash' supports only key-padding masks of "
                     f"shape [B, 1, 1, Lk]; got a mask of shape {mask.shape}")
  kv_valid = (jnp.ones((b, lk), jnp.bool_) if mask is None
              else jnp.broadcast_to(mask[:, 0, 0, :], (b, lk)))
  pq, pk = _round_up(lq, _SPLASH_BLOCK), _round_up(lk, _SPLASH_BLOCK)
  # Splash does not scale the logits: fold 1/sqrt(D) into q. Layout per example: [N, L, D].
  qs = jnp.pad(q * jnp.asarray(1.0 / np.sqrt(d), q.dtype), ((0, 0), (0, pq - lq), (0, 0),
                                                             (0, 0)))
  ks = jnp.pad(k, ((0, 0), (0, pk - lk), (0, 0), (0, 0)))
  vs = jnp.pad(v, ((0, 0), (0, pk - lk), (0, 0), (0, 0)))
  q_ids = jnp.ones((b, pq), jnp.int32)
  kv_ids = jnp.pad(kv_valid.astype(jnp.int32), ((0, 0), (0, pk - lk)))  # 0 = never attended
  kernel = _splash_kernel(n, pq, pk, interpret)
  from jax.experimental.pallas.ops.tpu import splash_attention as splash  # pylint: disable=g-import-not-at-top

  def one(qe, ke, ve, qi, ki):
    return kernel(qe.transpose(1, 0, 2), ke.transpose(1, 0, 2), ve.transpose(1, 0, 2),
                  segment_ids=splash.SegmentIds(q=qi, kv=ki))
  out = jax.vmap(one)(qs, ks, vs, q_ids, kv_ids)                  # [B, N, pq, D]
  return out.transpose(0, 2, 1, 3)[:, :lq].astype(v.dtype)


@functools.lru_cache(maxsize=64)
def _splash_kernel(num_heads, lq, lk, interpret):
  """A splash kernel over a full (unmasked) [lq, lk] pattern; masking comes from segment ids."""
  from jax.experimental.pallas.ops.tpu import splash_attention as splash  # pylint: disable=g-import-not-at-top
  full = splash.MultiHeadMask([splash.FullMask((lq, lk))] * num_heads)
  blk = _SPLASH_BLOCK
  sizes = splash.BlockSizes(block_q=blk, block_kv=blk, block_kv_compute=blk, block_q_dkv=blk,
                            block_kv_dkv=blk, block_kv_dkv_compute=blk, block_q_dq=blk,
                            block_kv_dq=blk)
  return splash.make_splash_mha(full, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                interpret=interpret)


def _round_up(n, m):
  return -(-n // m) * m


def relative_position_buckets(relative_position, *, num_buckets, max_distance):
  """T5's bidirectional log-spaced buckets.

  Args:
    relative_position: int array, key position minus query position.
    num_buckets: total buckets (half for each direction).
    max_distance: distances at or beyond this share the last bucket of their direction.

  Returns:
    int32 array of the same shape with values in [0, num_buckets).
  """
  half = num_buckets // 2
  ret = (relative_position > 0).astype(jnp.int32) * half
  n = jnp.abs(relative_position)
  max_exact = half // 2
  is_small = n < max_exact
  large = max_exact + (
      jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact)
      / np.log(max_distance / max_exact) * (half - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, half - 1)
  return ret + jnp.where(is_small, n, large).astype(jnp.int32)
