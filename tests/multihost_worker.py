"""One process of the multi-host test: trains the stand-in model for a few steps on a fixed
global batch and writes its losses (and a checkpoint round trip) as JSON.

  python tests/multihost_worker.py OUT.json NUM_PROCESSES PROCESS_ID PORT CKPT_DIR

Run with XLA_FLAGS=--xla_force_host_platform_device_count=<local devices>.
"""
import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # pylint: disable=g-import-not-at-top

jax.config.update("jax_cpu_collectives_implementation", "gloo")

from configs import default  # pylint: disable=g-import-not-at-top
import grain  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
from vdm_jax import sharding  # pylint: disable=g-import-not-at-top
from vdm_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
from vdm_jax.train import optimizer as opt  # pylint: disable=g-import-not-at-top
from vdm_jax.train import preemption  # pylint: disable=g-import-not-at-top
from vdm_jax.train import state as st  # pylint: disable=g-import-not-at-top
from vdm_jax.train import step as sp  # pylint: disable=g-import-not-at-top
import train_testlib as tl  # pylint: disable=g-import-not-at-top

STEPS = 3


def local_rows(global_batch: dict, mesh, rules) -> dict:
  """This process's rows of the global batch, in the order the batch sharding lays them out."""
  n = next(iter(global_batch.values())).shape[0]
  spec = sharding.batch_sharding(mesh, rules, 1)
  starts = sorted({idx[0].start or 0 for d, idx in spec.devices_indices_map((n,)).items()
                   if d.process_index == jax.process_index()})
  size = n // sharding.data_parallel_size(mesh, rules)
  rows = np.concatenate([np.arange(s, s + size) for s in starts])
  return {k: v[rows] for k, v in global_batch.items()}


def main(out, num_processes, process_id, port, ckpt_dir):
  config = default.get_config()
  config.sharding.mesh_shape = (2, 2, 1)
  if num_processes > 1:
    config.sharding.coordinator_address = f"127.0.0.1:{port}"
    config.sharding.num_processes = num_processes
    config.sharding.process_id = process_id
  assert sharding.maybe_initialize_distributed(config) == (num_processes > 1)
  assert jax.process_count() == num_processes and jax.device_count() == 4
  mesh = sharding.create_mesh(config.sharding)
  rules = sharding.logical_rules(config.sharding)
  model = tl.TinyDenoiser()
  batch = tl.tiny_batch(batch=8)
  tx = opt.make_optimizer(config.train)
  kw = dict(init_params_fn=tl.init_params_fn(model, batch), key=jax.random.key(0), tx=tx,
            mesh=mesh, rules=rules)
  state, shardings = st.init_train_state(**kw)
  global_batch = sharding.host_to_global(local_rows(batch, mesh, rules), mesh, rules)
  fn = sp.make_train_step(loss_fn=tl.tiny_loss_fn(model), tx=tx,
                          lr_schedule=opt.learning_rate_schedule(config.train),
                          train_cfg=config.train, seed=0, cond_drop_prob=0.25, mesh=mesh,
                          rules=rules, state_shardings=shardings, batch_like=global_batch)
  losses = []
  for _ in range(STEPS):
    state, metrics = fn(state, global_batch)
    losses.append(float(np.asarray(metrics["loss"].addressable_data(0))))
  param_sum = jax.jit(lambda p: sum(x.sum() for x in jax.tree.leaves(p)),
                      out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  total = float(np.asarray(param_sum(state.params).addressable_data(0)))

  # Every process joins the save and the restore; each keeps its own iterator position.
  it = iter(grain.MapDataset.range(100).to_iter_dataset())
  for _ in range(2 + process_id):
    next(it)
  ckpt = ckpt_lib.Checkpointer(ckpt_dir)
  ckpt.save(STEPS, state, it, config)
  ckpt.wait()
  target, _ = st.abstract_train_state(**kw)
  fresh = iter(grain.MapDataset.range(100).to_iter_dataset())
  restored = ckpt.restore(STEPS, target_state=target, data_iter=fresh, config=config)
  ckpt.close()
  restored_total = float(np.asarray(param_sum(restored.params).addressable_data(0)))
  # SIGTERM to the last process only: every process must agree to stop.
  watcher = preemption.PreemptionWatcher()
  before = watcher.should_stop()
  if process_id == num_processes - 1:
    os.kill(os.getpid(), signal.SIGTERM)
  after = watcher.should_stop()
  watcher.close()
  with open(out, "w", encoding="utf-8") as f:
    json.dump({"preempt": [before, after, watcher.signalled], "losses": losses,
               "param_sum": total, "restored_param_sum": restored_total,
               "next_element": int(next(fresh)), "process_count": jax.process_count()}, f)


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
