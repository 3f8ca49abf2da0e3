"""Mesh creation, logical-axis sharding of parameters, and mesh-independence of the loss."""
import chex
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import default
from vdm_jax import sharding
from vdm_jax.models import axes
from vdm_jax.train import optimizer as opt
from vdm_jax.train import state as st
from vdm_jax.train import step as sp

import train_testlib as tl


def _config(mesh_shape):
  c = default.get_config()
  c.sharding.mesh_shape = mesh_shape
  c.train.grad_accum_steps = 1
  return c


@pytest.mark.parametrize("shape,expected", [((-1, 1, 1), (8, 1, 1, 1)),
                                            ((2, -1, 1), (2, 4, 1, 1)),
                                            ((2, 2, 2), (2, 2, 2, 1)), ((1, 1, -1), (1, 1, 8, 1)),
                                            ((2, 1, 1, -1), (2, 1, 1, 4))])
def test_resolve_mesh_shape(shape, expected):
  assert sharding.resolve_mesh_shape(shape, 8) == expected


@pytest.mark.parametrize("shape,message", [
    ((2, 2, 1), "covers 4 devices but there are 8"),
    ((3, -1, 1), "needs a multiple of 3 devices"),
    ((-1, -1, 1), "more than one -1"),
    ((8, 1), "must have 3 or 4 entries"),
    ((0, 8, 1), "positive or -1"),
])
def test_bad_mesh_shapes_say_what_is_wrong(shape, message):
  with pytest.raises(ValueError, match=message):
    sharding.resolve_mesh_shape(shape, 8)


def test_create_mesh_uses_auto_axes():
  mesh = sharding.create_mesh(_config((2, -1, 2)).sharding)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2, "sequence": 1}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_rules_reject_unknown_mesh_axis():
  c = _config((8, 1, 1))
  c.sharding.logical_axis_rules = ((axes.EMBED, "model"),)
  with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
    sharding.logical_rules(c.sharding)


def test_logical_to_mesh_spec_allows_repeated_names_and_uses_each_mesh_axis_once():
  rules = sharding.logical_rules(_config((8, 1, 1)).sharding)
  conv = (axes.CONV_SPACE, axes.CONV_SPACE, axes.EMBED, axes.MLP)
  assert sharding.logical_to_mesh_spec(conv, rules) == P(None, None, "fsdp", "tensor")
  assert sharding.logical_to_mesh_spec((axes.EMBED, axes.EMBED), rules) == P("fsdp", None)
  assert sharding.logical_to_mesh_spec((axes.BATCH, None), rules) == P(("data", "fsdp"), None)


def test_batch_must_divide_the_data_parallel_size():
  c = _config((2, 4, 1))
  mesh = sharding.create_mesh(c.sharding)
  with pytest.raises(ValueError, match="divisible by the data-parallel size 8"):
    sharding.check_batch_divisible(12, mesh, sharding.logical_rules(c.sharding))


def test_distributed_is_a_noop_on_one_host(monkeypatch):
  for k in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
            "TPU_WORKER_HOSTNAMES", "JAX_NUM_PROCESSES", "COORDINATOR_ADDRESS"):
    monkeypatch.delenv(k, raising=False)
  assert sharding.maybe_initialize_distributed(default.get_config()) is False
  c = default.get_config()
  c.sharding.distributed = "sometimes"
  with pytest.raises(ValueError, match="sharding.distributed"):
    sharding.maybe_initialize_distributed(c)


