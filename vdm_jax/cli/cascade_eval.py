"""Evaluating a cascade on held-out prompts: every stage scored, one gallery page.

    results = evaluate_cascade(config, root, out_dir="eval")   # the `eval` mode of a cascade

For the first N clips of the test split (their captions are the prompts), the cascade samples
every stage; each stage's videos are read by the moving-shapes detectors (caption accuracy
per attribute, temporal consistency), the final videos are compared with the real clips at the
final geometry (FVD with I3D), and the detectors' accuracy on those real clips is reported as
the ceiling. Accuracy is also split into regular and held-out (compositional) prompts.
`out_dir` gets eval.json and index.html: per prompt, a GIF of every stage beside the real clip.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Optional, Sequence

import numpy as np

from vdm_jax.data import build
from vdm_jax.data.moving_shapes import accuracy
from vdm_jax.data.moving_shapes import consistency
from vdm_jax.data.moving_shapes import detectors
from vdm_jax.data.moving_shapes import grammar
from vdm_jax.data.moving_shapes import render
from vdm_jax.eval import evaluate
from vdm_jax.eval import evaluators
from vdm_jax.eval import fvd
from vdm_jax.media import gallery
from vdm_jax.sample import cascade as cascade_lib
from vdm_jax.sample import stage as stage_lib

GALLERY_SCALE = 4     # GIF pixels per video pixel of the final stage


def spec_for_prompt(prompt: str, *, frames: int, height: int, width: int, fps: float,
                    seed: int = 0):
  """A moving-shapes ClipSpec that `prompt` describes (a random start position from `seed`),
  or None when the prompt is outside the one-object caption grammar."""
  try:
    parsed = grammar.parse_caption(prompt)
  except ValueError:
    return None
  if len(parsed["objects"]) != 1 or parsed["objects"][0]["motion"] is None:
    return None
  obj = parsed["objects"][0]
  words = [obj[k] for k in ("shape", "color", "size", "motion", "speed") if obj[k]]
  return grammar.sample_spec(  # a held-out combo fixes every attribute of object 0
      np.random.default_rng(seed), frames=frames, height=height, width=width, fps=fps,
      num_objects=1, held_out=[tuple(words) + (parsed["background"],)],
      include_held_out=True)


def real_clip_for_prompt(prompt: str, *, frames: int, height: int, width: int, fps: float,
                         seed: int = 0) -> Optional[np.ndarray]:
  """A rendered clip uint8 [T, H, W, 3] of `spec_for_prompt` (None outside the grammar)."""
  spec = spec_for_prompt(prompt, frames=frames, height=height, width=width, fps=fps, seed=seed)
  return None if spec is None else render.render(spec)


# The real clips at a stage's geometry (kept here for the callers that import them from this module).
real_at_geometry = evaluate.real_at_geometry
resize_like = evaluate.resize_like


def _scale(stage_config, final_config) -> int:
  return max(1, GALLERY_SCALE * int(final_config.height) // int(stage_config.height))


def gallery_entries(out_dir: str, cascade: cascade_lib.Cascade, videos: dict,
                    prompts: Sequence[str], real: Optional[Sequence[Optional[np.ndarray]]],
                    prefix: str, limit: int = 16) -> list[dict]:
  """Writes GIFs of every stage (each scaled to the final size on screen) and of the real clip
  for the first `limit` prompts; returns `gallery.write_gallery` entries."""
  final = stage_lib.video_config(cascade.final.config)
  entries = []
  for i, prompt in enumerate(list(prompts)[:limit]):
    stages = []
    for name, stage in zip(cascade.names, cascade.stages):
      if name not in videos:
        continue
      c = stage_lib.video_config(stage.config)
      label = f"{name}: {c.frames}x{c.height}x{c.width} @{c.fps:g}fps"
      path = os.path.join(out_dir, "gifs", f"{prefix}{i:03d}_{name}.gif")
      stages.append((label, gallery.write_gif(path, evaluate.to_uint8(videos[name][i]),
                                              float(c.fps), scale=_scale(c, final))))
    entry: dict[str, Any] = {"prompt": prompt, "stages": stages}
    if real is not None:
      clip = real[i]
      entry["real"] = None if clip is None else gallery.write_gif(
          os.path.join(out_dir, "gifs", f"{prefix}{i:03d}_real.gif"), clip, float(final.fps),
          scale=GALLERY_SCALE)
    entries.append(entry)
  return entries


def read_videos(videos: np.ndarray, prompts: Sequence[str], fps: float,
                held_out: Optional[np.ndarray] = None) -> dict:
  """Detector scores of videos [N, T, H, W, 3] (float in [-1, 1] or uint8) against their
  prompts: caption accuracy (all, and split into regular / held-out prompts when `held_out`
  [N] bool is given) and temporal consistency. The detectors run once per video."""
  videos = evaluate.to_uint8(videos)
  dets = detectors.detect_batch(videos, fps)
  motion = videos.shape[1] > 1
  out = {"caption_accuracy": accuracy.caption_accuracy(dets, list(prompts), with_motion=motion),
         "consistency": consistency.summarize(
             [consistency.clip_consistency(v, d) for v, d in zip(videos, dets)])}
  if held_out is not None:
    for part, mask in (("regular", ~held_out), ("held_out", held_out)):
      if mask.any():
        out[f"caption_accuracy_{part}"] = accuracy.caption_accuracy(
            [d for d, m in zip(dets, mask) if m], [p for p, m in zip(prompts, mask) if m],
            with_motion=motion)
  return out


def score_stages(cascade: cascade_lib.Cascade, videos: dict, prompts: Sequence[str], *,
                 real_final: np.ndarray, held_out: Optional[np.ndarray] = None,
                 compute_fvd: bool = True, detect: bool = True) -> dict:
  """Detector scores of every stage's videos and the real clips' scores (the ceiling), when
  `detect` (the `moving_shapes` evaluator), and the FVD of the final stage against
  `real_final` (uint8 [N, T, H, W, 3] at the final geometry), when `compute_fvd`."""
  final = cascade.final.config
  out: dict[str, Any] = {"stages": {}}
  for name, stage in zip(cascade.names, cascade.stages):
    if detect and name in videos:
      out["stages"][name] = read_videos(videos[name], prompts, float(stage.config.fps),
                                        held_out)
  if detect:
    out["real"] = read_videos(real_final, prompts, float(final.fps), held_out)
  last = cascade.names[-1]
  if compute_fvd and last in videos:
    extractor = fvd.extractor_from_config(cascade.final.config.eval)
    out.update(fvd.fvd_of(evaluate.to_uint8(videos[last]), real_final, extractor,
                          bool(final.eval.get("fvd_repeat_short", True))))
  return evaluate.jsonable(out)


def accuracy_table(scores: dict) -> dict:
  """{row: {attribute: accuracy}} for the gallery: every stage, then the real clips."""
  rows = {}
  for name, r in scores["stages"].items():
    rows[name] = {k: v for k, v in r["caption_accuracy"].items() if k != "num_clips"}
    for part in ("regular", "held_out"):
      sub = r.get(f"caption_accuracy_{part}")
      if sub:
        rows[f"{name} ({part} prompts)"] = {k: v for k, v in sub.items() if k != "num_clips"}
  for key, label in (("caption_accuracy", "real clips (detector ceiling)"),
                     ("caption_accuracy_held_out", "real clips (held_out prompts)")):
    if scores.get("real", {}).get(key):
      rows[label] = {k: v for k, v in scores["real"][key].items() if k != "num_clips"}
  return rows


def score_held_out(config, cascade: cascade_lib.Cascade, *, num_videos: Optional[int] = None,
                   batch_size: int = 0) -> tuple[dict, dict, list, np.ndarray]:
  """Samples the first `num_videos` (default `eval.num_videos`) test prompts through `cascade`
  and scores them (`score_stages`, plus counts, sampling time per video and checkpoint steps).
  Returns (scores, {stage: videos}, prompts, the real clips at the final geometry)."""
  final = stage_lib.video_config(cascade.final.config)
  n = int(num_videos or config.eval.num_videos)
  real = build.load_split_examples(final, "test", n)
  prompts = list(real["caption"])
  held = np.asarray(real.get("labels", {}).get("held_out", np.zeros(len(prompts))), bool)
  start = time.perf_counter()
  videos = cascade.sample(prompts, batch_size=batch_size)
  seconds = time.perf_counter() - start
  real_final = real_at_geometry(real["video"], float(real["fps"][0]), final)
  metrics = evaluators.metrics_from_config(config.eval)
  scores = score_stages(cascade, videos, prompts, real_final=real_final, held_out=held,
                        compute_fvd="fvd" in metrics, detect="moving_shapes" in metrics)
  scores.update(num_videos=len(prompts), num_held_out=int(held.sum()),
                sample_seconds=seconds, seconds_per_video=seconds / len(prompts),
                steps={n_: s.step for n_, s in zip(cascade.names, cascade.stages)})
  return scores, videos, prompts, real_final


def evaluate_cascade(config, root: str, *, out_dir: Optional[str] = None,
                     num_videos: Optional[int] = None,
                     cascade: Optional[cascade_lib.Cascade] = None,
                     batch_size: int = 0, extra_entries: Sequence[dict] = (),
                     extra_figures: Optional[dict] = None, title: Optional[str] = None) -> dict:
  """The `eval` mode of a cascade config (see the module docstring). `extra_entries` and
  `extra_figures` are added to the gallery page (the demo's own prompts and timings)."""
  cascade = cascade or cascade_lib.Cascade.from_config(config, root)
  scores, videos, prompts, real_final = score_held_out(config, cascade, num_videos=num_videos,
                                                       batch_size=batch_size)
  out_dir = out_dir or os.path.join(root, "eval")
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "eval.json"), "w", encoding="utf-8") as f:
    json.dump(scores, f, indent=2)
  entries = list(extra_entries) + gallery_entries(out_dir, cascade, videos, prompts,
                                                  list(real_final), prefix="test_")
  figures = {"caption accuracy (detectors), per stage": accuracy_table(scores),
             "final stage": {k: scores.get(k) for k in ("fvd", "fvd_num_videos", "fvd_note",
                                                         "num_videos", "num_held_out",
                                                         "seconds_per_video")
                             if scores.get(k) is not None},
             "checkpoint steps": scores["steps"]}
  figures.update(extra_figures or {})
  page = gallery.write_gallery(out_dir, entries, figures=figures,
                               title=title or f"vdm_jax cascade: {' -> '.join(cascade.names)}")
  print(f"Wrote {out_dir}/eval.json and {page}", flush=True)
  return scores
