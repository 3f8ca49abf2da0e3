"""Checkpoints: restore onto another mesh, iterator state, retention, and clear failures for
unreadable checkpoints or ones of another model (which are never overwritten)."""
import hashlib
import os

import chex
import grain
import jax
import pytest

from configs import default
from vdm_jax import sharding
from vdm_jax.train import checkpoint as ckpt_lib
from vdm_jax.train import optimizer as opt
from vdm_jax.train import state as st

import train_testlib as tl


def _setup(mesh_shape, hidden=16):
  c = default.get_config()
  c.sharding.mesh_shape = mesh_shape
  mesh = sharding.create_mesh(c.sharding)
  rules = sharding.logical_rules(c.sharding)
  model = tl.TinyDenoiser(hidden=hidden)
  init_fn = tl.init_params_fn(model, tl.tiny_batch())
  kw = dict(init_params_fn=init_fn, key=jax.random.key(0), tx=opt.make_optimizer(c.train),
            mesh=mesh, rules=rules)
  return c, kw


def _iterator():
  return iter(grain.MapDataset.range(1000).to_iter_dataset())


def _tree_digest(directory):
  h = hashlib.sha256()
  for root, _, files in sorted(os.walk(directory)):
    for name in sorted(files):
      path = os.path.join(root, name)
      h.update(path.encode())
      with open(path, "rb") as f:
        h.update(f.read())
  return h.hexdigest()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A checkpoint of step 7 written on mesh (8, 1, 1), with the iterator 3 elements in."""
  directory = str(tmp_path_factory.mktemp("ckpt"))
  config, kw = _setup((8, 1, 1))
  state, _ = st.init_train_state(**kw)
  state = state.replace(step=state.step + 7)
  it = _iterator()
  for _ in range(3):
    next(it)
  ckpt = ckpt_lib.Checkpointer(directory)
  assert ckpt.save(7, state, it, config)
  ckpt.wait()
  assert not ckpt.save(7, state, it, config), "an existing step is never overwritten"
  ckpt.close()
  return directory, jax.device_get(state)


def test_restore_onto_a_different_mesh_is_exact(saved):
  directory, host_state = saved
  config, kw = _setup((2, 2, 2))
  target, shardings = st.abstract_train_state(**kw)
  it = _iterator()
  ckpt = ckpt_lib.Checkpointer(directory)
  assert ckpt.latest_step() == 7
  restored = ckpt.restore(7, target_state=target, data_iter=it, config=config)
  chex.assert_trees_all_equal(jax.device_get(restored), host_state)
  assert restored.params["mid"]["kernel"].sharding == shardings.params["mid"]["kernel"]
  assert restored.params["mid"]["kernel"].addressable_shards[0].data.shape == (8, 8)
  assert next(it) == 3, "the data iterator continues where it was saved"
  ckpt.close()


def test_checkpoint_of_another_model_config_fails_and_stays(saved):
  directory, host_state = saved
  before = _tree_digest(directory)
  config, kw = _setup((8, 1, 1))
  config.model.base_channels = 64
  target, _ = st.abstract_train_state(**kw)
  ckpt = ckpt_lib.Checkpointer(directory)
  with pytest.raises(ckpt_lib.CheckpointError,
                     match=r"another model configuration:\n  model.base_channels: 32 in the "
                           r"checkpoint, 64 now"):
    ckpt.restore(7, target_state=target, data_iter=_iterator(), config=config)
  # different parameter shapes with an unchanged model section are caught too, by name
  config, kw = _setup((8, 1, 1), hidden=32)
  target, _ = st.abstract_train_state(**kw)
  with pytest.raises(ckpt_lib.CheckpointError, match=r"params/mid/kernel: \(16, 16\) in the "
                                                     r"checkpoint, \(32, 32\) now"):
    ckpt.restore(7, target_state=target, data_iter=_iterator(), config=config)
  ckpt.close()
  assert _tree_digest(directory) == before, "the good checkpoint is untouched"
  config, kw = _setup((8, 1, 1))
  target, _ = st.abstract_train_state(**kw)
  ckpt = ckpt_lib.Checkpointer(directory)
  restored = ckpt.restore(7, target_state=target, data_iter=_iterator(), config=config)
  chex.assert_trees_all_equal(jax.device_get(restored.params), host_state.params)
  ckpt.close()


def test_checkpoint_before_an_optional_model_key_reads_it_as_its_default(tmp_path):
  """A checkpoint written before an optional model key existed (`UNetSpec.OPTIONAL`) was
  trained with that key's default: it restores under the default and fails under another."""
  directory = str(tmp_path)
  config, kw = _setup((8, 1, 1))
  del config.model["temporal_position"]          # as configs were before the key existed
  state, _ = st.init_train_state(**kw)
  ckpt = ckpt_lib.Checkpointer(directory, async_save=False)
  assert ckpt.save(1, state, None, config)
  ckpt.close()
  config, kw = _setup((8, 1, 1))
  assert config.model.temporal_position == "bias"
  target, _ = st.abstract_train_state(**kw)
  ckpt = ckpt_lib.Checkpointer(directory)
  restored = ckpt.restore(1, target_state=target, data_iter=None, config=config)
  chex.assert_trees_all_equal(jax.device_get(restored.params), jax.device_get(state.params))
  config.model.temporal_position = "shaw"
  with pytest.raises(ckpt_lib.CheckpointError,
                     match=r"model.temporal_position: 'bias' in the checkpoint, 'shaw' now"):
    ckpt.restore(1, target_state=target, data_iter=None, config=config)
  ckpt.close()


