"""Video autoencoders (the latent path): a per-frame 2-D KL autoencoder, Video LDM's temporal
decoder, and a 3-D causal VAE (CogVideoX / Wan 2.1), with exact chunked encode and decode."""
from vdm_jax.models.vae.network import AutoencoderKL, kl_to_standard_normal
from vdm_jax.models.vae.spec import VAESpec

__all__ = ["AutoencoderKL", "VAESpec", "kl_to_standard_normal"]
