"""The seven Imagen Video cascade stages (Ho et al. 2022), at paper scale and at CPU scale.

    --config=configs/imagen_video.py:stage=ssr1,scale=paper     one stage (train / sample it)
    --config=configs/imagen_video.py:stage=tsr1,scale=cpu
    --config=configs/imagen_video.py:stage=tsr1,scale=cpu,final=ssr1   data of a 3-stage cascade
    --config=configs/imagen_video.py:cascade,scale=cpu          the whole cascade (sample / eval)
    --config=configs/imagen_video.py:cascade,scale=cpu,stages=base+tsr1+ssr1   its first stages
    --config=configs/imagen_video.py:cascade,scale=cpu,tsr=interp   TSR by masked interpolation

Order and geometry (frames x height x width @ fps):

  stage  kind  paper                    cpu                 lowres input = previous stage
  base   base  16 x  24 x   40 @  3     8 x  16 x  16 @  4
  tsr1   tsr   32 x  24 x   40 @  6    16 x  16 x  16 @  8  frames x2
  ssr1   ssr   32 x  48 x   80 @  6    16 x  32 x  32 @  8  space x2
  ssr2   ssr   32 x 192 x  320 @  6    16 x  64 x  64 @  8  space x4 (cpu: x2)
  tsr2   tsr   64 x 192 x  320 @ 12    32 x  64 x  64 @ 16  frames x2
  tsr3   tsr  128 x 192 x  320 @ 24    64 x  64 x  64 @ 32  frames x2
  ssr3   ssr  128 x 768 x 1280 @ 24    64 x 128 x 128 @ 32  space x4 (cpu: x2)

Per-stage choices follow the paper (Sec. 2.3): temporal attention only in the base, temporal
convolutions (3x1x1 in every ResBlock and a temporal conv block per level) in the six SR
stages, spatial attention (with text cross-attention) only in the base, ssr1 and ssr2;
v-prediction; every SR stage is conditioned on its noise-augmented low-resolution input and on
the augmentation level (`model.cond_aug_conditioning`, training level t ~ U[0,
train.cond_aug_max_t], sampling level `sample.cond_aug_logsnr`). Stages without attention
(tsr1, tsr2, tsr3, ssr3) are fully convolutional: the large ones train on random crops
(`data.crop_*`) and sample at full size. Paper-scale widths come from
`vdm_jax.models.unet_presets` (parameter counts near the published ones); CPU widths are ours,
sized to train on a 2-core machine. The CPU cascade's frame rates keep every clip under 2.4 s so
that a fast large shape stays in frame (vdm_jax/data/moving_shapes/grammar.py).

TSR method (`tsr=`): 'lowres' (default, Imagen Video: the frame-repeated previous video is
concatenated to the input) or 'interp' (Make-A-Video masked frame interpolation: the TSR
stages get the known frames and a frame mask instead, `model.frame_mask_conditioning`, and
train on stride-k interpolation, 2k interpolation, half-window extrapolation and no-frame
masks; sampling keeps the previous frames at 0, k, 2k, ... and fills the rest).

A cascade config is the final stage's config plus a `cascade` section:
  cascade.order            stage names, base first
  cascade.stages.<name>    that stage's full config (the same as stage=<name>)
Stage <name>'s workdir is <root>/<name>, root = --workdir (vdm_jax/sample/cascade.py). Override a
stage's sampling with e.g. --config.cascade.stages.ssr1.sample.cond_aug_logsnr=3.
"""
import ml_collections

from configs import default
from vdm_jax import config_utils
from vdm_jax.models import conditioning
from vdm_jax.models.unet import presets as unet_presets

STAGE_ORDER = ("base", "tsr1", "ssr1", "ssr2", "tsr2", "tsr3", "ssr3")
SCALES = ("paper", "cpu")
TSR_METHODS = ("lowres", "interp")

# CPU geometry: name -> (frames, height, width, fps).
CPU_GEOMETRY = {
    "base": (8, 16, 16, 4.0),
    "tsr1": (16, 16, 16, 8.0),
    "ssr1": (16, 32, 32, 8.0),
    "ssr2": (16, 64, 64, 8.0),
    "tsr2": (32, 64, 64, 16.0),
    "tsr3": (64, 64, 64, 32.0),
    "ssr3": (64, 128, 128, 32.0),
}
# CPU widths: name -> (base_channels, channel_mult, num_res_blocks, spatial_attention per level).
# Attention follows the paper's pattern (base: all but the first level; ssr1/ssr2: the lower
# levels; the rest: none).
CPU_WIDTHS = {
    "base": (32, (1, 2, 2), 1, (False, True, True)),
    "tsr1": (24, (1, 2), 1, (False, False)),
    "ssr1": (16, (1, 2, 2), 1, (False, False, True)),
    "ssr2": (16, (1, 2, 2, 4), 1, (False, False, False, True)),
    "tsr2": (16, (1, 2, 2), 1, (False, False, False)),
    "tsr3": (16, (1, 2, 2), 1, (False, False, False)),
    "ssr3": (16, (1, 2, 2, 4), 1, (False, False, False, False)),
}
# Training crops: name -> (frames, height, width); 0 = full. Spatial crops only for stages
# without spatial attention (tsr*, ssr3), temporal crops for any stage without temporal
# attention (all SR stages); the models sample at full size.
PAPER_CROPS = {"tsr2": (0, 96, 160), "tsr3": (64, 96, 160), "ssr3": (32, 192, 320)}
CPU_CROPS = {"tsr1": (8, 0, 0), "ssr1": (8, 0, 0), "ssr2": (8, 0, 0), "tsr2": (16, 32, 32),
             "tsr3": (32, 32, 32), "ssr3": (16, 64, 64)}

