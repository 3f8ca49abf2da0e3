"""Autoregressive extension of the demo base stage: reconstruction guidance vs replacement.

    python experiments/extension/run_experiment.py --demo_out=DEMO_OUT

DEMO_OUT is the --out directory of a `make demo` run (its base stage: 8 frames, 16x16, 4 fps,
text-conditioned, checkpoint in DEMO_OUT/cascade/base). Held-out test prompts whose object
moves are sampled once (the first 8-frame block, shared by every method), then extended to
--num_frames frames by `conditional.extend_video` with each method and the same keys (so the
same noise). The moving-shapes detector tracks the prompt's object over the whole video; at
every block boundary b (the first new frame) we measure
  pos:  |c[b] - line fitted to the `overlap` conditioning frames, extrapolated to b| (pixels),
  vel:  |slope of the new block's first frames - slope of the conditioning frames| (px/frame),
and the same two quantities inside blocks (frames that are not boundaries; for vel, the middle
of the first block) as the level of the detector and of ordinary motion, plus the spread of the
frame-to-frame displacement over the whole video, the fraction of frames where the object is
seen, and the caption accuracy of the extended videos. The real test clips (8 frames at the
base geometry) give the within-clip reference. Writes results.json and results.md next to
this file (or --out_dir) and prints the table.
"""
import json
import os
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
# pylint: disable=g-import-not-at-top,wrong-import-position
from vdm_jax import demo
from vdm_jax.cli import cascade_eval
from vdm_jax.data import build
from vdm_jax.data.moving_shapes import accuracy, detectors, grammar
from vdm_jax.eval import evaluate
from vdm_jax.sample import cascade, conditional, sampler
from vdm_jax.sample import stage as stage_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

