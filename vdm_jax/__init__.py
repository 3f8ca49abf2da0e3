"""vdm_jax: Video Diffusion Models and the Imagen Video cascade in JAX/Flax."""

__version__ = "0.1.0"
