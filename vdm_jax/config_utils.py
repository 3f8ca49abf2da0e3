"""Config helpers: variant arguments (`configs/x.py:key=value,...`) and checks before compiling.

`validate_config` is called by every entry point before anything is traced, so that a wrong
value fails in a second with a message that says what is wrong and what to do, instead of deep
inside an XLA compile.
"""
from __future__ import annotations

import ast
from typing import Dict

from vdm_jax import errors as errors_lib
from vdm_jax import sharding
from vdm_jax.data import build
from vdm_jax.data import latents
from vdm_jax.diffusion import config_checks
from vdm_jax.eval import evaluators
from vdm_jax.models import registry
from vdm_jax.text import encoder
from vdm_jax.train import config_checks as train_checks

STAGE_KINDS = ("base", "ssr", "tsr")


def parse_variant(arg: str | None) -> Dict[str, str]:
  """Parses a config variant string `key=value,key2=value2` (or a bare `name`) into a dict."""
  out: Dict[str, str] = {}
  if not arg:
    return out
  for part in arg.split(","):
    part = part.strip()
    if not part:
      continue
    if "=" in part:
      k, v = part.split("=", 1)
      out[k.strip()] = v.strip()
    else:
      out[part] = "true"
  return out


def apply_overrides(config, items) -> None:
  """Sets `key.path=value` strings on a config in place; values are Python literals when they
  parse as one (`3e-4`, `(1, 2)`, `True`), strings otherwise."""
  for item in items:
    key, _, value = item.partition("=")
    *path, last = key.split(".")
    node = config
    for part in path:
      node = node[part]
    try:
      node[last] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      node[last] = value


ConfigError = errors_lib.ConfigError   # re-exported: callers catch config_utils.ConfigError


def validate_config(config, *, latent_files: bool = True) -> None:
  """Checks a full experiment config; raises ConfigError naming every bad key and its fix.

  Each section is checked by the code that owns it: the model family (`model`, and the video
  geometry it can take), the diffusion math (`diffusion`, the sampler keys of `sample`), the
  text encoder (`text`), training (`train`, and the objective's keys spanning sections), the
  data pipeline (`data`; for a latent stage its keys and, with `latent_files`, the built latent
  dataset against the stage's geometry) and the evaluators (`eval`).
  """
  errors = []
  if config.get("stage") not in STAGE_KINDS:
    errors.append(f"stage={config.get('stage')!r} is not one of {STAGE_KINDS}")
  model_errors = registry.validate(config.model)
  errors += model_errors
  if not model_errors:
    fam = registry.family(config.model)
    errors += fam.geometry_errors(frames=config.frames, height=config.height,
                                  width=config.width)
    errors += encoder.section_errors(config.text, needs_text=fam.needs_text)
    errors += sharding.section_errors(config.sharding, model_family=fam.name)
    if fam.family.config_errors is not None:
      errors += fam.family.config_errors(config)
  errors += config_checks.diffusion_errors(config.diffusion)
  errors += config_checks.sampler_errors(config.sample)
  errors += train_checks.train_errors(config)
  if not model_errors:
    errors += train_checks.frame_mask_errors(config) + train_checks.residual_errors(config)
  errors += build.validate_data_config(config)
  errors += latents.config_errors(config, check_files=latent_files)
  errors += evaluators.validate_eval_config(config)
  if errors:
    raise ConfigError("Invalid config:\n  - " + "\n  - ".join(errors))
