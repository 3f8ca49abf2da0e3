"""How faithfully the demo's super-resolution stages reproduce a real clip from its low-res input.

    JAX_PLATFORMS=cpu python -m experiments.cascade.sr_fidelity --out=demo_out \
        [--stages=tsr1,ssr1] [--steps=] [--num_clips=16] [--json=...]

For each SR stage of the demo cascade in `<out>/cascade`, takes the first --num_clips test clips,
feeds the stage the REAL clip at the previous stage's geometry (not a sampled one), samples
with the stage's own settings (steps, guidance, conditioning-augmentation level) and reports
the mean squared error to the real clip at the stage's geometry (values in [-1, 1]), next to
the naive upsampling of the same input (frame repetition for temporal SR, bilinear resize for
spatial SR). A stage that is worth running scores at or below the naive baseline; one that
scores far above it adds noise to every cascade sample. --steps evaluates several kept
checkpoints (default: the latest).

The moving-shapes detectors also read the sample, the naive upsampling and the real clip
against the clips' captions (colour, object count, size, shape, motion) and measure the mean
object coverage area in pixels: a stage that shrinks or fades its objects shows it there.
"""
import json
import os
import sys

from absl import app
from absl import flags

from vdm_jax import demo  # pylint: disable=g-bad-import-order  (defines --out, --config)

_STAGES = flags.DEFINE_list("stages", [], "SR stages to check (default: every SR stage).")
_STEPS = flags.DEFINE_list("steps", [], "Checkpoints to evaluate (default: the latest).")
_NUM = flags.DEFINE_integer("num_clips", 16, "Test clips.")
_JSON = flags.DEFINE_string("json", "", "Write the results here as JSON.")
FLAGS = flags.FLAGS


def naive_upsample(lowres, shape):
  """Frame repetition (temporal) or bilinear resize (spatial) of lowres to `shape`."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  if lowres.shape[1] != shape[1]:
    return np.repeat(lowres, shape[1] // lowres.shape[1], axis=1)
  return np.asarray(jax.image.resize(lowres, shape, "bilinear"))


ATTRIBUTES = ("color", "num_objects", "size", "shape", "motion")


def read(videos, captions, fps):
  """Detector accuracies on `videos` (float in [-1, 1]) and their mean object area (px)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vdm_jax.data.moving_shapes import detectors  # pylint: disable=g-import-not-at-top
  from vdm_jax.eval import evaluate  # pylint: disable=g-import-not-at-top
  clips = evaluate.to_uint8(videos)
  result = evaluate.evaluate_videos(clips, captions, fps=fps, compute_fvd=False)
  areas = [float(np.nanmean(d.objects[0].areas)) for d in detectors.detect_batch(clips, fps)
           if d.objects]
  out = {a: round(float(result["caption_accuracy"][a]), 4) for a in ATTRIBUTES}
  out["mean_area_px"] = round(float(np.mean(areas)), 2) if areas else None
  return out


def main(argv):
  del argv
  sys.path.insert(0, os.getcwd())
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vdm_jax.cli import cascade_eval  # pylint: disable=g-import-not-at-top
  from vdm_jax.sample import cascade as cascade_lib  # pylint: disable=g-import-not-at-top
  from vdm_jax.sample import sampler  # pylint: disable=g-import-not-at-top
  from vdm_jax.sample import stage as stage_lib  # pylint: disable=g-import-not-at-top
  from vdm_jax.data import build  # pylint: disable=g-import-not-at-top
  config = demo.demo_config(FLAGS.config, FLAGS.out, 1.0)
  names = list(config.cascade.order)
  stages = _STAGES.value or [n for n in names if config.cascade.stages[n].stage != "base"]
  root = os.path.join(FLAGS.out, "cascade")
  results = {"num_clips": _NUM.value, "stages": {}}
  for name in stages:
    c = config.cascade.stages[name]
    prev = config.cascade.stages[names[names.index(name) - 1]]
    real = build.load_split_examples(c, "test", _NUM.value)
    fps = float(real["fps"][0])
    high = cascade_eval.real_at_geometry(real["video"], fps, c).astype(np.float32) / 127.5 - 1
    low = cascade_eval.real_at_geometry(real["video"], fps, prev).astype(np.float32) / 127.5 - 1
    naive = float(np.mean((naive_upsample(low, high.shape) - high) ** 2))
    captions = list(real["caption"])
    row = results["stages"].setdefault(name, {
        "naive_mse": naive, "by_step": {}, "read_by_step": {},
        "naive_read": read(naive_upsample(low, high.shape), captions, float(c.fps)),
        "real_read": read(high, captions, float(c.fps))})
    for step in [int(s) for s in _STEPS.value] or [None]:
      stage = stage_lib.load_stage(c, cascade_lib.stage_workdir(root, name), step=step)
      videos = sampler.sample_stage(stage, key=jax.random.key(0),
                                    prompts=list(real["caption"]), lowres=low)
      mse = float(np.mean((videos - high) ** 2))
      row["by_step"][str(stage.step)] = mse
      row["read_by_step"][str(stage.step)] = read(videos, captions, float(c.fps))
      print(f"{name} step {stage.step}: MSE to the real clip {mse:.4f} "
            f"(naive upsampling {naive:.4f}); read {row['read_by_step'][str(stage.step)]}, "
            f"naive {row['naive_read']}, real {row['real_read']}", flush=True)
      if _JSON.value:
        with open(_JSON.value, "w", encoding="utf-8") as f:
          json.dump(results, f, indent=2)


if __name__ == "__main__":
  app.run(main)
