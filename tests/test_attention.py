"""The attention dispatcher, T5 relative position buckets and the attention blocks."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.models import attention
from vdm_jax.models import attention_blocks


def _qkv(b=2, lq=6, lk=5, n=3, d=8, seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  make = lambda l: jnp.asarray(rng.standard_normal((b, l, n, d)), dtype)
  return make(lq), make(lk), make(lk)


def _reference(q, k, v, bias, mask):
  """Plain softmax attention in float64 numpy, written independently of the module."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  logits = np.einsum("bqnd,bknd->bnqk", q, k) / math.sqrt(q.shape[-1])
  if bias is not None:
    logits = logits + np.asarray(bias, np.float64)
  full_mask = np.broadcast_to(np.asarray(mask), logits.shape)
  logits = np.where(full_mask, logits, -np.inf)
  out = np.zeros(q.shape)
  for b, n, i in np.ndindex(logits.shape[0], logits.shape[1], logits.shape[2]):
    row = logits[b, n, i]
    if np.isfinite(row).any():
      p = np.exp(row - row[np.isfinite(row)].max())
      out[b, i, n] = (p / p.sum()) @ v[b, :, n]
  return out


def _bias_and_mask(b=2, lq=6, lk=5, n=3, seed=1):
  rng = np.random.default_rng(seed)
  bias = jnp.asarray(rng.standard_normal((1, n, lq, lk)), jnp.float32)
  mask = rng.uniform(size=(b, 1, lq, lk)) < 0.6
  mask[0, 0, 2, :] = False                 # a query row with no valid key -> zeros
  mask[:, :, :, 0] |= np.arange(lq)[None, None] != 2
  return bias, jnp.asarray(mask)


def test_xla_matches_plain_reference_with_bias_and_mask():
  q, k, v = _qkv()
  bias, mask = _bias_and_mask()
  out = attention.dot_product_attention(q, k, v, bias=bias, mask=mask, implementation="xla")
  chex.assert_shape(out, q.shape)
  np.testing.assert_allclose(out, _reference(q, k, v, bias, mask), atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(out[0, 2], 0.0)
  plain = attention.dot_product_attention(q, k, v)
  np.testing.assert_allclose(plain, _reference(q, k, v, None, True), atol=1e-5, rtol=1e-5)


def test_xla_bfloat16_uses_float32_softmax():
  q, k, v = _qkv(dtype=jnp.bfloat16)
  bias, mask = _bias_and_mask()
  out = attention.dot_product_attention(q, k, v, bias=bias, mask=mask)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), _reference(q, k, v, bias, mask),
                             atol=3e-2, rtol=3e-2)


def test_fully_masked_rows_have_finite_zero_gradients():
  q, k, v = _qkv()
  mask = jnp.zeros((2, 1, 6, 5), bool).at[1].set(True)

  def loss(q, k, v):
    return jnp.sum(attention.dot_product_attention(q, k, v, mask=mask) ** 2)
  grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
  for g in grads:
    assert bool(jnp.all(jnp.isfinite(g)))
    np.testing.assert_array_equal(g[0], 0.0)


def test_bad_arguments_raise():
  q, k, v = _qkv()
  with pytest.raises(ValueError, match="unknown attention implementation"):
    attention.dot_product_attention(q, k, v, implementation="flash")
  with pytest.raises(ValueError, match="mask must be bool"):
    attention.dot_product_attention(q, k, v, mask=jnp.ones((1, 1, 6, 5)))
  with pytest.raises(ValueError, match="4-D"):
    attention.dot_product_attention(q, k, v, bias=jnp.ones((6, 5)))


@pytest.mark.skipif(jax.devices()[0].platform == "gpu", reason="checks the non-GPU error")
def test_cudnn_and_splash_refuse_other_platforms_clearly():
  q, k, v = _qkv()
  with pytest.raises(RuntimeError, match="'cudnn' needs a GPU"):
    attention.dot_product_attention(q, k, v, implementation="cudnn")
  if jax.devices()[0].platform != "tpu":
    with pytest.raises(RuntimeError, match="'splash' needs a TPU"):
      attention.dot_product_attention(q, k, v, implementation="splash")