# Paper-scale meshes (data, fsdp, tensor) for one 8-GPU H100 host per stage, from
# experiments/cascade/plan.py: the smallest FSDP degree whose train state fits in a quarter of
# 80 GB, the rest data parallel (see experiments/cascade/README.md).
PAPER_MESH = {
    "base": (1, 8, 1), "tsr1": (4, 2, 1), "ssr1": (4, 2, 1), "ssr2": (8, 1, 1),
    "tsr2": (8, 1, 1), "tsr3": (8, 1, 1), "ssr3": (8, 1, 1),
}

# Sampling per stage: (steps, guidance weight, guidance schedule, cond-aug logSNR at sampling).
# Oscillating guidance (Imagen Video Sec. 2.5) on the base and the first SR stages, constant
# low guidance on the high-resolution ones. logSNR 3.0 is t ~ 0.17 of the cosine schedule.
_SAMPLING = {
    "base": (64, 6.0, "oscillating", 20.0),
    "tsr1": (32, 3.0, "oscillating", 3.0),
    "ssr1": (32, 3.0, "oscillating", 3.0),
    "ssr2": (32, 1.0, "constant", 3.0),
    "tsr2": (24, 1.0, "constant", 3.0),
    "tsr3": (24, 1.0, "constant", 3.0),
    "ssr3": (24, 1.0, "constant", 3.0),
}


def kind_of(name: str) -> str:
  return unet_presets.IMAGEN_VIDEO_STAGES[name]["kind"]


def geometry(name: str, scale: str) -> tuple:
  """(frames, height, width, fps) of stage `name` at `scale`."""
  if scale == "cpu":
    return CPU_GEOMETRY[name]
  g = unet_presets.IMAGEN_VIDEO_STAGES[name]
  return g["frames"], g["height"], g["width"], float(g["fps"])


def _cpu_model(name: str):
  base, mult, blocks, spatial = CPU_WIDTHS[name]
  return unet_presets.imagen_video_stage(
      name, base_channels=base, channel_mult=mult, num_res_blocks=blocks,
      spatial_attention=spatial,
      temporal_mixing=(("attention" if kind_of(name) == "base" else "conv"),) * len(mult),
      text_cross_attention=any(spatial), num_heads=4, head_dim=16, num_groups=8,
      cond_embed_dim=4 * base, text_embed_dim=384, rel_pos_buckets=16,
      rel_pos_max_distance=32, dtype="float32")


def _set_data_source(c, scale: str, final: str) -> None:
  """The one dataset every stage of a cascade reads: clips at its final stage's geometry."""
  frames, height, width, fps = geometry(final, scale)
  d = c.data
  d.source_frames, d.source_fps = frames, fps
  d.source_resolution = max(height, width)   # stored square, cropped to each stage's aspect
  if scale == "paper":
    d.name = "video_folder"   # the user's own videos (24 fps or more, 1280 px or larger)
    d.video_dir = ""          # set --config.data.video_dir=...


def use_interpolation(c) -> None:
  """Turns a TSR stage config into masked frame interpolation (Make-A-Video): known frames +
  frame mask instead of the lowres video; masks of its factor k (and 2k when it fits), the
  first half of the training window (extrapolation) and none (generation)."""
  k = conditioning.temporal_factor(c.frames, c.data.lowres_frames)
  window = c.data.crop_frames or c.frames
  c.model.lowres_conditioning = "none"
  c.model.frame_mask_conditioning = True
  patterns, weights = [f"stride:{k}"], [0.5]
  if 2 * k < window:
    patterns.append(f"stride:{2 * k}")
    weights.append(0.2)
  patterns += [f"prefix:{window // 2}", "none"]
  weights += [0.2, 0.1]
  c.train.frame_mask_patterns = tuple(patterns)
  c.train.frame_mask_weights = tuple(weights)


