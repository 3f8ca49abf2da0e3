"""Caption accuracy of the moving-shapes detectors on rendered clips and on pure noise.

Renders `--num_clips` clips per geometry with `grammar.sample_spec` + `render.render`, reads them
back with `detectors.detect` and scores them with `accuracy` (all in `vdm_jax.data.moving_shapes`);
also scores uniform-noise videos against the same prompts (chance level). Prints a markdown
table and writes `results.json` next to this file (or `--out`).

  JAX_PLATFORMS=cpu .venv/bin/python experiments/detectors/measure_accuracy.py --num_clips 1000

"Ambiguous" clips hold a bouncing object that meets no frame edge during the clip and moves
within `--ambiguous_deg` degrees of a diagonal: its pixels are those of a diagonal motion, so no
detector can tell (see the README). `--bounce_margin_deg M` re-draws bouncing directions at least
M degrees away from the diagonals (a what-if for the renderer; default 0 = as rendered).
"""
import argparse
import collections
import dataclasses
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from vdm_jax.data.moving_shapes import accuracy  # pylint: disable=g-import-not-at-top,wrong-import-position
from vdm_jax.data.moving_shapes import detectors  # pylint: disable=g-import-not-at-top,wrong-import-position
from vdm_jax.data.moving_shapes import grammar  # pylint: disable=g-import-not-at-top,wrong-import-position
from vdm_jax.data.moving_shapes import render  # pylint: disable=g-import-not-at-top,wrong-import-position

# name -> (height, width, frames, fps, image)
SETTINGS = {
    "16x16x8 (base stage)": (16, 16, 8, 8.0, False),
    "24x24x12": (24, 24, 12, 8.0, False),
    "32x32x16 (data source)": (32, 32, 16, 8.0, False),
    "32x48x16 (non-square)": (32, 48, 16, 8.0, False),
    "64x64x16 (SSR)": (64, 64, 16, 8.0, False),
    "64x64x32 @16fps (TSR)": (64, 64, 32, 16.0, False),
    "32x32 images": (32, 32, 1, 8.0, True),
}


def _diagonal_deviation(o: grammar.ObjectSpec) -> float:
  angle = math.degrees(math.atan2(o.vy, o.vx))
  return abs(angle % 90.0 - 45.0)


def is_ambiguous(spec: grammar.ClipSpec, max_deg: float) -> bool:
  """A bouncing object that never reflects in the clip and moves (nearly) diagonally."""
  if spec.frames < 2:
    return False
  t = np.arange(spec.frames) / spec.fps
  centers = grammar.object_centers(spec)
  for n, o in enumerate(spec.objects):
    if o.motion != "bouncing":
      continue
    straight = np.stack([o.x0 + o.vx * t, o.y0 + o.vy * t], 1)
    if np.allclose(centers[:, n], straight, atol=1e-9) and _diagonal_deviation(o) <= max_deg:
      return True
  return False


def _away_from_diagonals(rng, spec: grammar.ClipSpec, margin: float) -> grammar.ClipSpec:
  """Re-draws bouncing directions uniformly in [25, 45 - m] U [45 + m, 65] degrees off an axis."""
  objects = []
  for o in spec.objects:
    if o.motion == "bouncing" and _diagonal_deviation(o) < margin:
      speed = math.hypot(o.vx, o.vy)
      off = rng.uniform(25.0, 45.0 - margin)
      off = off if rng.random() < 0.5 else 90.0 - off
      quadrant = math.floor(math.degrees(math.atan2(o.vy, o.vx)) / 90.0)
      a = math.radians(90.0 * quadrant + off)
      o = dataclasses.replace(o, vx=speed * math.cos(a), vy=speed * math.sin(a))
    objects.append(o)
  return dataclasses.replace(spec, objects=tuple(objects))


def measure(name, geometry, num_clips, seed, ambiguous_deg, bounce_margin_deg):
  """Accuracy on rendered clips (all / unambiguous) and on uniform noise."""
  height, width, frames, fps, image = geometry
  rng = np.random.default_rng(seed)
  noise_rng = np.random.default_rng(seed + 1)
  preds, specs, noise_preds, ambiguous = [], [], [], []
  errors = collections.Counter()
  start = time.time()
  for _ in range(num_clips):
    spec = grammar.sample_spec(rng, frames=frames, height=height, width=width, fps=fps,
                                  image=image)
    if bounce_margin_deg > 0:
      spec = _away_from_diagonals(rng, spec, bounce_margin_deg)
    det = detectors.detect(render.render(spec), fps)
    preds.append(det)
    specs.append(spec)
    ambiguous.append(is_ambiguous(spec, ambiguous_deg))
    target = accuracy.as_target(spec)
    for t, p in zip(target["objects"], accuracy.match_objects(
        det.attributes()["objects"], target["objects"])):
      for a, v in t.items():
        if (v is not None or (a == "speed" and t["motion"] == "still")) and (
            p is None or p.get(a) != v):
          errors[f"{a}: {v} -> {p.get(a) if p else 'missing'}"] += 1
    noise = noise_rng.integers(0, 256, (spec.frames, height, width, 3), dtype=np.uint8)
    noise_preds.append(detectors.detect(noise, fps))
  seconds = (time.time() - start) / num_clips
  clear = [i for i, a in enumerate(ambiguous) if not a]
  return dict(
      setting=name, height=height, width=width, frames=frames, fps=fps, num_clips=num_clips,
      seconds_per_clip=seconds,
      clips=accuracy.caption_accuracy(preds, specs),
      num_ambiguous=int(sum(ambiguous)),
      unambiguous=accuracy.caption_accuracy([preds[i] for i in clear], [specs[i] for i in clear]),
      noise=accuracy.caption_accuracy(noise_preds, specs),
      errors=dict(errors.most_common(10)))


def _table(results, key):
  cols = accuracy.ATTRIBUTES + ("all",)
  lines = ["| setting | clips | " + " | ".join(cols) + " |",
           "|---|---:|" + "---:|" * len(cols)]
  for r in results:
    acc = r[key]
    cells = " | ".join(f"{100 * acc[c]:.1f}" if c in acc else "-" for c in cols)
    lines.append(f"| {r['setting']} | {acc['num_clips']} | {cells} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_clips", type=int, default=1000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--ambiguous_deg", type=float, default=5.0)
  parser.add_argument("--bounce_margin_deg", type=float, default=0.0)
  parser.add_argument("--settings", default="", help="comma-separated substrings of settings")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results.json"))
  args = parser.parse_args()
  chosen = {k: v for k, v in SETTINGS.items()
            if not args.settings or any(s in k for s in args.settings.split(","))}
  results = []
  for name, geometry in chosen.items():
    r = measure(name, geometry, args.num_clips, args.seed, args.ambiguous_deg,
                args.bounce_margin_deg)
    results.append(r)
    print(f"{name}: all {100 * r['clips']['all']:.2f}% (unambiguous "
          f"{100 * r['unambiguous']['all']:.2f}%, {r['num_ambiguous']} ambiguous), noise "
          f"{100 * r['noise']['all']:.2f}%, {r['seconds_per_clip'] * 1e3:.0f} ms/clip; "
          f"errors {r['errors']}", flush=True)
  print("\nRendered clips (accuracy %):\n" + _table(results, "clips"))
  print("\nRendered clips without ambiguous bouncing objects (%):\n"
        + _table(results, "unambiguous"))
  print("\nUniform noise videos against the same prompts (%):\n" + _table(results, "noise"))
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(dict(args=vars(args), results=results), f, indent=2)


if __name__ == "__main__":
  main()
