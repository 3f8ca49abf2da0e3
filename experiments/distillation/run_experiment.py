"""Distillation experiment on a CPU-scale base stage (configs/tiny.py: 8 frames of 16x16
moving shapes): quality (FVD, caption accuracy) and wall time per video of the teacher with
many DDIM steps, plain DDIM with few steps, and the guided + progressively distilled student.

    python experiments/distillation/run_experiment.py distill  --exp=DIR [--steps_per_round=..]
    python experiments/distillation/run_experiment.py evaluate --exp=DIR [--num_videos=64]

DIR holds data/, text_store.safetensors and the teacher's training workdir teacher/ (see the
README for the exact commands); `distill` writes DIR/distill/, `evaluate` writes
DIR/results.json, DIR/results.md and a few GIFs under DIR/videos/.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

from configs import distill as distill_config
from vdm_jax import diffusion
from vdm_jax import sharding as sharding_lib
from vdm_jax.distill import objective as dobjective
from vdm_jax.distill import run as drun
from vdm_jax.distill import state as dstate
from vdm_jax.models import registry

def make_config(exp: str, *, steps_per_round: int, guided_steps: int, start: int, end: int,
                threshold_students: bool = False, base: str = "tiny"):
  """configs/distill.py:base=<base>,mode=guided with the experiment's data and text store."""
  c = distill_config.get_config(f"base={base},mode=guided,start={start},end={end}")
  c.data.data_dir = os.path.join(exp, "data")
  if base == "tiny":
    c.data.num_eval_examples = 128
  c.text.store_path = os.path.join(exp, "text_store.safetensors")
  c.sharding.mesh_shape = (1, 1, 1)
  c.distill.steps_per_round = steps_per_round
  c.distill.guided_steps = guided_steps
  c.distill.w_min, c.distill.w_max = 0.0, 4.0
  c.train.checkpoint_every = 100
  c.train.log_every = 25
  c.distill.threshold_students = threshold_students
  return c


def distill_dir(exp: str, threshold_students: bool) -> str:
  return os.path.join(exp, "distill_thresholded" if threshold_students else "distill")


def cmd_distill(args):
  config = make_config(args.exp, steps_per_round=args.steps_per_round,
                       guided_steps=args.guided_steps, start=args.start, end=args.end,
                       threshold_students=args.threshold_students, base=args.base)
  t0 = time.time()
  if args.threshold_students:  # reuse guided stage one: only the progressive rounds differ
    src = os.path.join(distill_dir(args.exp, False), "rounds", f"00_guided_{args.start:04d}")
    dst = os.path.join(distill_dir(args.exp, True), "rounds", f"00_guided_{args.start:04d}")
    if os.path.isdir(src) and not os.path.exists(dst):
      import shutil  # pylint: disable=g-import-not-at-top
      shutil.copytree(src, dst)
  result = drun.run_distillation(config, distill_dir(args.exp, args.threshold_students),
                                 os.path.join(args.exp, "teacher"))
  print(json.dumps(result.rounds, indent=2))
  print(f"distillation wall time {time.time() - t0:.0f} s")


def _real_clips(config, n):
  """The first n test clips at the stage geometry (its first `frames` frames at its fps,
  resized to height x width, as the cascade evaluation reads them) with their captions."""
  from vdm_jax.cli import cascade_eval  # pylint: disable=g-import-not-at-top
  from vdm_jax.data import build  # pylint: disable=g-import-not-at-top
  ex = build.load_split_examples(config, "test", n)
  return (cascade_eval.real_at_geometry(ex["video"], float(ex["fps"][0]), config),
          ex["caption"])


def _load(config, workdir, model, batch_like, mesh, rules):
  init = registry.family(config.model).init_fn(model, batch_like=batch_like)
  params, _, step = dstate.restore_params(workdir=workdir, config=config, init_params_fn=init,
                                          mesh=mesh, rules=rules)
  return params, step


def _timed_sample(model_fn, *, num_steps, cond, uncond, weight, noise, schedule, config, clip):
  """Samples one batch under jit; returns (videos in [-1, 1], seconds of the run after
  compilation)."""
  def run(c, u, z):
    return diffusion.sample(
        model_fn=model_fn, shape=z.shape, key=jax.random.key(0), num_steps=num_steps,
        schedule=schedule, prediction=config.diffusion.prediction, cond=c, uncond=u,
        guidance_weight=weight, clip=clip,
        dynamic_percentile=float(config.sample.dynamic_percentile), init_noise=z)
  compiled = jax.jit(run).lower(cond, uncond, noise).compile()
  t0 = time.time()
  videos = jax.block_until_ready(compiled(cond, uncond, noise))
  return np.asarray(videos), time.time() - t0


