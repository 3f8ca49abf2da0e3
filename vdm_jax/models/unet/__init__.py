"""The factorized space-time U-Net (Video Diffusion Models, Imagen Video): `model.family='unet'`.

network.py   SpaceTimeUNet, the Linen module
spec.py      UNetSpec: the `model` section read and checked (every key, before tracing)
presets.py   model sections: the default, a tiny one for tests, the seven Imagen Video stages
"""
import dataclasses

from vdm_jax.models import family
from vdm_jax.models.unet import presets
from vdm_jax.models.unet import spec
from vdm_jax.models.unet.network import SpaceTimeUNet
from vdm_jax.models.unet.spec import UNetSpec

FAMILY = family.ModelFamily(
    name="unet",
    spec=UNetSpec.from_config,
    module=lambda model_cfg: SpaceTimeUNet(config=model_cfg),
    default_section=presets.default_section,
    optional={f.name: f.default for f in dataclasses.fields(UNetSpec)
              if f.name in UNetSpec.OPTIONAL},
    temporal_param=spec.is_temporal_param,
    zero_when_inflated=spec.zero_when_inflated,
)

__all__ = ["FAMILY", "SpaceTimeUNet", "UNetSpec", "presets"]
