"""Runs `train_and_evaluate` in its own process for the loop / resume tests.

  python tests/train_worker.py WORKDIR OVERRIDES_JSON

OVERRIDES_JSON maps dotted config keys of configs/tiny.py to values. At the end the final
parameters and EMA are written to WORKDIR/final_params.npz (process 0). With
VDM_TEST_SIGTERM_WHILE_COMPILING=1 the process sends itself SIGTERM as the train step starts
compiling (a preemption that arrives during setup).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
from absl import logging  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from configs import tiny  # pylint: disable=g-import-not-at-top
from vdm_jax.train import loop  # pylint: disable=g-import-not-at-top


def make_config(overrides: dict):
  config = tiny.get_config()
  for key, value in overrides.items():
    node = config
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = tuple(value) if isinstance(value, list) else value
  return config


def _sigterm_while_compiling():
  import signal  # pylint: disable=g-import-not-at-top
  compile_fn = jax.stages.Lowered.compile

  def compile_after_sigterm(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return compile_fn(self, *args, **kwargs)
  jax.stages.Lowered.compile = compile_after_sigterm


def main(workdir, overrides):
  logging.set_verbosity(logging.INFO)
  if os.environ.get("VDM_TEST_SIGTERM_WHILE_COMPILING"):
    _sigterm_while_compiling()
  state = loop.train_and_evaluate(make_config(overrides), workdir)
  if jax.process_index() == 0:
    flat = {}
    for name, tree in (("params", state.params), ("ema", state.ema_params)):
      for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        flat[name + jax.tree_util.keystr(path)] = np.asarray(jax.device_get(leaf))
    np.savez(os.path.join(workdir, "final_params.npz"), **flat)


if __name__ == "__main__":
  main(sys.argv[1], json.loads(sys.argv[2]))
