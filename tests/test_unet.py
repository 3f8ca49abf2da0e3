"""SpaceTimeUNet behaviour: shapes, per-frame image mode, temporal mixing, text, errors.

Behaviour tests use random parameters (every parameter drawn, temporal layers included, so
time mixing is visible; built from `jax.eval_shape` of init, which costs no compile); one test
uses the real `init` to check that temporal layers start as the identity. Compiled functions
are shared through module-scoped fixtures.
"""
import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.models.unet import presets as unet_presets
from vdm_jax.models.unet import SpaceTimeUNet

B, T, H, W, C, L = 2, 4, 8, 8, 3, 5


def base_cfg(**overrides):
  """Tiny base model with every temporal mechanism: temporal convs in the ResBlocks and as
  level 0's mixing, temporal attention at level 1; guidance-weight conditioning; dropout."""
  kw = dict(temporal_mixing=("conv", "attention"), temporal_conv_in_resblock=True,
            guidance_weight_conditioning=True, dropout=0.1)
  kw.update(overrides)
  return unet_presets.tiny(**kw)


def ssr_cfg():
  return unet_presets.tiny(temporal_mixing=("conv", "conv"), temporal_conv_in_resblock=True,
                           lowres_conditioning="spatial", cond_aug_conditioning=True)


def tsr_cfg(**overrides):
  kw = dict(temporal_mixing=("conv", "conv"), temporal_conv_in_resblock=True,
            spatial_attention=(False, False), text_cross_attention=False,
            lowres_conditioning="temporal", cond_aug_conditioning=True)
  kw.update(overrides)
  return unet_presets.tiny(**kw)


