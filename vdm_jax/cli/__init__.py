"""The command line's modes outside the library core (the top layer: it may import every other).

  stage_modes    the `sample` and `eval` modes of one trained stage: sample_from_workdir,
                 evaluate_workdir
  cascade_eval   the `eval` mode of a cascade (every stage scored on held-out prompts, one
                 gallery page) and its pieces the demo shows: real clips of a prompt, detector
                 scores per stage, gallery entries
  latents        the `build_latents` mode: a latent stage's dataset encoded once by its
                 frozen autoencoder, the per-channel statistics stored with the autoencoder

`python -m vdm_jax.main` (flags and dispatch) and `python -m vdm_jax.demo` use them.
"""
