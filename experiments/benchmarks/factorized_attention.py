"""Factorized space-time attention against full 3-D attention: step time and compiled memory.

    JAX_PLATFORMS=cpu python experiments/benchmarks/factorized_attention.py          # CPU sizes
    python experiments/benchmarks/factorized_attention.py --gpu [--impl cudnn]      # GPU sizes
    python experiments/benchmarks/factorized_attention.py --smoke                   # seconds

Both variants map a video x [B, T, H, W, C] to the same shape with a residual attention layer
and are differentiated with respect to their parameters and x (forward + backward):
  factorized  the U-Net's SpatialSelfAttention (each frame's H*W tokens) followed by its
              TemporalSelfAttention (each position's T frames, relative position bias);
  full        one attention over all T*H*W tokens of a clip.
For each shape the script reports the median step time after a warm-up (block_until_ready),
XLA's FLOP count (cost_analysis) and the compiled memory (memory_analysis: temporaries,
arguments, outputs), with full / factorized ratios; it names the machine and writes JSON. On
CPU only the ratios within one run mean something (DESIGN.md, performance method).
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax.models import attention_blocks
from vdm_jax.models import layers

CPU_SHAPES = ((1, 8, 16, 16), (1, 16, 16, 16), (1, 16, 24, 24))     # (B, T, H, W)
GPU_SHAPES = ((1, 16, 24, 40), (1, 16, 32, 32), (1, 32, 48, 80))
SMOKE_SHAPES = ((1, 4, 4, 4),)


class FullSpaceTimeAttention(nn.Module):
  """x + attention over all T*H*W positions of each clip (no factorization)."""
  num_heads: int
  head_dim: int
  num_groups: int
  implementation: str = "xla"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, t, h, w, c = x.shape
    tokens = layers.FrameGroupNorm(self.num_groups, self.dtype, name="norm")(x)
    tokens = tokens.reshape(b, t * h * w, c)
    out = attention_blocks.MultiHeadAttention(
        self.num_heads, self.head_dim, c, implementation=self.implementation,
        dtype=self.dtype, name="attention")(tokens, tokens)
    return x + out.reshape(x.shape).astype(x.dtype)


class FactorizedSpaceTimeAttention(nn.Module):
  """The U-Net's spatial then temporal self-attention blocks."""
  num_heads: int
  head_dim: int
  num_groups: int
  implementation: str = "xla"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(num_heads=self.num_heads, head_dim=self.head_dim, num_groups=self.num_groups,
              implementation=self.implementation, dtype=self.dtype)
    x = attention_blocks.SpatialSelfAttention(name="spatial", **kw)(x)
    is_image = jnp.zeros((x.shape[0],), jnp.bool_)
    return attention_blocks.TemporalSelfAttention(name="temporal", **kw)(x, is_image)


def machine_description():
  dev = jax.devices()[0]
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
    cpu = names[0] if names else cpu
  except OSError:
    pass
  return dict(platform=platform.platform(), processor=cpu, cpu_count=os.cpu_count(),
              backend=dev.platform, device_kind=dev.device_kind, device_count=jax.device_count(),
              jax=jax.__version__)


def measure(module, x, repeats):
  """Compiles forward+backward of sum(module(x)^2) and times it; returns a result dict."""
  params = jax.jit(module.init)(jax.random.key(0, impl="unsafe_rbg"), x)

  def loss(params, x):
    return jnp.sum(module.apply(params, x).astype(jnp.float32) ** 2)
  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  start = time.perf_counter()
  compiled = step.lower(params, x).compile()
  compile_s = time.perf_counter() - start
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  jax.block_until_ready(compiled(params, x))                      # warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, x))
    times.append(time.perf_counter() - start)
  return dict(
      step_ms=1e3 * statistics.median(times), step_ms_all=[1e3 * t for t in times],
      compile_s=compile_s, flops=float(cost.get("flops", float("nan"))) if cost else None,
      temp_bytes=int(mem.temp_size_in_bytes), argument_bytes=int(mem.argument_size_in_bytes),
      output_bytes=int(mem.output_size_in_bytes))


