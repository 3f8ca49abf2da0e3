"""U-Net `model` configs: a tiny one for tests and the seven Imagen Video stage shapes.

    cfg = unet_presets.tiny()                           # a `model` ConfigDict
    cfg = unet_presets.imagen_video_stage("ssr1")       # paper-scale model section
    geometry = unet_presets.IMAGEN_VIDEO_STAGES["ssr1"] # frames, height, width, fps, ...
    n = unet_presets.count_params(cfg, frames=..., height=..., width=...)  # no allocation

The Imagen Video paper (Ho et al. 2022, Fig. 6) publishes, per stage, the output geometry and
the parameter count, and (Sec. 2.3) which stages use temporal attention (base), temporal
convolutions (the SR stages) and spatial attention (base and the first two SSR stages). It does
not publish channel widths, multipliers or block counts: those below are ours, chosen so each
stage's count lands near the published one. experiments/unet_params/ sets them side by side.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

T5_XXL_DIM = 4096

# name: (frames, width, height, fps, kind, published parameters). Geometry is Fig. 6's
# "frames x width x height"; the cascade order is base, tsr1, ssr1, ssr2, tsr2, tsr3, ssr3.
_PAPER = {
    "base": (16, 40, 24, 3, "base", 5.6e9),
    "tsr1": (32, 40, 24, 6, "tsr", 1.7e9),
    "ssr1": (32, 80, 48, 6, "ssr", 1.4e9),
    "ssr2": (32, 320, 192, 6, "ssr", 1.2e9),
    "tsr2": (64, 320, 192, 12, "tsr", 7.8e8),
    "tsr3": (128, 320, 192, 24, "tsr", 6.3e8),
    "ssr3": (128, 1280, 768, 24, "ssr", 3.4e8),
}
IMAGEN_VIDEO_STAGES = {
    name: dict(frames=f, width=w, height=h, fps=fps, kind=kind, published_params=p)
    for name, (f, w, h, fps, kind, p) in _PAPER.items()
}
IMAGEN_VIDEO_TOTAL_PARAMS = 11.6e9   # Sec. 2.2: "a total of 11.6B diffusion model parameters"
IMAGEN_VIDEO_TEXT_ENCODER_PARAMS = 4.6e9   # frozen T5-XXL

# Our widths: (base_channels, channel_mult, num_res_blocks, spatial_attention per level).
_WIDTHS = {
    "base": (704, (1, 2, 4, 4), 3, (False, True, True, True)),
    "tsr1": (416, (1, 2, 4, 4), 3, (False, False, False, False)),
    "ssr1": (256, (1, 2, 4, 8), 2, (False, False, True, True)),
    "ssr2": (192, (1, 2, 4, 8), 3, (False, False, True, True)),
    "tsr2": (192, (1, 2, 4, 8), 3, (False, False, False, False)),
    "tsr3": (192, (1, 2, 4, 8), 2, (False, False, False, False)),
    "ssr3": (128, (1, 2, 4, 4, 8), 2, (False, False, False, False, False)),
}


def _model_section():
  """A model section with every key of configs/default.py's `model` (its default values).

  Spelled out here because the library does not import `configs`; a test checks that the key
  sets agree.
  """
  return ml_collections.ConfigDict(dict(
      base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
      spatial_attention=(False, True), temporal_mixing=("attention", "attention"),
      temporal_conv_in_resblock=False, num_heads=4, head_dim=32, dropout=0.0, num_groups=8,
      rel_pos_buckets=32, rel_pos_max_distance=128, temporal_position="bias",
      frame_position="none",
      cond_embed_dim=128, text_embed_dim=384,
      text_cross_attention=True, cross_attention_levels=(), text_pooled_conditioning=True,
      fps_conditioning=True,
      lowres_conditioning="none", lowres_temporal_upsample="repeat",
      cond_aug_conditioning=False, guidance_weight_conditioning=False,
      frame_mask_conditioning=False, attention_impl="xla",
      dtype="float32", param_dtype="float32", remat="none", out_channels=3))


def tiny(**overrides):
  """A CPU-sized base model: 8 channels, 2 levels, 1 res block, temporal attention."""
  m = _model_section()
  m.base_channels = 8
  m.channel_mult = (1, 2)
  m.num_res_blocks = 1
  m.spatial_attention = (False, True)
  m.temporal_mixing = ("attention", "attention")
  m.num_heads = 2
  m.head_dim = 8
  m.num_groups = 4
  m.rel_pos_buckets = 8
  m.rel_pos_max_distance = 16
  m.cond_embed_dim = 32
  m.text_embed_dim = 16
  m.update(overrides)
  return m


def imagen_video_stage(name, **overrides):
  """The `model` section of an Imagen-Video-scale stage (see module docstring)."""
  if name not in _WIDTHS:
    raise ValueError(f"unknown Imagen Video stage {name!r}; one of {tuple(_WIDTHS)}")
  base, mult, blocks, spatial = _WIDTHS[name]
  kind = IMAGEN_VIDEO_STAGES[name]["kind"]
  m = _model_section()
  m.base_channels = base
  m.channel_mult = mult
  m.num_res_blocks = blocks
  m.spatial_attention = spatial
  m.num_heads = 0
  m.head_dim = 64
  m.num_groups = 32
  m.cond_embed_dim = 4 * base
  m.text_embed_dim = T5_XXL_DIM
  m.text_cross_attention = any(spatial)
  m.text_pooled_conditioning = True
  m.fps_conditioning = True
  m.dtype = "bfloat16"
  if kind == "base":
    m.temporal_mixing = ("attention",) * len(mult)
    m.temporal_conv_in_resblock = False
    m.lowres_conditioning = "none"
    m.cond_aug_conditioning = False
  else:
    m.temporal_mixing = ("conv",) * len(mult)
    m.temporal_conv_in_resblock = True
    m.lowres_conditioning = "spatial" if kind == "ssr" else "temporal"
    m.cond_aug_conditioning = True
  m.update(overrides)
  return m


def lowres_shape(name, batch=1, channels=3):
  """Shape of the previous stage's video that stage `name` is conditioned on."""
  order = list(_PAPER)
  i = order.index(name)
  if i == 0:
    return None
  prev = IMAGEN_VIDEO_STAGES[order[i - 1]]
  return (batch, prev["frames"], prev["height"], prev["width"], channels)


