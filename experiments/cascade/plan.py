"""Mesh / sharding plan and per-device memory of the seven paper-scale Imagen Video stages.

    python -m experiments.cascade.plan [--stages=base,...] [--compile] \
        [--out=experiments/cascade/plan.json]

Runs on a CPU with 8 fake devices standing in for one 8-GPU host (H100, 80 GB each). For every
stage of configs/imagen_video.py:stage=<name>,scale=paper:
  1. parameter count and train-state bytes from `jax.eval_shape` (nothing allocated): fp32
     params + Adam moments + EMA = 16 bytes/param, gradients 4 more while stepping;
  2. the plan: the smallest FSDP degree (a power of two up to 8) whose per-device train state
     fits a quarter of the 80 GB, the rest of the 8 devices data parallel, batch 1 per device;
     per-device state bytes from the shard shapes of the config's shardings on that mesh;
  3. with --compile: the real train step (loss, grads, Adam, EMA; bf16 compute, block remat)
     lowered for that mesh on abstract inputs at the stage's FULL geometry and compiled by XLA
     (CPU backend), and its `memory_analysis()`: argument, output, temp (activations and
     workspace) and alias bytes per device. XLA:CPU's buffer assignment is not XLA:GPU's, so
     treat temp bytes as an estimate of the activation footprint, not a promise.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8").strip()

import json  # pylint: disable=g-import-not-at-top,wrong-import-position
import sys  # pylint: disable=g-import-not-at-top,wrong-import-position
import time  # pylint: disable=g-import-not-at-top,wrong-import-position

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

_STAGES = flags.DEFINE_list("stages", ["base", "tsr1", "ssr1", "ssr2", "tsr2", "tsr3", "ssr3"],
                            "Paper-scale stages to plan.")
_COMPILE = flags.DEFINE_bool("compile", False, "Also compile the train step for memory_analysis.")
_OUT = flags.DEFINE_string("out", "", "Write the plan as JSON here.")
DEVICE_GB = 80.0        # H100 HBM
STATE_SHARE = 0.25      # of HBM for params + optimizer + EMA; the rest: activations, grads
GB = 1e9


def choose_mesh(state_bytes: float, devices: int = 8) -> tuple:
  """(data, fsdp, tensor): the smallest FSDP degree whose state shard fits STATE_SHARE."""
  fsdp = 1
  while fsdp < devices and state_bytes / fsdp > STATE_SHARE * DEVICE_GB * GB:
    fsdp *= 2
  return (devices // fsdp, fsdp, 1)


def _per_device_bytes(tree) -> float:
  """Bytes of one device's shards of a tree of ShapeDtypeStructs carrying shardings."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shard = leaf.sharding.shard_shape(leaf.shape)
    total += int(np.prod(shard)) * np.dtype(leaf.dtype).itemsize
  return float(total)


def _abstract_batch(config, mesh, rules):
  from vdm_jax.models import registry  # pylint: disable=g-import-not-at-top
  from vdm_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  from vdm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  g = pipeline.stage_geometry(config)   # train on the crop window where the stage crops
  c = config.copy_and_resolve_references()
  c.frames, c.height, c.width = g.window
  c.data.lowres_frames, c.data.lowres_height, c.data.lowres_width = (
      n // f for n, f in zip(g.window, g.factors))
  batch = registry.family(c.model).example_batch(c, int(config.train.batch_size))
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                  sharding=sharding_lib.batch_sharding(mesh, rules, v.ndim))
          for k, v in batch.items()}