def make_inputs(cfg, *, b=B, t=T, h=H, w=W, lowres_shape=None, seed=0):
  """(x, logsnr, kwargs) with every input the config needs; text has 2 padded tokens."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((b, t, h, w, C)), jnp.float32)
  logsnr = jnp.asarray(rng.uniform(-5, 5, b), jnp.float32)
  kw = dict(text_emb=jnp.asarray(rng.standard_normal((b, L, cfg.text_embed_dim)), jnp.float32),
            text_mask=jnp.asarray(np.arange(L)[None].repeat(b, 0) < L - 2),
            is_image=jnp.zeros((b,), bool))
  if cfg.fps_conditioning:
    kw["fps"] = jnp.full((b,), 8.0)
  if cfg.guidance_weight_conditioning:
    kw["guidance_weight"] = jnp.asarray(rng.uniform(0, 8, b), jnp.float32)
  if cfg.cond_aug_conditioning:
    kw["cond_aug_logsnr"] = jnp.asarray(rng.uniform(0, 10, b), jnp.float32)
  if lowres_shape is not None:
    kw["lowres_video"] = jnp.asarray(rng.standard_normal(lowres_shape), jnp.float32)
  return x, logsnr, kw


def random_params(model, x, logsnr, kw, seed=0):
  """Every parameter random (fan-in scaled kernels, norms near 1), shaped by eval_shape."""
  abstract = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), x, logsnr, **kw)))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    shape = leaf.shape
    if name == "scale":
      value = 1.0 + 0.1 * rng.standard_normal(shape)
    elif name == "bias":
      value = 0.1 * rng.standard_normal(shape)
    elif name == "table":
      value = 0.5 * rng.standard_normal(shape)
    else:
      value = rng.standard_normal(shape) / math.sqrt(max(1, math.prod(shape[:-1])))
    return jnp.asarray(value, leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, abstract)


def path_str(path):
  return "/".join(str(getattr(p, "key", p)) for p in path)


def zero_where(params, predicate):
  """Copy of params with the leaves whose path string satisfies `predicate` set to zero."""
  return jax.tree_util.tree_map_with_path(
      lambda p, v: jnp.zeros_like(v) if predicate(path_str(p)) else v, params)


class Runner:
  """A model, its random params and one jitted apply (recompiled only for new shapes)."""

  def __init__(self, cfg, lowres_shape=None):
    self.cfg = cfg
    self.model = SpaceTimeUNet(config=cfg)
    self.lowres_shape = lowres_shape
    self.x, self.logsnr, self.kw = make_inputs(cfg, lowres_shape=lowres_shape)
    self.params = random_params(self.model, self.x, self.logsnr, self.kw)
    self._apply = jax.jit(
        lambda p, x, logsnr, kw: self.model.apply(p, x, logsnr, **kw))

  def __call__(self, x=None, params=None, **changes):
    kw = dict(self.kw)
    kw.update(changes)
    return self._apply(self.params if params is None else params,
                       self.x if x is None else x, self.logsnr, kw)


@pytest.fixture(scope="module")
def base():
  return Runner(base_cfg())


def test_base_output_shape_and_finite(base):
  out = base()
  chex.assert_shape(out, (B, T, H, W, 3))
  assert out.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out)))
  # out_channels comes from the config (shape only: no compile).
  model5 = SpaceTimeUNet(config=base_cfg(out_channels=5))
  shapes = jax.eval_shape(lambda: model5.init_with_output(
      jax.random.key(0), base.x, base.logsnr, **base.kw)[0])
  assert shapes.shape == (B, T, H, W, 5)


def test_image_mode_is_exactly_per_frame(base):
  """is_image examples: each output frame equals the model run on that frame alone."""
  is_image = jnp.array([True, False])
  out = base(is_image=is_image)
  for t in range(T):
    single = base(x=base.x[:, t:t + 1], is_image=jnp.array([True, True]))
    np.testing.assert_allclose(out[0, t], single[0, 0], atol=2e-5, rtol=2e-5)
    # The video example in the same batch does mix frames, so it differs from per-frame.
    assert float(jnp.max(jnp.abs(out[1, t] - single[1, 0]))) > 1e-3


def test_image_mode_permuting_frames_permutes_outputs(base):
  perm = np.array([2, 0, 3, 1])
  images = jnp.ones((B,), bool)
  out = base(is_image=images)
  out_perm = base(x=base.x[:, perm], is_image=images)
  np.testing.assert_allclose(out_perm, out[:, perm], atol=2e-5, rtol=2e-5)


def _frame0_effect(runner, params=None):
  """Largest change of output frames 1.. when input frame 0 changes (video mode)."""
  out = runner(params=params)
  out2 = runner(x=runner.x.at[:, 0].add(1.0), params=params)
  return float(jnp.max(jnp.abs(out2[:, 1:] - out[:, 1:])))


def test_video_mode_mixes_time_through_each_mechanism(base):
  is_attention = lambda p: "temporal_attn" in p and "/attention/out/" in p
  is_conv = lambda p: "temporal/conv/" in p
  assert _frame0_effect(base) > 1e-3
  # Temporal attention alone (temporal convs zeroed) and temporal convs alone still mix...
  assert _frame0_effect(base, zero_where(base.params, is_conv)) > 1e-3
  assert _frame0_effect(base, zero_where(base.params, is_attention)) > 1e-3
  # ...and with both at zero (their initial value) the frames are independent.
  both = zero_where(base.params, lambda p: is_conv(p) or is_attention(p))
  assert _frame0_effect(base, both) < 1e-5


def test_temporal_mixing_none_has_no_temporal_layers_and_no_mixing():
  runner = Runner(base_cfg(temporal_mixing=("none", "none")))
  names = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(runner.params)]
  assert not [n for n in names if "temporal" in n]
  assert _frame0_effect(runner) < 1e-5


def test_spacetime_mixing_level_mixes_videos_and_keeps_images_per_frame():
  """temporal_mixing 'spacetime' on the coarse level: frames mix only through it, and
  is_image examples are still exactly the per-frame model."""
  runner = Runner(base_cfg(temporal_mixing=("none", "spacetime"),
                           temporal_conv_in_resblock=False))
  names = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(runner.params)]
  assert [n for n in names if "spacetime_attn/rel_pos/key" in n]
  assert not [n for n in names if "temporal" in n]
  assert _frame0_effect(runner) > 1e-3
  is_st = lambda p: "spacetime_attn" in p and "/attention/out/" in p
  assert _frame0_effect(runner, zero_where(runner.params, is_st)) < 1e-5
  is_image = jnp.array([True, False])
  out = runner(is_image=is_image)
  for t in range(T):
    single = runner(x=runner.x[:, t:t + 1], is_image=jnp.array([True, True]))
    np.testing.assert_allclose(out[0, t], single[0, 0], atol=2e-5, rtol=2e-5)


def test_frame_position_tells_identical_frames_apart_and_spares_images():
  """frame_position='sinusoidal': with every frame of the input identical and no temporal
  layers, frames still get different outputs (absolute time through FiLM); is_image examples
  stay exactly the per-frame model; 'none' keeps identical frames identical."""
  same = jnp.broadcast_to(make_inputs(base_cfg())[0][:, :1], (B, T, H, W, C))
  for position, differs in (("none", False), ("sinusoidal", True)):
    runner = Runner(base_cfg(temporal_mixing=("none", "none"), frame_position=position))
    out = runner(x=same)
    spread = float(jnp.max(jnp.abs(out - out[:, :1])))
    assert (spread > 1e-3) == differs, (position, spread)
  names = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(runner.params)]
  assert [n for n in names if n.startswith("params/frame_position/")]
  out = runner(x=same, is_image=jnp.array([True, False]))
  np.testing.assert_allclose(out[0], jnp.broadcast_to(out[0, :1], out[0].shape), atol=1e-6)
  assert float(jnp.max(jnp.abs(out[1] - out[1, :1]))) > 1e-3
  single = runner(x=same[:, :1], is_image=jnp.array([True, True]))
  np.testing.assert_allclose(out[0, 0], single[0, 0], atol=2e-5, rtol=2e-5)


def test_resblock_per_frame_embedding_matches_per_example():
  """A per-frame FiLM embedding [B, T, E] equal across frames is the per-example one [B, E];
  changing one frame's embedding changes only that frame."""
  from vdm_jax.models import layers   # pylint: disable=g-import-not-at-top
  block = layers.ResBlock(8, 4)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((B, T, 4, 4, 8)), jnp.float32)
  emb = jnp.asarray(rng.standard_normal((B, 16)), jnp.float32)
  no_image = jnp.zeros((B,), bool)
  params = block.init(jax.random.key(0), x, emb, no_image)
  per_example = block.apply(params, x, emb, no_image)
  frames = jnp.repeat(emb[:, None], T, axis=1)
  np.testing.assert_allclose(block.apply(params, x, frames, no_image), per_example, atol=1e-6)
  changed = block.apply(params, x, frames.at[:, 2].add(1.0), no_image)
  assert float(jnp.max(jnp.abs(changed[:, 2] - per_example[:, 2]))) > 1e-3
  np.testing.assert_allclose(jnp.delete(changed, 2, axis=1),
                             jnp.delete(per_example, 2, axis=1), atol=1e-6)


