"""Datasets and input pipelines.

moving_shapes the procedural moving-shapes domain (package): caption grammar, renderer, tfds
              builders `moving_shapes` / `moving_shapes_images`, detectors, caption accuracy
video_folder  tfds builder `video_folder` for a directory of the user's captioned videos
image_folder  tfds builder `image_folder` for a directory of the user's captioned images
video_io      video decoding, frame picking by timestamp, resizing and cropping
build         build_dataset / make_builder / load_split_examples for an experiment config
pipeline      grain pipelines: make_train_iterator, to_global_batch
latents       latent datasets of a frozen autoencoder (safetensors + a checked JSON sidecar) and
              their per-channel statistics, for latent diffusion stages
"""

# Batch keys of the extra images of joint image-video training ("images/video", ...): see
# `pipeline` (how they are made) and `vdm_jax.train.objective.split_joint_batch` (how they train).
IMAGE_PREFIX = "images/"
