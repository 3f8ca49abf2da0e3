"""The curve: held-out accuracy per attribute against training compute, per stage.

    python experiments/recipe/curve.py --results=experiments/recipe/results.jsonl \
        --variants=base:ref+base_long,tsr1:sr_res,ssr1:sr_res --out=experiments/recipe/curve

Reads the evaluations of `run.py` (one JSON line each) for the chosen variant of every stage
(several joined by `+`: a run and its continuation) and writes `<out>.json` (panel -> [{step,
cpu_hours, accuracy per attribute}]) and `<out>.png` (one panel per stage: accuracy against
CPU-hours of training, one line per attribute; the thresholds of the shipped cascade's issue
as dotted lines). Drawn with Pillow only.

A fine-tune started from another run's weights (`train.init_from`) counts its own steps and CPU
seconds from zero; `PANEL:VARIANTS@PARENT:STEP` puts it after that point of panel PARENT (its
steps and CPU-hours added, the branch point drawn as its first point). A panel named other
than a stage takes the stage before its first `_`:

    --variants=base:ref+base_long+base_long2,base_ft:ft_tb_attn@base:14000,tsr1:sr_res
"""
import argparse
import json

from PIL import Image, ImageDraw

ATTRIBUTES = ("color", "background", "num_objects", "size", "shape", "motion", "all")
COLOURS = {"color": (220, 40, 40), "background": (120, 120, 120), "num_objects": (40, 160, 40),
           "size": (200, 140, 0), "shape": (40, 90, 230), "motion": (200, 50, 200),
           "all": (0, 0, 0)}
THRESHOLDS = {"shape": 0.8, "motion": 0.8, "all": 0.6}


def parse_variants(spec: str) -> dict:
  """'panel:v1+v2[@parent:step],...' -> {panel: (stage, [variants], (parent, step) or None)}."""
  panels = {}
  for item in filter(None, spec.split(",")):
    panel, _, rest = item.partition(":")
    names, _, branch = rest.partition("@")
    parent = None
    if branch:
      parent_panel, _, step = branch.partition(":")
      if parent_panel not in panels:
        raise ValueError(f"--variants: {item!r} branches from {parent_panel!r}, which is not "
                         f"an earlier panel ({sorted(panels)})")
      parent = (parent_panel, int(step))
    if not names:
      raise ValueError(f"--variants: {item!r} names no variant (panel:variant[+variant])")
    panels[panel] = (panel.split("_")[0], names.split("+"), parent)
  return panels


def load(path: str, panels: dict) -> dict:
  curves = {panel: [] for panel in panels}
  with open(path, encoding="utf-8") as f:
    records = [json.loads(line) for line in f if line.strip()]
  for panel, (stage, names, parent) in panels.items():
    for r in records:
      if r["stage"] != stage or r["variant"] not in names:
        continue
      if any(item.startswith("sample.") for item in r.get("set", [])):
        continue   # read with other sampler settings: not a point of the training curve
      acc = r.get("caption_accuracy") or r.get("read") or {}
      curves[panel].append({
          "step": r["step"], "cpu_hours": round(r.get("cpu_s", 0.0) / 3600, 3),
          **{a: acc.get(a) for a in ATTRIBUTES if acc.get(a) is not None},
          **({"mse": r["mse"], "naive_mse": r["naive_mse"]} if "mse" in r else {})})
    curves[panel].sort(key=lambda p: p["step"])
    if parent is not None:
      start = [p for p in curves[parent[0]] if p["step"] == parent[1]]
      if not start:
        raise ValueError(f"panel {panel!r}: {parent[0]!r} has no point at step {parent[1]} "
                         f"(its steps: {[p['step'] for p in curves[parent[0]]]})")
      start = start[0]
      for p in curves[panel]:
        p["step"] += start["step"]
        p["cpu_hours"] = round(p["cpu_hours"] + start["cpu_hours"], 3)
      curves[panel].insert(0, dict(start, branch_point=True))
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
    # A branch panel's axis starts at its branch point; the others at zero.
    xmin = points[0]["cpu_hours"] if points and points[0].get("branch_point") else 0.0
    xmax = xmin + (max([p["cpu_hours"] for p in points] + [xmin + 1e-3]) - xmin) * 1.1
    for v in (0.0, 0.5, 1.0):
      yy = y0 + h - v * h
      d.text((x0 - 26, yy - 6), f"{v:.1f}", fill="black")
    for a, v in THRESHOLDS.items():
      yy = y0 + h - v * h
      for xx in range(x0, x0 + w, 6):
        d.point((xx, yy), fill=COLOURS[a])
    d.text((x0 + w - 40, y0 + h + 4), f"{xmax:.2f}", fill="black")
    d.text((x0, y0 + h + 4), f"{xmin:.2f}", fill="black")
    for k, a in enumerate(ATTRIBUTES):
      pts = [(x0 + (p["cpu_hours"] - xmin) / (xmax - xmin) * w, y0 + h - p[a] * h)
             for p in points if a in p]
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
  p.add_argument("--note", default="", help="Appended to the JSON's 'what'.")
  args = p.parse_args()
  panels = parse_variants(args.variants)
  variants = {panel: "+".join(names) + (f"@{parent[0]}:{parent[1]}" if parent else "")
              for panel, (_, names, parent) in panels.items()}
  curves = load(args.results, panels)
  with open(args.out + ".json", "w", encoding="utf-8") as f:
    json.dump({"machine": args.machine, "variants": variants,
               "what": "held-out accuracy (detectors) against training compute; base: 64 "
                       "held-out prompts sampled; SR stages: the real low-res test clips "
                       "super-resolved" + (f"; {args.note}" if args.note else ""),
               "curves": curves}, f, indent=2)
  draw(curves, args.out + ".png", f"held-out accuracy vs training CPU-hours ({args.machine})")
  print(json.dumps(curves, indent=1))


if __name__ == "__main__":
  main()
