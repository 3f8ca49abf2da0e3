"""The transformer-against-U-Net table from the recipe's result lines.

    python -m experiments.dit_params.unet_vs_dit RESULTS.jsonl [--variants=unet_eq,dit_eq] \\
        [--json experiments/dit_params/unet_vs_dit.json]

RESULTS.jsonl holds the lines `experiments/recipe/run.py --phase=eval --fvd` appended for the
two runs (one per evaluated checkpoint). Prints one markdown row per checkpoint, in order of
training FLOPs: steps, XLA's TFLOP per train step and in total, training CPU seconds, held-out
caption accuracy (64 test prompts), FVD, seconds per train step and per sampled video.
"""
import argparse
import json

KEYS = ("color", "shape", "size", "motion", "num_objects", "all")


def rows_of(path, variants):
  rows = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      r = json.loads(line)
      if r.get("variant") in variants and r.get("stage") == "base":
        rows.append(r)
  return sorted(rows, key=lambda r: (r["cost"]["train_tflop_per_step"] * r["step"]
                                     if r.get("cost", {}).get("train_tflop_per_step") else 0,
                                     r["variant"]))


def table(rows) -> str:
  head = ("| model | steps | TFLOP / step | train TFLOP | train CPU s | "
          + " | ".join(k.replace("num_objects", "one object") for k in KEYS)
          + " | FVD | s / step | s / video |")
  out = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in rows:
    cost = r.get("cost", {})
    acc = r["caption_accuracy"]
    flop = cost.get("train_tflop_per_step")
    name = "DiT (" + r["dit"] + ")" if r.get("dit") else "U-Net"
    out.append(
        f"| {name} | {r['step']} | {flop:.4f} | {flop * r['step']:.0f} | {r['cpu_s']:.0f} | "
        + " | ".join(f"{acc[k]:.2f}" for k in KEYS)
        + f" | {r.get('fvd', float('nan')):.0f} | {cost.get('train_s_per_step', float('nan')):.2f}"
        f" | {cost.get('sample_s_per_video', float('nan')):.2f} |")
  return "\n".join(out)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("results")
  parser.add_argument("--variants", default="unet_eq,dit_eq")
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  rows = rows_of(args.results, set(args.variants.split(",")))
  print(table(rows))
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
