"""Evaluation: FVD with the Kinetics-400 I3D, moving-shapes detectors, caption accuracy,
temporal consistency, video writers and the HTML gallery.

  safe_pickle   restricted unpickler (numpy arrays and plain containers only)
  i3d, fvd      Inception-I3D in Flax; I3DFeatureExtractor, frechet_distance, fvd, compute_fvd
  detectors     detect(video, fps) -> Detection (with shape_fit and motion)
  accuracy      caption_accuracy(predictions, targets)
  consistency   clip_consistency(video, detection), summarize
  gallery       write_video, write_gif, write_mp4, write_gallery
  evaluate      evaluate_videos(videos, targets, real_videos, extractor, ...)
"""