def _score(videos_u8, captions, real_features, extractor, fps):
  """(FVD against the real clips' I3D features, caption accuracy dict, #clips read empty)."""
  from vdm_jax.data.moving_shapes import accuracy  # pylint: disable=g-import-not-at-top
  from vdm_jax.data.moving_shapes import detectors  # pylint: disable=g-import-not-at-top
  from vdm_jax.eval import fvd as fvd_lib  # pylint: disable=g-import-not-at-top
  dets = [detectors.detect(v, fps) for v in videos_u8]
  acc = accuracy.caption_accuracy(dets, list(captions), with_motion=videos_u8.shape[1] > 1)
  fvd = None
  if real_features is not None:
    fvd = float(fvd_lib.fvd(extractor.features(fvd_lib.repeat_frames(videos_u8)),
                            real_features))
  return fvd, acc, sum(not d.objects for d in dets)


def cmd_evaluate(args):
  from vdm_jax import text as text_lib  # pylint: disable=g-import-not-at-top
  from vdm_jax.eval import evaluate as eval_lib  # pylint: disable=g-import-not-at-top
  from vdm_jax.eval import fvd as fvd_lib  # pylint: disable=g-import-not-at-top
  from vdm_jax.media import gallery  # pylint: disable=g-import-not-at-top
  config = make_config(args.exp, steps_per_round=args.steps_per_round,
                       guided_steps=args.guided_steps, start=args.start, end=args.end,
                       base=args.base)
  guidance = args.guidance
  teacher_clip = args.teacher_clip or config.sample.clip
  suffix = f"_{args.teacher_clip}" if args.teacher_clip else ""   # another set of results
  mesh = sharding_lib.create_mesh(config.sharding)
  rules = sharding_lib.logical_rules(config.sharding)
  n = args.num_videos
  real, captions = _real_clips(config, n)
  emb, mask = text_lib.load_text_encoder(config.text).encode(list(captions))
  cond = {"text_emb": jnp.asarray(emb), "text_mask": jnp.asarray(mask)}
  if config.model.get("fps_conditioning", False):
    cond["fps"] = jnp.full((n,), float(config.fps), jnp.float32)
  uncond = dict(cond, text_emb=jnp.zeros_like(cond["text_emb"]),
                text_mask=jnp.zeros_like(cond["text_mask"]))
  batch_like = {"video": np.zeros((1, config.frames, config.height, config.width, 3),
                                  np.float32),
                "fps": np.zeros((1,), np.float32), "text_emb": np.asarray(emb[:1]),
                "text_mask": np.asarray(mask[:1])}
  noise = jax.random.normal(jax.random.key(args.seed),
                            (n, config.frames, config.height, config.width, 3))
  schedule = diffusion.schedule_from_config(config.diffusion, resolution=config.height)

  teacher_cfg = config.copy_and_resolve_references()
  teacher_cfg.model = dobjective.teacher_model_config(config, "guided")
  teacher = registry.family(teacher_cfg.model).module()
  student = registry.family(config.model).module()
  t_params, t_step = _load(teacher_cfg, os.path.join(args.exp, "teacher"), teacher, batch_like,
                           mesh, rules)
  manifest = json.load(open(os.path.join(distill_dir(args.exp, False), "rounds.json")))["rounds"]
  by_steps = {(r["stage"], r["student_steps"]): r["directory"] for r in manifest}
  thr_path = os.path.join(distill_dir(args.exp, True), "rounds.json")
  thr_manifest = json.load(open(thr_path))["rounds"] if os.path.exists(thr_path) else []
  by_steps.update({("thresholded", r["student_steps"]): r["directory"]
                   for r in thr_manifest if r["stage"] == "progressive"})

  rows = [("teacher (CFG, 2 evals/step)", "teacher", args.teacher_steps)]
  rows += [("teacher DDIM (CFG)", "teacher", s) for s in (args.start, 8, 4)]
  rows += [("guided stage one student (w input)", ("guided", args.start), args.start)]
  rows += [("distilled student (w input)", ("progressive", s), s) for s in (8, 4)]
  if thr_manifest:
    rows += [("distilled student, thresholded teachers and sampling (w input)",
              ("thresholded", s), s) for s in (8, 4)]
  video_dir = os.path.join(args.exp, "videos")
  os.makedirs(video_dir, exist_ok=True)
  # 1. Sample every row (saved as it goes: a rerun skips rows already sampled).
  for label, source, steps in rows:
    path = os.path.join(video_dir, f"{_tag(source, steps, suffix)}.npz")
    if os.path.exists(path):
      continue
    if source == "teacher":
      model_fn = dobjective.make_student_model_fn(teacher, t_params)
      videos, secs = _timed_sample(model_fn, num_steps=steps, cond=cond, uncond=uncond,
                                   weight=guidance, noise=noise, schedule=schedule,
                                   config=config, clip=teacher_clip)
    else:
      params, _ = _load(config, by_steps[source], student, batch_like, mesh, rules)
      model_fn = dobjective.make_student_model_fn(student, params, guidance_weight=guidance)
      # The round's own config says how to sample it (clip 'none' after thresholded teachers).
      clip = json.load(open(os.path.join(by_steps[source], "config.json")))["sample"]["clip"]
      videos, secs = _timed_sample(model_fn, num_steps=steps, cond=cond, uncond=None,
                                   weight=0.0, noise=noise, schedule=schedule, config=config,
                                   clip=clip)
    np.savez(path, videos=eval_lib.to_uint8(videos), seconds=secs)
    print(f"sampled {label} at {steps} steps: {secs / n:.3f} s/video", flush=True)
  # 2. Score every row against the same real clips.
  extractor = fvd_lib.extractor_from_config(config.eval)
  real_features = extractor.features(fvd_lib.repeat_frames(real))
  _, real_acc, real_empty = _score(real, captions, None, extractor, config.fps)
  results = []
  for label, source, steps in rows:
    saved = np.load(os.path.join(video_dir, f"{_tag(source, steps, suffix)}.npz"))
    videos = saved["videos"]
    fvd, acc, empty = _score(videos, captions, real_features, extractor, config.fps)
    evals = steps * (2 if source == "teacher" else 1)
    row = dict(method=label, steps=steps, network_evals=evals,
               seconds_per_video=float(saved["seconds"]) / n, fvd=fvd, caption_accuracy=acc,
               clips_without_objects=empty)
    results.append(row)
    print(json.dumps(row), flush=True)
    for i in range(2):
      gallery.write_gif(os.path.join(video_dir, f"{_tag(source, steps, suffix)}_{i}.gif"),
                        videos[i],
                        fps=config.fps)
  out = dict(num_videos=n, guidance_weight=guidance, teacher_step=t_step,
             teacher_clip=teacher_clip,
             real_caption_accuracy=real_acc, real_clips_without_objects=real_empty,
             rows=results, machine=_machine(), rounds=manifest,
             rounds_thresholded=thr_manifest)
  with open(os.path.join(args.exp, f"results{suffix}.json"), "w", encoding="utf-8") as f:
    json.dump(out, f, indent=2)
  table = _table(out)
  with open(os.path.join(args.exp, f"results{suffix}.md"), "w", encoding="utf-8") as f:
    f.write(table)
  print(table)