@pytest.mark.skipif(jax.devices()[0].platform != "gpu",
                    reason="cuDNN flash attention runs only on an NVIDIA GPU")
def test_cudnn_matches_xla_on_gpu():
  q, k, v = _qkv(b=2, lq=16, lk=8, n=2, d=64, dtype=jnp.bfloat16)
  bias, mask = _bias_and_mask(b=2, lq=16, lk=8, n=2)
  want = attention.dot_product_attention(q, k, v, bias=bias, mask=mask)
  got = attention.dot_product_attention(q, k, v, bias=bias, mask=mask, implementation="cudnn")
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                             atol=2e-2, rtol=2e-2)


def _padding_mask(b, lk):
  lengths = np.array([lk - 3, 0, lk][:b])   # padded caption, all-padding, full
  return jnp.asarray(np.arange(lk)[None, :] < lengths[:, None])[:, None, None, :]


def test_splash_wrapper_matches_xla_in_interpret_mode():
  """The splash wrapper (scaling, padding to 128-blocks, segment ids from a key-padding mask,
  empty rows) against 'xla', with the Pallas kernel interpreted on CPU. On a TPU the public
  dispatcher runs the same wrapper compiled."""
  q, k, v = _qkv(b=3, lq=40, lk=24, n=2, d=32)
  mask = _padding_mask(3, 24)
  want = attention.dot_product_attention(q, k, v, mask=mask)
  row_valid = jnp.any(mask, axis=-1, keepdims=True)
  got = attention._splash_attention(q, k, v, None, mask | ~row_valid, interpret=True)
  got = jnp.where(jnp.transpose(row_valid, (0, 2, 1, 3)), got, 0.0)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  with pytest.raises(ValueError, match="no additive bias"):
    attention._splash_attention(q, k, v, jnp.zeros((1, 2, 40, 24)), None, interpret=True)
  with pytest.raises(ValueError, match="key-padding masks"):
    attention._splash_attention(q, k, v, None, jnp.ones((3, 1, 40, 24), bool), interpret=True)


@pytest.mark.skipif(jax.devices()[0].platform != "tpu", reason="splash attention needs a TPU")
def test_splash_matches_xla_on_tpu():
  q, k, v = _qkv(b=3, lq=40, lk=24, n=2, d=128, dtype=jnp.bfloat16)
  mask = _padding_mask(3, 24)
  want = attention.dot_product_attention(q, k, v, mask=mask)
  got = attention.dot_product_attention(q, k, v, mask=mask, implementation="splash")
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                             atol=2e-2, rtol=2e-2)


def _t5_bucket(rel, num_buckets, max_distance):
  """Scalar transcription of T5's _relative_position_bucket (bidirectional)."""
  half = num_buckets // 2
  ret = half if rel > 0 else 0
  n = abs(rel)
  max_exact = half // 2
  if n < max_exact:
    return ret + n
  large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact)
                          * (half - max_exact))
  return ret + min(large, half - 1)


def test_relative_position_buckets_match_t5():
  rel = np.arange(-200, 201)
  got = np.asarray(attention.relative_position_buckets(jnp.asarray(rel), num_buckets=32,
                                                       max_distance=128))
  want = np.array([_t5_bucket(int(r), 32, 128) for r in rel])
  np.testing.assert_array_equal(got, want)
  assert got.min() == 0 and got.max() == 31
  assert got[rel == 0] == 0 and got[rel == 1] == 17    # direction separates the halves