def test_text_matters_and_padding_does_not(base):
  out = base()
  other = base(text_emb=base.kw["text_emb"][::-1])
  assert float(jnp.max(jnp.abs(other - out))) > 1e-3
  mask = base.kw["text_mask"]
  junk = jnp.where(mask[..., None], base.kw["text_emb"], 7.0)
  np.testing.assert_allclose(base(text_emb=junk), out, atol=1e-5, rtol=1e-5)
  # An all-padding caption (the unconditional branch) ignores token values entirely.
  empty = jnp.zeros_like(mask)
  e1 = base(text_mask=empty)
  e2 = base(text_mask=empty, text_emb=-base.kw["text_emb"])
  np.testing.assert_allclose(e1, e2, atol=1e-5, rtol=1e-5)
  assert bool(jnp.all(jnp.isfinite(e1)))


def test_cross_attention_on_a_level_without_spatial_attention():
  """cross_attention_levels puts text cross-attention where it says, with or without spatial
  self-attention beside it (imagen-pytorch's Unet3D layout); () keeps the old placement."""
  cfg = base_cfg(spatial_attention=(True, False), cross_attention_levels=(False, True),
                 text_pooled_conditioning=False, guidance_weight_conditioning=False, dropout=0.0)
  run = Runner(cfg)
  names = {path_str(p).split("/")[1] for p, _ in
           jax.tree_util.tree_leaves_with_path(run.params)}
  cross = sorted(n for n in names if n.endswith("_cross_attn"))
  spatial = sorted(n for n in names if n.endswith("_spatial_attn"))
  level1 = lambda n: n.startswith(("down1", "up1", "mid"))    # level 1 and the middle
  assert cross and all(level1(n) for n in cross), cross
  assert spatial and not any(level1(n) for n in spatial), spatial
  out = run()      # text reaches the output only through the level-1 cross-attention
  assert float(jnp.max(jnp.abs(run(text_emb=run.kw["text_emb"][::-1]) - out))) > 1e-3
  no_cross = zero_where(run.params, lambda p: "_cross_attn" in p and "out" in p)
  np.testing.assert_allclose(run(params=no_cross),
                             run(params=no_cross, text_emb=run.kw["text_emb"][::-1]),
                             atol=1e-5, rtol=1e-5)
  default = SpaceTimeUNet(config=base_cfg(spatial_attention=(True, False),
                                          guidance_weight_conditioning=False))
  shapes = jax.eval_shape(lambda: default.init(jax.random.key(0), run.x, run.logsnr, **run.kw))
  default_cross = {path_str(p).split("/")[1] for p, _ in
                   jax.tree_util.tree_leaves_with_path(shapes) if "_cross_attn" in path_str(p)}
  assert default_cross and not any(level1(n) for n in default_cross)


