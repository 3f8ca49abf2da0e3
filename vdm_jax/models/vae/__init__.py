"""Video autoencoders (the latent path), `model.family='vae'`: a per-frame 2-D KL autoencoder,
Video LDM's temporal decoder, and a 3-D causal VAE (CogVideoX / Wan 2.1), with exact chunked
encode and decode.

network.py    AutoencoderKL (encoder, diagonal Gaussian posterior, decoder)
layers.py     causal 3-D convs with an explicit frame cache, resamplers, norms, blocks
chunked.py    encode / decode a long video chunk by chunk (lax.scan), chunk from a memory budget
inflate.py    a trained 2-D autoencoder -> the 3-D one
objective.py  the training loss (reconstruction + KL [+ adversarial]) and init
discriminator.py  the 3-D patch discriminator (hinge loss, R1) of adversarial training
spec.py       VAESpec: the `model` section read and checked
presets.py    paper-scale sections (SD, SVD, CogVideoX, Wan 2.1) and CPU-scale ones
"""
from vdm_jax.models import family
from vdm_jax.models.vae import objective
from vdm_jax.models.vae import presets
from vdm_jax.models.vae.network import AutoencoderKL, kl_to_standard_normal
from vdm_jax.models.vae.spec import VAESpec


def is_temporal_param(path: str) -> bool:
  """The layers Video LDM trains on a frozen per-frame autoencoder: the decoder's temporal
  residual blocks ('*_temporal'), its output time conv ('conv_out_temporal'), and the 3-D
  discriminator trained with them when there is one ('discriminator/...')."""
  parts = path.split("/")
  return parts[0] == "discriminator" or any(part.endswith("_temporal") for part in parts)


FAMILY = family.ModelFamily(
    name="vae",
    spec=VAESpec.from_config,
    module=lambda model_cfg: AutoencoderKL(VAESpec.from_config(model_cfg)),
    default_section=lambda: presets.default_section(),
    kind="autoencoder",
    objective=objective.make_loss_fn,
    init=objective.init_fn,
    config_errors=objective.section_errors,
    temporal_param=is_temporal_param,
)

__all__ = ["FAMILY", "AutoencoderKL", "VAESpec", "kl_to_standard_normal", "objective",
           "presets"]
