"""Side by side with the PyTorch peer: imagen-pytorch's Unet3D train step against ours.

    python experiments/benchmarks/peer_side_by_side.py --peer_python=<venv>/bin/python \\
        --peer_src=<dir with the unpacked imagen-pytorch wheel> [--rounds=6 --steps=2] \\
        [--geometry=8x32x32 --batch=4] [--out=peer_side_by_side_cpu.json] \\
        [--variant='before;repo=<another checkout>' --variant='no_ynn;xla_flags=--xla_...']

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

--variant adds more of our workers, each a name and what differs: `repo=` another checkout
of this project (say the commit before a change: `git worktree add /tmp/before <commit>`),
`xla_flags=` put before XLA_FLAGS, `args=` more worker_jax.py arguments (`--devices=2`:
data-parallel over two CPU devices, a thread each); every worker takes its turn in each round (the order
rotates), so before/after figures see the same machine load. --peer_python='' leaves the
peer out (variants against ours only).
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

  def __init__(self, name, cmd, env, cwd=ROOT):
    self.name = name
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True, env=env, cwd=cwd)
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
  p.add_argument("--peer_python", required=True, help="'' leaves the peer out")
  p.add_argument("--peer_src", default="")
  p.add_argument("--variant", action="append", default=[],
                 help="NAME[;repo=DIR][;xla_flags=FLAGS][;args=ARGS]: one more worker of ours")
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
  workers = {}
  if args.peer_python:
    workers["peer"] = Worker("peer", [args.peer_python, os.path.join(HERE, "peer",
                                                                     "worker_torch.py"),
                                      "--src", args.peer_src] + shape, env)
  workers["ours"] = Worker("ours", [sys.executable, os.path.join(HERE, "peer", "worker_jax.py")]
                           + shape, env)
  for spec in args.variant:
    name, *fields = spec.split(";")
    opts = dict(f.split("=", 1) for f in fields)
    unknown = set(opts) - {"repo", "xla_flags", "args"}
    if not name or name in workers or unknown:
      raise SystemExit(f"--variant={spec!r}: NAME[;repo=DIR][;xla_flags=FLAGS][;args=ARGS], "
                       "a new name")
    repo = os.path.abspath(opts.get("repo", ROOT))
    # The variant's flags first: XLA stops reading XLA_FLAGS at a word that is not a --flag.
    venv = dict(env, XLA_FLAGS=(opts.get("xla_flags", "") + " " + env.get("XLA_FLAGS", "")).strip())
    workers[name] = Worker(name, [sys.executable, os.path.join(repo, "experiments", "benchmarks",
                                                               "peer", "worker_jax.py")]
                           + shape + opts.get("args", "").split(),
                           venv, cwd=repo)
  names = list(workers)
  base = "peer" if "peer" in workers else "ours"
  rounds = []
  for r in range(args.rounds):
    order = names[r % len(names):] + names[:r % len(names)]
    times = {name: workers[name].run(args.steps) for name in order}
    row = {name: statistics.median(t) for name, t in times.items()}
    row["ratio"] = {name: row[base] / row[name] for name in names if name != base}
    rounds.append(dict(row, all=times))
    print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {row[n]:.2f} s" for n in names)
          + "; " + ", ".join(f"{base}/{n} {v:.3f}" for n, v in row["ratio"].items()),
          flush=True)
  for w in workers.values():
    w.close()
  step_s = {n: statistics.median(r[n] for r in rounds) for n in names}
  ratios = {n: [r["ratio"][n] for r in rounds] for n in names if n != base}
  summary = {
      "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} of {os.cpu_count()} "
                 f"CPUs usable, {platform.platform()}",
      "geometry": args.geometry, "batch": args.batch, "steps_per_round": args.steps,
      "variants": args.variant, "facts": {n: w.facts for n, w in workers.items()},
      "step_s": step_s, "baseline": base,
      "ratio": {n: {"median": statistics.median(v), "min": min(v), "max": max(v)}
                for n, v in ratios.items()},
      "rounds": rounds}
  print(f"| worker | params | s/step (median) | {base} / worker (range) |\n|---|---|---|---|")
  for n in names:
    rr = summary["ratio"].get(n)
    print(f"| {n} | {workers[n].facts['params'] / 1e6:.1f}M | {step_s[n]:.2f} | "
          + (f"{rr['median']:.3f} ({rr['min']:.3f}-{rr['max']:.3f}) |" if rr else "- |"))
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1)
  print(f"Wrote {args.out}")


if __name__ == "__main__":
  main()
