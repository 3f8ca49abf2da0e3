"""VideoDiT (model.family='dit') behaviour: identity blocks at init, 3D RoPE relativity, image
rows computed as one-frame clips, text padding ignored, layouts that mix only what they should,
the spec's errors, and the family interface.

Behaviour tests use random parameters (every parameter drawn, gates included, so every branch
is visible; built from `jax.eval_shape` of init, which costs no compile); identity tests use
the real `init`.
"""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.distill import state
from vdm_jax.models import registry
from vdm_jax.models.dit import network
from vdm_jax.models.dit import presets
from vdm_jax.models.dit import rope

B, T, H, W, C, L = 2, 3, 4, 4, 3, 5
VARIANTS = {
    "full_cross": {},
    "joint": dict(text_conditioning="joint"),
    "alternating": dict(attention_layout="alternating", depth=2),
    "shared_mlp_layernorm": dict(modulation="shared", text_projection="mlp", qk_norm="layer"),
}


def make_inputs(cfg, *, b=B, t=T, seed=0):
  """(x, logsnr, kwargs); the first example's text has 2 padded tokens."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((b, t, H, W, C)), jnp.float32)
  logsnr = jnp.asarray(rng.uniform(-5, 5, b), jnp.float32)
  mask = np.ones((b, L), bool)
  mask[0, L - 2:] = False
  kw = dict(text_emb=jnp.asarray(rng.standard_normal((b, L, cfg.text_embed_dim)), jnp.float32),
            text_mask=jnp.asarray(mask), fps=jnp.full((b,), 4.0))
  return x, logsnr, kw


def random_params(model, x, logsnr, kw, seed=0):
  """Every parameter random: fan-in scaled kernels, norm scales near 1, small biases and
  modulation tables (so every gate is open)."""
  abstract = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), x, logsnr, **kw)))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name == "scale":
      value = 1.0 + 0.1 * rng.standard_normal(shape)
    elif name in ("bias", "modulation"):
      value = 0.3 * rng.standard_normal(shape)
    else:
      fan_in = int(np.prod(shape[:-1])) if name != "kernel" or len(shape) != 3 else shape[0]
      if len(shape) == 3 and path[-2].key == "out":      # OutProjection [N, D, C]
        fan_in = shape[0] * shape[1]
      value = rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))
    return jnp.asarray(value, jnp.float32)
  return jax.tree_util.tree_map_with_path(fill, abstract)


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request):
  """(cfg, model, random params, jitted apply) of one variant."""
  cfg = presets.tiny(**VARIANTS[request.param])
  model = network.VideoDiT(config=cfg)
  x, logsnr, kw = make_inputs(cfg)
  params = random_params(model, x, logsnr, dict(kw, is_image=jnp.zeros((B,), bool)))
  apply = jax.jit(lambda p, x, logsnr, kw: model.apply(p, x, logsnr, **kw))
  return request.param, cfg, model, params, apply


# --- at initialization ---------------------------------------------------------------------

def test_each_block_is_the_identity_at_init(variant):
  """With the real init every block returns its residual stream (and the text stream of joint
  attention) unchanged, and the model outputs zeros."""
  _, cfg, model, _, _ = variant
  x, logsnr, kw = make_inputs(cfg)
  params = model.init(jax.random.key(1), x, logsnr, **kw)
  names = ("patch_embed", "text_in", "text_out")
  out, state = model.apply(
      params, x, logsnr, **kw, mutable=["intermediates"],
      capture_intermediates=lambda m, _: isinstance(m, network.DiTBlock) or m.name in names)
  inter = state["intermediates"]
  stream = inter["patch_embed"]["__call__"][0]
  text = inter["text_out" if "text_out" in inter else "text_in"]["__call__"][0]
  assert float(jnp.abs(stream).max()) > 0.1
  blocks = [k for k in inter if k.startswith("block")]
  assert len(blocks) == cfg.depth
  for name in blocks:
    block_x, block_text = inter[name]["__call__"][0]
    chex.assert_trees_all_equal(block_x, stream)
    if cfg.text_conditioning == "joint":
      chex.assert_trees_all_equal(block_text, text)
  chex.assert_trees_all_equal(out, jnp.zeros_like(out))


# --- 3D RoPE -------------------------------------------------------------------------------

def test_rope_logits_depend_only_on_relative_offsets():
  head_dim = 12
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.standard_normal((1, 1, 1, head_dim)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((1, 1, 1, head_dim)), jnp.float32)

  def logit(pq, pk):
    rq = rope.apply_rotary(q, rope.angles_at(np.array([pq]), head_dim))
    rk = rope.apply_rotary(k, rope.angles_at(np.array([pk]), head_dim))
    return float(jnp.sum(rq * rk))
  base = logit((1, 2, 3), (4, 0, 7))
  for shift in [(5, 0, 0), (0, 3, 0), (0, 0, -2), (7, -4, 11)]:
    moved = logit(tuple(np.add((1, 2, 3), shift)), tuple(np.add((4, 0, 7), shift)))
    np.testing.assert_allclose(moved, base, rtol=1e-5, atol=1e-5)
  # ...and they do depend on the offset along each axis.
  for other in [(5, 0, 7), (4, 1, 7), (4, 0, 6)]:
    assert abs(logit((1, 2, 3), other) - base) > 1e-3
  # A rotation keeps norms (it is orthogonal).
  r = rope.apply_rotary(q, rope.angles_at(np.array([(3, 1, 2)]), head_dim))
  np.testing.assert_allclose(float(jnp.linalg.norm(r)), float(jnp.linalg.norm(q)), rtol=1e-6)


def test_rope_splits_the_head_like_wan():
  assert rope.axis_dims(128) == (44, 42, 42)
  assert rope.axis_dims(64) == (24, 20, 20)
  assert rope.axis_dims(6) == (2, 2, 2)
  with pytest.raises(ValueError, match="even head dimension"):
    rope.axis_dims(7)


def test_patchify_round_trip():
  x = jnp.arange(2 * 4 * 6 * 8 * 3, dtype=jnp.float32).reshape(2, 4, 6, 8, 3)
  tokens = network.patchify(x, (2, 3, 2))
  assert tokens.shape == (2, 2 * 2 * 4, 2 * 3 * 2 * 3)
  chex.assert_trees_all_equal(network.unpatchify(tokens, (2, 3, 2), (2, 2, 4)), x)
  # The first token is the (2, 3, 2) corner block.
  chex.assert_trees_all_equal(tokens[0, 0], x[0, :2, :3, :2].reshape(-1))


# --- images, frames and text ---------------------------------------------------------------

def test_image_rows_equal_one_frame_clips(variant):
  """Frames of an example flagged is_image come out as each frame run as a one-frame clip,
  while a video example's frames see each other."""
  _, cfg, _, params, apply = variant
  x, logsnr, kw = make_inputs(cfg)
  if cfg.text_conditioning == "joint":
    # The frames share one text stream, which reads the first frame: exact for an image tiled
    # over the frames (what image datasets feed).
    x = x.at[0].set(jnp.broadcast_to(x[0, :1], x[0].shape))
  out = apply(params, x, logsnr, dict(kw, is_image=jnp.array([True, False])))
  for t in range(T):
    one = apply(params, x[:, t:t + 1], logsnr, dict(kw, is_image=jnp.array([True, False])))
    np.testing.assert_allclose(out[0, t], one[0, 0], rtol=1e-4, atol=1e-5)
  one = apply(params, x[:, :1], logsnr, dict(kw, is_image=jnp.array([True, False])))
  assert float(jnp.abs(out[1, 0] - one[1, 0]).max()) > 1e-3