def example_inputs(model_cfg, *, frames, height, width, batch=1, channels=3, text_length=8,
                   lowres=None):
  """Abstract (jax.ShapeDtypeStruct) inputs for `SpaceTimeUNet(model_cfg)`; for eval_shape."""
  f32 = jnp.float32
  sds = jax.ShapeDtypeStruct
  kw = {}
  if model_cfg.text_cross_attention or model_cfg.text_pooled_conditioning:
    kw["text_emb"] = sds((batch, text_length, model_cfg.text_embed_dim), f32)
    kw["text_mask"] = sds((batch, text_length), jnp.bool_)
  for key, flag in (("fps", "fps_conditioning"), ("cond_aug_logsnr", "cond_aug_conditioning"),
                    ("guidance_weight", "guidance_weight_conditioning")):
    if model_cfg[flag]:
      kw[key] = sds((batch,), f32)
  if model_cfg.lowres_conditioning != "none":
    if lowres is None:
      raise ValueError("give the lowres video shape for an SR stage")
    kw["lowres_video"] = sds(lowres, f32)
  x = sds((batch, frames, height, width, channels), f32)
  return x, sds((batch,), f32), kw


def abstract_params(model_cfg, *, frames, height, width, channels=3, lowres=None):
  """The parameter tree of SpaceTimeUNet(model_cfg) as ShapeDtypeStructs (jax.eval_shape)."""
  from vdm_jax.models.unet import SpaceTimeUNet  # pylint: disable=g-import-not-at-top
  model = SpaceTimeUNet(config=model_cfg)
  x, logsnr, kw = example_inputs(model_cfg, frames=frames, height=height, width=width,
                                 channels=channels, lowres=lowres)
  shapes = jax.eval_shape(lambda x, logsnr, kw: model.init(jax.random.key(0), x, logsnr, **kw),
                          x, logsnr, kw)
  return nn.unbox(shapes)["params"]


def count_params(model_cfg, *, frames, height, width, channels=3, lowres=None):
  """Number of parameters of SpaceTimeUNet(model_cfg), from jax.eval_shape (no allocation)."""
  tree = abstract_params(model_cfg, frames=frames, height=height, width=width,
                         channels=channels, lowres=lowres)
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))
