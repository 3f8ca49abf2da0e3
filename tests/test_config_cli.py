"""Config validation (fails before compiling, naming the key) and the command line's dispatch."""
import os
import subprocess
import sys

import pytest

from configs import default, demo, tiny
from vdm_jax import config_utils
from vdm_jax.models import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("get_config", [default.get_config, tiny.get_config, demo.get_config])
def test_shipped_configs_validate(get_config):
  config_utils.validate_config(get_config())


@pytest.mark.parametrize("key,value,fragment", [
    ("model.attention_impl", "flash", "model.attention_impl='flash'"),
    ("diffusion.prediction", "score", "diffusion.prediction='score'"),
    ("sample.clip", "soft", "sample.clip='soft'"),
    ("sample.eta", 1.5, "sample.eta=1.5"),
    ("train.grad_accum_steps", 3, "train.grad_accum_steps=3"),
    ("diffusion.cond_drop_prob", 1.0, "diffusion.cond_drop_prob=1.0"),
    ("height", 15, "height x width = 15x16"),
    ("data.vocabulary.motion", ("left", "fast"), "data.vocabulary: vocabulary motion"),
    ("diffusion.noise_prior", "pink", "diffusion.noise_prior='pink'"),
    ("diffusion.loss_weighting", "p2", "diffusion.loss_weighting='p2'"),
    ("model.lowres_conditioning", "both", "model.lowres_conditioning='both'"),
    ("model.temporal_position", "absolute", "model.temporal_position='absolute'"),
    ("model.frame_position", "learned", "model.frame_position='learned'"),
    ("model.family", "gan", "model.family = 'gan' is not a known model family; use one of"),
    ("model.temporal_mixing", ("attention", "space"), "temporal_mixing entry 'space'"),
])
def test_bad_values_name_the_key(key, value, fragment):
  c = tiny.get_config()
  node = c
  *path, last = key.split(".")
  for name in path:
    node = node[name]
  node[last] = value
  with pytest.raises(config_utils.ConfigError, match=fragment.replace(".", r"\.")
                     .replace("(", r"\(").replace(")", r"\)")):
    config_utils.validate_config(c)


def test_a_model_section_without_a_family_is_a_unet():
  """Configs and checkpoints written before `model.family` existed read as U-Nets."""
  c = tiny.get_config()
  del c.model["family"]
  config_utils.validate_config(c)
  assert registry.family(c.model).name == "unet"
  assert registry.with_optional_keys(dict(c.model))["family"] == "unet"


def test_correlated_noise_prior_needs_a_positive_alpha():
  c = tiny.get_config()
  c.diffusion.noise_prior_alpha = 0.0
  config_utils.validate_config(c)                  # unused by the independent prior
  c.diffusion.noise_prior = "mixed"
  with pytest.raises(config_utils.ConfigError, match=r"noise_prior_alpha=0\.0 must be > 0"):
    config_utils.validate_config(c)


def test_per_level_lists_must_match_levels():
  c = tiny.get_config()
  c.model.temporal_mixing = ("attention",)
  with pytest.raises(config_utils.ConfigError, match="model.temporal_mixing has 1 entries"):
    config_utils.validate_config(c)


def test_all_errors_reported_together():
  c = tiny.get_config()
  c.model.attention_impl = "flash"
  c.sample.num_steps = 0
  with pytest.raises(config_utils.ConfigError) as e:
    config_utils.validate_config(c)
  assert "attention_impl" in str(e.value) and "sample.num_steps" in str(e.value)


def test_parse_variant():
  assert config_utils.parse_variant("stage=ssr1,scale=tiny") == {"stage": "ssr1", "scale": "tiny"}
  assert config_utils.parse_variant("paper") == {"paper": "true"}
  assert config_utils.parse_variant(None) == {}


def _cli(*args, timeout=240):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, "-m", "vdm_jax.main", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_cli_rejects_a_bad_config_before_doing_anything(tmp_path):
  r = _cli("--mode=train", "--config=configs/tiny.py", f"--workdir={tmp_path}/w",
           "--config.model.attention_impl=flash")
  assert r.returncode != 0
  assert "model.attention_impl='flash'" in r.stderr
  assert not os.path.exists(tmp_path / "w")  # nothing was written


def test_cli_build_data_then_needs_workdir(tmp_path):
  data_dir = tmp_path / "data"
  r = _cli("--mode=build_data", "--config=configs/tiny.py", f"--config.data.data_dir={data_dir}",
           "--config.data.num_train_examples=8", "--config.data.num_eval_examples=4")
  assert r.returncode == 0, r.stderr[-2000:]
  assert any("array_record" in f for _, _, files in os.walk(data_dir) for f in files)
  r = _cli("--mode=sample", "--config=configs/tiny.py", "--prompt=a red circle moving left")
  assert r.returncode != 0 and "--workdir" in r.stderr


def test_apply_overrides_sets_literals_and_strings():
  from vdm_jax import config_utils  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  config_utils.apply_overrides(c, ["train.lr=3e-3", "model.channel_mult=(1, 2, 4)",
                                   "diffusion.noise_prior=mixed", "model.remat=block"])
  assert c.train.lr == 3e-3 and tuple(c.model.channel_mult) == (1, 2, 4)
  assert c.diffusion.noise_prior == "mixed" and c.model.remat == "block"
