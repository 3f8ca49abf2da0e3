"""Paper-scale autoencoders: parameter counts against the reference implementations, and the
compiled memory of decoding a 49-frame 480x720 clip whole and in chunks. Abstract evaluation:
nothing is allocated (parameters and latents are shapes; XLA compiles and reports).

    JAX_PLATFORMS=cpu python -m experiments.vae.paper_scale \
        [--presets=sd,svd,cogvideox,wan2.1] [--chunks=1,2,4] \
        [--json=experiments/vae/paper_scale.json]

For each preset of `vdm_jax/models/vae/presets.PAPER`: our parameter count beside the
reference's exact count; the latents of a 49 x 480 x 720 clip (13 x 60 x 90 for the 3-D VAEs with
4x temporal compression, 49 x 60 x 90 for the per-frame ones); and XLA's temp + output bytes of
the decode, once for the whole clip in one call (`model.decode`) and once per chunk length of
`chunked.decode_chunked` (the first latent alone, then `chunk` latents per `lax.scan` step with
the causal cache carried). Float32 throughout, batch 1. XLA:CPU's buffer assignment is not
XLA:GPU's or XLA:TPU's: read the numbers as the activation footprint's order and the ratio
between whole and chunked, not as the exact bytes an accelerator would use.
"""
import argparse
import json
import os
import platform
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax.linen as nn  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from vdm_jax.models.vae import chunked  # pylint: disable=g-import-not-at-top,wrong-import-position
from vdm_jax.models.vae import presets  # pylint: disable=g-import-not-at-top,wrong-import-position
from vdm_jax.models.vae.network import AutoencoderKL  # pylint: disable=g-import-not-at-top,wrong-import-position

FRAMES, HEIGHT, WIDTH = 49, 480, 720
GIB = 2.0**30


def _abstract_params(model: AutoencoderKL):
  s = model.spec
  x = jax.ShapeDtypeStruct((1, 1 + s.temporal_factor, 16, 16, 3), jnp.float32)
  tree = jax.eval_shape(lambda x: model.init(
      {"params": jax.random.key(0), "sample": jax.random.key(1)}, x)["params"], x)
  return nn.unbox(tree)


def _whole_decode_bytes(model: AutoencoderKL, params, latent_shape) -> float:
  z = jax.ShapeDtypeStruct((1,) + tuple(latent_shape), jnp.float32)
  fn = jax.jit(lambda p, z: model.apply({"params": p}, z, method=AutoencoderKL.decode))
  mem = fn.lower(params, z).compile().memory_analysis()
  return float(mem.temp_size_in_bytes + mem.output_size_in_bytes)


def row(name: str, chunks) -> dict:
  pre = presets.PAPER[name]
  spec = presets.spec(pre.section)
  model = AutoencoderKL(spec)
  params = _abstract_params(model)
  count = int(sum(np.prod(a.shape) for a in jax.tree.leaves(params)))
  latent = spec.latent_shape(frames=FRAMES, height=HEIGHT, width=WIDTH)
  out = dict(preset=name, source=pre.source, ours=count, reference=pre.reference,
             vs_reference=count / pre.reference - 1.0, latent=list(latent),
             output_bytes=float(4 * FRAMES * HEIGHT * WIDTH * 3))
  start = time.time()
  out["whole_bytes"] = _whole_decode_bytes(model, params, latent)
  out["chunked_bytes"] = {str(c): b for c, b in chunked.decode_memory(
      model, params, latent_shape=latent, candidates=chunks).items()}
  out["compile_seconds"] = round(time.time() - start, 1)
  print(f"{name}: {count:,} parameters (reference {pre.reference:,}); decode whole "
        f"{out['whole_bytes'] / GIB:.2f} GiB, chunked "
        + ", ".join(f"{c}: {b / GIB:.2f} GiB" for c, b in out["chunked_bytes"].items())
        + f" ({out['compile_seconds']} s of compiling)", flush=True)
  return out


def table(rows) -> str:
  chunks = sorted({int(c) for r in rows for c in r["chunked_bytes"]})
  head = ("| preset | ours | reference | ours vs reference | latents (T', H', W', C') | whole clip "
          + "".join(f"| chunk {c} " for c in chunks) + "|")
  lines = [head, "|" + "---|" * (6 + len(chunks))]
  for r in rows:
    cells = [f"{r['chunked_bytes'][str(c)] / GIB:.2f} GiB" if str(c) in r["chunked_bytes"]
             else "" for c in chunks]
    lines.append(
        f"| {r['preset']} | {r['ours'] / 1e6:.2f}M | {r['reference'] / 1e6:.2f}M | "
        f"{100 * r['vs_reference']:+.2f}% | {' x '.join(map(str, r['latent']))} | "
        f"{r['whole_bytes'] / GIB:.2f} GiB | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--presets", default=",".join(presets.PAPER))
  ap.add_argument("--chunks", default="1,2,4")
  ap.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "paper_scale.json"))
  args = ap.parse_args()
  chunks = tuple(int(c) for c in args.chunks.split(","))
  rows = [row(n.strip(), chunks) for n in args.presets.split(",")]
  print(f"\nDecoding {FRAMES} x {HEIGHT} x {WIDTH} (float32, batch 1); XLA temp + output bytes "
        f"on {platform.machine()} CPU, jax {jax.__version__}\n")
  print(table(rows))
  with open(args.json, "w") as f:
    json.dump(dict(frames=FRAMES, height=HEIGHT, width=WIDTH, dtype="float32", batch=1,
                   backend=jax.default_backend(), machine=platform.machine(),
                   jax=jax.__version__, rows=rows), f, indent=1)
  print(f"\nwrote {args.json}")


if __name__ == "__main__":
  main()
