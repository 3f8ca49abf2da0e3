"""Side by side with the PyTorch peer: imagen-pytorch's Unet3D train step against ours.

    python experiments/benchmarks/peer_side_by_side.py --peer_python=<venv>/bin/python \\
        --peer_src=<dir with the unpacked imagen-pytorch wheel> [--rounds=6 --steps=2] \\
        [--geometry=8x32x32 --batch=4] [--out=peer_side_by_side_cpu.json]

The peer runs in its own virtual environment (torch is never a dependency of vdm_jax):

    python -m venv peerenv && peerenv/bin/pip install torch==2.13.0 einops tqdm numpy
    peerenv/bin/pip download --no-deps imagen-pytorch==2.1.0 -d wheels && unzip wheels/*.whl -d src

Both train steps live in long-running worker processes (peer/worker_torch.py,
peer/worker_jax.py) built and warmed up once; then, round after round, each runs --steps
timed steps in turn (the one that starts alternating), so that a change in the machine's
load hits both. The configuration is the peer's Unet3D(dim=64, dim_mults=(1, 2, 4),
num_resnet_blocks=2, layer_attns=False, layer_cross_attns=True) and ours at the same widths,
blocks, temporal convolutions and attention and text cross-attention per level, no spatial
self-attention (worker_jax.peer_equal_config), float32, forward + backward + optimizer, on
random data and 16 text tokens of 384 features. Printed: per round the median step time of
each and the ratio peer / ours (> 1: ours is faster); written as JSON with the machine.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


class Worker:
  """A worker process speaking the one-line JSON protocol of peer/worker_*.py."""

  def __init__(self, name, cmd, env):
    self.name = name
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    self.facts = self._reply()

  def _reply(self):
    """The next JSON line (libraries may print other lines, e.g. the peer's advice)."""
    while True:
      line = self.proc.stdout.readline()
      if not line:
        raise SystemExit(f"the {self.name} worker stopped (exit {self.proc.wait()})")
      if line.startswith("{"):
        return json.loads(line)

  def run(self, steps):
    self.proc.stdin.write(f"run {steps}\n")
    self.proc.stdin.flush()
    return self._reply()["times"]

  def close(self):
    self.proc.stdin.close()
    self.proc.wait(timeout=60)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--peer_python", required=True)
  p.add_argument("--peer_src", required=True)
  p.add_argument("--geometry", default="8x32x32", help="frames x height x width")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--rounds", type=int, default=6)
  p.add_argument("--steps", type=int, default=2)
  p.add_argument("--out", default=os.path.join(HERE, "peer_side_by_side_cpu.json"))
  args = p.parse_args()
  frames, height, width = (int(v) for v in args.geometry.split("x"))
  if height != width:
    raise SystemExit("--geometry: the peer's Unet3D takes square frames")
  shape = ["--frames", str(frames), "--size", str(height), "--batch", str(args.batch)]
  env = dict(os.environ)
  env.setdefault("JAX_PLATFORMS", "cpu")
  workers = {
      "peer": Worker("peer", [args.peer_python, os.path.join(HERE, "peer", "worker_torch.py"),
                              "--src", args.peer_src] + shape, env),
      "ours": Worker("ours", [sys.executable, os.path.join(HERE, "peer", "worker_jax.py")]
                     + shape, env),
  }
  rounds = []
  for r in range(args.rounds):
    order = ["peer", "ours"] if r % 2 == 0 else ["ours", "peer"]
    times = {name: workers[name].run(args.steps) for name in order}
    row = {name: statistics.median(t) for name, t in times.items()}
    row["ratio"] = row["peer"] / row["ours"]
    rounds.append(dict(row, all=times))
    print(f"round {r + 1}/{args.rounds}: peer {row['peer']:.2f} s, ours {row['ours']:.2f} s, "
          f"peer/ours {row['ratio']:.3f}", flush=True)
  for w in workers.values():
    w.close()
  ratios = [r["ratio"] for r in rounds]
  summary = {
      "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} of {os.cpu_count()} "
                 f"CPUs usable, {platform.platform()}",
      "geometry": args.geometry, "batch": args.batch, "steps_per_round": args.steps,
      "peer": workers["peer"].facts, "ours": workers["ours"].facts,
      "peer_step_s": statistics.median(r["peer"] for r in rounds),
      "ours_step_s": statistics.median(r["ours"] for r in rounds),
      "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
      "ratio_max": max(ratios), "rounds": rounds}
  print(f"| geometry | batch | peer params | our params | peer s/step | our s/step | "
        f"peer/ours (range) |\n|---|---|---|---|---|---|---|\n| {args.geometry} | {args.batch} "
        f"| {summary['peer']['params'] / 1e6:.1f}M | {summary['ours']['params'] / 1e6:.1f}M | "
        f"{summary['peer_step_s']:.2f} | {summary['ours_step_s']:.2f} | "
        f"{summary['ratio_median']:.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |")
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1)
  print(f"Wrote {args.out}")


if __name__ == "__main__":
  main()
