"""Make-A-Video (Singer et al. 2022): a text-to-image model inflated into a video model that
learns motion from unlabeled video, then masked frame interpolation and super-resolution.

    --config=configs/make_a_video.py:t2i            the text-to-image stage (images + captions)
    --config=configs/make_a_video.py:motion         the inflated video base, spatial layers
                                                    frozen, trained on clips without captions
    --config=configs/make_a_video.py:finetune       then everything, on captioned clips
    --config=configs/make_a_video.py:scratch        the same video base from scratch on
                                                    captioned clips (the comparison)
    --config=configs/make_a_video.py:interp         masked frame interpolation, fps-conditioned
    --config=configs/make_a_video.py:sr             spatial super-resolution (shared init noise)
    --config=configs/make_a_video.py:cascade        base -> interp -> sr (sample / eval)
    add ,scale=paper for the paper's sizes (sr_l and sr_h instead of sr)

The recipe, on the command line (CPU scale; each stage's workdir is its own):

    python -m vdm_jax.main --mode=build_data --config=configs/make_a_video.py:t2i
    python -m vdm_jax.main --mode=build_data --config=configs/make_a_video.py:motion
    python -m vdm_jax.main --mode=train --config=configs/make_a_video.py:t2i --workdir=mav/t2i
    python -m vdm_jax.main --mode=inflate --config=configs/make_a_video.py:motion \\
        --config.train.init_from=mav/t2i --workdir=mav/base
    python -m vdm_jax.main --mode=train --config=configs/make_a_video.py:motion --workdir=mav/base

`--mode=inflate` copies the text-to-image weights into the video U-Net, whose new layers start
as the identity (so it samples the image model frame by frame): a temporal conv after each
spatial conv of every ResBlock (pseudo-3D convs, `model.pseudo3d_convs`), temporal attention
after each spatial attention, and the frame-rate embedding (its last layer zeroed). `motion`
trains only those (`train.trainable='temporal'`) on clips whose captions are ignored
(`data.captions='ignore'`: the null condition, as classifier-free dropout gives); text still
enters through the frozen spatial layers when sampling. `finetune`
(`--config.train.init_from=mav/base`) trains every layer on captioned clips, Make-A-Video's
optional last step, for a small share of the compute.

Geometry (frames x height x width @ fps; the paper's sizes and frame counts, our frame rates):

  stage    paper                    cpu
  t2i       1 x  64 x  64           1 x 16 x 16          images
  base     16 x  64 x  64 @  5      8 x 16 x 16 @ 4     inflated from t2i
  interp   76 x  64 x  64 @ 25     16 x 16 x 16 @ 8     masked interpolation: 16 known frames at
                                                         0, 5, ..., 75 (cpu: 0, 2, ..., 14)
  sr_l     76 x 256 x 256 @ 25                           spatiotemporal SR
  sr_h     76 x 768 x 768 @ 25                           per-frame image SR, shared init noise
  sr                               16 x 32 x 32 @ 8     (cpu: one SR stage)

Make-A-Video's prior (text embedding -> image embedding) is not built: the stages are
conditioned on the text encoder's embeddings directly, as Imagen Video's are.
Paper-scale widths are ours (near Imagen Video's stages of the same resolution);
`python -m experiments.make_a_video.count_params` counts each stage's parameters (README,
Make-A-Video).
"""
from configs import demo
from configs import imagen_video
from vdm_jax import config_utils

VARIANTS = ("t2i", "motion", "finetune", "scratch", "interp", "sr", "cascade")
PAPER_STAGES = ("base", "interp", "sr_l", "sr_h")
CPU_STAGES = ("base", "interp", "sr")
# name -> (frames, height, width, fps)
GEOMETRY = {
    "paper": {"t2i": (1, 64, 64, 5.0), "base": (16, 64, 64, 5.0), "interp": (76, 64, 64, 25.0),
              "sr_l": (76, 256, 256, 25.0), "sr_h": (76, 768, 768, 25.0)},
    "cpu": {"t2i": (1, 16, 16, 4.0), "base": (8, 16, 16, 4.0), "interp": (16, 16, 16, 8.0),
            "sr": (16, 32, 32, 8.0)},
}
# The Imagen Video stage whose config (widths, sampling, crops) each stage starts from.
_LIKE = {"base": "base", "interp": "tsr1", "sr": "ssr1", "sr_l": "ssr2", "sr_h": "ssr3"}
# Training compute of the unlabeled-video steps relative to the captioned fine-tuning.
FINETUNE_SHARE = 0.2


def _image_model(model):
  """The text-to-image U-Net of a video base: the same network without temporal layers."""
  model.temporal_mixing = ("none",) * len(model.channel_mult)
  model.temporal_conv_in_resblock = False
  model.pseudo3d_convs = False
  model.fps_conditioning = False
  return model