def test_conditioning_scalars_matter(base):
  out = base()
  for key, value in (("fps", jnp.full((B,), 24.0)), ("guidance_weight", jnp.zeros((B,)))):
    assert float(jnp.max(jnp.abs(base(**{key: value}) - out))) > 1e-4, key


def test_dropout_only_in_train_mode(base):
  apply = jax.jit(lambda p, key: base.model.apply(p, base.x, base.logsnr, train=True,
                                                 rngs={"dropout": key}, **base.kw))
  a = apply(base.params, jax.random.key(1))
  b = apply(base.params, jax.random.key(2))
  assert float(jnp.max(jnp.abs(a - b))) > 1e-4
  assert float(jnp.max(jnp.abs(a - base()))) > 1e-4   # eval mode has no dropout


def test_real_init_starts_as_per_frame_image_model(base):
  """model.init zero-initializes temporal branches and the guidance embedding, so the video
  model starts as the per-frame image model (what inflating an image model needs)."""
  one = lambda a: a[:1]
  # Parameters do not depend on T, H, W: init on one frame (cheaper to compile).
  variables = jax.jit(lambda k: base.model.init(
      k, base.x[:1, :1], base.logsnr[:1], **jax.tree.map(one, base.kw)))(
          jax.random.key(3, impl="unsafe_rbg"))
  params = nn.unbox(variables)
  zero_paths = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    p = path_str(path)
    if ("temporal/conv/kernel" in p or ("temporal_attn" in p and "out/kernel" in p)
        or "guidance/out/kernel" in p):
      zero_paths.append(p)
      assert not np.any(np.asarray(leaf)), p
  assert any("temporal_attn" in p for p in zero_paths)
  assert any("res0/temporal" in p for p in zero_paths)
  assert any("guidance" in p for p in zero_paths)
  assert _frame0_effect(base, params) < 1e-5
  out = base(params=params)
  np.testing.assert_allclose(base(params=params, guidance_weight=jnp.zeros((B,))), out,
                             atol=1e-6)