def _tag(source, steps, suffix="") -> str:
  """Saved-sample name of a row; `suffix` marks teacher rows sampled with another clip."""
  if source == "teacher":
    return f"teacher_{steps}{suffix}"
  return f"student_{source[0]}_{steps}"


def _machine() -> str:
  import platform  # pylint: disable=g-import-not-at-top
  return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores visible, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}")


def _table(out) -> str:
  attrs = ("all", "color", "shape", "motion")
  lines = ["| method | steps | network evals | s / video | FVD | " +
           " | ".join(f"acc {a}" for a in attrs) + " |",
           "|---|---:|---:|---:|---:|" + "---:|" * len(attrs)]
  for r in out["rows"]:
    acc = r["caption_accuracy"]
    fvd = "n/a" if r["fvd"] is None else f"{r['fvd']:.1f}"
    lines.append(f"| {r['method']} | {r['steps']} | {r['network_evals']} | "
                 f"{r['seconds_per_video']:.3f} | {fvd} | " +
                 " | ".join(f"{acc.get(a, float('nan')):.3f}" for a in attrs) + " |")
  acc = out["real_caption_accuracy"]
  lines.append("| real test clips (detector ceiling) | - | - | - | 0 | " +
               " | ".join(f"{acc.get(a, float('nan')):.3f}" for a in attrs) + " |")
  return "\n".join(lines) + "\n"


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("command", choices=("distill", "evaluate"))
  p.add_argument("--exp", required=True, help="experiment directory (see the README)")
  p.add_argument("--start", type=int, default=64, help="teacher steps of the first round")
  p.add_argument("--end", type=int, default=4, help="steps of the last student")
  p.add_argument("--steps_per_round", type=int, default=200)
  p.add_argument("--guided_steps", type=int, default=200)
  p.add_argument("--teacher_steps", type=int, default=256)
  p.add_argument("--num_videos", type=int, default=64)
  p.add_argument("--seed", type=int, default=1)
  p.add_argument("--base", choices=("tiny", "demo"), default="tiny",
                 help="the teacher's config: configs/tiny.py, or the base stage of "
                      "configs/demo.py (DIR/teacher = <demo --out>/cascade/base)")
  p.add_argument("--teacher_clip", choices=("none", "static", "dynamic"), default=None,
                 help="evaluate: thresholding of the teacher rows (default: the config's "
                      "sample.clip); writes results_<clip>.json/md")
  p.add_argument("--guidance", type=float, default=2.0,
                 help="classifier-free guidance weight of every guided row (students: w input)")
  p.add_argument("--threshold_students", action="store_true",
                 help="distill: threshold every teacher step and sample students with it "
                      "(into DIR/distill_thresholded, reusing DIR/distill's guided stage one)")
  args = p.parse_args()
  args.exp = os.path.abspath(args.exp)
  {"distill": cmd_distill, "evaluate": cmd_evaluate}[args.command](args)


if __name__ == "__main__":
  main()