_DEMO_OUT = flags.DEFINE_string("demo_out", None, "The --out directory of a `make demo` run.")
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", 16, "Held-out prompts (moving objects).")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 32, "Frames of each extended video.")
_OVERLAPS = flags.DEFINE_list("overlaps", ["4"], "Conditioning frames per block.")
_WEIGHTS = flags.DEFINE_list("weights", ["1", "2", "5"], "Reconstruction-guidance weights w_r.")
_REPLACEMENT = flags.DEFINE_bool("replacement", True, "Also run the replacement method.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "Sampling steps (default: the config's).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_OUT_DIR = flags.DEFINE_string("out_dir", os.path.dirname(os.path.abspath(__file__)),
                               "Where results.json and results.md go.")


def object_track(det: detectors.Detection, prompt: str, size: int) -> np.ndarray:
  """Centres [T, 2] in pixels of the prompt's object (by colour; else the largest object);
  NaN where it is not seen."""
  color = grammar.parse_caption(prompt)["objects"][0]["color"]
  objs = [o for o in det.objects if o.color == color] or det.objects[:1]
  if not objs:
    return np.full((det.coverage.shape[0], 2), np.nan)
  return objs[0].centers * size


def _fit(c: np.ndarray, frames: np.ndarray):
  """Least-squares line through the finite centres c[frames]: (value at 0, slope) per axis, or
  None with < 2 finite frames."""
  ok = [t for t in frames if 0 <= t < len(c) and np.all(np.isfinite(c[t]))]
  if len(ok) < 2:
    return None
  t = np.asarray(ok, np.float64)
  design = np.stack([np.ones_like(t), t], 1)
  coef, *_ = np.linalg.lstsq(design, c[ok], rcond=None)
  return coef  # [2 (intercept, slope), 2 (x, y)]


def extrapolation_error(c: np.ndarray, t: int, k: int) -> float:
  """|c[t] - the line through c[t-k..t-1] at t| in pixels (NaN when not measurable)."""
  coef = _fit(c, np.arange(t - k, t))
  if coef is None or not np.all(np.isfinite(c[t])):
    return np.nan
  return float(np.linalg.norm(c[t] - (coef[0] + coef[1] * t)))


def velocity_jump(c: np.ndarray, t: int, k: int, new: int) -> float:
  """|slope over c[t..t+new-1] - slope over c[t-k..t-1]| in pixels per frame."""
  before, after = _fit(c, np.arange(t - k, t)), _fit(c, np.arange(t, t + new))
  if before is None or after is None:
    return np.nan
  return float(np.linalg.norm(after[1] - before[1]))


def displacement_spread(c: np.ndarray) -> float:
  """sqrt(var dx + var dy) of the frame-to-frame displacement (pixels per frame)."""
  d = np.diff(c, axis=0)
  d = d[np.all(np.isfinite(d), axis=1)]
  return float(np.sqrt(d.var(0).sum())) if len(d) > 1 else np.nan


def track_metrics(tracks, *, boundaries, overlap: int, new: int, first_block: int) -> dict:
  """Mean metrics over videos' tracks [T, 2] (NaN-aware)."""
  b_set = set(boundaries)
  rows = {"boundary_pos_px": [], "interior_pos_px": [], "boundary_vel_px": [],
          "interior_vel_px": [], "disp_spread_px": [], "seen_frac": []}
  mid = first_block // 2
  for c in tracks:
    n = len(c)
    rows["boundary_pos_px"] += [extrapolation_error(c, b, overlap) for b in boundaries]
    rows["interior_pos_px"] += [extrapolation_error(c, t, overlap) for t in range(overlap, n)
                                if t not in b_set]
    rows["boundary_vel_px"] += [velocity_jump(c, b, overlap, min(new, n - b))
                                for b in boundaries if n - b >= 2]
    rows["interior_vel_px"].append(velocity_jump(c, mid, min(overlap, mid), first_block - mid))
    rows["disp_spread_px"].append(displacement_spread(c))
    rows["seen_frac"].append(float(np.mean(np.all(np.isfinite(c), axis=1))))
  out = {}
  for k, v in rows.items():
    v = np.asarray(v, np.float64)
    out[k] = float(np.nanmean(v)) if np.isfinite(v).any() else None
    out[k + "_n"] = int(np.isfinite(v).sum())
  return out


def score(videos_u8: np.ndarray, prompts, fps: float, **kwargs) -> dict:
  dets = detectors.detect_batch(videos_u8, fps)
  tracks = [object_track(d, p, videos_u8.shape[2]) for d, p in zip(dets, prompts)]
  out = track_metrics(tracks, **kwargs)
  acc = accuracy.caption_accuracy(dets, list(prompts))
  out["accuracy_all"], out["accuracy_motion"] = acc.get("all"), acc.get("motion")
  return out


COLUMNS = [("boundary_pos_px", "pos err @boundary (px)"),
           ("interior_pos_px", "pos err inside (px)"),
           ("boundary_vel_px", "vel jump @boundary (px/fr)"),
           ("interior_vel_px", "vel jump mid-block-0 (px/fr)"),
           ("disp_spread_px", "disp. spread (px/fr)"), ("seen_frac", "object seen"),
           ("accuracy_motion", "motion acc."), ("accuracy_all", "caption acc. (all)"),
           ("seconds", "s / video")]


def markdown(rows: list) -> str:
  head = "| overlap | method | " + " | ".join(h for _, h in COLUMNS) + " |"
  lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
  for r in rows:
    cells = []
    for k, _ in COLUMNS:
      v = r["metrics"].get(k)
      cells.append("-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v))
    lines.append(f"| {r['overlap']} | {r['method']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  if not _DEMO_OUT.value:
    raise app.UsageError("--demo_out (the --out directory of a `make demo` run) is required.")
  config = demo.demo_config(os.path.join(ROOT, "configs", "demo.py"), _DEMO_OUT.value, 1.0)
  base = dict(cascade.stage_configs(config))["base"]
  overrides = {} if _NUM_STEPS.value is None else {"num_steps": _NUM_STEPS.value}
  stage = stage_lib.load_stage(base, os.path.join(_DEMO_OUT.value, "cascade", "base"),
                               devices=jax.devices()[:1])
  real = build.load_split_examples(base, "test", 8 * _NUM_PROMPTS.value)
  keep = [i for i, c in enumerate(real["caption"])
          if grammar.parse_caption(c)["objects"][0]["motion"] != "still"][:_NUM_PROMPTS.value]
  prompts = [real["caption"][i] for i in keep]
  fps, frames = float(base.fps), int(base.frames)
  print(f"{len(prompts)} prompts, base step {stage.step}, {frames} frames @ {fps:g} fps",
        flush=True)
  key = jax.random.key(_SEED.value)
  start = time.perf_counter()
  first = sampler.sample_stage(stage, key=jax.random.fold_in(key, 0), prompts=prompts,
                               **overrides)
  print(f"first block: {time.perf_counter() - start:.0f}s (with compile)", flush=True)
  real_u8 = cascade_eval.real_at_geometry(real["video"][keep], float(real["fps"][0]), base)
  rows = []
  meta = {"demo_out_step": stage.step, "num_prompts": len(prompts), "prompts": prompts,
          "num_frames": _NUM_FRAMES.value, "seed": _SEED.value,
          "num_steps": _NUM_STEPS.value or int(base.sample.num_steps),
          "sample_settings": {k: base.sample[k] for k in ("sampler", "guidance_weight", "clip")},
          "rows": rows}
  methods = [("replacement", 0.0)] if _REPLACEMENT.value else []
  methods += [("reconstruction", float(w)) for w in _WEIGHTS.value]
  for overlap in (int(o) for o in _OVERLAPS.value):
    ref = dict(boundaries=[], overlap=overlap, new=frames - overlap, first_block=frames)
    rows.append({"overlap": overlap, "method": "real clips (8 frames)",
                 "metrics": score(real_u8, prompts, fps, **ref)})
    rows.append({"overlap": overlap, "method": "first block (8 frames)",
                 "metrics": score(evaluate.to_uint8(first), prompts, fps, **ref)})
    for method, w in methods:
      start = time.perf_counter()
      videos, bounds = conditional.extend_video(
          stage, key=jax.random.fold_in(key, overlap), prompts=prompts,
          num_frames=_NUM_FRAMES.value, overlap=overlap, init_video=first, method=method,
          reconstruction_weight=w, **overrides)
      seconds = (time.perf_counter() - start) / len(prompts)
      m = score(evaluate.to_uint8(videos), prompts, fps, boundaries=bounds, overlap=overlap,
                new=frames - overlap, first_block=frames)
      m["seconds"] = seconds
      name = "replacement" if method == "replacement" else f"reconstruction w_r={w:g}"
      rows.append({"overlap": overlap, "method": name, "boundaries": bounds, "metrics": m})
      print(f"overlap {overlap} {name}: {json.dumps(m)}", flush=True)
      write_results(meta)   # after every method: a long run leaves what it has measured
  print(markdown(rows))


def write_results(meta: dict) -> None:
  os.makedirs(_OUT_DIR.value, exist_ok=True)
  with open(os.path.join(_OUT_DIR.value, "results.json"), "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=2)
  with open(os.path.join(_OUT_DIR.value, "results.md"), "w", encoding="utf-8") as f:
    f.write(markdown(meta["rows"]) + "\n")

if __name__ == "__main__":
  app.run(main)