def test_padded_text_tokens_change_nothing(variant):
  _, cfg, _, params, apply = variant
  x, logsnr, kw = make_inputs(cfg)
  out = apply(params, x, logsnr, kw)
  noisy = kw["text_emb"].at[0, L - 2:].set(100.0)       # only example 0's padded tokens
  out2 = apply(params, x, logsnr, dict(kw, text_emb=noisy))
  np.testing.assert_allclose(out2, out, rtol=1e-5, atol=1e-5)
  # The same change to real tokens does change the output.
  real = kw["text_emb"].at[1, L - 2:].set(100.0)
  out3 = apply(params, x, logsnr, dict(kw, text_emb=real))
  assert float(jnp.abs(out3[1] - out[1]).max()) > 1e-3


def test_layouts_mix_only_what_they_should():
  """A spatial block never mixes frames and a temporal block never mixes positions; full
  attention mixes both."""
  def run(**overrides):
    cfg = presets.tiny(text_conditioning="none", text_pooled_conditioning=False, **overrides)
    model = network.VideoDiT(config=cfg)
    x, logsnr, kw = make_inputs(cfg)
    kw = dict(fps=kw["fps"])
    params = random_params(model, x, logsnr, kw)
    base = model.apply(params, x, logsnr, **kw)
    moved = model.apply(params, x.at[:, 0, :2, :2].add(1.0), logsnr, **kw)  # frame 0, patch 0
    diff = jnp.abs(moved - base).max(axis=(0, 4))                          # [T, H, W]
    return np.asarray(diff > 1e-6)
  spatial = run(attention_layout="alternating", depth=1)        # one spatial block
  assert spatial[0].all() and not spatial[1:].any()
  temporal = run(attention_layout="alternating", depth=2)        # spatial then temporal
  assert temporal.all()
  full = run(depth=1)
  assert full.all()


