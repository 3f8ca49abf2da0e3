"""Train-step time of the CPU-scale cascade stages on this machine (synthetic batches).

    JAX_PLATFORMS=cpu python -m experiments.cascade.step_time [--stages=base,tsr1,ssr1]
        [--batch=8] [--steps=5] [--out=experiments/cascade/step_time_cpu.json]

Builds each stage's real train step (loss, optimizer, EMA; vdm_jax.train) on a one-device mesh,
compiles it, runs one warm-up step and then times `--steps` steps (median). Prints and saves
seconds per step, compile seconds, parameters, XLA FLOPs per step and the machine's load
average, which matters on a shared machine: the same step takes 2-4x longer at load 8 on 2
cores than on an idle one.
"""
import json
import os
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

_STAGES = flags.DEFINE_list("stages", ["base", "tsr1", "ssr1"], "CPU stages to time.")
_BATCH = flags.DEFINE_integer("batch", 0, "Batch size (0: the stage config's).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per stage.")
_OUT = flags.DEFINE_string("out", "", "Write the results as JSON here.")


def _stage_batch(config, batch_size: int) -> dict:
  """A random batch of the training geometry (crop size when the stage trains on crops)."""
  from vdm_jax.models import registry  # pylint: disable=g-import-not-at-top
  from vdm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  g = pipeline.stage_geometry(config)
  c = config.copy_and_resolve_references()
  c.frames, c.height, c.width = g.window
  c.data.lowres_frames, c.data.lowres_height, c.data.lowres_width = (
      n // f for n, f in zip(g.window, g.factors))
  rng = np.random.default_rng(0)
  b = registry.family(c.model).example_batch(c, batch_size)
  return {k: (rng.uniform(-1, 1, v.shape).astype(v.dtype) if v.dtype == np.float32 else v)
          for k, v in b.items()}


def time_stage(config, *, batch_size: int, steps: int) -> dict:
  """Compiles the stage's train step and times it; returns a dict of figures."""
  from vdm_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  from vdm_jax.models import registry  # pylint: disable=g-import-not-at-top
  from vdm_jax.train import flops, objective, optimizer, state, step  # pylint: disable=g-import-not-at-top
  mesh = sharding_lib.create_mesh(config.sharding, devices=jax.devices()[:1])
  rules = sharding_lib.logical_rules(config.sharding)
  model = registry.family(config.model).module()
  batch = _stage_batch(config, batch_size)
  tx = optimizer.make_optimizer(config.train)
  init_fn = registry.family(config.model).init_fn(model, batch_like=batch)
  st, shardings = state.init_train_state(init_params_fn=init_fn, key=jax.random.key(0), tx=tx,
                                         mesh=mesh, rules=rules)
  batch_g = sharding_lib.host_to_global(batch, mesh, rules)
  fn = step.make_train_step(
      loss_fn=objective.make_loss_fn(config, model), tx=tx,
      lr_schedule=optimizer.learning_rate_schedule(config.train), train_cfg=config.train,
      seed=0, cond_drop_prob=0.1, mesh=mesh, rules=rules, state_shardings=shardings,
      batch_like=batch_g, constrain_activations=False)
  start = time.perf_counter()
  compiled = fn.lower(st, batch_g).compile()
  compile_s = time.perf_counter() - start
  st, m = compiled(st, batch_g)
  jax.block_until_ready(m)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    st, m = compiled(st, batch_g)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - start)
  return dict(batch_size=batch_size, train_shape=list(batch["video"].shape),
              params=state.param_count(st.params), compile_s=compile_s,
              step_s_median=statistics.median(times), step_s_all=times,
              gflops_per_step=flops.compiled_flops(compiled) / 1e9,
              load_avg_1m=os.getloadavg()[0])


def main(argv):
  del argv
  sys.path.insert(0, os.getcwd())
  from configs import imagen_video  # pylint: disable=g-import-not-at-top
  results = {"machine": f"{os.cpu_count()} CPU cores ({jax.devices()[0].platform})",
             "stages": {}}
  for name in _STAGES.value:
    config = imagen_video.stage_config(name, "cpu")
    r = time_stage(config, batch_size=_BATCH.value or int(config.train.batch_size),
                   steps=_STEPS.value)
    results["stages"][name] = r
    print(f"{name}: {r['train_shape']} {r['params']:,} params, compile {r['compile_s']:.0f}s, "
          f"step {r['step_s_median']:.2f}s (median of {len(r['step_s_all'])}), "
          f"{r['gflops_per_step']:.1f} GFLOP/step, load {r['load_avg_1m']:.1f}", flush=True)
  if _OUT.value:
    with open(_OUT.value, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  app.run(main)
