"""The `make demo` config: the first three CPU-scale Imagen Video stages on moving shapes.

    python -m vdm_jax.demo                          # what `make demo` runs (see vdm_jax/demo.py)
    python -m vdm_jax.main --mode=sample --config=configs/demo.py --workdir=demo_out/cascade \\
        --prompt="a large red circle moving right slowly on a black background"

base (8 x 16 x 16 @ 4 fps, temporal + spatial attention) -> tsr1 (16 frames @ 8 fps, temporal
convs) -> ssr1 (16 x 32 x 32, temporal convs + spatial attention), the structure of
configs/imagen_video.py:cascade,scale=cpu cut after its third stage: seven stages do not train
in a 2-core budget, and these three already show every mechanism (text-to-video base, temporal
and spatial super-resolution with conditioning augmentation, training crops). The data are
16-frame 32x32 moving-shapes clips at 8 fps with one object each, in a smaller vocabulary
than the full domain (VOCABULARY below: fast straight motions or still, medium and large
objects; every colour, shape and background). `train.num_steps` of each stage is its share
of the demo's budget; `vdm_jax.demo --budget=2` doubles every stage's steps.

`make demo` loads the cascade trained with this recipe from vdm_jax/assets/demo_cascade;
`make demo-train` (python -m vdm_jax.demo --train) reproduces it.

The recipe, measured (experiments/recipe/, README "The demo"): the SR stages diffuse their
residual over the naive upsampling of their input (diffusion.lowres_residual_scale): from the
real low-res test clips, tsr1 reads 1.00 on every attribute after 800 steps (the paper's
parameterization, 1200 steps: size 0.44, shape 0.13, motion 0.63), and they sample without
guidance (one network evaluation per step). The base is the Imagen-Video CPU base; its
accuracy grows with its training (64 held-out prompts, base alone: shape 0.08 / 0.16 / 0.58 /
0.77 / 0.91 and motion 0.19 / 0.45 / 0.55 / 0.48 / 0.58 after 2400 / 4800 / 7000 / 10500 /
14000 steps), so it gets most of the budget. The shipped base was trained 2400 steps
(warmup-cosine over 2400), then resumed to 7000 and to 14000 with the schedule re-set to
warmup-cosine over 7000 and over 14000 (warm restarts), then fine-tuned 8000 steps with the
temporal text bias (below); the shipped ssr1 was trained 1200 steps, then resumed with
warmup-cosine over 3600 to its end, then fine-tuned 3600 more steps from its export (from the
real low-res clips, 64 test prompts: MSE 0.0050 at 2400 steps, 0.0040 at 3600, 0.0019 at 7200;
bilinear 0.0065); `make demo-train` runs one schedule per stage over STEPS, the same totals.
Well-separated direction words did not make the 2400-step base read its motion word, so the
text encoder is the default MiniLM.
"""
import ml_collections

from configs import imagen_video

STAGES = ("base", "tsr1", "ssr1")
# Train steps and batch per stage (batch 8; SR stages train on 8-frame temporal crops).
STEPS = {"base": 22000, "tsr1": 1600, "ssr1": 7200}
# SR stages diffuse their residual over the naive upsampling of their input, scaled by this
# (diffusion.lowres_residual_scale; see experiments/recipe/): they start as naive upsampling
# and learn only the detail it misses.
SR_RESIDUAL_SCALE = 5.0
# The demo's words (configs/default.py data.vocabulary; empty = every word): straight fast
# motions and "still", objects big enough to show their shape at the base's 16x16.
VOCABULARY = {"motion": ("left", "right", "up", "down", "still"), "speed": ("fast",),
              "size": ("medium", "large")}


def get_config(arg=None):
  del arg
  c = imagen_video.cascade_config("cpu", STAGES)
  for cfg in [c] + [c.cascade.stages[n] for n in STAGES]:
    d = cfg.data
    d.data_dir = "demo_out/data"
    d.num_train_examples = 4096
    d.num_eval_examples = 64
    d.two_object_prob = 0.0               # one object per clip: learns faster on a CPU
    for kind, words in VOCABULARY.items():
      d.vocabulary[kind] = words
    cfg.text.store_path = "demo_out/text_store.safetensors"   # encoded once, shared
    cfg.eval.num_videos = 32
    t = cfg.train
    t.sample_every = 0
    t.log_every = 50
  for name in STAGES:
    s = c.cascade.stages[name]
    s.train.num_steps = STEPS[name]
    s.train.checkpoint_every = 200
    s.train.keep_every = 400 if name == "base" else 0    # base: accuracy vs. budget
    s.sample.num_steps = 32 if name == "base" else 16
    s.sample.guidance_weight = 4.0 if name == "base" else 0.0   # SR: one evaluation per step
    if name != "base":
      s.diffusion.lowres_residual_scale = SR_RESIDUAL_SCALE
    s.sample.guidance_schedule = "constant"
    # Static thresholding, measured on a trained demo cascade: dynamic thresholding shrank the
    # contrast of the SR samples step after step (from real low-res input, 16 test clips, MSE
    # to the real clip: tsr1 0.157 dynamic / 0.048 none / 0.039 static, ssr1 0.208 / 0.068 /
    # 0.057) and left gray backgrounds noisy in the base (32 held-out prompts at w = 4:
    # background accuracy 0.66 dynamic vs 1.00 static, colour 0.97 vs 0.94).
    s.sample.clip = "static"
  # The base samples stochastically (DDIM eta = 1, fresh noise each step), measured on the
  # trained demo base, 32 held-out prompts at w = 4: one object 0.91 vs 0.50 with eta = 0,
  # colour 1.00 vs 0.94, frame-to-frame flicker 10.5 vs 16.5 (eta = 0 leaves stray blobs).
  c.cascade.stages["base"].sample.eta = 1.0
  # ssr1 too, measured on the shipped ssr1 fed the real low-res clips of 64 TRAIN prompts
  # (not the test prompts), two seeds: shape 0.80 / 0.78 with eta = 0 vs 0.83 / 0.83, size
  # 0.86 / 0.88 vs 0.89 / 0.89, MSE to the real clip 0.0043 vs 0.0039; final-stage FVD of the
  # shipped cascade on the 64 test prompts 375 vs 352 (experiments/recipe/README.md).
  c.cascade.stages["ssr1"].sample.eta = 1.0
  # The base's temporal attention takes a caption-dependent signed bias, pooled from the
  # caption's tokens with learned weights: without it the base is equivariant under time
  # reversal and reads no direction word (motion 0.58 at 14000 steps; with it, fine-tuned
  # from there, 0.78 after 4000 and after 8000 more: experiments/recipe/README.md).
  c.cascade.stages["base"].model.temporal_text_bias = True
  c.cascade.stages["base"].model.temporal_text_bias_pooling = "attention"
  # `make demo` also distills the base (guided distillation at 16 steps, then one progressive
  # round 16 -> 8; optimizer steps times --budget) and shows that cascade beside the trained
  # one. experiments/distillation/ distills the same base further (64 -> 4 steps).
  c.demo = ml_collections.ConfigDict(dict(
      distill_stage="base", distill_start=16, distill_end=8, distill_guided_steps=120,
      distill_steps_per_round=120))
  c.sample.prompts = (
      "a large red circle moving right quickly on a black background",
      "a large blue square moving down quickly on a white background",
      "a large yellow triangle standing still on a gray background",
      "a large green star moving left quickly on a black background",
      "a medium magenta diamond moving up quickly on a gray background",
      "a large cyan cross moving down quickly on a black background",
  )
  return c