def test_every_input_is_used(variant):
  name, cfg, _, params, apply = variant
  x, logsnr, kw = make_inputs(cfg)
  out = apply(params, x, logsnr, kw)
  for key, value in [("fps", kw["fps"] * 2), ("text_emb", kw["text_emb"] * -1.0)]:
    changed = apply(params, x, logsnr, dict(kw, **{key: value}))
    assert float(jnp.abs(changed - out).max()) > 1e-4, (name, key)
  changed = apply(params, x, logsnr + 1.0, kw)
  assert float(jnp.abs(changed - out).max()) > 1e-4


# --- spec, errors, family ------------------------------------------------------------------

@pytest.mark.parametrize("overrides, match", [
    (dict(num_heads=5), "not divisible by model.num_heads"),
    (dict(hidden_dim=8, num_heads=2), "must be even and >= 6"),
    (dict(text_conditioning="joint", attention_layout="alternating"), "needs model.attention"),
    (dict(attention_layout="diagonal"), "attention_layout='diagonal' is not one of"),
    (dict(patch_size=(1, 2)), "patch_size must be"),
    (dict(qk_norm="l2"), "qk_norm"),
    (dict(frame_mask_conditioning=True, lowres_conditioning="spatial"), "use one"),
])
def test_bad_configs_fail_before_tracing(overrides, match):
  cfg = presets.tiny(**overrides)
  with pytest.raises(ValueError, match=match):
    registry.family(cfg)
  assert registry.validate(cfg)


def test_geometry_and_input_errors():
  cfg = presets.tiny(patch_size=(2, 2, 2))
  fam = registry.family(cfg)
  assert fam.geometry_errors(frames=4, height=8, width=8) == []
  errors = fam.geometry_errors(frames=3, height=8, width=6)
  assert len(errors) == 1 and "frames=3" in errors[0]
  model = fam.module()
  x, logsnr, kw = make_inputs(cfg, t=4)
  with pytest.raises(ValueError, match="frames=3 is not divisible"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), x[:, :3], logsnr, **kw))
  with pytest.raises(ValueError, match="merges 2 frames per token"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), x, logsnr, **kw,
                                      is_image=jnp.zeros((B,), bool)))
  with pytest.raises(ValueError, match="VideoDiT needs `fps`"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), x, logsnr, text_emb=kw["text_emb"]))
  with pytest.raises(ValueError, match="got `guidance_weight`"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), x, logsnr, **kw,
                                      guidance_weight=jnp.ones((B,))))