def run(shapes, *, channels, heads, dtype, impl, repeats):
  rows = []
  for b, t, h, w in shapes:
    x = jnp.asarray(np.random.default_rng(0).standard_normal((b, t, h, w, channels)), dtype)
    kw = dict(num_heads=heads, head_dim=channels // heads, num_groups=min(8, channels),
              implementation=impl, dtype=dtype)
    row = dict(batch=b, frames=t, height=h, width=w, channels=channels, heads=heads,
               tokens=t * h * w)
    for name, module in (("factorized", FactorizedSpaceTimeAttention(**kw)),
                         ("full", FullSpaceTimeAttention(**kw))):
      try:
        row[name] = measure(module, x, repeats)
      except Exception as e:  # pylint: disable=broad-except
        # A full-attention shape that does not fit is a result, not a crash.
        row[name] = dict(error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
      print(f"  measured {name} at {(b, t, h, w)}", file=sys.stderr, flush=True)
    f, g = row["factorized"], row["full"]
    if "error" not in f and "error" not in g:
      row["ratio_time"] = g["step_ms"] / f["step_ms"]
      row["ratio_temp_memory"] = g["temp_bytes"] / max(1, f["temp_bytes"])
      row["ratio_flops"] = (g["flops"] / f["flops"]) if f["flops"] else None
    rows.append(row)
  return rows


def _mb(n):
  return f"{n / 2**20:.1f}"


def table(rows):
  lines = ["| B x T x H x W (tokens) | variant | step ms (median) | step ms (min) | GFLOP | "
           "temp MiB | args+out MiB |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    shape = f"{r['batch']}x{r['frames']}x{r['height']}x{r['width']} ({r['tokens']})"
    for name in ("factorized", "full"):
      m = r[name]
      if "error" in m:
        lines.append(f"| {shape} | {name} | failed: {m['error']} | | | | |")
        continue
      gflop = f"{m['flops'] / 1e9:.2f}" if m["flops"] else "n/a"
      lines.append(f"| {shape} | {name} | {m['step_ms']:.1f} | {min(m['step_ms_all']):.1f} | "
                   f"{gflop} | "
                   f"{_mb(m['temp_bytes'])} | {_mb(m['argument_bytes'] + m['output_bytes'])} |")
    if "ratio_time" in r:
      flops = f"{r['ratio_flops']:.1f}x" if r.get("ratio_flops") else "n/a"
      lines.append(f"| {shape} | **full / factorized** | **{r['ratio_time']:.1f}x** | | "
                   f"**{flops}** | **{r['ratio_temp_memory']:.1f}x** | |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--smoke", action="store_true", help="one tiny shape, one repeat")
  parser.add_argument("--gpu", action="store_true", help="accelerator-sized shapes, bfloat16")
  parser.add_argument("--impl", default="xla", choices=("xla", "cudnn", "splash"))
  parser.add_argument("--channels", type=int, default=None)
  parser.add_argument("--heads", type=int, default=None)
  parser.add_argument("--repeats", type=int, default=None)
  parser.add_argument("--out", default=None, help="JSON path (default: next to this script; "
                      "--smoke writes to a temporary file)")
  args = parser.parse_args(argv)
  if args.smoke:
    shapes, channels, heads, repeats, dtype = SMOKE_SHAPES, 16, 2, 1, jnp.float32
  elif args.gpu:
    shapes, channels, heads, repeats, dtype = GPU_SHAPES, 256, 4, 10, jnp.bfloat16
  else:
    shapes, channels, heads, repeats, dtype = CPU_SHAPES, 64, 4, 5, jnp.float32
  channels = args.channels or channels
  heads = args.heads or heads
  repeats = args.repeats or repeats
  machine = machine_description()
  print(f"machine: {machine}")
  rows = run(shapes, channels=channels, heads=heads, dtype=dtype, impl=args.impl,
             repeats=repeats)
  print(table(rows))
  out = args.out
  if out is None:
    here = os.path.dirname(os.path.abspath(__file__))
    suffix = "gpu" if args.gpu else "cpu"
    out = (os.path.join(tempfile.gettempdir(), "factorized_attention_smoke.json") if args.smoke
           else os.path.join(here, f"factorized_attention_{suffix}.json"))
  result = dict(benchmark="factorized_attention", machine=machine, impl=args.impl,
                dtype=jnp.dtype(dtype).name, repeats=repeats, smoke=args.smoke, rows=rows)
  with open(out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {out}")
  return result


if __name__ == "__main__":
  main()
