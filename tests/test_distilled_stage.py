"""A guided-distillation student as a cascade stage: w as a model input, one evaluation per step.

The student is the tiny cascade's base stage with model.guidance_weight_conditioning, saved as
a distillation round directory (config.json + an orbax checkpoint of random weights), then put
in place of the trained base with `cascade.distilled`.
"""
import json
import os

import jax
import numpy as np
import pytest

from cascade_testlib import (GEOMETRY, PROMPTS, FakeTextEncoder,
                                   save_random_checkpoint, tiny_cascade_config)
from vdm_jax.sample import cascade, sampler
from vdm_jax.sample import conditioning as cond_lib
from vdm_jax.train import checkpoint as ckpt_lib


def _student_round(base_config, round_dir, num_steps=3):
  c = base_config.copy_and_resolve_references()
  c.model.guidance_weight_conditioning = True
  c.sample.num_steps = num_steps
  save_random_checkpoint(c, round_dir, seed=1)
  with open(os.path.join(round_dir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(ckpt_lib.config_to_dict(c), f)
  return c


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("distilled_cascade"))
  config = tiny_cascade_config(os.path.join(root, "data"))
  named = dict(cascade.stage_configs(config))
  for name, c in named.items():
    save_random_checkpoint(c, cascade.stage_workdir(root, name))
  round_dir = os.path.join(root, "base_distill", "rounds", "02_progressive_0003")
  _student_round(named["base"], round_dir)
  return config, root, round_dir


def test_distilled_base_replaces_the_trained_one(setup):
  config, root, round_dir = setup
  config = config.copy_and_resolve_references()
  config.cascade.distilled = f"base={round_dir}"
  casc = cascade.Cascade.from_config(config, root, text_encoder=FakeTextEncoder(),
                                     devices=jax.devices()[:1])
  student, settings = casc.stages[0], casc.settings[0]
  assert student.takes_guidance_weight and not casc.stages[1].takes_guidance_weight
  # The student's step count, the stage's guidance weight as a constant input.
  assert settings.num_steps == 3 and settings.guidance_schedule == "constant"
  assert settings.guidance_weight == float(config.cascade.stages.base.sample.guidance_weight)
  cond, uncond = cond_lib.stage_conditioning(student, prompts=PROMPTS, n=2,
                                             guidance_weight=2.5)
  assert uncond is None                                   # no classifier-free second pass
  np.testing.assert_array_equal(cond["guidance_weight"], [2.5, 2.5])

  base = casc.sample(PROMPTS, until="base")["base"]
  t, h, w, _ = GEOMETRY["base"]
  assert base.shape == (2, t, h, w, 3) and np.all(np.isfinite(base))
  # The cascade ran the student at the stage's weight; w reaches the network: another weight,
  # other samples from the same noise (random weights make the difference small, not zero).
  key = jax.random.fold_in(jax.random.key(settings.seed), 0)   # chunk 0 of the cascade
  again = sampler.sample_stage(student, key=key, prompts=PROMPTS, **settings.sampler_kwargs())
  np.testing.assert_array_equal(again, base)
  other = sampler.sample_stage(student, key=key, prompts=PROMPTS,
                               **dict(settings.sampler_kwargs(), guidance_weight=0.0))
  assert np.abs(other - base).max() > 1e-7


def test_distilled_spec_errors(setup):
  config, root, round_dir = setup
  assert cascade.parse_distilled("") == {}
  assert cascade.parse_distilled(f" base={round_dir} ") == {"base": round_dir}
  with pytest.raises(ValueError, match="name=<round directory>"):
    cascade.parse_distilled("base")
  with pytest.raises(ValueError, match="not stages of this cascade"):
    cascade.Cascade.from_config(config, root, text_encoder=FakeTextEncoder(),
                                devices=jax.devices()[:1], distilled={"ssr9": round_dir})
  # A student of another geometry cannot replace the stage.
  with pytest.raises(ValueError, match="samples \\(frames, height, width, fps\\)"):
    cascade.distilled_stage(config.cascade.stages.tsr1, round_dir, index=1, cascade_seed=0,
                            text_encoder=FakeTextEncoder(), devices=jax.devices()[:1])
