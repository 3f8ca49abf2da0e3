"""Train-step semantics on a stand-in model: accumulation, EMA, conditioning dropout, the step
RNG, and the on-purpose handling of non-finite steps."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from vdm_jax import sharding
from vdm_jax.train import checkpoint as ckpt_lib
from vdm_jax.train import loop
from vdm_jax.train import optimizer as opt
from vdm_jax.train import state as st
from vdm_jax.train import step as sp

import train_testlib as tl


def _regression_loss_fn(model):
  """A deterministic per-example loss (ignores the key), so that accumulation can be compared
  with the full batch exactly."""
  def loss_fn(params, batch, key):
    del key
    b = batch["video"].shape[0]
    out = model.apply({"params": params}, batch["video"], jnp.zeros((b,)),
                      text_emb=batch["text_emb"], text_mask=batch["text_mask"])
    per_example = jnp.mean(jnp.square(out - 0.5 * batch["video"]), axis=(1, 2, 3, 4))
    return jnp.mean(per_example), {"loss_per_example": per_example}
  return loss_fn


class Setup:
  """A mesh, a stand-in model and its sharded state; builds jitted steps on demand."""

  def __init__(self, mesh_shape=(8, 1, 1), batch=16, dtype=jnp.float32, **train):
    self.config = default.get_config()
    self.config.sharding.mesh_shape = mesh_shape
    self.config.train.update(train)
    self.mesh = sharding.create_mesh(self.config.sharding)
    self.rules = sharding.logical_rules(self.config.sharding)
    self.model = tl.TinyDenoiser(dtype=dtype)
    self.host_batch = tl.tiny_batch(batch=batch)
    self.tx = opt.make_optimizer(self.config.train)
    self._steps = {}

  def state(self):
    return st.init_train_state(init_params_fn=tl.init_params_fn(self.model, self.host_batch),
                               key=jax.random.key(0), tx=self.tx, mesh=self.mesh,
                               rules=self.rules)

  def batch(self, host=None):
    return sharding.host_to_global(self.host_batch if host is None else host, self.mesh,
                                   self.rules)

  def step(self, shardings, *, diffusion=False, accum=1, cond_drop_prob=0.0):
    """The jitted step (memoized, so that tests sharing a fixture compile it once)."""
    key = (diffusion, accum, cond_drop_prob)
    if key not in self._steps:
      t = self.config.train
      t.grad_accum_steps = accum
      loss_fn = (tl.tiny_loss_fn(self.model) if diffusion
                 else _regression_loss_fn(self.model))
      self._steps[key] = sp.make_train_step(
          loss_fn=loss_fn, tx=self.tx, lr_schedule=opt.learning_rate_schedule(t),
          train_cfg=t, seed=0, cond_drop_prob=cond_drop_prob, mesh=self.mesh,
          rules=self.rules, state_shardings=shardings, batch_like=self.batch())
    return self._steps[key]


@pytest.fixture(scope="module")
def setup():
  return Setup(lr=1e-2, warmup_steps=0, lr_schedule="constant", ema_decay=0.9)


def test_gradient_accumulation_equals_the_full_batch(setup):
  results = {}
  for accum in (1, 2):
    state, shardings = setup.state()
    fn = setup.step(shardings, accum=accum)
    for _ in range(2):
      state, metrics = fn(state, setup.batch())
    results[accum] = (jax.device_get(state), float(metrics["loss"]), float(metrics["grad_norm"]))
  (s1, l1, g1), (s4, l4, g4) = results[1], results[2]
  assert l1 == pytest.approx(l4, rel=1e-5) and g1 == pytest.approx(g4, rel=1e-5)
  chex.assert_trees_all_close(s1.params, s4.params, atol=1e-6, rtol=1e-5)
  chex.assert_trees_all_close(s1.ema_params, s4.ema_params, atol=1e-6, rtol=1e-5)
  chex.assert_trees_all_close(s1.opt_state, s4.opt_state, atol=1e-6, rtol=1e-5)


def test_microbatches_interleave_and_merge_back():
  x = jnp.arange(12 * 2).reshape(12, 2)
  micro = sp.split_microbatches({"x": x}, 3)["x"]
  chex.assert_shape(micro, (3, 4, 2))
  np.testing.assert_array_equal(micro[1], x[1::3])
  np.testing.assert_array_equal(sp.merge_microbatches(micro), x)


def test_microbatch_must_divide_data_parallel_size():
  s = Setup(batch=8)
  _, shardings = s.state()
  with pytest.raises(ValueError, match="microbatches of 4"):
    s.step(shardings, accum=2)


def test_ema_warmup_formula():
  for t in (0, 1, 5, 50, 10_000):
    expected = min(0.999, (1 + t) / (10 + t))
    assert float(st.ema_decay_at(t, 0.999, True)) == pytest.approx(expected, rel=1e-6)
  assert float(st.ema_decay_at(3, 0.999, False)) == pytest.approx(0.999)
  new = st.ema_update({"w": jnp.ones(3)}, {"w": jnp.zeros(3)}, jnp.float32(0.25))
  np.testing.assert_allclose(new["w"], 0.25)


def test_step_applies_ema_with_the_warmup_decay(setup):
  state, shardings = setup.state()
  fn = setup.step(shardings)
  before = jax.device_get(state)
  state, metrics = fn(state, setup.batch())
  after = jax.device_get(state)
  d = min(0.9, 1 / 10)
  assert float(metrics["ema_decay"]) == pytest.approx(d)
  # joint image-video batches: the loss splits into image and video rows (4 of 16 are images)
  n_img = int(setup.host_batch["is_image"].sum())
  assert n_img == 4
  mixed = (n_img * float(metrics["loss_image"]) + 12 * float(metrics["loss_video"])) / 16
  assert float(metrics["loss"]) == pytest.approx(mixed, rel=1e-5)
  expected = jax.tree.map(lambda e, p: d * e + (1 - d) * p, before.ema_params, after.params)
  chex.assert_trees_all_close(after.ema_params, expected, atol=1e-6)
  assert int(after.step) == 1


def test_cond_dropout_nulls_whole_examples_at_the_rate():
  batch = {"text_emb": jnp.ones((4000, 3, 2)), "text_mask": jnp.ones((4000, 3), bool)}
  out = sp.apply_cond_dropout(batch, jax.random.key(1), 0.1)
  dropped = ~np.asarray(out["text_mask"]).any(axis=1)
  assert 0.08 < dropped.mean() < 0.12
  emb = np.asarray(out["text_emb"])
  assert np.all(emb[dropped] == 0) and np.all(emb[~dropped] == 1)
  assert np.all(np.asarray(out["text_mask"])[~dropped])
  same = sp.apply_cond_dropout(batch, jax.random.key(1), 0.0)
  assert same is batch


def test_step_rng_is_a_function_of_seed_and_step(setup):
  """Two fresh states give the same diffusion loss at the same step; the next step differs."""
  state_a, shardings = setup.state()
  state_b, _ = setup.state()
  fn = setup.step(shardings, diffusion=True, cond_drop_prob=0.5)
  state_a, m_a = fn(state_a, setup.batch())
  state_b, m_b = fn(state_b, setup.batch())
  assert float(m_a["loss"]) == float(m_b["loss"])
  chex.assert_trees_all_equal(jax.device_get(state_a.params), jax.device_get(state_b.params))
  k0, k1 = sp.step_key(0, jnp.int32(0)), sp.step_key(0, jnp.int32(1))
  assert not np.array_equal(jax.random.key_data(k0), jax.random.key_data(k1))


def test_nonfinite_steps_are_skipped_counted_and_stop_the_loop(setup, tmp_path):
  state, shardings = setup.state()
  fn = setup.step(shardings)
  state, _ = fn(state, setup.batch())  # one good update
  good = jax.device_get(state)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "ckpt"), async_save=False)
  assert loop.save_if_good(ckpt, 1, state, None, setup.config)

  bad_host = dict(setup.host_batch)
  bad_host["video"] = bad_host["video"].copy()
  bad_host["video"][3] = np.nan
  limit = 3
  for i in range(limit):
    state, metrics = fn(state, setup.batch(bad_host))
    row = {k: float(v) for k, v in metrics.items()}
    assert row["finite"] == 0.0 and row["nonfinite_count"] == i + 1
    assert row["consecutive_nonfinite"] == i + 1
    if i < limit - 1:
      loop.check_nonfinite_streak(row, step=2 + i, limit=limit, checkpointer=ckpt)
    else:
      with pytest.raises(loop.NonFiniteError, match=r"3 consecutive steps.*step 1 in"):
        loop.check_nonfinite_streak(row, step=2 + i, limit=limit, checkpointer=ckpt)
  # parameters, EMA and optimizer state untouched; the step counter advanced
  now = jax.device_get(state)
  chex.assert_trees_all_equal(now.params, good.params)
  chex.assert_trees_all_equal(now.ema_params, good.ema_params)
  chex.assert_trees_all_equal(now.opt_state, good.opt_state)
  assert int(now.step) == 1 + limit
  # a state in a non-finite streak is never checkpointed: the good one stays the newest
  assert not loop.save_if_good(ckpt, 4, state, None, setup.config)
  assert ckpt.all_steps() == [1]
  # a good step resets the streak but keeps the total
  state, metrics = fn(state, setup.batch())
  assert float(metrics["consecutive_nonfinite"]) == 0 and float(metrics["nonfinite_count"]) == 3
  ckpt.close()


def test_optimizer_config_errors_are_clear():
  c = default.get_config().train
  c.optimizer = "sgd"
  with pytest.raises(ValueError, match="train.optimizer='sgd'"):
    opt.make_optimizer(c)
  c = default.get_config().train
  c.optimizer, c.weight_decay = "adam", 0.1
  with pytest.raises(ValueError, match="adamw"):
    opt.make_optimizer(c)


def test_learning_rate_schedules():
  c = default.get_config().train
  c.lr, c.warmup_steps, c.num_steps = 1.0, 10, 110
  f = opt.learning_rate_schedule(c)
  assert float(f(0)) == 0.0 and float(f(5)) == pytest.approx(0.5)
  assert float(f(10)) == pytest.approx(1.0) and float(f(60)) == pytest.approx(0.5, abs=1e-6)
  assert float(f(110)) == pytest.approx(0.0, abs=1e-6)
  c.lr_schedule = "constant"
  f = opt.learning_rate_schedule(c)
  assert float(f(5)) == pytest.approx(0.5) and float(f(1000)) == pytest.approx(1.0)


def test_bfloat16_compute_keeps_float32_master_parameters(setup):
  s = Setup(dtype=jnp.bfloat16, lr=1e-2, warmup_steps=0, lr_schedule="constant", ema_decay=0.9)
  state, shardings = s.state()
  state, metrics = s.step(shardings, diffusion=True, cond_drop_prob=0.5)(state, s.batch())
  leaves = jax.tree.leaves(state.params) + jax.tree.leaves(state.ema_params)
  assert all(x.dtype == jnp.float32 for x in leaves)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.opt_state[1][0].mu))
  ref_state, ref_shardings = setup.state()  # the same model in float32 (same step compiled)
  _, ref = setup.step(ref_shardings, diffusion=True, cond_drop_prob=0.5)(ref_state,
                                                                          setup.batch())
  assert bool(metrics["finite"])
  assert float(metrics["loss"]) == pytest.approx(float(ref["loss"]), rel=0.05)
  assert float(metrics["loss"]) != float(ref["loss"]), "compute really ran in bf16"