def test_temporal_attention_is_identity_at_init_and_masks_images():
  block = attention_blocks.TemporalSelfAttention(num_heads=2, head_dim=4, num_groups=2,
                                                 num_buckets=8, max_distance=16)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 2, 3, 8)), jnp.float32)
  is_image = jnp.array([False, True])
  params = block.init(jax.random.key(0, impl="unsafe_rbg"), x, is_image)
  np.testing.assert_allclose(block.apply(params, x, is_image), x, atol=1e-6)
  # Random output projection: frames of example 0 now interact, example 1's do not.
  params = jax.tree.map(lambda p: p + 0.3 * jnp.ones_like(p), params)
  y = block.apply(params, x, is_image)
  x2 = x.at[:, 0].set(jnp.asarray(np.random.default_rng(1).standard_normal(x.shape[2:]),
                                  jnp.float32))
  y2 = block.apply(params, x2, is_image)
  assert float(jnp.max(jnp.abs(y2[0, 1:] - y[0, 1:]))) > 1e-3
  np.testing.assert_allclose(y2[1, 1:], y[1, 1:], atol=1e-6)


def test_relative_attention_matches_loop_reference_and_reduces_to_plain():
  q, k, v = _qkv(lq=5, lk=5)
  rng = np.random.default_rng(3)
  rel_k, rel_v = (jnp.asarray(rng.standard_normal((5, 5, 3, 8)), jnp.float32) for _ in "kv")
  bias, mask = _bias_and_mask(lq=5, lk=5)
  out = attention.relative_dot_product_attention(q, k, v, rel_k, rel_v, bias=bias, mask=mask)
  # Shaw et al. (2018), eq. 3-5, written out per (example, head, query).
  qn, kn, vn, bn, mn = (np.asarray(a, np.float64) for a in (q, k, v, bias, mask))
  rk, rv = np.asarray(rel_k, np.float64), np.asarray(rel_v, np.float64)
  want = np.zeros(q.shape)
  for b, n, i in np.ndindex(2, 3, 5):
    keep = mn[b, 0, i].astype(bool)
    if not keep.any():
      continue
    logits = np.array([qn[b, i, n] @ (kn[b, j, n] + rk[i, j, n]) for j in range(5)])
    logits = logits / math.sqrt(8) + bn[0, n, i]
    p = np.where(keep, np.exp(logits - logits[keep].max()), 0.0)
    want[b, i, n] = sum(p[j] / p.sum() * (vn[b, j, n] + rv[i, j, n]) for j in range(5))
  np.testing.assert_allclose(out, want, atol=1e-5, rtol=1e-5)
  zeros = jnp.zeros_like(rel_k)
  np.testing.assert_allclose(
      attention.relative_dot_product_attention(q, k, v, zeros, zeros, bias=bias, mask=mask),
      attention.dot_product_attention(q, k, v, bias=bias, mask=mask), atol=1e-6)
  with pytest.raises(ValueError, match="rel_k"):
    attention.relative_dot_product_attention(q, k, v, rel_k[:4], rel_v)


@pytest.mark.parametrize("position", ["bias", "shaw"])
def test_temporal_position_and_identical_frames(position):
  """With only a bias, frames of identical content get identical outputs (a weighted mean of
  equal values); Shaw's value vectors tell each frame its offsets, so they differ."""
  block = attention_blocks.TemporalSelfAttention(num_heads=2, head_dim=4, num_groups=2,
                                                 num_buckets=8, max_distance=16,
                                                 position=position)
  frame = np.random.default_rng(0).standard_normal((1, 1, 2, 3, 8))
  x = jnp.asarray(np.repeat(frame, 5, axis=1), jnp.float32)             # 5 identical frames
  is_image = jnp.array([False])
  params = block.init(jax.random.key(0, impl="unsafe_rbg"), x, is_image)
  np.testing.assert_allclose(block.apply(params, x, is_image), x, atol=1e-6)  # identity at init
  assert ("rel_kv" in params["params"]) == (position == "shaw")
  params = jax.tree.map(lambda p: p + 0.3 * jnp.ones_like(p), params)
  y = block.apply(params, x, is_image)
  spread = float(jnp.max(jnp.abs(y - y[:, :1])))
  if position == "shaw":
    assert spread > 1e-3
  else:
    assert spread < 1e-5


