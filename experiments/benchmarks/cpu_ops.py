"""Where XLA's CPU backend spends a U-Net train step's convolution time: single operations,
forward and backward, against other ways to express them (and, given its interpreter, PyTorch).

    JAX_PLATFORMS=cpu taskset -c 0 python -m experiments.benchmarks.cpu_ops \
        [--torch_python=PEER_VENV/bin/python] [--out=experiments/benchmarks/cpu_ops.json]

Rows (float32, one thread: XLA_FLAGS --xla_cpu_multi_thread_eigen=false, torch
set_num_threads(1); pin the process with taskset for steady figures):

  conv3x3 fwd / dx / dw    a 3x3 'SAME' conv, 32 x 32 x 32 x 64 -> 128 (the U-Net's spatial
                           conv over B*T frames): forward, input gradient, weight gradient
  tconv 3d / 2d / shift    the ResBlocks' 3x1x1 temporal conv of 4 x 8 x 32 x 32 x 64, forward +
                           backward of a scalar loss, as a 3-D conv (flax nn.Conv), as a 2-D
                           conv over [B, T, H*W, C] (layers.TimeConv), as three time-shifted
                           matmuls
  matmul                   tanh(A @ B) @ B^T, 4096 x 256 x 1024

Each row is the median of 9 timed calls after a warm-up, block_until_ready on every call.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

_TORCH = r'''
import json, statistics, sys, time, torch
torch.set_num_threads(1)
F = torch.nn.functional
def t(f):
  f(); ts = []
  for _ in range(9):
    s = time.perf_counter(); f(); ts.append(time.perf_counter() - s)
  return statistics.median(ts) * 1e3
x = torch.randn(32, 64, 32, 32); w = torch.randn(128, 64, 3, 3) * 0.05
g = torch.randn(32, 128, 32, 32)
a = torch.randn(4096, 256); b = torch.randn(256, 1024)
v = torch.randn(4, 64, 8, 32, 32); k = (torch.randn(64, 64, 3, 1, 1) * 0.05).requires_grad_()
v.requires_grad_()
def tconv():
  loss = torch.tanh(F.conv3d(v, k, padding=(1, 0, 0))).pow(2).mean()
  torch.autograd.grad(loss, (v, k))
with torch.no_grad():
  out = {"conv3x3 fwd": t(lambda: F.conv2d(x, w, padding=1)),
         "matmul": t(lambda: torch.tanh(a @ b) @ b.T)}
out["conv3x3 dx"] = t(lambda: torch.nn.grad.conv2d_input(x.shape, w, g, padding=1))
out["conv3x3 dw"] = t(lambda: torch.nn.grad.conv2d_weight(x, w.shape, g, padding=1))
out["tconv 3d"] = t(tconv)
print(json.dumps({"torch": torch.__version__, "ms": out}))
'''


def _time(f, *args, repeats=9):
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(f(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(f(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times) * 1e3


def jax_rows() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vdm_jax.models import layers  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (32, 32, 32, 64))
  w = jax.random.normal(key, (3, 3, 64, 128)) * 0.05
  g = jax.random.normal(jax.random.PRNGKey(1), (32, 32, 32, 128))
  dn = ("NHWC", "HWIO", "NHWC")
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)
  out = {
      "conv3x3 fwd": _time(jax.jit(conv), x, w),
      "conv3x3 dx": _time(jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0]),
                          x, w, g),
      "conv3x3 dw": _time(jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0]),
                          x, w, g),
  }
  v = jax.random.normal(key, (4, 8, 32, 32, 64))

  def shifted(p, v):
    vp = jnp.pad(v, ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))
    kernel = p["params"]["kernel"]
    return sum(jnp.einsum("bthwc,co->bthwo", vp[:, i:i + v.shape[1]], kernel[i, 0, 0])
               for i in range(3)) + p["params"]["bias"]

  three_d = nn.Conv(64, (3, 1, 1), padding="SAME")
  two_d = layers.conv(64, (3, 1, 1))
  params = nn.meta.unbox(two_d.init(key, v))
  for name, apply in (("tconv 3d", three_d.apply), ("tconv 2d", two_d.apply),
                      ("tconv shift", shifted)):
    loss = lambda v, p, apply=apply: jnp.mean(jnp.tanh(apply(p, v)) ** 2)
    out[name] = _time(jax.jit(jax.grad(loss, argnums=(0, 1))), v, params)
  a = jax.random.normal(key, (4096, 256))
  b = jax.random.normal(key, (256, 1024))
  out["matmul"] = _time(jax.jit(lambda a, b: jnp.tanh(a @ b) @ b.T), a, b)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--torch_python", default="",
                      help="a Python interpreter with torch installed (never this project's)")
  parser.add_argument("--out", default="cpu_ops.json")
  args = parser.parse_args()
  flags = os.environ.get("XLA_FLAGS", "")
  if "--xla_cpu_multi_thread_eigen=false" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()
  from experiments.benchmarks import common  # pylint: disable=g-import-not-at-top
  results = {"machine": common.machine_info(), "xla_flags": os.environ["XLA_FLAGS"],
             "jax_ms": jax_rows()}
  if args.torch_python:
    proc = subprocess.run([args.torch_python, "-c", _TORCH], capture_output=True, text=True,
                          check=True)
    results.update({"torch_ms": json.loads(proc.stdout.strip().splitlines()[-1])["ms"]})
  torch_ms = results.get("torch_ms", {})
  print("| op | jax ms | torch ms | torch / jax |")
  print("|---|---|---|---|")
  for name, ms in results["jax_ms"].items():
    peer = torch_ms.get(name)
    print(f"| {name} | {ms:.1f} | " + (f"{peer:.1f} | {peer / ms:.2f} |" if peer else "- | - |"))
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  sys.exit(main())
