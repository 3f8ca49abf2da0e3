"""What the suite measures at each size: experiment configs of base, SSR and TSR stages.

    cfg = stage_config("base", "cpu_small")            # a full experiment ConfigDict
    plan = PLANS["cpu"]                                 # sizes, batches, repeats of one --size

A stage config is `configs/default.py` with the stage's geometry and a `model` section built
by `vdm_jax.models.unet_presets.imagen_video_stage(kind)` (so each stage has its kind's layer
types: temporal attention in the base model; temporal convs, low-resolution conditioning and
conditioning augmentation in SSR/TSR) with the width of one named size. The paper's widths
(5.6B base) do not fit one GPU; the GPU sizes here are the base model at a few hundred million
to one billion parameters at the paper's base geometry (16 x 24 x 40) with T5-XXL-wide text.
"""
import dataclasses
from typing import Optional

from configs import default as default_config
from vdm_jax.models.unet import presets as unet_presets

# Stage kinds and the preset stage name whose layer types they take.
KIND_PRESET = {"base": "base", "ssr": "ssr1", "tsr": "tsr1"}

# name: (kind, model overrides, (frames, height, width), lowres (frames, height, width)).
# CPU sizes are small enough to compile and step on a loaded 2-core machine; the smoke size
# is the smallest model that still has every layer type of its kind.
_SMALL_CPU = dict(num_groups=4, cond_embed_dim=32, text_embed_dim=32, num_heads=2, head_dim=8,
                  rel_pos_buckets=8, rel_pos_max_distance=16)
SIZES = {
    "base_smoke": ("base", dict(_SMALL_CPU, base_channels=8, channel_mult=(1, 2),
                                num_res_blocks=1, spatial_attention=(False, True),
                                temporal_mixing=("attention",) * 2), (4, 8, 8), None),
    "ssr_smoke": ("ssr", dict(_SMALL_CPU, base_channels=8, channel_mult=(1, 2),
                              num_res_blocks=1, spatial_attention=(False, True),
                              temporal_mixing=("conv",) * 2), (4, 16, 16), (4, 8, 8)),
    "tsr_smoke": ("tsr", dict(_SMALL_CPU, base_channels=8, channel_mult=(1, 2),
                              num_res_blocks=1, spatial_attention=(False, False),
                              temporal_mixing=("conv",) * 2), (8, 8, 8), (4, 8, 8)),
    "base_cpu_xs": ("base", dict(_SMALL_CPU, base_channels=16, channel_mult=(1, 2),
                                 num_res_blocks=1, spatial_attention=(False, True),
                                 temporal_mixing=("attention",) * 2), (8, 16, 16), None),
    "base_cpu_s": ("base", dict(_SMALL_CPU, base_channels=32, channel_mult=(1, 2, 2),
                                num_res_blocks=1, spatial_attention=(False, True, True),
                                temporal_mixing=("attention",) * 3, num_groups=8,
                                num_heads=0, head_dim=16), (8, 16, 16), None),
    # The CPU SR stages produce the base model's 8 x 16 x 16 from half the size/frames, so
    # the three stages cost alike and fit the CPU run's time.
    "ssr_cpu_xs": ("ssr", dict(_SMALL_CPU, base_channels=16, channel_mult=(1, 2),
                               num_res_blocks=1, spatial_attention=(False, True),
                               temporal_mixing=("conv",) * 2), (8, 16, 16), (8, 8, 8)),
    "tsr_cpu_xs": ("tsr", dict(_SMALL_CPU, base_channels=16, channel_mult=(1, 2),
                               num_res_blocks=1, spatial_attention=(False, False),
                               temporal_mixing=("conv",) * 2), (8, 16, 16), (4, 16, 16)),
    # GPU: the base model at its paper geometry, widths giving ~0.35B / 0.62B / 0.97B
    # parameters (registry.family(...).count_params); SR stages at reduced width.
    "base_gpu_350m": ("base", dict(base_channels=128), (16, 24, 40), None),
    "base_gpu_620m": ("base", dict(base_channels=192), (16, 24, 40), None),
    "base_gpu_1b": ("base", dict(base_channels=256), (16, 24, 40), None),
    "ssr_gpu_420m": ("ssr", dict(base_channels=128), (32, 48, 80), (32, 24, 40)),
    "tsr_gpu_210m": ("tsr", dict(base_channels=128), (32, 24, 40), (16, 24, 40)),
}