def test_text_bias_lets_the_caption_break_time_reversal_symmetry():
  """With a direction-symmetric position table the block is equivariant under time reversal
  (so 'left' and 'right' cannot differ); the text bias (zero at init) makes the bias depend on
  the caption, and with a nonzero map two captions give time-asymmetric, different outputs."""
  block = attention_blocks.TemporalSelfAttention(num_heads=2, head_dim=4, num_groups=2,
                                                 num_buckets=8, max_distance=16,
                                                 text_bias=True)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 5, 2, 3, 8)), jnp.float32)
  text = jnp.asarray(rng.standard_normal((2, 4, 6)), jnp.float32)
  mask = jnp.array([[True, True, True, False], [True, True, False, False]])
  is_image = jnp.array([False, False])
  params = block.init(jax.random.key(0, impl="unsafe_rbg"), x, is_image, text, mask)["params"]
  params = jax.tree.map(lambda p: p + 0.3 * jnp.ones_like(p), params)     # live output layer
  table = np.asarray(rng.standard_normal((8, 2)), np.float32)
  table[5:8] = table[1:4]                          # bias(+d) = bias(-d): direction-symmetric
  params["rel_pos"]["table"] = jnp.asarray(table)
  params["text_bias"] = jax.tree.map(jnp.zeros_like, params["text_bias"])

  def run(p, xs, t=text):
    return block.apply({"params": p}, xs, is_image, t, mask)

  rev = lambda a: a[:, ::-1]
  np.testing.assert_allclose(run(params, rev(x)), rev(run(params, x)), atol=1e-5)
  params["text_bias"]["kernel"] = jnp.asarray(rng.standard_normal((6, 16)), jnp.float32)
  assert float(jnp.max(jnp.abs(run(params, rev(x)) - rev(run(params, x))))) > 1e-2
  assert float(jnp.max(jnp.abs(run(params, x, -text) - run(params, x)))) > 1e-2
  with pytest.raises(ValueError, match="text tokens"):
    block.apply({"params": params}, x, is_image)


def test_text_bias_attention_pooling_starts_as_the_mean_and_can_pick_a_token():
  """text_bias_pooling='attention': with its score weights at zero (their init) the block is
  the mean-pooled one; with scores that single out one token, only that token's embedding
  moves the bias; masked tokens never do."""
  kw = dict(num_heads=2, head_dim=4, num_groups=2, num_buckets=8, max_distance=16,
            text_bias=True)
  mean_block = attention_blocks.TemporalSelfAttention(**kw)
  attn_block = attention_blocks.TemporalSelfAttention(**kw, text_bias_pooling="attention")
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 5, 2, 3, 8)), jnp.float32)
  text = jnp.asarray(rng.standard_normal((2, 4, 6)), jnp.float32)
  mask = jnp.array([[True, True, True, False], [True, True, False, False]])
  is_image = jnp.array([False, False])
  params = attn_block.init(jax.random.key(0, impl="unsafe_rbg"), x, is_image, text, mask)
  params = jax.tree.map(lambda p: p + 0.3 * jnp.ones_like(p), params["params"])
  params["text_bias"]["kernel"] = jnp.asarray(rng.standard_normal((6, 16)), jnp.float32)
  params["text_bias_pool"] = jax.tree.map(jnp.zeros_like, params["text_bias_pool"])
  mean_params = {k: v for k, v in params.items() if k != "text_bias_pool"}
  run = lambda blk, p, t: blk.apply({"params": p}, x, is_image, t, mask)
  np.testing.assert_allclose(run(attn_block, params, text), run(mean_block, mean_params, text),
                             atol=1e-5)
  masked = text.at[0, 3].add(5.0)                          # a padding token: no effect
  np.testing.assert_allclose(run(attn_block, params, masked), run(attn_block, params, text),
                             atol=1e-6)
  # Scores that pick token 0 (its embedding along the score direction is made large).
  direction = np.zeros((6, 1), np.float32)
  direction[0] = 1.0
  params["text_bias_pool"]["kernel"] = jnp.asarray(direction)
  picked = text.at[:, 0, 0].set(60.0)
  base = run(attn_block, params, picked)
  other = picked.at[:, 1, 1:].add(3.0)                     # another token: (almost) no effect
  assert float(jnp.max(jnp.abs(run(attn_block, params, other) - base))) < 1e-4
  first = picked.at[:, 0, 1:].add(3.0)                     # the picked token: an effect
  assert float(jnp.max(jnp.abs(run(attn_block, params, first) - base))) > 1e-2
  assert float(jnp.max(jnp.abs(run(mean_block, mean_params, other)
                               - run(mean_block, mean_params, picked)))) > 1e-2