def test_family_interface_and_conditioning_inputs():
  """The family takes the U-Net's conditioning inputs (SR low-res video, conditioning
  augmentation, guidance weight, known frames), so the objective, distillation and sampler
  work unchanged."""
  cfg = presets.tiny(lowres_conditioning="spatial", cond_aug_conditioning=True,
                     guidance_weight_conditioning=True)
  fam = registry.family(cfg)
  assert fam.name == "dit" and fam.takes_lowres and fam.takes_cond_aug
  assert fam.takes_guidance_weight and fam.needs_text
  x, logsnr, kw = fam.abstract_inputs(frames=T, height=H, width=W, batch=B,
                                      lowres=(B, T, H // 2, W // 2, C))
  out = jax.eval_shape(lambda x, logsnr, kw: fam.module().init_with_output(
      jax.random.key(0), x, logsnr, **kw)[0], x, logsnr, kw)
  assert out.shape == (B, T, H, W, 3)
  interp = registry.family(presets.tiny(frame_mask_conditioning=True))
  assert interp.takes_frame_masks
  # Zero-initialized output layer: the count is positive and the section round-trips.
  assert fam.count_params(frames=T, height=H, width=W, batch=B,
                          lowres=(B, T, H // 2, W // 2, C)) > 0
  with pytest.raises(ValueError, match="does not split its parameters"):
    fam.trainable_labels({}, "temporal")


def test_paper_presets_match_the_reference_parameter_counts():
  """CogVideoX-2B/5B, Wan 2.1 1.3B/14B and Latte-XL within 5% (in fact 1%) of the reference
  implementations' exact counts (abstract init: nothing allocated)."""
  for name, ref in presets.PAPER.items():
    # Scanned blocks trace one block of each kind: the same parameters, a faster count.
    fam = registry.family(presets.paper(name, scan_blocks=True))
    n = fam.count_params(frames=1, height=2, width=2, channels=ref["channels"], text_length=4)
    assert abs(n / ref["exact_params"] - 1.0) < 0.01, (name, n, ref["exact_params"])
  with pytest.raises(ValueError, match="unknown paper-scale transformer"):
    presets.paper("sora")


def test_packed_sequences_equal_the_examples_run_one_by_one(variant):
  """Two rows of 4 frames hold a 3-frame clip + an image, and a 2-frame clip + an image + one
  padding frame; each example's frames equal the example run alone."""
  _, cfg, _, params, apply = variant
  rng = np.random.default_rng(5)
  lengths = [[3, 1], [2, 1]]
  x = jnp.asarray(rng.standard_normal((2, 4, H, W, C)), jnp.float32)
  seg = jnp.array([[0, 0, 0, 1], [0, 0, 1, -1]], jnp.int32)
  logsnr = jnp.asarray(rng.uniform(-5, 5, (2, 2)), jnp.float32)
  fps = jnp.asarray([[4.0, 0.0], [8.0, 0.0]])
  text = jnp.asarray(rng.standard_normal((2, 2, L, cfg.text_embed_dim)), jnp.float32)
  mask = jnp.asarray(np.arange(L)[None, None] < np.array([[5, 3], [4, 2]])[..., None])
  packed = apply(params, x, logsnr, dict(segment_ids=seg, fps=fps, text_emb=text,
                                         text_mask=mask))
  for row in range(2):
    start = 0
    for s, n in enumerate(lengths[row]):
      alone = apply(params, x[row:row + 1, start:start + n], logsnr[row, s:s + 1],
                    dict(fps=fps[row, s:s + 1], text_emb=text[row, s:s + 1],
                         text_mask=mask[row, s:s + 1]))
      np.testing.assert_allclose(packed[row, start:start + n], alone[0], rtol=1e-4,
                                 atol=2e-5, err_msg=f"row {row} segment {s}")
      start += n
  # Packing is not a no-op: a frame of the other segment would change the result.
  mixed = apply(params, x, logsnr, dict(segment_ids=jnp.zeros_like(seg), fps=fps,
                                        text_emb=text, text_mask=mask))
  assert float(jnp.abs(mixed[0, :3] - packed[0, :3]).max()) > 1e-3


def test_packed_inputs_are_checked():
  cfg = presets.tiny()
  model = network.VideoDiT(config=cfg)
  x = jnp.zeros((1, 2, H, W, C))
  seg = jnp.zeros((1, 2), jnp.int32)
  kw = dict(fps=jnp.ones((1, 1)), text_emb=jnp.zeros((1, 1, L, 16)), segment_ids=seg)
  with pytest.raises(ValueError, match=r"logsnr must be \[B, S\]"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), x, jnp.zeros((1,)), **kw))
  with pytest.raises(ValueError, match=r"fps must be \[B, S\]"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), x, jnp.zeros((1, 1)),
                                      **dict(kw, fps=jnp.ones((1,)))))
  with pytest.raises(ValueError, match="neither lowres_video"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), x, jnp.zeros((1, 1)), **kw,
                                      is_image=jnp.zeros((1,), bool)))


