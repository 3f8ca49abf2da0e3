"""Exported cascades (vdm_jax/export.py): EMA parameters as safetensors, configs as JSON, a
manifest of sha256s; a changed, truncated or missing file is refused naming it."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from cascade_testlib import (PROMPTS, FakeTextEncoder, save_random_checkpoint,
                             tiny_cascade_config)
from vdm_jax import export
from vdm_jax.sample import cascade


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("trained"))
  config = tiny_cascade_config(os.path.join(root, "data"))
  for i, (name, c) in enumerate(cascade.stage_configs(config)):
    save_random_checkpoint(c, cascade.stage_workdir(root, name), seed=i)
  out = str(tmp_path_factory.mktemp("exported"))
  manifest = export.export_cascade(config, root, out, compute={"base": {"steps": 1}},
                                   recipe={"command": "test"},
                                   devices=jax.devices()[:1])
  trained = cascade.Cascade.from_config(config, root, text_encoder=FakeTextEncoder(),
                                        devices=jax.devices()[:1])
  return config, out, manifest, trained


def _copy(src, tmp_path):
  dst = str(tmp_path / "copy")
  shutil.copytree(src, dst)
  return dst


def test_round_trip_gives_the_trained_cascade(exported):
  _, out, manifest, trained = exported
  assert manifest["order"] == ["base", "tsr1", "ssr1"]
  assert manifest["stages"]["base"]["compute"] == {"steps": 1}
  assert manifest["recipe"]["command"] == "test"
  assert set(manifest["sha256"]) == {f"{n}/{f}" for n in manifest["order"]
                                     for f in (export.PARAMS, export.CONFIG)}
  loaded = export.load_cascade(out, text_encoder=FakeTextEncoder(), devices=jax.devices()[:1])
  assert loaded.names == trained.names
  for a, b in zip(loaded.stages, trained.stages):
    assert a.step == b.step == 1
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(a.params),
                 jax.device_get(b.params))
  assert loaded.settings == trained.settings
  np.testing.assert_array_equal(loaded.sample(PROMPTS[:1])["ssr1"],
                                trained.sample(PROMPTS[:1])["ssr1"])


def test_a_flipped_byte_is_refused_naming_the_file(exported, tmp_path):
  _, out, _, _ = exported
  copy = _copy(out, tmp_path)
  path = os.path.join(copy, "tsr1", export.PARAMS)
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x40
  open(path, "wb").write(bytes(data))
  with pytest.raises(export.IntegrityError, match=r"tsr1/params.safetensors is corrupt"):
    export.load_cascade(copy, text_encoder=FakeTextEncoder(), devices=jax.devices()[:1])


def test_a_truncated_or_missing_file_is_refused(exported, tmp_path):
  _, out, _, _ = exported
  copy = _copy(out, tmp_path)
  path = os.path.join(copy, "base", export.PARAMS)
  data = open(path, "rb").read()
  open(path, "wb").write(data[:len(data) // 3])
  with pytest.raises(export.IntegrityError, match=r"base/params.safetensors is corrupt"):
    export.verify(copy)
  os.remove(path)
  with pytest.raises(export.IntegrityError, match=r"base/params.safetensors is missing"):
    export.verify(copy)


def test_a_changed_config_is_refused(exported, tmp_path):
  _, out, _, _ = exported
  copy = _copy(out, tmp_path)
  path = os.path.join(copy, "ssr1", export.CONFIG)
  config = json.load(open(path))
  config["sample"]["num_steps"] = 99
  json.dump(config, open(path, "w"))
  with pytest.raises(export.IntegrityError, match=r"ssr1/config.json is corrupt"):
    export.verify(copy)


def test_parameters_of_another_model_are_refused(exported, tmp_path):
  """A consistent manifest whose params file holds another model's tree: refused naming the
  differing parameters, before anything is sampled."""
  _, out, _, _ = exported
  copy = _copy(out, tmp_path)
  manifest = json.load(open(os.path.join(copy, export.MANIFEST)))
  path = os.path.join(copy, "base", export.CONFIG)
  config = json.load(open(path))
  config["model"]["base_channels"] = 16
  json.dump(config, open(path, "w"))
  manifest["sha256"]["base/config.json"] = export.sha256_file(path)
  json.dump(manifest, open(os.path.join(copy, export.MANIFEST), "w"))
  with pytest.raises(export.IntegrityError, match=r"does not hold the parameters.*shapes differ"):
    export.load_cascade(copy, text_encoder=FakeTextEncoder(), devices=jax.devices()[:1])


def test_manifest_format_is_checked(exported, tmp_path):
  _, out, _, _ = exported
  copy = _copy(out, tmp_path)
  with open(os.path.join(copy, export.MANIFEST), "w") as f:
    f.write('{"format": "something else"}')
  with pytest.raises(export.IntegrityError, match="not a vdm_jax.exported_cascade manifest"):
    export.verify(copy)
  os.remove(os.path.join(copy, export.MANIFEST))
  with pytest.raises(export.IntegrityError, match="manifest.*missing"):
    export.verify(copy)


def _fresh_state(config):
  from vdm_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  from vdm_jax.models import registry  # pylint: disable=g-import-not-at-top
  from vdm_jax.train import optimizer as optimizer_lib  # pylint: disable=g-import-not-at-top
  from vdm_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  fam = registry.family(config.model)
  mesh = sharding_lib.create_mesh(config.sharding, jax.devices()[:1])
  state, shardings = state_lib.init_train_state(
      init_params_fn=fam.init_fn(fam.module(), batch_like=fam.example_batch(config)),
      key=jax.random.key(7), tx=optimizer_lib.make_optimizer(config.train, config.model),
      mesh=mesh, rules=sharding_lib.logical_rules(config.sharding))
  return state, shardings, mesh


def test_training_starts_from_an_exported_stage_after_checking_it(exported, tmp_path):
  """`train.init_from=<exported stage dir>` (fine-tuning the shipped weights): params and EMA
  are the exported ones; a corrupt file is refused before anything is read from it."""
  from vdm_jax.train import loop  # pylint: disable=g-import-not-at-top
  config, out, _, trained = exported
  base = dict(cascade.stage_configs(config))["base"]
  state, shardings, mesh = _fresh_state(base)
  started = loop.init_from_workdir(base, os.path.join(out, "base"), state, shardings, mesh)
  for got in (started.params, started.ema_params):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(got),
                 jax.device_get(trained.stages[0].params))
  copy = _copy(out, tmp_path)
  path = os.path.join(copy, "base", export.PARAMS)
  data = bytearray(open(path, "rb").read())
  data[-3] ^= 0x01
  open(path, "wb").write(bytes(data))
  with pytest.raises(export.IntegrityError, match="base/params.safetensors is corrupt"):
    loop.init_from_workdir(base, os.path.join(copy, "base"), state, shardings, mesh)
