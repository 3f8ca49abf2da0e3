"""The procedural moving-shapes domain: coloured shapes moving on plain backgrounds.

Everything that knows the domain lives here (numpy only, but `builder`):

  grammar      vocabulary, clip specs and their motion, sampling, captions and their parser,
               flat labels (the definition of the domain, see its docstring)
  render       anti-aliased rasterization of the unit shapes, render(spec) -> uint8 clip
  builder      tfds builders `moving_shapes` and `moving_shapes_images` (array_record, no TF)
  detectors    detect(video, fps) -> Detection: the caption read back from pixels
  shape_fit    shape and size of a detected object (analysis by synthesis)
  motion       motion and speed of a detected object from its centroid track
  accuracy     caption_accuracy(predictions, targets): detections against prompts
  consistency  clip_consistency(video, detection), summarize: temporal consistency

Import the modules themselves (`from vdm_jax.data.moving_shapes import grammar`): this file
imports nothing, so that reading captions does not load tensorflow_datasets.
"""