def stage_config(name: str, scale: str = "cpu", final: str = STAGE_ORDER[-1],
                 tsr: str = "lowres"):
  """The full experiment config of cascade stage `name` at `scale` ('paper' | 'cpu'), reading
  the dataset of a cascade that ends with stage `final` (clips at its geometry); TSR stages by
  method `tsr` (TSR_METHODS, see above)."""
  for n in (name, final):
    if n not in STAGE_ORDER:
      raise ValueError(f"Unknown Imagen Video stage {n!r}; one of {STAGE_ORDER}.")
  if STAGE_ORDER.index(name) > STAGE_ORDER.index(final):
    raise ValueError(f"stage {name!r} comes after the cascade's final stage {final!r}.")
  if scale not in SCALES:
    raise ValueError(f"scale={scale!r} must be one of {SCALES}.")
  if tsr not in TSR_METHODS:
    raise ValueError(f"tsr={tsr!r} must be one of {TSR_METHODS}.")
  c = default.get_config()
  kind = kind_of(name)
  c.stage = kind
  c.frames, c.height, c.width, c.fps = geometry(name, scale)
  c.model = unet_presets.imagen_video_stage(name) if scale == "paper" else _cpu_model(name)
  c.diffusion.prediction = "v"
  c.diffusion.loss_weighting = "v_mse"

  i = STAGE_ORDER.index(name)
  d = c.data
  _set_data_source(c, scale, final)
  if i > 0:
    pf, ph, pw, _ = geometry(STAGE_ORDER[i - 1], scale)
    d.lowres_frames, d.lowres_height, d.lowres_width = pf, ph, pw
  # Training crops (fully convolutional stages); 0 = the full frames/height/width.
  crop = (PAPER_CROPS if scale == "paper" else CPU_CROPS).get(name, (0, 0, 0))
  d.crop_frames, d.crop_height, d.crop_width = crop

  steps, weight, schedule, aug = _SAMPLING[name]
  s = c.sample
  s.num_steps = steps
  s.guidance_weight = weight
  s.guidance_schedule = schedule
  s.guidance_low = 1.0
  s.cond_aug_logsnr = aug        # SR stages: the lowres input's noise level when sampling
  s.seed = -1                    # -1: the cascade's seed + this stage's index
  s.shared_init_noise = False    # True: one z_1 frame shared by all frames (Make-A-Video)

  t = c.train
  t.cond_aug_max_t = 0.5 if scale == "cpu" else 1.0
  if scale == "paper":
    c.text.encoder = "t5"        # T5-XXL v1.1: set --config.text.path=<its directory>
    c.text.max_length = 64
    c.text.dtype = c.text.param_dtype = "bfloat16"
    c.model.remat = "block"
    c.sharding.mesh_shape = PAPER_MESH[name]
    t.batch_size = 64 if kind == "base" else 32
    t.lr = 1e-4
    t.warmup_steps = 10_000
    t.num_steps = 500_000
    t.checkpoint_every = 2000
    c.sample.prompts = ("a red circle moving left",)
    c.eval.metrics = ("fvd",)    # the user's videos: no moving-shapes detectors
  else:
    c.data.num_train_examples = 2048
    c.data.num_eval_examples = 64
    c.data.two_object_prob = 0.0
    t.batch_size = 8
    t.num_steps = 1000
    t.lr = 1e-3
    t.warmup_steps = 50
    t.ema_decay = 0.995
    t.log_every = 25
    t.checkpoint_every = 250
    t.keep_last = 1
    c.eval.num_videos = 16
  if kind == "tsr" and tsr == "interp":
    use_interpolation(c)
  return c


def cascade_config(scale: str = "cpu", stages=STAGE_ORDER, tsr: str = "lowres"):
  """The final stage's config plus `cascade.order` and `cascade.stages.<name>` (see above)."""
  stages = tuple(stages)
  if not stages or any(s not in STAGE_ORDER for s in stages):
    raise ValueError(f"cascade stages {stages} must be names from {STAGE_ORDER}.")
  if stages != STAGE_ORDER[:len(stages)]:
    raise ValueError(f"cascade stages {stages} must be a prefix of {STAGE_ORDER} (each stage is "
                     "trained on the previous one's geometry).")
  c = stage_config(stages[-1], scale, stages[-1], tsr)
  c.cascade = cascade_section({n: stage_config(n, scale, stages[-1], tsr) for n in stages},
                              scale=scale)
  return c


def cascade_section(stage_configs: dict, *, scale: str) -> ml_collections.ConfigDict:
  """The `cascade` section over `stage_configs` (name -> config, base first)."""
  s = ml_collections.ConfigDict()
  s.order = tuple(stage_configs)
  s.scale = scale
  s.seed = 0                      # stage i samples with seed + i unless its sample.seed >= 0
  # Distilled stages replacing trained ones at sampling: "name=<distillation round dir>,..."
  # (e.g. "base=out/base_distill/rounds/03_progressive_0008"); "" = none.
  s.distilled = ""
  s.stages = ml_collections.ConfigDict(dict(stage_configs))
  return s


def get_config(arg=None):
  v = config_utils.parse_variant(arg)
  scale = v.pop("scale", "cpu")
  tsr = v.pop("tsr", "lowres")
  if "cascade" in v:
    v.pop("cascade")
    stages = tuple(v.pop("stages").split("+")) if "stages" in v else STAGE_ORDER
    c = cascade_config(scale, stages, tsr)
  else:
    c = stage_config(v.pop("stage", "base"), scale, v.pop("final", STAGE_ORDER[-1]), tsr)
  if v:
    raise ValueError(f"Unknown variant keys {sorted(v)} for configs/imagen_video.py; use "
                     "stage=<name>,scale=paper|cpu[,final=<name>][,tsr=lowres|interp] or "
                     "cascade,scale=...,stages=a+b+c[,tsr=...].")
  return c