def test_unreadable_checkpoint_names_the_step(tmp_path):
  config, kw = _setup((8, 1, 1))
  state, _ = st.init_train_state(**kw)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(3, state, None, config)
  ckpt.close()
  os.remove(tmp_path / "3" / "state" / "_METADATA")
  target, _ = st.abstract_train_state(**kw)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path))
  with pytest.raises(ckpt_lib.CheckpointError, match=r"checkpoint at .*/3 is unreadable"):
    ckpt.restore(3, target_state=target, data_iter=None, config=config)
  ckpt.close()
  assert (tmp_path / "3" / "state").is_dir(), "nothing is deleted"


def test_a_relative_directory_saves_and_restores(tmp_path, monkeypatch):
  """`--workdir=demo_out/...` is relative; orbax alone refuses relative paths."""
  monkeypatch.chdir(tmp_path)
  config, kw = _setup((8, 1, 1))
  state, _ = st.init_train_state(**kw)
  ckpt = ckpt_lib.Checkpointer(os.path.join("run", "checkpoints"))   # asynchronous saves
  assert ckpt.save(2, state, None, config)
  ckpt.wait()
  ckpt.close()
  assert (tmp_path / "run" / "checkpoints" / "2" / "state").is_dir()
  target, _ = st.abstract_train_state(**kw)
  ckpt = ckpt_lib.Checkpointer(os.path.join("run", "checkpoints"))
  restored = ckpt.restore(2, target_state=target, data_iter=None, config=config)
  ckpt.close()
  chex.assert_trees_all_close(jax.device_get(restored.params), jax.device_get(state.params))


def test_keeps_the_last_n_and_every_kth(tmp_path):
  config, kw = _setup((8, 1, 1))
  state, _ = st.init_train_state(**kw)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), keep_last=2, keep_every=4, async_save=False)
  for step in range(1, 10):
    ckpt.save(step, state, None, config)
  assert ckpt.all_steps() == [4, 8, 9]
  ckpt.close()


def test_config_diff_tolerates_keys_added_later_switched_off():
  """A model key that an older checkpoint lacks is compatible while it is off (False / None /
  'none'); switched on, or changed, it is a difference that names the key."""
  saved = {"model": {"base_channels": 8, "nested": {"a": 1}}}
  off = {"model": {"base_channels": 8, "nested": {"a": 1}, "frame_mask_conditioning": False,
                   "lowres_conditioning": "none"}}
  assert ckpt_lib._dict_diff(saved, off) == []  # pylint: disable=protected-access
  on = {"model": {"base_channels": 8, "nested": {"a": 2}, "frame_mask_conditioning": True}}
  diffs = ckpt_lib._dict_diff(saved, on)  # pylint: disable=protected-access
  assert diffs == ["model.frame_mask_conditioning: absent in the checkpoint, True now",
                   "model.nested.a: 1 in the checkpoint, 2 now"]
  assert ckpt_lib._dict_diff(on, saved) == [  # pylint: disable=protected-access
      "model.frame_mask_conditioning: True in the checkpoint, absent now",
      "model.nested.a: 2 in the checkpoint, 1 now"]
