"""Compiled memory per device of a CogVideoX-5B training step at 49 frames of 480x720 on a
64-device mesh, with and without sequence parallelism: abstract evaluation, nothing allocated.

    python -m experiments.dit_params.memory [--modes=fsdp,ulysses,ring] \
        [--json=experiments/dit_params/memory.json]

Runs on a CPU with 64 fake devices. The model is `presets.paper("cogvideox-5b")` with bf16
compute, block rematerialization and scanned blocks, on the latents of a 49-frame 480x720 clip
(13 x 60 x 90 x 16 after CogVideoX's VAE: 17,550 video tokens + 226 text tokens); T5-XXL text
(4096 wide). The
real train step (loss, grads, Adam, EMA) is lowered on abstract inputs and compiled by XLA's
CPU backend, and `memory_analysis()` gives argument, output and temp (activations, workspace)
bytes per device. Modes:
  fsdp     mesh (data, fsdp, tensor, sequence) = (1, 64, 1, 1), 64 clips (one per device)
  ulysses  (1, 8, 1, 8), 8 clips: each clip's tokens over 8 devices, heads around attention
  ring     (1, 8, 1, 8), 8 clips: ring attention over the 8 sequence devices
The batch has no `is_image` entry (a video dataset; an image row's frame mask would add a
[B, 1, N, N] mask). XLA:CPU's buffer assignment is not XLA:GPU's: treat temp bytes as an
estimate of the activation footprint.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=64").strip()

import json  # pylint: disable=g-import-not-at-top,wrong-import-position
import platform  # pylint: disable=g-import-not-at-top,wrong-import-position
import time  # pylint: disable=g-import-not-at-top,wrong-import-position

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import dit as dit_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments.cascade import plan  # pylint: disable=g-import-not-at-top,wrong-import-position
from vdm_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from vdm_jax.models import registry  # pylint: disable=g-import-not-at-top,wrong-import-position
from vdm_jax.models.dit import presets  # pylint: disable=g-import-not-at-top,wrong-import-position
from vdm_jax.train import objective, optimizer, state, step  # pylint: disable=g-import-not-at-top,wrong-import-position

_MODES = flags.DEFINE_list("modes", ["fsdp", "ulysses", "ring"], "Meshes to compile.")
_OUT = flags.DEFINE_string("json", "", "Write the results as JSON here.")
MODES = {"fsdp": ((1, 64, 1, 1), "none", 64), "ulysses": ((1, 8, 1, 8), "ulysses", 8),
         "ring": ((1, 8, 1, 8), "ring", 8)}
GB = 1e9


def config(mode):
  mesh_shape, sp, batch = MODES[mode]
  c = dit_config.get_config()
  ref = presets.PAPER["cogvideox-5b"]
  c.model = presets.paper("cogvideox-5b", remat="block", scan_blocks=True)
  c.frames, c.height, c.width, c.channels = (ref["frames"], ref["height"], ref["width"],
                                             ref["channels"])
  c.text.max_length = ref["text_length"]
  c.train.batch_size = batch
  c.sharding.mesh_shape = mesh_shape
  c.sharding.sequence_parallel = sp
  return c


def measure(mode):
  c = config(mode)
  model = registry.family(c.model).module()
  tx = optimizer.make_optimizer(c.train, c.model)
  rules = sharding_lib.logical_rules(c.sharding)
  mesh = sharding_lib.create_mesh(c.sharding)
  batch = {k: v for k, v in plan._abstract_batch(c, mesh, rules).items() if k != "is_image"}  # pylint: disable=protected-access
  init_fn = registry.family(c.model).init_fn(model, batch_like=batch)
  target, shardings = state.abstract_train_state(init_params_fn=init_fn, key=jax.random.key(0),
                                                 tx=tx, mesh=mesh, rules=rules)
  fn = step.make_train_step(
      loss_fn=objective.make_loss_fn(c, model), tx=tx,
      lr_schedule=optimizer.learning_rate_schedule(c.train), train_cfg=c.train, seed=0,
      cond_drop_prob=0.1, mesh=mesh, rules=rules, state_shardings=shardings,
      batch_like=batch, constrain_activations=True)
  start = time.perf_counter()
  compiled = fn.lower(target, batch).compile()
  m = compiled.memory_analysis()
  out = dict(mode=mode, mesh=list(MODES[mode][0]), global_batch=MODES[mode][2],
             state_gb_per_device=plan._per_device_bytes(target) / GB,  # pylint: disable=protected-access
             compile_s=round(time.perf_counter() - start, 1))
  for key in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
              "alias_size_in_bytes"):
    out[key.replace("_size_in_bytes", "_gb")] = getattr(m, key, 0) / GB
  out["peak_gb_estimate"] = out["argument_gb"] + out["output_gb"] + out["temp_gb"] - out["alias_gb"]
  return out


def main(argv):
  del argv
  results = dict(machine=f"{platform.machine()} CPU, {jax.device_count()} fake devices, "
                         f"jax {jax.__version__}", model="cogvideox-5b", rows=[])
  print("| mode | mesh (data, fsdp, tensor, sequence) | clips | state GB/dev | temp GB/dev "
        "| peak GB/dev | compile s |\n|---|---|---|---|---|---|---|", flush=True)
  for mode in _MODES.value:
    r = measure(mode)
    results["rows"].append(r)
    print(f"| {mode} | {tuple(r['mesh'])} | {r['global_batch']} | "
          f"{r['state_gb_per_device']:.2f} | {r['temp_gb']:.2f} | {r['peak_gb_estimate']:.2f} "
          f"| {r['compile_s']:.0f} |", flush=True)
    if _OUT.value:
      with open(_OUT.value, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
