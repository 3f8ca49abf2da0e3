"""Model families by name: `config.model.family` -> its `ModelFamily` (see family.py).

    fam = registry.family(config.model)     # the family bound to this section (validated)
    model = fam.module()

Adding a family: a folder `vdm_jax/models/<name>/` whose `__init__` exposes `FAMILY`, and one
line in FAMILIES below. A section without a `family` key is a U-Net's (every config written
before families existed).
"""
from typing import Any, Mapping

from vdm_jax.models import dit
from vdm_jax.models import family as family_lib
from vdm_jax.models import unet
from vdm_jax.models import vae

FAMILIES: dict[str, family_lib.ModelFamily] = {f.name: f for f in (unet.FAMILY, dit.FAMILY, vae.FAMILY)}
DEFAULT_FAMILY = "unet"


def family_name(model_cfg: Mapping[str, Any]) -> str:
  return model_cfg.get("family", DEFAULT_FAMILY)


def family_def(model_cfg: Mapping[str, Any]) -> family_lib.ModelFamily:
  """The `ModelFamily` that `model_cfg` names; ValueError listing the known ones."""
  name = family_name(model_cfg)
  if name not in FAMILIES:
    raise ValueError(f"model.family = {name!r} is not a known model family; use one of "
                     f"{tuple(FAMILIES)}")
  return FAMILIES[name]


def family(model_cfg) -> family_lib.ModelInterface:
  """The family of `model_cfg` bound to it (the section is validated: ValueError naming the
  bad key)."""
  fam = family_def(model_cfg)
  return family_lib.ModelInterface(family=fam, config=model_cfg, spec=fam.spec(model_cfg))


def validate(model_cfg) -> list[str]:
  """The problems of a `model` section (empty when it is valid)."""
  try:
    fam = family_def(model_cfg)
  except ValueError as e:
    return [str(e)]
  return fam.validate(model_cfg)


def with_optional_keys(model_section: Mapping[str, Any]) -> dict:
  """A saved `model` section with the keys it predates at the values it was trained with
  (including `family`)."""
  out = dict(model_section)
  out.setdefault("family", DEFAULT_FAMILY)
  return family_def(out).with_optional_keys(out)
