"""Evaluation: the evaluators `eval.metrics` chooses (FVD with the Kinetics-400 I3D, the
moving-shapes detectors' caption accuracy and consistency).

  safe_pickle   restricted unpickler (numpy arrays and plain containers only)
  i3d, fvd      Inception-I3D in Flax; I3DFeatureExtractor, frechet_distance, fvd, fvd_of
  evaluators    the registry of evaluators (fvd, moving_shapes), metrics_from_config,
                validate_eval_config
  evaluate      evaluate_videos(videos, targets, real_videos, extractor, metrics=...)

The moving-shapes detectors, caption accuracy and consistency are in `vdm_jax.data.moving_shapes`;
video files and the HTML gallery in `vdm_jax.media`; the cascade's eval mode in
`vdm_jax.cli.cascade_eval`.
"""