@pytest.mark.parametrize("kind", ["ssr", "tsr"])
def test_super_resolution_stages(kind):
  if kind == "ssr":
    cfg, low = ssr_cfg(), (B, T, H // 2, W // 2, C)
  else:
    cfg, low = tsr_cfg(), (B, T // 2, H, W, C)
  runner = Runner(cfg, lowres_shape=low)
  out = runner()
  chex.assert_shape(out, (B, T, H, W, 3))
  assert bool(jnp.all(jnp.isfinite(out)))
  assert _frame0_effect(runner) > 1e-3            # temporal convs mix frames
  low2 = runner.kw["lowres_video"] + 1.0
  assert float(jnp.max(jnp.abs(runner(lowres_video=low2) - out))) > 1e-3
  aug = runner(cond_aug_logsnr=runner.kw["cond_aug_logsnr"] - 5.0)
  assert float(jnp.max(jnp.abs(aug - out))) > 1e-4


def test_tsr_linear_frame_interpolation_shapes():
  cfg = tsr_cfg(lowres_temporal_upsample="linear")
  model = SpaceTimeUNet(config=cfg)
  x, logsnr, kw = make_inputs(cfg, lowres_shape=(B, 3, H, W, C))
  out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x, logsnr, **kw)[0])
  assert out.shape == (B, T, H, W, 3)


def test_missing_or_unexpected_inputs_raise(base):
  def trace(model, x, logsnr, kw):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x, logsnr, **kw))

  kw = dict(base.kw)
  del kw["fps"]
  with pytest.raises(ValueError, match="`fps`.*fps_conditioning"):
    trace(base.model, base.x, base.logsnr, kw)
  kw = dict(base.kw)
  del kw["text_emb"], kw["text_mask"]
  with pytest.raises(ValueError, match="text_emb"):
    trace(base.model, base.x, base.logsnr, kw)
  with pytest.raises(ValueError, match="lowres_video.*lowres_conditioning"):
    trace(base.model, base.x, base.logsnr, dict(base.kw, lowres_video=base.x))
  ssr = SpaceTimeUNet(config=ssr_cfg())
  x, logsnr, kw = make_inputs(ssr_cfg())
  with pytest.raises(ValueError, match="needs `lowres_video`"):
    trace(ssr, x, logsnr, kw)
  with pytest.raises(ValueError, match="divisible by 2"):
    trace(base.model, base.x[:, :, :7], base.logsnr, base.kw)
  with pytest.raises(ValueError, match="text_emb must be"):
    trace(base.model, base.x, base.logsnr, dict(base.kw, text_emb=base.kw["text_emb"][..., :3]))


@pytest.mark.parametrize("overrides, message", [
    (dict(temporal_mixing=("attention",)), "temporal_mixing has 1 entries"),
    (dict(temporal_mixing=("attention", "transformer")), "temporal_mixing\\[1\\]"),
    (dict(remat="sometimes"), "remat"),
    (dict(attention_impl="flash"), "attention_impl"),
    (dict(temporal_position="absolute"), "temporal_position"),
    (dict(frame_position="learned"), "frame_position"),
    (dict(temporal_mixing=("attention", "space-time")), "temporal_mixing\\[1\\]"),
    (dict(num_groups=3), "num_groups"),
    (dict(spatial_attention=(False, False)), "text_cross_attention"),
    (dict(cross_attention_levels=(True,)), "cross_attention_levels has 1 entries"),
    (dict(cross_attention_levels=(False, True), text_cross_attention=False),
     "text_cross_attention=False"),
])
def test_bad_config_fails_before_tracing(base, overrides, message):
  model = SpaceTimeUNet(config=base_cfg(**overrides))
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(lambda: model.init(jax.random.key(0), base.x, base.logsnr, **base.kw))


def test_remat_matches_no_remat():
  """remat='full' wraps every block in a checkpoint; parameters, values and gradients are
  those of remat='none'."""
  results, names = [], []
  for remat in ("none", "full"):
    cfg = unet_presets.tiny(remat=remat, channel_mult=(1,), spatial_attention=(True,),
                            temporal_mixing=("attention",), temporal_conv_in_resblock=True,
                            text_cross_attention=False, fps_conditioning=False)
    model = SpaceTimeUNet(config=cfg)
    x, logsnr, kw = make_inputs(cfg, b=1, t=2)
    params = random_params(model, x, logsnr, kw)
    names.append([path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)])
    loss = lambda p: jnp.mean(model.apply(p, x, logsnr, **kw) ** 2)
    jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
    # 5 ResBlocks + 4 mixer positions x (spatial, temporal attention) = 13 blocks.
    checkpoints = jaxpr.count("remat") + jaxpr.count("checkpoint[")
    assert checkpoints == (13 if remat == "full" else 0), checkpoints
    results.append(jax.jit(jax.value_and_grad(loss))(params))
  assert names[0] == names[1]
  chex.assert_trees_all_close(results[0], results[1], atol=1e-5, rtol=1e-4)


