"""Parameter counts of the Make-A-Video stages of configs/make_a_video.py, from jax.eval_shape.

    JAX_PLATFORMS=cpu python -m experiments.make_a_video.count_params \
        [--out experiments/make_a_video/params.json]

Nothing is allocated: each stage's U-Net is traced on its geometry. The temporal parameters
(what inflation adds to the text-to-image U-Net, what `train.trainable='temporal'` trains)
are counted apart. Prints a Markdown table and writes JSON.
"""
import argparse
import json
import platform

from configs import make_a_video
from vdm_jax.models import inflation
from vdm_jax.models import registry
from vdm_jax.models.unet import spec as unet_spec


def stage_rows(scale):
  rows = []
  for name, (frames, height, width, fps) in make_a_video.GEOMETRY[scale].items():
    c = make_a_video.stage_config(name, scale)
    fam = registry.family(c.model)
    d = c.data
    low = None
    if fam.takes_lowres:   # time is never resampled inside the U-Net: 2 frames suffice
      low = (1, 2, int(d.lowres_height) or height, int(d.lowres_width) or width, 3)
    tree = fam.abstract_params(frames=min(frames, 2), height=height, width=width, lowres=low)
    flat = inflation.flat_paths(tree)
    size = lambda paths: int(sum(flat[p].size for p in paths))
    temporal = [p for p in flat if unet_spec.is_temporal_param(p)]
    rows.append(dict(stage=name, frames=frames, height=height, width=width, fps=fps,
                     params=size(flat), temporal_params=size(temporal),
                     base_channels=c.model.base_channels,
                     channel_mult=list(c.model.channel_mult),
                     pseudo3d_convs=bool(c.model.get("pseudo3d_convs", False)),
                     frame_mask_conditioning=bool(c.model.frame_mask_conditioning),
                     lowres_conditioning=c.model.lowres_conditioning))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--out", default="experiments/make_a_video/params.json")
  args = parser.parse_args()
  results = {"machine": f"{platform.machine()} CPU (jax.eval_shape, nothing allocated)",
             "scales": {s: stage_rows(s) for s in ("cpu", "paper")}}
  for scale, rows in results["scales"].items():
    print(f"\n{scale} scale\n")
    print("| stage | frames x H x W @ fps | parameters | of them temporal |")
    print("|---|---|---|---|")
    for r in rows:
      print(f"| {r['stage']} | {r['frames']} x {r['height']} x {r['width']} @ {r['fps']:g} | "
            f"{r['params'] / 1e6:,.1f}M | {r['temporal_params'] / 1e6:,.1f}M |")
    total = sum(r["params"] for r in rows if r["stage"] != "t2i")
    print(f"\nvideo stages total: {total / 1e9:.2f}B" if scale == "paper" else
          f"\nvideo stages total: {total / 1e6:.1f}M")
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
