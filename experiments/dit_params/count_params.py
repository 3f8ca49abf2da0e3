"""Parameter counts of the paper-scale video transformers (vdm_jax/models/dit/presets.py), from
jax.eval_shape: nothing is allocated.

    JAX_PLATFORMS=cpu python -m experiments.dit_params.count_params \
        [--out experiments/dit_params/params.json]

Each preset is traced at a one-frame 2x2 latent (the parameters do not depend on the geometry)
and its leaf shapes summed; the table sets the count beside the reference implementation's
exact count and its published label, with the tokens one attention sees at the paper's latent
geometry. Prints Markdown and writes JSON.
"""
import argparse
import json
import platform
import time

import jax
import numpy as np

from vdm_jax.models import registry
from vdm_jax.models.dit import network
from vdm_jax.models.dit import presets


def rows():
  out = []
  for name, ref in presets.PAPER.items():
    cfg = presets.paper(name)
    fam = registry.family(cfg)
    start = time.time()
    tree = fam.abstract_params(frames=1, height=2, width=2, channels=ref["channels"],
                               text_length=4)
    n = int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))
    block = int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree["block0"])))
    spec = fam.spec
    out.append(dict(
        preset=name, ours=n, exact=ref["exact_params"], published=ref["published"],
        vs_exact=n / ref["exact_params"] - 1.0, per_block=block, depth=spec.depth,
        hidden_dim=spec.hidden_dim, num_heads=spec.num_heads, mlp_dim=spec.mlp_dim,
        attention_layout=spec.attention_layout, text_conditioning=spec.text_conditioning,
        modulation=spec.modulation, qk_norm=spec.qk_norm, patch_size=list(spec.patch_size),
        latent=[ref["frames"], ref["height"], ref["width"], ref["channels"]],
        tokens=network.token_count(spec, frames=ref["frames"], height=ref["height"],
                                   width=ref["width"], text_length=ref["text_length"]),
        trace_seconds=round(time.time() - start, 2)))
  return out


def table(rs):
  lines = ["| preset | layout / text | hidden x depth (heads, MLP) | ours | reference exact "
           "| published | ours vs exact | tokens (full attention) |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rs:
    lines.append(
        f"| {r['preset']} | {r['attention_layout']} / {r['text_conditioning']} | "
        f"{r['hidden_dim']} x {r['depth']} ({r['num_heads']}, {r['mlp_dim']}) | "
        f"{r['ours'] / 1e9:.3f}B | {r['exact'] / 1e9:.3f}B | {r['published']} | "
        f"{100 * r['vs_exact']:+.2f}% | {r['tokens']} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=None, help="write the rows as JSON here")
  args = parser.parse_args()
  rs = rows()
  print(table(rs))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(dict(machine=f"{platform.machine()} CPU, jax {jax.__version__}", rows=rs), f,
                indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
