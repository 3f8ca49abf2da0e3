"""Joint image-video training (VDM section 4.2): the demo base stage trained with 0, 4 and 8
extra independent images per video, compared by FVD and caption accuracy.

    JAX_PLATFORMS=cpu python experiments/joint_training/run_experiment.py \
        [--run_dir=workdirs/joint_training] [--images=0,4,8] [--steps=600] [--eval_videos=64]

Every run is the base stage of configs/demo.py (8 frames, 16x16, 4 fps, text-conditioned,
batch of 8 videos) for --steps optimizer steps from the same seed, with
`data.images_per_video` = K: each video of the batch comes with K random frames of other
clips, each with the motion-free caption of its clip (`data.image_source = "frames"`). The
images are packed the VDM way: they are single frames run through the same U-Net (temporal
attention and temporal convolutions masked), so an image costs one frame, not a whole clip.
All runs see the same number of videos per step; K = 8 adds 64 frames to the 64 video frames.

Evaluation (per run, at every kept checkpoint): the base samples the first --eval_videos test
prompts (32 steps, w = 4, static thresholding: the demo's settings, same seeds for every run);
the moving-shapes detectors read colour, shape, size, motion, background and object count;
FVD (I3D) against the real test clips at the base geometry. Writes results.json and
results.md next to this file (or --out_dir) after every evaluation and prints the table.
"""
import json
import os
import sys
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

_OUT = flags.DEFINE_string("run_dir", "workdirs/joint_training", "Working directory of the runs.")
_OUT_DIR = flags.DEFINE_string("out_dir", os.path.dirname(os.path.abspath(__file__)),
                               "Where results.json / results.md go.")
_IMAGES = flags.DEFINE_list("images", ["0", "4", "8"], "Extra images per video, one run each.")
_STEPS = flags.DEFINE_integer("steps", 600, "Optimizer steps per run.")
_EVAL_STEPS = flags.DEFINE_list("eval_steps", [], "Checkpoints to evaluate (default: "
                                "steps / 2 and steps).")
_NUM_VIDEOS = flags.DEFINE_integer("eval_videos", 64, "Held-out test prompts to sample.")
_PHASE = flags.DEFINE_enum("phase", "all", ["train", "eval", "loss", "reference", "table", "all"],
                           "What to run (loss: only the held-out loss of evaluated steps; "
                           "reference: only --reference; table: rewrite results.md).")

_REFERENCE = flags.DEFINE_string(
    "reference", "", "Also evaluate this base workdir (e.g. a `make demo` run's cascade/base, "
    "trained without images for twice the steps: the same compute as 8 images per video) at "
    "its latest checkpoint, as the row 'reference'.")

_SET = flags.DEFINE_multi_string(
    "set", [], "Base-config overrides key=value (e.g. model.temporal_conv_in_resblock=True) "
    "for an ablation; use with a new --run_dir and --out_dir.")

ATTRIBUTES = ("color", "shape", "size", "motion", "speed", "background", "num_objects", "all")