def _three_mesh_runs():
  """One train step of the stand-in model on three meshes, same batch and initial params."""
  model = tl.TinyDenoiser()
  batch = tl.tiny_batch(batch=8)
  out = {}
  for shape in [(8, 1, 1), (2, 4, 1), (2, 2, 2)]:
    c = _config(shape)
    mesh = sharding.create_mesh(c.sharding)
    rules = sharding.logical_rules(c.sharding)
    tx = opt.make_optimizer(c.train)
    state, shardings = st.init_train_state(init_params_fn=tl.init_params_fn(model, batch),
                                           key=jax.random.key(0), tx=tx, mesh=mesh, rules=rules)
    init_params = jax.device_get(state.params)
    gb = sharding.host_to_global(batch, mesh, rules)
    fn = sp.make_train_step(loss_fn=tl.tiny_loss_fn(model), tx=tx,
                            lr_schedule=opt.learning_rate_schedule(c.train), train_cfg=c.train,
                            seed=0, cond_drop_prob=0.25, mesh=mesh, rules=rules,
                            state_shardings=shardings, batch_like=gb)
    losses = []
    for _ in range(2):
      state, metrics = fn(state, gb)
      losses.append(float(metrics["loss"]))
    out[shape] = dict(state=state, init=init_params, losses=losses)
  return out


def test_same_loss_and_update_on_every_mesh_and_params_sharded_by_the_rules():
  runs = _three_mesh_runs()
  _check_same_loss(runs)
  _check_param_shardings(runs)


def _check_same_loss(runs):
  ref = runs[(8, 1, 1)]
  for shape in [(2, 4, 1), (2, 2, 2)]:
    chex.assert_trees_all_close(runs[shape]["init"], ref["init"], atol=0, rtol=0)
    np.testing.assert_allclose(runs[shape]["losses"], ref["losses"], rtol=1e-5)
    chex.assert_trees_all_close(jax.device_get(runs[shape]["state"].params),
                                jax.device_get(ref["state"].params), atol=1e-6, rtol=1e-5)


def _check_param_shardings(runs):
  p = runs[(2, 4, 1)]["state"].params
  # kernels are (embed, mlp): embed over fsdp (4-way) where it divides, mlp over tensor (size 1)
  assert p["mid"]["kernel"].sharding.spec == P("fsdp", "tensor")
  assert p["mid"]["kernel"].addressable_shards[0].data.shape == (16 // 4, 16)
  assert p["inp"]["kernel"].sharding.spec == P(None, "tensor")   # 3 input channels: replicated
  q = runs[(2, 2, 2)]["state"]
  assert q.params["mid"]["kernel"].addressable_shards[0].data.shape == (8, 8)
  assert q.params["out"]["kernel"].sharding.spec == P("fsdp", None)  # 3 outputs: not split
  # EMA and the Adam moments follow their parameter; counters are replicated
  assert q.ema_params["mid"]["kernel"].sharding.spec == P("fsdp", "tensor")
  mu = q.opt_state[1][0].mu["mid"]["kernel"]
  assert mu.sharding.spec == P("fsdp", "tensor")
  assert q.step.sharding.spec == P()


def test_activation_constraints_follow_the_switch():
  """With constrain_activations the model's logical constraints reach the program."""
  c = _config((2, 2, 2))
  mesh = sharding.create_mesh(c.sharding)
  rules = sharding.logical_rules(c.sharding)
  model = tl.TinyDenoiser()
  batch = tl.tiny_batch(batch=8)
  tx = opt.make_optimizer(c.train)
  target, shardings = st.abstract_train_state(init_params_fn=tl.init_params_fn(model, batch),
                                              key=jax.random.key(0), tx=tx, mesh=mesh,
                                              rules=rules)
  gb = sharding.host_to_global(batch, mesh, rules)
  texts = {}
  for on in (True, False):
    fn = sp.make_train_step(loss_fn=tl.tiny_loss_fn(model), tx=tx,
                            lr_schedule=opt.learning_rate_schedule(c.train), train_cfg=c.train,
                            seed=0, cond_drop_prob=0.0, mesh=mesh, rules=rules,
                            state_shardings=shardings, batch_like=gb, constrain_activations=on)
    texts[on] = fn.lower(target, gb).as_text()
  count = lambda text: text.count("sharding_constraint")  # Shardy (sdy) or GSPMD spelling
  assert count(texts[True]) > count(texts[False])