def plan_stage(name: str, compile_step: bool) -> dict:
  """The plan and memory figures of one paper-scale stage (see the module docstring)."""
  sys.path.insert(0, os.getcwd())
  from configs import imagen_video  # pylint: disable=g-import-not-at-top
  from vdm_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  from vdm_jax.models import registry  # pylint: disable=g-import-not-at-top
  from vdm_jax.train import objective, optimizer, state, step  # pylint: disable=g-import-not-at-top
  config = imagen_video.stage_config(name, "paper")
  model = registry.family(config.model).module()
  tx = optimizer.make_optimizer(config.train)
  rules = sharding_lib.logical_rules(config.sharding)
  single = config.sharding.copy_and_resolve_references()
  single.mesh_shape = (1, 1, 1)
  one = sharding_lib.create_mesh(single, jax.devices()[:1])
  batch1 = _abstract_batch(config, one, rules)
  init_fn = registry.family(config.model).init_fn(model, batch_like=batch1)
  whole, _ = state.abstract_train_state(init_params_fn=init_fn, key=jax.random.key(0), tx=tx,
                                        mesh=one, rules=rules)
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(whole.params))
  state_bytes = _per_device_bytes(whole)
  mesh_shape = choose_mesh(state_bytes)
  out = dict(stage=name, geometry=[config.frames, config.height, config.width, config.fps],
             params=params, state_gb=state_bytes / GB, grads_gb=4 * params / GB,
             mesh=dict(zip(("data", "fsdp", "tensor"), mesh_shape)),
             config_mesh=list(config.sharding.mesh_shape),
             batch_per_device=1)
  c = config.copy_and_resolve_references()
  c.sharding.mesh_shape = mesh_shape
  c.train.batch_size = 8   # one example per device
  mesh = sharding_lib.create_mesh(c.sharding)
  target, shardings = state.abstract_train_state(init_params_fn=init_fn, key=jax.random.key(0),
                                                 tx=tx, mesh=mesh, rules=rules)
  out["state_gb_per_device"] = _per_device_bytes(target) / GB
  out["grads_gb_per_device"] = _per_device_bytes(target.params) / GB   # fp32, sharded as params
  if compile_step:
    batch = _abstract_batch(c, mesh, rules)
    out["train_shape"] = list(batch["video"].shape)
    fn = step.make_train_step(
        loss_fn=objective.make_loss_fn(c, model), tx=tx,
        lr_schedule=optimizer.learning_rate_schedule(c.train), train_cfg=c.train, seed=0,
        cond_drop_prob=0.1, mesh=mesh, rules=rules, state_shardings=shardings,
        batch_like=batch, constrain_activations=False)
    start = time.perf_counter()
    compiled = fn.lower(target, batch).compile()
    out["compile_s"] = time.perf_counter() - start
    m = compiled.memory_analysis()
    for key in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                "alias_size_in_bytes", "generated_code_size_in_bytes"):
      out[key.replace("_size_in_bytes", "_gb")] = getattr(m, key, 0) / GB
    out["peak_gb_estimate"] = (out["argument_gb"] + out["output_gb"] + out["temp_gb"]
                               - out["alias_gb"])
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    out["tflop_per_device_step"] = float((analysis or {}).get("flops", 0.0)) / 1e12
  return out


def main(argv):
  del argv
  results = {"machine": "CPU, 8 fake devices standing in for one 8x H100 (80 GB) host",
             "device_gb": DEVICE_GB, "state_share": STATE_SHARE, "stages": {}}
  for name in _STAGES.value:
    r = plan_stage(name, _COMPILE.value)
    results["stages"][name] = r
    line = (f"{name}: {r['params'] / 1e9:.2f}B params, state {r['state_gb']:.1f} GB -> mesh "
            f"{r['mesh']}, {r['state_gb_per_device']:.1f} GB/device")
    if "temp_gb" in r:
      line += (f"; XLA: args {r['argument_gb']:.1f} + temp {r['temp_gb']:.1f} GB/device "
               f"(peak ~{r['peak_gb_estimate']:.1f} GB), {r['tflop_per_device_step']:.1f} "
               f"TFLOP/device/step, compiled in {r['compile_s']:.0f}s")
    print(line, flush=True)
    if _OUT.value:
      with open(_OUT.value, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
  app.run(main)