def run_config(images: int, steps: int, out: str):
  """The demo base stage as a one-stage cascade config, with `images` images per video."""
  from vdm_jax import config_utils, demo  # pylint: disable=g-import-not-at-top
  config = demo.demo_config(os.path.join(ROOT, "configs", "demo.py"), out, 1.0)
  config.cascade.order = ("base",)
  base = config.cascade.stages["base"]
  base.data.images_per_video = images
  base.data.image_source = "frames"
  base.text.store_path = os.path.join(out, f"text_store_k{images}.safetensors")
  t = base.train
  t.num_steps = steps
  t.checkpoint_every = max(1, steps // 2)
  t.keep_every = max(1, steps // 2)
  t.warmup_steps = min(int(t.warmup_steps), max(1, steps // 10))
  config.eval.num_videos = _NUM_VIDEOS.value
  config_utils.apply_overrides(base, _SET.value)
  return config, base


def train(images: int, steps: int, out: str) -> dict:
  from vdm_jax import demo  # pylint: disable=g-import-not-at-top
  from vdm_jax.data import build  # pylint: disable=g-import-not-at-top
  from vdm_jax.train import loop  # pylint: disable=g-import-not-at-top
  config, base = run_config(images, steps, out)
  build.build_dataset(base)
  workdir = os.path.join(out, f"k{images}", "base")
  done = demo.latest_step(workdir)
  if done >= steps:
    print(f"K={images}: already trained to step {done}.", flush=True)
    return {}
  start, cpu = time.perf_counter(), time.process_time()
  loop.train_and_evaluate(base, workdir)
  return {"train_seconds": time.perf_counter() - start,
          "train_cpu_seconds": time.process_time() - cpu,
          "load_average": os.getloadavg()[0]}


def evaluate(images: int, steps: int, out: str, step: int, root: str = "") -> dict:
  from vdm_jax.cli import cascade_eval  # pylint: disable=g-import-not-at-top
  from vdm_jax.sample import cascade as cascade_lib  # pylint: disable=g-import-not-at-top
  config, _ = run_config(images, steps, out)
  root = root or os.path.join(out, f"k{images}")
  cascade = cascade_lib.Cascade.from_config(config, root, steps={"base": step})
  scores = cascade_eval.score_held_out(config, cascade, num_videos=_NUM_VIDEOS.value,
                                       batch_size=16)[0]
  acc = scores["stages"]["base"]["caption_accuracy"]
  loss = held_out_loss(cascade.stages[0], config, num_clips=_NUM_VIDEOS.value)
  return {"caption_accuracy": acc, "fvd": scores.get("fvd"), "held_out_loss": loss,
          "num_videos": scores["num_videos"], "num_held_out": scores["num_held_out"],
          "real_caption_accuracy": scores["real"]["caption_accuracy"],
          "seconds_per_video": scores["seconds_per_video"]}


def held_out_loss(stage, config, *, num_clips: int, draws: int = 8) -> float:
  """The mean diffusion loss (the training weighting) of the EMA model on the first
  `num_clips` test clips at the base geometry, with their captions, averaged over `draws`
  fixed (t, noise) draws: the same clips, times and noise for every run (noise from the run's
  noise prior, `diffusion.noise_prior`: the same keys, so correlated noise where it is set)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vdm_jax import diffusion  # pylint: disable=g-import-not-at-top
  from vdm_jax.cli import cascade_eval  # pylint: disable=g-import-not-at-top
  from vdm_jax.sample import conditioning as cond_lib  # pylint: disable=g-import-not-at-top
  from vdm_jax.data import build  # pylint: disable=g-import-not-at-top
  from vdm_jax.diffusion import noise as noise_lib  # pylint: disable=g-import-not-at-top
  c = stage.config
  real = build.load_split_examples(c, "test", num_clips)
  clips = cascade_eval.real_at_geometry(real["video"], float(real["fps"][0]), c)
  x = clips.astype(np.float32) / 127.5 - 1.0
  cond, _ = cond_lib.stage_conditioning(stage, prompts=list(real["caption"]), n=len(x))
  schedule = diffusion.schedule_from_config(c.diffusion, resolution=c.height)

  @jax.jit
  def loss(params, key):
    def model_fn(z, logsnr, cd):
      return stage.model.apply({"params": params}, z, logsnr, **cd, train=False)
    return diffusion.diffusion_loss(model_fn=model_fn, x=x, key=key, cond=cond,
                                    schedule=schedule, prediction=c.diffusion.prediction,
                                    weighting=c.diffusion.loss_weighting,
                                    noise_fn=noise_lib.noise_fn_from_config(c.diffusion))[0]

  return float(np.mean([loss(stage.params, jax.random.key(1000 + i)) for i in range(draws)]))


def step_gflop(workdir: str) -> float:
  """GFLOP per optimizer step from the run's log (XLA's cost analysis of the compiled step:
  TFLOP/s per device / steps/s), the load-independent cost of a step."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return float("nan")
  with open(path, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  ratios = [r["tflops_per_device"] / r["steps_per_sec"] * 1e3 for r in rows
            if r.get("steps_per_sec") and r.get("tflops_per_device")]
  return float(np.median(ratios)) if ratios else float("nan")


def _table(results: dict) -> str:
  lines = ["| images / video | step | " + " | ".join(ATTRIBUTES)
           + " | FVD | test loss | GFLOP/step | train s/step |",
           "|---" * (len(ATTRIBUTES) + 6) + "|"]
  for k, r in results["runs"].items():
    per_step = (r["train"]["train_seconds"] / results["steps"]
                if r.get("train", {}).get("train_seconds") else float("nan"))
    if k == "reference":
      per_step = float("nan")
    gflop = r.get("gflop_per_step", float("nan"))
    for step, e in sorted(r.get("eval", {}).items(), key=lambda kv: int(kv[0])):
      acc = e["caption_accuracy"]
      cells = [f"{acc[a]:.2f}" if isinstance(acc.get(a), float) else "-" for a in ATTRIBUTES]
      fvd = f"{e['fvd']:.0f}" if e.get("fvd") is not None else "-"
      test = f"{e['held_out_loss']:.4f}" if e.get("held_out_loss") is not None else "-"
      lines.append(f"| {k} | {step} | " + " | ".join(cells)
                   + f" | {fvd} | {test} | {gflop:.1f} | {per_step:.2f} |")
  return "\n".join(lines)


def main(argv):
  del argv
  out = os.path.abspath(_OUT.value)
  os.makedirs(out, exist_ok=True)
  steps = _STEPS.value
  path = os.path.join(_OUT_DIR.value, "results.json")
  results = {"steps": steps, "runs": {}}
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      old = json.load(f)
    if old.get("steps") == steps:
      results = old
  eval_steps = [int(s) for s in _EVAL_STEPS.value] or [steps // 2, steps]

  def save():
    for k, r in results["runs"].items():
      base = (os.path.join(out, "reference", "base") if k == "reference"
              else os.path.join(out, f"k{k}", "base"))
      r["gflop_per_step"] = step_gflop(base)
    os.makedirs(_OUT_DIR.value, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)
    with open(os.path.join(_OUT_DIR.value, "results.md"), "w", encoding="utf-8") as f:
      f.write(_table(results) + "\n")

  if _PHASE.value == "table":
    save()
    print(_table(results), flush=True)
  if _REFERENCE.value:
    ref = os.path.abspath(_REFERENCE.value)
    from vdm_jax import demo  # pylint: disable=g-import-not-at-top
    step = demo.latest_step(ref)
    print(f"== evaluate the reference {ref} at step {step} ==", flush=True)
    # Cascade.from_config reads <root>/base: a temporary root holding a link to it
    root = os.path.join(out, "reference")
    os.makedirs(root, exist_ok=True)
    if not os.path.lexists(os.path.join(root, "base")):
      os.symlink(ref, os.path.join(root, "base"))
    results["runs"].setdefault("reference", {"workdir": os.path.basename(ref)}).setdefault(
        "eval", {})[str(step)] = evaluate(0, steps, out, step, root=root)
    save()
    print(_table(results), flush=True)
  for images in [int(k) for k in _IMAGES.value if _PHASE.value not in ("reference", "table")]:
    run = results["runs"].setdefault(str(images), {})
    if _PHASE.value in ("train", "all"):
      timing = train(images, steps, out)
      if timing:
        run["train"] = timing
        save()
    if _PHASE.value == "loss":
      from vdm_jax.sample import stage as stage_lib  # pylint: disable=g-import-not-at-top
      for step in eval_steps:
        config, base = run_config(images, steps, out)
        stage = stage_lib.load_stage(base, os.path.join(out, f"k{images}", "base"), step=step)
        loss = held_out_loss(stage, config, num_clips=_NUM_VIDEOS.value)
        run.setdefault("eval", {}).setdefault(str(step), {})["held_out_loss"] = loss
        print(f"K={images} step {step}: held-out loss {loss:.4f}", flush=True)
        save()
    if _PHASE.value in ("eval", "all"):
      for step in eval_steps:
        print(f"== evaluate K={images} at step {step} ==", flush=True)
        run.setdefault("eval", {})[str(step)] = evaluate(images, steps, out, step)
        save()
        print(_table(results), flush=True)


if __name__ == "__main__":
  app.run(main)
