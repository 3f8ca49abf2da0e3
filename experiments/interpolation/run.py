"""Does a masked-interpolation TSR stage learn? Train it briefly on CPU and fill real frames.

    JAX_PLATFORMS=cpu python -m experiments.interpolation.run [--workdir=workdirs/interp]
        [--steps=400] [--num_videos=32] [--sample_steps=32] [--out=experiments/interpolation]

Trains configs/imagen_video.py:stage=tsr1,scale=cpu,final=tsr1,tsr=interp (16 frames 16x16
@ 8 fps, masked frame interpolation, trained on 8-frame crops) for `--steps` steps on the
moving_shapes data, then fills held-out (test split) clips with `sample.sampler.fill_masked_frames`:
  interpolation  every 2nd frame known (frames 0, 2, ..., 14: the cascade's 8 -> 16 frames)
  extrapolation  the first 8 frames known, the last 8 filled
and reports the MSE (in [-1, 1] pixel units) of the filled frames against the real frames, with
baselines: linear blending of the neighbouring known frames (the last frame, which has no right
neighbour, repeats frame 14) for interpolation, and holding the last known frame for
extrapolation; also the untrained model (the initial parameters), and the trained model with
the known frames given clean (sample.cond_aug_logsnr = logsnr_max) instead of noised to the
config's sampling level. Writes results.json and prints it.
"""
import json
import os
import time

from absl import app
from absl import flags
import jax
import numpy as np

_WORKDIR = flags.DEFINE_string("workdir", "workdirs/interp", "Training workdir (and data).")
_STEPS = flags.DEFINE_integer("steps", 400, "Training steps.")
_NUM = flags.DEFINE_integer("num_videos", 32, "Held-out clips to fill.")
_SAMPLE_STEPS = flags.DEFINE_integer("sample_steps", 32, "Sampler steps when filling.")
_OUT = flags.DEFINE_string("out", "experiments/interpolation", "Where results.json goes.")


def make_config(workdir: str, steps: int):
  from configs import imagen_video  # pylint: disable=g-import-not-at-top
  c = imagen_video.get_config("stage=tsr1,scale=cpu,final=tsr1,tsr=interp")
  c.data.data_dir = os.path.join(workdir, "data")
  c.train.num_steps = steps
  c.train.checkpoint_every = steps
  c.train.warmup_steps = min(50, steps // 4)
  c.train.async_checkpointing = False
  c.sharding.mesh_shape = (1, 1, 1)
  return c


def linear_blend(video: np.ndarray, stride: int) -> np.ndarray:
  """Frames between known ones (0, s, 2s, ...) blended linearly; after the last known frame,
  that frame repeated."""
  out = video.copy()
  t = video.shape[1]
  for i in range(t):
    if i % stride == 0:
      continue
    lo = i - i % stride
    hi = lo + stride
    if hi >= t:
      out[:, i] = video[:, lo]
    else:
      a = (i - lo) / stride
      out[:, i] = (1 - a) * video[:, lo] + a * video[:, hi]
  return out


def mse(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
  """Mean squared error over the frames where `mask` [N, T] is False."""
  sel = ~mask
  return float(np.mean((a[sel] - b[sel]) ** 2))


def fill_all(stage, video, mask, prompts, *, sample_steps: int, **kwargs) -> np.ndarray:
  from vdm_jax.sample import sampler  # pylint: disable=g-import-not-at-top
  out = []
  for i in range(0, len(video), 8):   # chunks of 8: one compiled shape
    sl = slice(i, i + 8)
    out.append(sampler.fill_masked_frames(
        stage, key=jax.random.key(100 + i), video=video[sl], frame_mask=mask[sl],
        prompts=prompts[sl], num_steps=sample_steps, **kwargs))
  return np.concatenate(out)


def evaluate(stage, real, prompts, *, sample_steps: int, **kwargs) -> dict:
  n, t = real.shape[:2]
  interp = np.zeros((n, t), bool)
  interp[:, ::2] = True
  extrap = np.zeros((n, t), bool)
  extrap[:, : t // 2] = True
  results = {}
  start = time.perf_counter()
  filled = fill_all(stage, real, interp, prompts, sample_steps=sample_steps, **kwargs)
  results["interpolation"] = {"model": mse(filled, real, interp),
                              "linear_blend": mse(linear_blend(real, 2), real, interp)}
  filled = fill_all(stage, real, extrap, prompts, sample_steps=sample_steps, **kwargs)
  hold = np.repeat(real[:, t // 2 - 1:t // 2], t, axis=1)
  results["extrapolation"] = {"model": mse(filled, real, extrap),
                              "hold_last_frame": mse(hold, real, extrap)}
  results["sampling_seconds"] = time.perf_counter() - start
  return results


def main(argv):
  del argv
  from vdm_jax.sample import stage as stage_lib  # pylint: disable=g-import-not-at-top
  from vdm_jax.data import build  # pylint: disable=g-import-not-at-top
  from vdm_jax.train import loop  # pylint: disable=g-import-not-at-top
  workdir = os.path.abspath(_WORKDIR.value)   # orbax wants absolute paths
  config = make_config(workdir, _STEPS.value)
  build.build_dataset(config)
  real = build.load_split_examples(config, "test", _NUM.value)
  video = real["video"].astype(np.float32) / 127.5 - 1.0       # [N, 16, 16, 16, 3]
  if video.shape[1:4] != (config.frames, config.height, config.width):
    raise ValueError(f"test clips are {video.shape[1:4]}; expected the stage's geometry")
  prompts = list(real["caption"])
  report = {"config": "configs/imagen_video.py:stage=tsr1,scale=cpu,final=tsr1,tsr=interp",
            "steps": _STEPS.value, "num_videos": len(video), "sample_steps": _SAMPLE_STEPS.value,
            "machine": "shared 2-core CPU container (JAX CPU)"}

  start = time.perf_counter()
  loop.train_and_evaluate(config, os.path.join(workdir, "train"))
  report["train_seconds"] = time.perf_counter() - start
  stage = stage_lib.load_stage(config, os.path.join(workdir, "train"),
                               devices=jax.devices()[:1])
  report["trained"] = evaluate(stage, video, prompts, sample_steps=_SAMPLE_STEPS.value)
  # Known frames given clean (augmentation level logsnr_max) instead of the config's level.
  report["trained_clean_known"] = evaluate(
      stage, video, prompts, sample_steps=_SAMPLE_STEPS.value,
      cond_aug_logsnr=float(config.diffusion.logsnr_max))

  # The untrained model: the initial parameters (the step-0 EMA equals them).
  from vdm_jax.models import registry  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  init = registry.family(config.model).init_fn(stage.model, batch_like=registry.family(
      config.model).example_batch(config))
  stage.params = jax.device_put(nn.unbox(init(jax.random.key(int(config.seed)))),
                                stage.param_shardings)
  report["untrained"] = evaluate(stage, video, prompts, sample_steps=_SAMPLE_STEPS.value)

  print(json.dumps(report, indent=2))
  os.makedirs(_OUT.value, exist_ok=True)
  with open(os.path.join(_OUT.value, "results.json"), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)


if __name__ == "__main__":
  app.run(main)