def test_spacetime_relative_position_indexes_frame_row_and_column_offsets():
  rel = attention_blocks.SpaceTimeRelativePosition(num_heads=2, head_dim=3, num_buckets=8,
                                                   max_distance=16, max_offset=2)
  params = rel.init(jax.random.key(0), 3, 4, 5)
  bias, (rel_k, rel_v), frame = rel.apply(params, 3, 4, 5)
  chex.assert_shape(bias, (1, 2, 60, 60))
  chex.assert_shape([rel_k, rel_v], (60, 60, 2, 3))
  p = jax.tree.map(np.asarray, nn_unbox(params["params"]))
  token = lambda t, y, x: (t * 4 + y) * 5 + x                       # order (frame, row, col)
  np.testing.assert_array_equal(frame, np.repeat(np.arange(3), 20))
  for (t1, y1, x1), (t2, y2, x2) in [((0, 0, 0), (2, 3, 4)), ((1, 2, 1), (0, 0, 4)),
                                     ((2, 1, 1), (2, 1, 1))]:
    i, j = token(t1, y1, x1), token(t2, y2, x2)
    bt = int(attention.relative_position_buckets(jnp.asarray(t2 - t1), num_buckets=8,
                                                 max_distance=16))
    by, bx = np.clip(y2 - y1, -2, 2) + 2, np.clip(x2 - x1, -2, 2) + 2   # clipped at +-2
    np.testing.assert_array_equal(bias[0, :, i, j], p["bias"][bt, by, bx])
    np.testing.assert_array_equal(rel_k[i, j], p["key"][bt, by, bx])
    np.testing.assert_array_equal(rel_v[i, j], p["value"][bt, by, bx])


def nn_unbox(tree):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  return nn.meta.unbox(tree)


def test_spacetime_attention_is_identity_at_init_and_keeps_images_to_their_frame():
  block = attention_blocks.SpaceTimeSelfAttention(num_heads=2, head_dim=4, num_groups=2,
                                                  num_buckets=8, max_distance=16, max_offset=2)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 3, 3, 8)), jnp.float32)
  is_image = jnp.array([False, True])
  params = block.init(jax.random.key(0, impl="unsafe_rbg"), x, is_image)
  np.testing.assert_allclose(block.apply(params, x, is_image), x, atol=1e-6)
  params = jax.tree.map(lambda p: p + 0.3 * jnp.ones_like(p), params)
  y = block.apply(params, x, is_image)
  # change one pixel of frame 0: a video's other frames see it, an image example's do not
  x2 = x.at[:, 0, 1, 1].add(3.0)
  y2 = block.apply(params, x2, is_image)
  assert float(jnp.max(jnp.abs(y2[0, 1:] - y[0, 1:]))) > 1e-3
  np.testing.assert_allclose(y2[1, 1:], y[1, 1:], atol=1e-6)
  assert float(jnp.max(jnp.abs(y2[1, 0] - y[1, 0]))) > 1e-3        # its own frame does
