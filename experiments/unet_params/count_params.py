"""Parameter counts of the seven Imagen-Video-scale U-Net stages, from jax.eval_shape.

    JAX_PLATFORMS=cpu python experiments/unet_params/count_params.py \
        [--out experiments/unet_params/params.json]

No parameter is allocated: `jax.eval_shape(model.init)` traces each stage at its paper
geometry (Imagen Video Fig. 6) with T5-XXL text embeddings (4096 wide), and the leaf shapes are
summed. Prints a Markdown table next to the published sizes and writes JSON.
"""
import argparse
import json
import platform
import time

import jax
import numpy as np

from vdm_jax.models import registry
from vdm_jax.models.unet import presets as unet_presets
from vdm_jax.models.unet import spec as unet_spec


def stage_rows():
  rows = []
  for name, geo in unet_presets.IMAGEN_VIDEO_STAGES.items():
    cfg = unet_presets.imagen_video_stage(name)
    spec = unet_spec.UNetSpec.from_config(cfg)
    start = time.time()
    tree = registry.family(cfg).abstract_params(frames=geo["frames"], height=geo["height"],
                                                width=geo["width"],
                                                lowres=unet_presets.lowres_shape(name))
    parts = breakdown(tree)
    n = sum(parts.values())
    rows.append(dict(
        stage=name, frames=geo["frames"], width=geo["width"], height=geo["height"],
        fps=geo["fps"], published=geo["published_params"], ours=n,
        ratio=n / geo["published_params"], base_channels=spec.base_channels,
        channel_mult=list(spec.channel_mult), num_res_blocks=spec.num_res_blocks,
        spatial_attention=list(spec.spatial_attention),
        temporal_mixing=list(spec.temporal_mixing),
        temporal_conv_in_resblock=spec.temporal_conv_in_resblock,
        text_cross_attention=spec.text_cross_attention,
        lowres_conditioning=spec.lowres_conditioning, breakdown=parts,
        trace_seconds=time.time() - start))
  return rows


CATEGORIES = (  # first match wins, on the parameter's path
    ("temporal_attention", "temporal_attn"),
    ("temporal_conv", "temporal"),
    ("text_cross_attention", "cross_attn"),
    ("spatial_attention", "spatial_attn"),
    ("conditioning", "cond/"),
    ("resblocks_and_rest", ""),
)


def breakdown(tree):
  """Parameter count per category (see CATEGORIES) of an abstract parameter tree."""
  parts = {name: 0 for name, _ in CATEGORIES}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    p = "/".join(str(getattr(k, "key", k)) for k in path)
    for name, key in CATEGORIES:
      if key in p:
        parts[name] += int(np.prod(leaf.shape))
        break
  return parts


def breakdown_table(rows):
  names = [name for name, _ in CATEGORIES]
  lines = ["| stage | " + " | ".join(n.replace("_", " ") for n in names) + " |",
           "|---|" + "---|" * len(names)]
  for r in rows:
    cells = [f"{100 * r['breakdown'][n] / r['ours']:.1f}%" for n in names]
    lines.append(f"| {r['stage']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _b(n):
  return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def table(rows):
  lines = ["| stage | frames x W x H | fps | published | ours | ours / published | "
           "base ch x mult, blocks | spatial attn levels | temporal |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    attn = "".join("A" if a else "-" for a in r["spatial_attention"])
    temporal = ("attention" if r["temporal_mixing"][0] == "attention"
                else "conv" + (" + in ResBlocks" if r["temporal_conv_in_resblock"] else ""))
    lines.append(
        f"| {r['stage']} | {r['frames']}x{r['width']}x{r['height']} | {r['fps']} | "
        f"{_b(r['published'])} | {_b(r['ours'])} | {r['ratio']:.3f} | "
        f"{r['base_channels']} x {tuple(r['channel_mult'])}, {r['num_res_blocks']} | {attn} | "
        f"{temporal} |")
  pub = sum(r["published"] for r in rows)
  ours = sum(r["ours"] for r in rows)
  lines.append(f"| **total** | | | {_b(pub)} (paper: 11.6B) | {_b(ours)} | {ours / pub:.3f} "
               "| | | |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="experiments/unet_params/params.json")
  args = parser.parse_args()
  rows = stage_rows()
  print(table(rows))
  print()
  print(breakdown_table(rows))
  result = dict(machine=platform.platform(), jax=jax.__version__,
                method="jax.eval_shape(SpaceTimeUNet.init) at each stage's geometry",
                stages=rows, total_ours=sum(r["ours"] for r in rows),
                total_published=unet_presets.IMAGEN_VIDEO_TOTAL_PARAMS)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