def test_bfloat16_compute_keeps_float32_params():
  cfg = base_cfg(dtype="bfloat16")
  model = SpaceTimeUNet(config=cfg)
  x, logsnr, kw = make_inputs(cfg, b=1, t=2)
  params = random_params(model, x, logsnr, kw)
  assert all(l.dtype == jnp.float32 for l in jax.tree_util.tree_leaves(params))
  out = jax.jit(lambda p: model.apply(p, x, logsnr, **kw))(params)
  assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.parametrize("frames_kernel", [1, 2, 3, 5])
def test_time_conv_equals_the_3d_convolution_it_replaces(frames_kernel):
  """layers.conv with a (kt, 1, 1) kernel runs as a 2-D conv over [B, T, H*W, C] (faster on
  XLA's CPU backend): the same parameters (names, shapes, initial values) and the same output
  as flax's 3-D nn.Conv with 'SAME' padding, also for an even kt (one more frame padded after)."""
  from vdm_jax.models import layers  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 3, 5, 4))
  ours = layers.conv(7, (frames_kernel, 1, 1))
  ref = nn.Conv(7, (frames_kernel, 1, 1), padding="SAME")
  params = nn.meta.unbox(ours.init(jax.random.PRNGKey(1), x))
  chex.assert_trees_all_equal(params, ref.init(jax.random.PRNGKey(1), x))
  params = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(2), p.shape), params)
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), atol=1e-6)


def test_mixers_last_block_attends_once_per_level_and_path():
  """mixers='last_block' (imagen-pytorch's Unet3D layout): a level's attention and temporal
  mixing follow only its last ResBlock in the down path and in the up path (plus the middle),
  instead of every ResBlock; the ResBlocks are unchanged and the video still mixes time through
  the attention alone."""
  def mixer_prefixes(runner):
    names = {path_str(p).split("/")[1] for p, _ in jax.tree_util.tree_leaves_with_path(
        runner.params)}
    return sorted(n for n in names if n.endswith(("_temporal_attn", "_temporal_conv",
                                                  "_cross_attn", "_spatial_attn")))
  every = Runner(base_cfg(num_res_blocks=2))
  once = Runner(base_cfg(num_res_blocks=2, mixers="last_block"))
  # Tiny: 2 levels, level 0 temporal conv, level 1 spatial + cross + temporal attention.
  assert mixer_prefixes(once) == [
      "down0_1_temporal_conv", "down1_1_cross_attn", "down1_1_spatial_attn",
      "down1_1_temporal_attn", "mid_cross_attn", "mid_spatial_attn", "mid_temporal_attn",
      "up0_2_temporal_conv", "up1_2_cross_attn", "up1_2_spatial_attn", "up1_2_temporal_attn"]
  assert len(mixer_prefixes(every)) == (2 + 3) * 1 + (2 + 3) * 3 + 3   # 2 down, 3 up blocks
  res = lambda r: sorted(n for n in {path_str(p).split("/")[1] for p, _ in
                                     jax.tree_util.tree_leaves_with_path(r.params)}
                         if "_res" in n)
  assert res(once) == res(every)
  out = once()
  chex.assert_shape(out, once.x.shape)
  no_convs = zero_where(once.params, lambda p: "temporal/conv/" in p or "_temporal_conv/" in p)
  assert _frame0_effect(once, no_convs) > 1e-3


def test_mixers_rejects_an_unknown_placement():
  with pytest.raises(ValueError, match="model.mixers='per_level' is not one of"):
    SpaceTimeUNet(config=base_cfg(mixers="per_level")).init(
        jax.random.key(0), *make_inputs(base_cfg())[:2], **make_inputs(base_cfg())[2])
