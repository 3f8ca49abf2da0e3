"""The `sample` and `eval` modes of `python -m vdm_jax.main` for one trained stage.

    sample_from_workdir(config, workdir, ["a red circle moving left"])   # GIF + MP4 per prompt
    evaluate_workdir(config, workdir)                # eval.json + index.html under workdir/eval

Both load the EMA parameters of the workdir's latest checkpoint (`vdm_jax.sample.stage`) and
sample with the stage's `sample` settings (`vdm_jax.sample.sampler`). A cascade config's modes
are `vdm_jax.sample.cascade.sample_cascade` and `cascade_eval.evaluate_cascade`.
"""
import json
import os
import time
from typing import Optional, Sequence

from absl import logging
import jax
import numpy as np

from vdm_jax.cli import cascade_eval
from vdm_jax.data import build
from vdm_jax.eval import evaluate
from vdm_jax.eval import evaluators
from vdm_jax.media import gallery
from vdm_jax.media import writer
from vdm_jax.sample import sampler
from vdm_jax.sample import stage as stage_lib


def sample_from_workdir(config, workdir: str, prompts: Sequence[str], *,
                        out_dir: Optional[str] = None, seed: Optional[int] = None) -> list[str]:
  """The `sample` mode: one video per prompt from `workdir`'s latest EMA parameters, written as
  GIF and MP4 (with prompts.txt) under `out_dir` (default workdir/samples/cli)."""
  stage = stage_lib.load_stage(config, workdir)
  if stage.is_sr:
    raise ValueError(f"{config.stage} stages need a low-resolution input: sample them as part "
                     "of a cascade.")
  key = jax.random.key(int(config.seed if seed is None else seed))
  start = time.perf_counter()
  videos = sampler.sample_stage(stage, key=key, prompts=list(prompts))
  seconds = time.perf_counter() - start
  out_dir = out_dir or os.path.join(workdir, "samples", "cli")
  paths = writer.write_videos(out_dir, list(videos), fps=float(config.fps),
                              prompts=list(prompts))
  logging.info("Sampled %d videos in %.1fs; wrote %s.", len(videos), seconds, out_dir)
  print(f"Wrote {len(videos)} videos ({seconds:.1f}s) to {out_dir}")
  return paths


def evaluate_workdir(config, workdir: str, *, out_dir: Optional[str] = None,
                     num_videos: Optional[int] = None) -> dict:
  """The `eval` mode: samples the prompts of the first N held-out (test split) clips and scores
  them (caption accuracy, temporal consistency, FVD against those real clips, sampling time
  per video); writes eval.json and an index.html gallery under `out_dir` (default
  workdir/eval)."""
  n = int(num_videos or config.eval.num_videos)
  stage = stage_lib.load_stage(config, workdir)
  if stage.is_sr:
    raise ValueError("Evaluate SR stages as part of a cascade.")
  real = build.load_split_examples(config, "test", n)
  prompts = real["caption"]
  key = jax.random.key(int(config.seed) + 17)
  sampler.sample_stage(stage, key=key, prompts=prompts)  # compile once (cached), outside the timing
  start = time.perf_counter()
  videos = sampler.sample_stage(stage, key=key, prompts=prompts)
  per_video = (time.perf_counter() - start) / len(prompts)
  # The real clips at the stage's frame rate (a frame stride), its first frames, its size.
  real_videos = cascade_eval.real_at_geometry(real["video"], float(real["fps"][0]),
                                              stage_lib.video_config(config))
  out_dir = out_dir or os.path.join(workdir, "eval")
  os.makedirs(out_dir, exist_ok=True)
  results = evaluate.evaluate_videos(
      videos, prompts, real_videos=real_videos,
      fps=float(config.fps), metrics=evaluators.metrics_from_config(config.eval))
  results["seconds_per_video"] = per_video
  results["step"] = stage.step
  results["num_videos"] = len(prompts)
  with open(os.path.join(out_dir, "eval.json"), "w", encoding="utf-8") as f:
    json.dump(evaluate.jsonable(results), f, indent=2)
  entries = []
  gen_u8, real_u8 = evaluate.to_uint8(videos), real_videos
  for i, prompt in enumerate(prompts[:16]):
    g = gallery.write_gif(os.path.join(out_dir, f"gen_{i:03d}.gif"), gen_u8[i],
                          float(config.fps), scale=4)
    r = gallery.write_gif(os.path.join(out_dir, f"real_{i:03d}.gif"), real_u8[i],
                          float(config.fps), scale=4)
    entries.append({"prompt": prompt, "stages": [(config.stage, g)], "real": r})
  gallery.write_gallery(out_dir, entries, figures={"evaluation": _flat_figures(results)},
                        title=f"vdm_jax eval: {workdir}")
  print(f"Wrote {out_dir}/eval.json and index.html")
  return results


def _flat_figures(results: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in results.items():
    if isinstance(v, dict):
      out.update(_flat_figures(v, f"{prefix}{k}."))
    elif isinstance(v, (int, float, np.floating, np.integer, str, bool)):
      out[f"{prefix}{k}"] = v
  return out
