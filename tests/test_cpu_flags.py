"""vdm_jax.cpu_flags: the measured XLA CPU defaults reach XLA, in front of the user's flags,
never over them, and not at all when turned off."""
import os
import subprocess
import sys

from vdm_jax import cpu_flags

_PROBE = r"""
import jax, jax.numpy as jnp
x = jnp.ones((8, 32, 32, 64)); w = jnp.ones((3, 3, 64, 64)); a = jnp.ones((512, 256))
f = jax.jit(lambda x, w, a: (jax.lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")), a @ a.T))
hlo = f.lower(x, w, a).compile().as_text()
print(len(jax.devices()), "ynn_fusion" in hlo)
"""


def _probe(xla_flags: str):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags)
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                       timeout=300, check=True).stdout.split()
  return int(out[-2]), out[-1] == "True"


def test_defaults_go_first_and_never_replace_the_users_flags():
  env = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}
  added = cpu_flags.apply(env)
  assert added == [f"{k}={v}" for k, v in cpu_flags.DEFAULTS.items()]
  assert env["XLA_FLAGS"] == " ".join(added) + " --xla_cpu_multi_thread_eigen=false"
  assert cpu_flags.apply(env) == []                       # applying twice adds nothing
  name = next(iter(cpu_flags.DEFAULTS))
  mine = {"XLA_FLAGS": f"{name}=+individual_dot"}
  assert cpu_flags.apply(mine) == [] and mine["XLA_FLAGS"] == f"{name}=+individual_dot"
  empty = {}
  cpu_flags.apply(empty)
  assert empty["XLA_FLAGS"] == " ".join(added)
  for off in ("off", "0", "false", "none"):
    env = {"VDM_JAX_CPU_FLAGS": off, "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}
    assert cpu_flags.apply(env) == [] and env["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=false"


def test_xla_reads_the_defaults_and_every_flag_after_them():
  """Without the defaults XLA:CPU hands the conv and the dot to YNNPACK; with them it does not,
  and a flag given after them still takes effect (XLA stops at a word that is not a flag)."""
  assert _probe("--xla_force_host_platform_device_count=2") == (2, True)
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  cpu_flags.apply(env)
  assert _probe(env["XLA_FLAGS"]) == (2, False)
