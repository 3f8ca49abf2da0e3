"""The video diffusion transformer over spacetime patches (DiT, Latte, CogVideoX, Wan):
`model.family='dit'`.

network.py   VideoDiT, the Linen module (adaLN-Zero blocks, 3D RoPE, cross or joint text)
rope.py      3D rotary position embeddings
spec.py      DiTSpec: the `model` section read and checked (every key, before tracing)
presets.py   model sections: the default (CPU scale), a tiny one for tests, the paper models
"""
import dataclasses

from vdm_jax.models import family
from vdm_jax.models.dit import presets
from vdm_jax.models.dit.network import VideoDiT
from vdm_jax.models.dit.spec import DiTSpec

FAMILY = family.ModelFamily(
    name="dit",
    spec=DiTSpec.from_config,
    module=lambda model_cfg: VideoDiT(config=model_cfg),
    default_section=presets.default_section,
    optional={f.name: f.default for f in dataclasses.fields(DiTSpec)
              if f.name in DiTSpec.OPTIONAL},
)

__all__ = ["FAMILY", "VideoDiT", "DiTSpec", "presets"]