def test_guided_distillation_student_starts_as_its_teacher():
  """A guided-distillation student (guidance-weight input) built from a trained transformer
  teacher by `distill.state.merge_params` computes the teacher for every weight w, so
  distillation starts from the teacher as it does for the U-Net."""
  teacher_cfg = presets.tiny()
  student_cfg = presets.tiny(guidance_weight_conditioning=True)
  teacher = network.VideoDiT(config=teacher_cfg)
  student = network.VideoDiT(config=student_cfg)
  x, logsnr, kw = make_inputs(teacher_cfg)
  teacher_params = random_params(teacher, x, logsnr, kw)
  fresh = student.init(jax.random.key(2), x, logsnr, **kw, guidance_weight=jnp.ones((B,)))
  params = {"params": state.merge_params(nn.unbox(fresh)["params"],
                                         teacher_params["params"])}
  want = teacher.apply(teacher_params, x, logsnr, **kw)
  for w in (0.0, 3.0):
    got = student.apply(params, x, logsnr, **kw, guidance_weight=jnp.full((B,), w))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(want).max()) > 1e-2


@pytest.mark.parametrize("overrides", [dict(text_conditioning="joint"),
                                       dict(attention_layout="alternating", depth=4)])
def test_scanned_blocks_equal_the_unrolled_blocks(overrides):
  """model.scan_blocks: the same blocks run as one nn.scan over parameters stacked on a
  `layers` axis (every second block with the alternating layout) compute the same output."""
  cfg, scan_cfg = presets.tiny(**overrides), presets.tiny(scan_blocks=True, **overrides)
  model, scanned = network.VideoDiT(config=cfg), network.VideoDiT(config=scan_cfg)
  x, logsnr, kw = make_inputs(cfg)
  params = random_params(model, x, logsnr, kw)
  boxed = jax.eval_shape(lambda: scanned.init(jax.random.key(0), x, logsnr, **kw))
  query = nn.get_partition_spec(boxed)["params"]["blocks"]["block0"]["attn"]["query"]
  assert tuple(query["kernel"])[0] == "layers"
  flat = dict(params["params"])
  group = 1 if cfg.attention_layout == "full" else 2
  flat["blocks"] = {
      f"block{j}": jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[
          flat.pop(f"block{i}") for i in range(j, cfg.depth, group)]) for j in range(group)}
  chex.assert_trees_all_equal_shapes(flat, nn.unbox(boxed)["params"])
  np.testing.assert_allclose(scanned.apply({"params": flat}, x, logsnr, **kw),
                             model.apply(params, x, logsnr, **kw), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="must be even"):
    registry.family(presets.tiny(scan_blocks=True, attention_layout="alternating", depth=3))
