"""Sampling trained stages: loading them, their conditioning, the sampler, the cascade, and
conditional generation by reconstruction guidance.

  stage         Stage (a trained stage ready to sample), is_sr_config, is_interpolation_stage,
                make_stage, load_stage / load_stage_from_workdir (EMA parameters restored by
                vdm_jax.train.checkpoint.restore_ema_params)
  conditioning  a stage's model inputs: stage_conditioning (text, fps, lowres or known frames,
                conditioning augmentation, guidance weight), cond_aug_level, known_frames,
                initial_noise / shared_frame_noise
  sampler       sample_stage (one jitted sampler per shape and settings, cached on the Stage;
                the sampler itself is vdm_jax.train.stage_sampler), sample_stage_batched,
                fill_masked_frames
  cascade       Cascade: base -> TSR / SSR stages from a cascade config, StageSampling,
                distilled students in place of stages, sample_cascade (the cascade's sample
                mode)
  conditional   sample_observed, extend_video, fill_frames, super_resolve_by_guidance (VDM's
                reconstruction guidance, or replacement)

The command line's sample / eval modes are in vdm_jax/cli; exported cascades (safetensors) load
through vdm_jax/export.py into the same Stage and Cascade.
"""
