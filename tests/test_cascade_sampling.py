"""Conditioning augmentation (training and sampling) and a tiny cascade sampled end to end.

The tiny cascade (base 4x8x8 -> tsr 8x8x8 -> ssr 8x16x16) is built from the CPU-scale stage
configs with small widths; each stage's train state (random weights) is saved as an orbax
checkpoint, so `Cascade.from_config` restores EMA parameters exactly as after training.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cascade_testlib import (GEOMETRY, PROMPTS, FakeTextEncoder, inputs_seen_by_model,
                             save_random_checkpoint, tiny_cascade_config)
from configs import imagen_video
from vdm_jax import diffusion
from vdm_jax.cli import cascade_eval
from vdm_jax.data import build
from vdm_jax.models import registry
from vdm_jax.sample import cascade, sampler
from vdm_jax.sample import conditioning as cond_lib
from vdm_jax.sample import stage as stage_lib


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("cascade"))
  config = tiny_cascade_config(os.path.join(root, "data"))
  for name, c in cascade.stage_configs(config):
    save_random_checkpoint(c, cascade.stage_workdir(root, name))
  loaded = cascade.Cascade.from_config(config, root, text_encoder=FakeTextEncoder(),
                                       devices=jax.devices()[:1])
  return config, root, loaded


def test_tiny_cascade_samples_end_to_end(tiny, tmp_path):
  """One test for everything that needs the loaded tiny cascade (one load per xdist worker)."""
  config, root, casc = tiny
  assert [s.step for s in casc.stages] == [1, 1, 1]
  # Per-stage settings come from each stage's config.
  base, tsr, _ = casc.settings
  assert base.cond_aug_logsnr is None and tsr.cond_aug_logsnr == 3.0
  assert [s.seed for s in casc.settings] == [0, 1, 2]     # cascade seed + stage index
  assert base.guidance_schedule == "oscillating" and base.num_steps == 2

  out = cascade.sample_cascade(config, root, PROMPTS, out_dir=str(tmp_path / "cli"),
                               cascade=casc)
  videos = out["videos"]
  assert list(videos) == ["base", "tsr1", "ssr1"]
  for name, (t, h, w, _) in GEOMETRY.items():
    assert videos[name].shape == (2, t, h, w, 3)
    assert np.all(np.isfinite(videos[name])) and np.abs(videos[name]).max() <= 1.0 + 1e-5
  for d in ("0_base", "1_tsr1", "2_ssr1", "final"):
    for f in ("000.gif", "001.mp4", "prompts.txt"):
      assert os.path.getsize(tmp_path / "cli" / d / f) > 0, (d, f)
  again = casc.sample(PROMPTS)
  np.testing.assert_array_equal(again["ssr1"], videos["ssr1"])   # seeded: reproducible
  other = casc.sample(PROMPTS, seed=5, until="base")
  assert list(other) == ["base"] and not np.allclose(other["base"], videos["base"])

  # Batched sampling: chunks of the cascade's shape reuse its compiled sampler.
  stage = casc.stages[0]
  assert len(stage.jit_cache) == 1
  out = sampler.sample_stage_batched(stage, key=jax.random.key(3),
                                     prompts=PROMPTS * 2 + PROMPTS[:1], batch_size=2,
                                     **base.sampler_kwargs())
  assert out.shape == (5, 4, 8, 8, 3) and len(stage.jit_cache) == 1

  # Shared initial noise (Make-A-Video): one noise frame per video repeated over time.
  noise = cond_lib.shared_frame_noise(jax.random.key(0), (2, 4, 8, 8, 3))
  np.testing.assert_array_equal(noise[:, 0], noise[:, 3])
  assert not np.allclose(noise[0], noise[1])
  key = jax.random.key(7)
  kw = dict(key=key, prompts=PROMPTS, **base.sampler_kwargs())
  kw.pop("shared_init_noise")
  shared = sampler.sample_stage(stage, shared_init_noise=True, **kw)
  explicit = sampler.sample_stage(stage, init_noise=cond_lib.shared_frame_noise(
      jax.random.fold_in(key, 2), shared.shape), **kw)
  np.testing.assert_allclose(shared, explicit, atol=1e-6)
  assert not np.allclose(shared, sampler.sample_stage(stage, **kw))  # i.i.d. noise differs

  # Evaluation on held-out prompts: every stage scored, one gallery page.
  build.build_dataset(casc.final.config)
  scores = cascade_eval.evaluate_cascade(config, root, out_dir=str(tmp_path / "eval"),
                                         cascade=casc, num_videos=2)
  assert set(scores["stages"]) == {"base", "tsr1", "ssr1"} and scores["num_videos"] == 2
  assert 0.0 <= scores["stages"]["ssr1"]["caption_accuracy"]["color"] <= 1.0
  # Real clips at the final geometry are read by the detectors (the accuracy ceiling).
  assert scores["real"]["caption_accuracy"]["color"] == 1.0
  page = (tmp_path / "eval" / "index.html").read_text()
  for i in range(2):
    for name in ("base", "tsr1", "ssr1", "real"):
      assert f"gifs/test_{i:03d}_{name}.gif" in page
  assert "caption accuracy (detectors), per stage" in page
  # eval.metrics without 'moving_shapes' (a video_folder cascade): no detector reads anything.
  config.eval.metrics, config.eval.fvd = ("fvd",), False
  fvd_only = cascade_eval.evaluate_cascade(config, root, out_dir=str(tmp_path / "eval_fvd"),
                                           cascade=casc, num_videos=2)
  assert fvd_only["stages"] == {} and "real" not in fvd_only and "fvd" not in fvd_only
  assert fvd_only["num_videos"] == 2


# ----------------------------------------------------------------------------- conditioning aug


def _eps_of(noisy, clean, logsnr):
  alpha, sigma = diffusion.alpha_sigma(jnp.asarray(logsnr).reshape(-1, 1, 1, 1, 1))
  return np.asarray((noisy - alpha * clean) / sigma)


@pytest.mark.parametrize("name", [n for n in imagen_video.STAGE_ORDER if n != "base"])
def test_every_sr_stage_trains_on_noise_augmented_lowres(name):
  c = imagen_video.stage_config(name, "cpu")
  c.text.max_length = 2
  b = 4
  batch = registry.family(c.model).example_batch(c, b)
  batch["lowres"] = np.full(batch["lowres"].shape, 0.5, np.float32)
  kw = inputs_seen_by_model(c, batch)
  schedule = diffusion.schedule_from_config(c.diffusion, resolution=c.height)
  level = np.asarray(kw["cond_aug_logsnr"])
  assert level.shape == (b,) and len(set(level.round(4))) == b          # a level per example
  assert np.all(level <= c.diffusion.logsnr_max + 1e-4)
  assert np.all(level >= float(schedule(c.train.cond_aug_max_t)) - 1e-4)  # t_aug <= max_t
  eps = _eps_of(kw["lowres_video"], batch["lowres"], level)
  assert abs(eps.mean()) < 0.05 and abs(eps.std() - 1.0) < 0.05         # z = alpha x + sigma eps


def test_base_stage_gets_no_augmentation():
  c = imagen_video.stage_config("base", "cpu")
  c.text.max_length = 2
  kw = inputs_seen_by_model(c, registry.family(c.model).example_batch(c, 2))
  assert "cond_aug_logsnr" not in kw and "lowres_video" not in kw


def test_sampling_noises_lowres_to_the_chosen_level():
  c = tiny_cascade_config().cascade.stages.ssr1
  stage = stage_lib.Stage(config=c, model=None, params=None, step=0, mesh=None,
                          param_shardings=None, text_encoder=FakeTextEncoder())
  lowres = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 8, 3)).astype(np.float32)
  key = jax.random.key(4)
  for level in (0.0, 3.0):
    cond, uncond = cond_lib.stage_conditioning(stage, prompts=PROMPTS, n=2, lowres=lowres,
                                               cond_aug_logsnr=level, aug_key=key)
    np.testing.assert_array_equal(cond["cond_aug_logsnr"], [level, level])
    eps = _eps_of(cond["lowres_video"], lowres, [level, level])
    assert abs(eps.mean()) < 0.05 and abs(eps.std() - 1.0) < 0.05
    np.testing.assert_array_equal(uncond["lowres_video"], cond["lowres_video"])  # same input
    assert not uncond["text_mask"].any()
  cond, _ = cond_lib.stage_conditioning(stage, prompts=PROMPTS, n=2, lowres=lowres, aug_key=key)
  assert cond["cond_aug_logsnr"][0] == c.sample.cond_aug_logsnr  # the config's level
  with pytest.raises(ValueError, match="aug_key"):
    cond_lib.stage_conditioning(stage, prompts=PROMPTS, n=2, lowres=lowres)
  with pytest.raises(ValueError, match="previous stage's video"):
    cond_lib.stage_conditioning(stage, prompts=PROMPTS, n=2, aug_key=key)


def test_prompt_clips_render_what_the_prompt_says():
  from vdm_jax.data.moving_shapes import grammar  # pylint: disable=g-import-not-at-top
  for i, p in enumerate(PROMPTS):
    spec = cascade_eval.spec_for_prompt(p, frames=16, height=32, width=32, fps=8.0, seed=i)
    assert grammar.caption(spec) == p
  assert cascade_eval.real_clip_for_prompt(PROMPTS[0], frames=16, height=32, width=32,
                                           fps=8.0).shape == (16, 32, 32, 3)
  assert cascade_eval.spec_for_prompt("a dog", frames=16, height=32, width=32, fps=8.0) is None
