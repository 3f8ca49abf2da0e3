"""U-Net `model` configs: a tiny one for tests and the seven Imagen Video stage shapes.

    cfg = presets.tiny()                           # a `model` ConfigDict
    cfg = presets.imagen_video_stage("ssr1")       # paper-scale model section
    geometry = presets.IMAGEN_VIDEO_STAGES["ssr1"] # frames, height, width, fps, ...
    n = registry.family(cfg).count_params(frames=..., height=..., width=...)  # no allocation

The Imagen Video paper (Ho et al. 2022, Fig. 6) publishes, per stage, the output geometry and
the parameter count, and (Sec. 2.3) which stages use temporal attention (base), temporal
convolutions (the SR stages) and spatial attention (base and the first two SSR stages). It does
not publish channel widths, multipliers or block counts: those below are ours, chosen so each
stage's count lands near the published one. experiments/unet_params/ sets them side by side.
"""
import ml_collections

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


def default_section():
  """The U-Net family's `model` section: every key at its default (what configs/default.py
  and every variant config start from)."""
  m = ml_collections.ConfigDict()
  m.family = "unet"                       # the model family (vdm_jax/models/registry.py)
  m.base_channels = 32
  m.channel_mult = (1, 2)
  m.num_res_blocks = 1
  m.spatial_attention = (False, True)     # per level
  m.temporal_mixing = ("attention", "attention")  # per level: attention | conv | none |
  #   spacetime (full attention over the level's T*H*W tokens; only for a small coarse level)
  m.temporal_conv_in_resblock = False     # 3x1x1 conv inside every ResBlock (SR stages)
  m.pseudo3d_convs = False                # with it: after each of the ResBlock's two 3x3 convs
  #   (Make-A-Video's pseudo-3D convs), not after the second only
  m.mixers = "every_block"                # where a level's attention / temporal mixing sits:
  #   every_block (after each ResBlock) | last_block (once per level and path, as imagen-pytorch)
  m.num_heads = 4                         # 0: channels // head_dim heads per level
  m.head_dim = 32                         # 0: channels // num_heads features per head
  m.dropout = 0.0
  m.num_groups = 8
  m.rel_pos_buckets = 32
  m.rel_pos_max_distance = 128
  m.temporal_position = "bias"            # temporal attention's frame order: bias (T5-style
  #   scalar per offset bucket) | shaw (+ Shaw et al. relative key/value vectors, as VDM cites)
  m.frame_position = "none"               # none (the papers) | sinusoidal: each frame's absolute
  #   index embedded and added to its FiLM embedding (AnimateDiff-style absolute time)
  m.temporal_text_bias = False            # temporal attention's position bias + a zero-init
  #   linear map of the mean caption token (the caption can say which way time runs)
  m.temporal_text_bias_pooling = "mean"   # mean | attention (learned weights over the tokens,
  #   starting as the mean: the pool can rest on the direction word)
  m.cond_embed_dim = 128
  m.text_embed_dim = 384
  m.text_cross_attention = True           # beside spatial attention, on its levels
  m.cross_attention_levels = ()           # or one bool per level (also levels without spatial)
  m.text_pooled_conditioning = True       # masked-mean text embedding added to the FiLM input
  m.fps_conditioning = True
  m.lowres_conditioning = "none"          # none | spatial | temporal
  m.lowres_temporal_upsample = "repeat"   # temporal SR: repeat | linear (frame interpolation)
  m.cond_aug_conditioning = False
  m.guidance_weight_conditioning = False  # guided distillation students
  m.attention_impl = "xla"                # xla | cudnn | splash
  m.dtype = "float32"                     # compute dtype (bfloat16 on accelerators)
  m.param_dtype = "float32"
  m.remat = "none"                        # none | block | full (spec.py)
  m.out_channels = 3                      # channels the U-Net predicts
  m.frame_mask_conditioning = False       # masked frame interpolation (Make-A-Video): C + 1
  #   extra input channels (known frames, frame mask); with stage='tsr' and
  #   lowres_conditioning='none' an interpolation TSR stage (imagen_video.py:...,tsr=interp)
  return m


def tiny(**overrides):
  """A CPU-sized base model: 8 channels, 2 levels, 1 res block, temporal attention."""
  m = default_section()
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
  m = default_section()
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