def _video_model(model):
  """Make-A-Video's video base: pseudo-3D convs in every ResBlock, temporal attention after
  each spatial attention (a temporal conv block on levels without), fps-conditioned."""
  model.temporal_mixing = tuple("attention" if s else "conv" for s in model.spatial_attention)
  model.temporal_conv_in_resblock = True
  model.pseudo3d_convs = True
  model.fps_conditioning = True
  return model


def _set_data(c, scale):
  """Every CPU stage reads the demo's moving shapes (clips at the final stage's geometry)."""
  if scale == "cpu":
    d = c.data
    frames, size, _, fps = GEOMETRY["cpu"]["sr"]
    d.source_frames, d.source_resolution, d.source_fps = frames, size, fps
    d.data_dir = "mav_out/data"
    d.num_train_examples = 4096
    d.num_eval_examples = 64
    d.two_object_prob = 0.0
    for kind, words in demo.VOCABULARY.items():
      d.vocabulary[kind] = words
    c.text.store_path = "mav_out/text_store.safetensors"


def stage_config(name: str, scale: str = "cpu"):
  """The config of stage `name` (t2i, base, interp, sr | sr_l, sr_h) at `scale`."""
  if scale not in GEOMETRY:
    raise ValueError(f"scale={scale!r} must be one of {tuple(GEOMETRY)}")
  if name not in GEOMETRY[scale]:
    raise ValueError(f"stage {name!r} is not a {scale}-scale Make-A-Video stage; one of "
                     f"{tuple(GEOMETRY[scale])}")
  like = _LIKE.get(name, "base")
  final = imagen_video.STAGE_ORDER[-1] if scale == "paper" else "ssr1"
  c = imagen_video.stage_config(like, scale, final, tsr="interp")
  frames, height, width, fps = GEOMETRY[scale][name]
  c.frames, c.height, c.width, c.fps = frames, height, width, fps
  _set_data(c, scale)
  d = c.data
  if name in ("t2i", "base"):
    c.model = _video_model(c.model)
  if name == "t2i":
    c.model = _image_model(c.model)
    d.name = "moving_shapes_images" if scale == "cpu" else "image_folder"
    if scale == "paper":                  # the user's captioned images, stored at 64 x 64
      d.image_dir = ""                    # set --config.data.image_dir=...
      d.source_resolution = height
    c.sample.prompts = ("a large red circle on a black background",)
  elif name == "interp":
    d.lowres_frames = GEOMETRY[scale]["base"][0]
    d.lowres_height = d.lowres_width = 0
    c.model.fps_conditioning = True
    imagen_video.use_interpolation(c)
  elif name in ("sr", "sr_l", "sr_h"):
    prev = "interp" if name != "sr_h" else "sr_l"
    pf, ph, pw, _ = GEOMETRY[scale][prev]
    d.lowres_frames, d.lowres_height, d.lowres_width = pf, ph, pw
    d.crop_frames = min(d.crop_frames or frames, frames)
    c.sample.shared_init_noise = True     # Make-A-Video: one initial noise for every frame
    if name == "sr_h":                    # an image model applied frame by frame
      c.model.temporal_mixing = ("none",) * len(c.model.channel_mult)
      c.model.temporal_conv_in_resblock = False
      d.crop_frames, d.crop_height, d.crop_width = 1, 192, 192
  if scale == "cpu":
    c.model.text_embed_dim = 384
  return c


def get_config(arg=None):
  v = config_utils.parse_variant(arg)
  scale = v.pop("scale", "cpu")
  names = [k for k in v if k in VARIANTS]
  if len(names) != 1 or len(v) != 1:
    raise ValueError(f"configs/make_a_video.py takes one of {VARIANTS} (and scale=cpu|paper), "
                     f"got {arg!r}")
  variant = names[0]
  if variant == "cascade":
    return cascade_config(scale)
  stage = {"motion": "base", "finetune": "base", "scratch": "base"}.get(variant, variant)
  if variant == "sr" and scale == "paper":
    raise ValueError("scale=paper has two SR stages: use the cascade variant (sr_l, sr_h)")
  c = stage_config(stage, scale)
  t = c.train
  if variant == "motion":
    c.data.captions = "ignore"
    t.trainable = "temporal"
  elif variant == "finetune":
    t.num_steps = max(1, int(t.num_steps * FINETUNE_SHARE))
  return c


def cascade_config(scale: str = "cpu"):
  """base -> interp -> sr (paper: sr_l -> sr_h), as configs/imagen_video.py's cascades."""
  stages = CPU_STAGES if scale == "cpu" else PAPER_STAGES
  c = stage_config(stages[-1], scale)
  c.cascade = imagen_video.cascade_section(
      {n: stage_config(n, scale) for n in stages}, scale=scale)
  return c
