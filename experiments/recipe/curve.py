"""The curve: held-out accuracy per attribute against training compute, per stage.

    python experiments/recipe/curve.py --results=experiments/recipe/results.jsonl \
        --variants=base:ref+base_long,tsr1:sr_res,ssr1:sr_res --out=experiments/recipe/curve

Reads the evaluations of `run.py` (one JSON line each) for the chosen variant of every stage
(several joined by `+`: a run and its continuation)
and writes `<out>.json` (stage -> [{step, cpu_hours, accuracy per attribute}]) and `<out>.png`
(one panel per stage: accuracy against CPU-hours of training, one line per attribute; the
thresholds of the shipped cascade's issue as dotted lines). Drawn with Pillow only.
"""
import argparse
import json

from PIL import Image, ImageDraw

ATTRIBUTES = ("color", "background", "num_objects", "size", "shape", "motion", "all")
COLOURS = {"color": (220, 40, 40), "background": (120, 120, 120), "num_objects": (40, 160, 40),
           "size": (200, 140, 0), "shape": (40, 90, 230), "motion": (200, 50, 200),
           "all": (0, 0, 0)}
THRESHOLDS = {"shape": 0.8, "motion": 0.8, "all": 0.6}


def load(path: str, variants: dict) -> dict:
  curves = {stage: [] for stage in variants}
  with open(path, encoding="utf-8") as f:
    for line in f:
      r = json.loads(line)
      if r["variant"] not in variants.get(r["stage"], "").split("+"):
        continue
      if any(item.startswith("sample.") for item in r.get("set", [])):
        continue   # read with other sampler settings: not a point of the training curve
      acc = r.get("caption_accuracy") or r.get("read") or {}
      curves[r["stage"]].append({
          "step": r["step"], "cpu_hours": round(r.get("cpu_s", 0.0) / 3600, 3),
          **{a: acc.get(a) for a in ATTRIBUTES if acc.get(a) is not None},
          **({"mse": r["mse"], "naive_mse": r["naive_mse"]} if "mse" in r else {})})
  for stage in curves:
    curves[stage].sort(key=lambda p: p["step"])
  return curves


def draw(curves: dict, path: str, title: str) -> None:
  panel_w, panel_h, pad = 360, 260, 40
  img = Image.new("RGB", (panel_w * len(curves) + pad, panel_h + 2 * pad + 20), "white")
  d = ImageDraw.Draw(img)
  d.text((pad, 8), title, fill="black")
  for i, (stage, points) in enumerate(curves.items()):
    x0, y0 = pad + i * panel_w, pad + 10
    w, h = panel_w - pad, panel_h - pad
    d.rectangle([x0, y0, x0 + w, y0 + h], outline="black")
    d.text((x0 + 4, y0 - 14), f"{stage} (x: CPU-hours, y: accuracy)", fill="black")
    xmax = max([p["cpu_hours"] for p in points] + [1e-3]) * 1.1
    for v in (0.0, 0.5, 1.0):
      yy = y0 + h - v * h
      d.text((x0 - 26, yy - 6), f"{v:.1f}", fill="black")
    for a, v in THRESHOLDS.items():
      yy = y0 + h - v * h
      for xx in range(x0, x0 + w, 6):
        d.point((xx, yy), fill=COLOURS[a])
    d.text((x0 + w - 40, y0 + h + 4), f"{xmax:.2f}", fill="black")
    for k, a in enumerate(ATTRIBUTES):
      pts = [(x0 + p["cpu_hours"] / xmax * w, y0 + h - p[a] * h) for p in points if a in p]
      if len(pts) > 1:
        d.line(pts, fill=COLOURS[a], width=2)
      for px, py in pts:
        d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=COLOURS[a])
      if i == 0:
        d.text((x0 + 6 + 50 * (k % 7), y0 + h + 16), a[:6], fill=COLOURS[a])
  img.save(path)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--results", default="experiments/recipe/results.jsonl")
  p.add_argument("--variants", default="base:ref,tsr1:sr_res,ssr1:sr_res",
                 help="stage:variant,... (which run of each stage)")
  p.add_argument("--out", default="experiments/recipe/curve")
  p.add_argument("--machine", default="2-core x86-64 CPU (one core per run)")
  args = p.parse_args()
  variants = dict(item.split(":") for item in args.variants.split(","))
  curves = load(args.results, variants)
  with open(args.out + ".json", "w", encoding="utf-8") as f:
    json.dump({"machine": args.machine, "variants": variants,
               "what": "held-out accuracy (detectors) against training compute; base: 64 "
                       "held-out prompts sampled; SR stages: the real low-res test clips "
                       "super-resolved", "curves": curves}, f, indent=2)
  draw(curves, args.out + ".png", f"held-out accuracy vs training CPU-hours ({args.machine})")
  print(json.dumps(curves, indent=1))


if __name__ == "__main__":
  main()