@dataclasses.dataclass(frozen=True)
class Plan:
  """What one `--size` runs.

  Attributes:
    train: size names of the throughput table (one row each, at `train_batch`).
    variant_size: the base size that the remat / dtype / attention comparisons use.
    sampling: size names whose sampling latency is measured.
    sampling_steps: (num_steps, 'teacher' | 'student') pairs; teacher = classifier-free
      guided (two network evaluations per step), student = guidance-distilled (one).
    train_batch, sample_batch: global batch of the train step / videos per sampler call.
    warmup, repeats, sample_repeats: timing settings (sample_repeats for the long runs).
    dtype: compute dtype of the main rows; attention: attention impl of the main rows.
    text_length: text tokens per example.
    max_batch_sizes: base sizes whose largest trainable batch is searched (accelerators).
    breakdown_size: the size whose train-step FLOPs are attributed to layer types.
    variant_remats: remat policies compared with the baseline (remat none).
    other_dtype: whether to compare with the other compute dtype (bf16 <-> fp32).
    breakdown_remats: remat policies whose train-step FLOPs the breakdown counts.
    max_batch_remats: remat policies of the largest-batch search, for max_batch_sizes[-1];
      the other sizes are searched without remat only (their batch fills the GPU in the train
      table).
    train_batches: per-size batch of the train table where the search did not run (GPU: about
      60% of the largest batch the saved-activation analysis predicts without remat).
    variant_batch: batch of the variants (default train_batch); small enough for float32.
    interleave: time the variants (and each stage's samplers) in interleaved rounds, one call
      of each per round, so that the load of a shared machine drifts over all of them alike
      (CPU plans; on an accelerator the states would not fit side by side).
  """
  train: tuple
  variant_size: str
  sampling: tuple
  sampling_steps: tuple
  train_batch: int
  sample_batch: int
  warmup: int
  repeats: int
  sample_repeats: int
  dtype: str
  attention: str
  text_length: int
  max_batch_sizes: tuple = ()
  breakdown_size: Optional[str] = None
  variant_remats: tuple = ("block", "full")
  other_dtype: bool = True
  breakdown_remats: tuple = ("none", "block", "full")
  max_batch_remats: tuple = ("none", "block", "full")
  train_batches: dict = dataclasses.field(default_factory=dict)
  variant_batch: Optional[int] = None
  interleave: bool = False

  def batch_for(self, size: str) -> int:
    """The train table's batch of `size` (train_batches, else train_batch)."""
    return int(self.train_batches.get(size, self.train_batch))


_STEPS = ((256, "teacher"), (8, "teacher"), (8, "student"), (4, "student"))
PLANS = {
    # Smoke: every section runs, with as few XLA compiles as that allows (each costs ~10-60 s
    # on a small shared CPU): one train step, two samplers; breakdown and variants trace only.
    "smoke": Plan(train=("base_smoke",), variant_size="base_smoke",
                  sampling=("base_smoke",), sampling_steps=((2, "teacher"), (1, "student")),
                  train_batch=1, sample_batch=1, warmup=1, repeats=2, sample_repeats=1,
                  dtype="float32", attention="xla", text_length=4,
                  breakdown_size="base_smoke", variant_remats=(), other_dtype=False,
                  breakdown_remats=("none",), interleave=True),
    "cpu": Plan(train=("base_cpu_xs", "base_cpu_s", "ssr_cpu_xs", "tsr_cpu_xs"),
                variant_size="base_cpu_xs",
                sampling=("base_cpu_xs", "ssr_cpu_xs", "tsr_cpu_xs"),
                sampling_steps=((256, "teacher"), (8, "student"), (4, "student")),
                train_batch=2, sample_batch=1, warmup=1, repeats=5, sample_repeats=3,
                dtype="float32", attention="xla", text_length=8,
                breakdown_size="base_gpu_350m", interleave=True),
    "gpu": Plan(train=("base_gpu_350m", "base_gpu_620m", "base_gpu_1b", "ssr_gpu_420m",
                       "tsr_gpu_210m"),
                variant_size="base_gpu_620m",
                sampling=("base_gpu_350m", "ssr_gpu_420m", "tsr_gpu_210m"),
                sampling_steps=_STEPS, train_batch=8, sample_batch=4, warmup=2, repeats=10,
                sample_repeats=3, dtype="bfloat16", attention="cudnn", text_length=64,
                max_batch_sizes=("base_gpu_350m", "base_gpu_1b"),
                breakdown_size="base_gpu_350m",
                train_batches={"base_gpu_350m": 16, "base_gpu_620m": 8, "base_gpu_1b": 4,
                               "ssr_gpu_420m": 2, "tsr_gpu_210m": 8},
                variant_batch=4),
}


def stage_config(size: str, *, dtype: str = "float32", attention: str = "xla",
                 remat: str = "none", text_length: int = 8, batch_size: int = 1,
                 grad_accum: int = 1, model_overrides: Optional[dict] = None):
  """The experiment config of size `size` (a key of SIZES) with the given compute dtype,
  attention implementation, remat policy and gradient-accumulation microbatches.
  `model_overrides` change model keys after."""
  if size not in SIZES:
    raise ValueError(f"unknown benchmark size {size!r}; one of {sorted(SIZES)}")
  kind, overrides, (frames, height, width), lowres = SIZES[size]
  c = default_config.get_config()
  c.stage = kind
  c.frames, c.height, c.width = frames, height, width
  c.model = unet_presets.imagen_video_stage(KIND_PRESET[kind], **overrides)
  c.model.dtype = dtype
  c.model.param_dtype = "float32"
  c.model.attention_impl = attention
  c.model.remat = remat
  c.model.update(model_overrides or {})
  c.text.max_length = text_length
  if lowres is not None:
    c.data.lowres_frames, c.data.lowres_height, c.data.lowres_width = lowres
  t = c.train
  t.batch_size = batch_size
  t.grad_accum_steps = int(grad_accum)
  t.lr_schedule, t.warmup_steps, t.lr = "constant", 0, 1e-4
  c.sharding.mesh_shape = (-1, 1, 1)
  return c


def kind_of(size: str) -> str:
  return SIZES[size][0]


def geometry(size: str) -> tuple:
  """(frames, height, width) of a size's output video."""
  return SIZES[size][2]
