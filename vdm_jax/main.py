"""The command line: `python -m vdm_jax.main --mode=MODE --config=configs/x.py[:variant] ...`.

Modes:
  build_data  build the dataset that `config.data` names into `config.data.data_dir`
  build_latents  encode that dataset once with `latent.autoencoder` into `config.data.latents`
              (a latent diffusion stage's data; per-channel statistics stored with the
              autoencoder)
  train       train one stage into --workdir (resumes from its last checkpoint)
  sample      sample --prompt=... from the stage trained in --workdir
  eval        evaluate the stage in --workdir on held-out prompts (FVD, caption accuracy); an
              autoencoder (model.family='vae'): its reconstructions of the test clips
  distill     progressive / guided distillation of the stage trained in --teacher_workdir
  inflate     write checkpoint 0 of a video stage in --workdir from the text-to-image stage
              in --config.train.init_from (Make-A-Video; then --mode=train goes on from it)

Any config value can be overridden: `--config.train.lr=1e-4 --config.train.batch_size=32`.
All logic lives in importable modules; this file only parses flags and dispatches.

Errors the user can fix (a bad config value, a missing or corrupt checkpoint, a locked work
directory, unreadable input: `vdm_jax.errors.UserError`) print as one message and exit with
status 2; a traceback means a bug (`--traceback` shows it for user errors too).
"""
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from vdm_jax import compile_cache
from vdm_jax import cpu_flags
from vdm_jax import config_utils
from vdm_jax import distill
from vdm_jax import errors
from vdm_jax import sharding
from vdm_jax import text
from vdm_jax.cli import cascade_eval
from vdm_jax.cli import latents as latents_cli
from vdm_jax.cli import stage_modes
from vdm_jax.data import build
from vdm_jax.eval import autoencoder as autoencoder_eval
from vdm_jax.models import registry
from vdm_jax.sample import cascade
from vdm_jax.train import loop

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, optionally with a variant: configs/x.py:arg.",
    lock_config=True)
_MODE = flags.DEFINE_enum(
    "mode", "train",
    ["build_data", "build_latents", "train", "sample", "eval", "distill", "inflate"],
    "What to run.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
_PROMPTS = flags.DEFINE_multi_string("prompt", [], "Prompts for --mode=sample (repeatable).")
_OUT = flags.DEFINE_string("out", None, "Output directory for sample/eval (default: workdir).")
_NUM_VIDEOS = flags.DEFINE_integer("num_videos", None, "Videos to evaluate (eval mode).")
_TEACHER = flags.DEFINE_string("teacher_workdir", None,
                               "Distill mode: the --workdir of the teacher's training run.")
_COMPILE_CACHE = flags.DEFINE_string(
    "compile_cache", None, "Persistent XLA compilation cache directory, or 'off' (default: "
    "$VDM_JAX_COMPILE_CACHE, else ~/.cache/vdm_jax/xla; vdm_jax/compile_cache.py).")
_TRACEBACK = flags.DEFINE_bool("traceback", False,
                               "Show the Python traceback of user errors too (for bug reports).")


def _require_workdir() -> str:
  if not _WORKDIR.value:
    raise app.UsageError(f"--mode={_MODE.value} needs --workdir=DIR.")
  return _WORKDIR.value


def main(argv):
  try:
    _main(argv)
  except errors.UserError as e:
    if _TRACEBACK.value:
      raise
    logging.flush()
    print(f"\nerror: {e}", file=sys.stderr)
    sys.exit(2)


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config=configs/<experiment>.py is required.")
  mode = _MODE.value
  # build_latents rewrites the latent files that the other modes check against the config.
  config_utils.validate_config(config, latent_files=mode != "build_latents")
  compile_cache.enable(_COMPILE_CACHE.value)
  logging.info("mode=%s", mode)

  if mode == "build_data":
    build.build_dataset(config)
  elif mode == "build_latents":
    latents_cli.build_latents(config)
  elif mode == "train":
    sharding.maybe_initialize_distributed()
    loop.train_and_evaluate(config, _require_workdir())
  elif mode == "inflate":
    sharding.maybe_initialize_distributed()
    loop.initialize_workdir(config, _require_workdir())
  elif mode == "sample":
    registry.family(config.model).require_denoiser("--mode=sample")
    if not _PROMPTS.value:
      raise app.UsageError('--mode=sample needs at least one --prompt="..."')
    text.check_prompts(list(_PROMPTS.value), allow_empty=False)  # before any checkpoint loads
    if cascade.is_cascade_config(config):  # --workdir is the root of the stages' workdirs
      cascade.sample_cascade(config, _require_workdir(), list(_PROMPTS.value),
                             out_dir=_OUT.value)
    else:
      stage_modes.sample_from_workdir(config, _require_workdir(), list(_PROMPTS.value),
                                      out_dir=_OUT.value)
  elif mode == "eval":
    if not registry.family(config.model).is_denoiser:   # an autoencoder: its reconstructions
      autoencoder_eval.evaluate_workdir(config, _require_workdir(), out_dir=_OUT.value,
                                        num_videos=_NUM_VIDEOS.value)
    elif cascade.is_cascade_config(config):
      cascade_eval.evaluate_cascade(config, _require_workdir(), out_dir=_OUT.value,
                                    num_videos=_NUM_VIDEOS.value)
    else:
      stage_modes.evaluate_workdir(config, _require_workdir(), out_dir=_OUT.value,
                                   num_videos=_NUM_VIDEOS.value)
  elif mode == "distill":
    registry.family(config.model).require_denoiser("--mode=distill")
    if not _TEACHER.value:
      raise app.UsageError("--mode=distill needs --teacher_workdir=DIR (the teacher's training "
                           "workdir) and --workdir=DIR for the student's rounds.")
    distill.run_distillation(config, _require_workdir(), _TEACHER.value)


if __name__ == "__main__":
  cpu_flags.apply()   # before jax starts a backend (the config files load inside app.run)
  app.run(main)
