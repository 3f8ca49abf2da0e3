"""The distillation round loop on a sharded (4 x 2) mesh with a tiny stand-in denoiser:
guided stage one, then progressive rounds that halve the steps with a fresh optimizer, a
checkpoint per round that records the step count, resume, and the teacher-location logic."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import distill as distill_config
from vdm_jax import sharding as sharding_lib
from vdm_jax.distill import objective as dobjective
from vdm_jax.distill import rounds as rounds_lib
from vdm_jax.distill import settings
from vdm_jax.distill import state as dstate
from vdm_jax.models import axes
from vdm_jax.models import registry
from vdm_jax.train import checkpoint as ckpt_lib

STEPS = 3


class TinyVideoDenoiser(nn.Module):
  """[B, T, H, W, C] -> same; per-pixel MLP with text, fps and (optional) guidance inputs."""

  @nn.compact
  def __call__(self, x, logsnr, *, text_emb, text_mask, fps, guidance_weight=None,
               train=False):
    del train
    dense = lambda f, name, init=nn.initializers.lecun_normal(): nn.Dense(
        f, name=name, kernel_init=nn.with_logical_partitioning(init, (axes.EMBED, axes.MLP)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes.MLP,)))
    pooled = jnp.sum(text_emb * text_mask[..., None], axis=1)
    c = jnp.concatenate([pooled, jnp.tanh(logsnr / 10)[:, None], fps[:, None] / 8], -1)
    e = dense(16, "cond")(c)
    if guidance_weight is not None:  # zero-initialized: the student starts as its teacher
      e = e + dense(16, "guidance", nn.initializers.zeros)(guidance_weight[:, None])
    h = nn.gelu(dense(16, "inp")(x) + e[:, None, None, None])
    return dense(x.shape[-1], "out")(h)


def _config(mode="guided"):
  c = distill_config.get_config(f"base=tiny,mode={mode},start=8,end=2")
  c.sharding.mesh_shape = (4, 2, 1)
  c.train.batch_size = 8
  c.train.log_every = 1
  c.train.checkpoint_every = 2
  c.train.async_checkpointing = False
  c.distill.steps_per_round = STEPS
  c.distill.guided_steps = STEPS
  c.distill.teacher_clip = "none"  # one compiled step for every progressive round
  return c


def _batches(seed):
  rng = np.random.default_rng(seed)
  while True:
    yield {"video": rng.uniform(-1, 1, (8, 2, 4, 4, 3)).astype(np.float32),
           "fps": np.full((8,), 8.0, np.float32),
           "text_emb": rng.normal(size=(8, 3, 8)).astype(np.float32),
           "text_mask": np.ones((8, 3), bool),
           "index": np.arange(8)}


def _teacher(config, mesh, rules, model):
  teacher_cfg = dobjective.teacher_model_config(config, "guided")
  init = registry.family(teacher_cfg).init_fn(model, batch_like=next(_batches(0)))
  return sharding_lib.sharded_init(init, jax.random.key(42), mesh=mesh, rules=rules)


def _run(config, workdir, mesh, rules):
  model = TinyVideoDenoiser()
  params, shardings = _teacher(config, mesh, rules, model)
  run = rounds_lib.DistillationRun(
      config, str(workdir), student_model=model, teacher_model=model, teacher_params=params,
      teacher_param_shardings=shardings, make_batches=lambda rnd: _batches(rnd.index),
      mesh=mesh, rules=rules)
  records, state = run.run()
  return run, records, state, params


@pytest.fixture(scope="module")
def guided_run(tmp_path_factory):
  config = _config()
  mesh = sharding_lib.create_mesh(config.sharding)
  rules = sharding_lib.logical_rules(config.sharding)
  workdir = tmp_path_factory.mktemp("distill")
  run, records, state, teacher = _run(config, workdir, mesh, rules)
  return dict(config=config, mesh=mesh, rules=rules, workdir=workdir, run=run,
              records=records, state=state, teacher=teacher)


def test_plan_halves_the_steps_after_guided_stage_one():
  plan = settings.plan_rounds(_config().distill)
  assert [(r.stage, r.teacher_steps, r.student_steps) for r in plan] == [
      ("guided", 8, 8), ("progressive", 8, 4), ("progressive", 4, 2)]
  c = _config("progressive")
  c.distill.start_steps, c.distill.end_steps = 1024, 8
  plan = settings.plan_rounds(c.distill)
  assert [r.student_steps for r in plan] == [512, 256, 128, 64, 32, 16, 8]
  assert all(r.stage == "progressive" for r in plan)


def test_only_teachers_sampled_with_thresholding_are_thresholded():
  for mode, clips in (("guided", ["none", "dynamic", "none"]),
                      ("progressive", ["dynamic", "none"])):
    d = _config(mode).distill
    d.teacher_clip = "dynamic"
    assert [settings.teacher_clip_of(r, d) for r in settings.plan_rounds(d)] == clips
    d.threshold_students = True
    assert [settings.teacher_clip_of(r, d) for r in settings.plan_rounds(d)] == [
        "none" if c == "none" and mode == "guided" and i == 0 else "dynamic"
        for i, c in enumerate(clips)]


@pytest.mark.parametrize("key,value,message", [
    ("start_steps", 12, "power of two"),
    ("end_steps", 0, "end_steps"),
    ("mode", "fast", "mode"),
    ("w_max", -1.0, "w_min"),
    ("teacher_clip", "hard", "teacher_clip"),
    ("loss_weighting", "p2", "loss_weighting='p2' is not one of .*min_snr"),
])
def test_bad_distill_config_fails_with_the_key(key, value, message):
  c = _config()
  c.distill[key] = value
  with pytest.raises(ValueError, match=message):
    settings.check_distill_config(c)


def test_guided_mode_needs_the_guidance_input():
  c = _config()
  c.model.guidance_weight_conditioning = False
  with pytest.raises(ValueError, match="guidance_weight_conditioning"):
    settings.check_distill_config(c)


def test_every_round_halves_the_steps_and_its_checkpoint_records_them(guided_run):
  workdir, records = guided_run["workdir"], guided_run["records"]
  assert [r["student_steps"] for r in records] == [8, 4, 2]
  assert [r["stage"] for r in records] == ["guided", "progressive", "progressive"]
  for prev, cur in zip(records[1:], records[2:]):
    assert cur["student_steps"] * 2 == prev["student_steps"] == cur["teacher_steps"]
  manifest = json.load(open(os.path.join(workdir, rounds_lib.MANIFEST)))
  assert [r["student_steps"] for r in manifest["rounds"]] == [8, 4, 2]
  for rec in records:
    ckpt_dir = os.path.join(rec["directory"], "checkpoints")
    saved = dstate.read_checkpoint_config(ckpt_dir)
    assert saved["distill"]["round_student_steps"] == rec["student_steps"]
    assert saved["distill"]["round_teacher_steps"] == rec["teacher_steps"]
    assert saved["sample"]["num_steps"] == rec["student_steps"]
    # Progressive students are sampled unthresholded (they reproduce thresholded teachers).
    assert saved["sample"]["clip"] == ("none" if rec["stage"] == "progressive" else "dynamic")
    assert sorted(int(s) for s in os.listdir(ckpt_dir) if s.isdigit())[-1] == STEPS
    assert np.isfinite(rec["final_loss"]) and rec["steps_run"] == STEPS
  # One compiled step serves every progressive round (the step count is a traced input).
  assert len(guided_run["run"]._steps) == 2  # pylint: disable=protected-access


def test_optimizer_is_reset_each_round_and_the_student_starts_from_its_teacher(guided_run):
  state = guided_run["state"]
  assert int(state.step) == STEPS and int(state.nonfinite_count) == 0
  counts = [int(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(state.opt_state)
            if "count" in jax.tree_util.keystr(path)]
  assert counts and set(counts) == {STEPS}  # not 3 * STEPS: a fresh optimizer per round
  # The student has the teacher's parameters plus the guidance embedding, all trained.
  teacher = guided_run["teacher"]
  assert set(state.params) == set(teacher) | {"guidance"}
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), state.params["inp"],
                       teacher["inp"])
  assert max(jax.tree.leaves(moved)) > 0


def test_rerun_resumes_finished_rounds_without_training(guided_run):
  c = guided_run
  run, records, state, _ = _run(c["config"], c["workdir"], c["mesh"], c["rules"])
  assert [r["steps_run"] for r in records] == [0, 0, 0]
  assert [r["final_loss"] for r in records] == [r["final_loss"] for r in c["records"]]
  assert not run._steps  # pylint: disable=protected-access
  jax.tree.map(np.testing.assert_array_equal, state.params, c["state"].params)


def test_a_round_directory_is_a_teacher_workdir_and_the_model_is_checked(guided_run):
  c = guided_run
  rec = c["records"][-1]
  model = TinyVideoDenoiser()
  init = registry.family(c["config"].model).init_fn(model, batch_like=next(_batches(0)))
  params, _, step = dstate.restore_params(workdir=rec["directory"], config=c["config"],
                                          init_params_fn=init, mesh=c["mesh"], rules=c["rules"])
  assert step == STEPS
  jax.tree.map(np.testing.assert_array_equal, params, c["state"].ema_params)
  other = c["config"].copy_and_resolve_references()
  other.model.base_channels = 64
  with pytest.raises(ckpt_lib.CheckpointError, match="base_channels"):
    dstate.restore_params(workdir=rec["directory"], config=other, init_params_fn=init,
                          mesh=c["mesh"], rules=c["rules"])
  with pytest.raises(FileNotFoundError, match="not a training workdir"):
    dstate.saved_train_config(str(c["workdir"]))


def test_merge_params_rejects_a_student_without_the_teacher_parameters():
  fresh = {"a": jnp.zeros((2, 3)), "g": jnp.ones((3,))}
  merged = dstate.merge_params(fresh, {"a": jnp.ones((2, 3))})
  np.testing.assert_array_equal(merged["a"], 1.0)
  np.testing.assert_array_equal(merged["g"], 1.0)
  with pytest.raises(ValueError, match="absent in the student"):
    dstate.merge_params(fresh, {"b": jnp.ones((2,))})
  with pytest.raises(ValueError, match=r"\(2, 4\)"):
    dstate.merge_params(fresh, {"a": jnp.ones((2, 4))})
