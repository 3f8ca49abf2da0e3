"""Inputs of the training loop: text conditioning (encoder + embedding store), the grain
iterator of per-host batches, and the global batch layout the step is compiled for."""
from typing import Any, Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from vdm_jax import sharding as sharding_lib
from vdm_jax import text
from vdm_jax.data import build
from vdm_jax.data import IMAGE_PREFIX
from vdm_jax.data import latents
from vdm_jax.data import pipeline
from vdm_jax.models import registry

# The batch entries the train step reads (the pipeline's debugging 'index' is left out).
TRAIN_KEYS = ("video", "fps", "is_image", "text_emb", "text_mask", "lowres")


def training_captions(config, split: str = "train") -> list[str]:
  """Every caption the pipeline can look up on `split`: the clips' captions and, for joint
  image-video training, the captions of the image rows; none with `data.captions='ignore'`."""
  if build.ignores_captions(config):
    return []
  if latents.is_latent_config(config):   # a latent stage: the captions its sidecar lists
    return list(dict.fromkeys(c for c in latents.read_meta(config.data.latents, split)["captions"]
                              if c))
  source = build.make_builder(config).as_data_source()[split]
  joint = int(config.data.images_per_video) > 0
  captions = []
  for i in range(len(source)):
    record = source[i]
    captions.append(build.decode_text(record["caption"]))
    if joint and "video" in record:
      captions.append(pipeline.image_caption(record))
  if joint and config.data.get("image_source", "frames") == "moving_shapes_images":
    images = build.make_builder(config, name="moving_shapes_images").as_data_source()[split]
    captions += [build.decode_text(images[i]["caption"])
                 for i in range(len(images))]
  return list(dict.fromkeys(c for c in captions if c))


def text_conditioning(config) -> tuple[Optional[Any], Optional[Any]]:
  """(text encoder, embedding store of the training captions), or (None, None) when the
  model reads no text. With several processes and `text.store_path`, process 0 builds and
  saves the store first and the others load it."""
  if not registry.family(config.model).needs_text:
    return None, None
  encoder = text.load_text_encoder(config.text)
  if encoder.dim != config.model.text_embed_dim:
    raise ValueError(f"text.encoder={config.text.encoder!r} gives {encoder.dim}-dim embeddings "
                     f"but model.text_embed_dim={config.model.text_embed_dim}; make them equal.")
  captions = training_captions(config)
  shared_path = bool(config.text.get("store_path", "")) and jax.process_count() > 1
  if shared_path and jax.process_index() != 0:
    multihost_utils.sync_global_devices("text_store_built")
  store = text.load_or_build_store(config.text, captions, encoder=encoder)
  if shared_path and jax.process_index() == 0:
    multihost_utils.sync_global_devices("text_store_built")
  if store.encoder is None:
    store.attach(encoder)  # captions outside the split (none expected) are encoded on the fly
  logging.info("Text store: %d captions, [L=%d, D=%d].", len(store), store.max_length, store.dim)
  return encoder, store


def make_data_iterator(config, text_store):
  """The checkpointable grain iterator of this process's rows of each global batch."""
  return pipeline.make_train_iterator(config, split="train", text_store=text_store,
                                      process_index=jax.process_index(),
                                      process_count=jax.process_count())


def select(host_batch: dict) -> dict:
  """The entries of a pipeline batch that the train step reads (the extra images of joint
  training, under IMAGE_PREFIX, included)."""
  def wanted(k):
    return k.removeprefix(IMAGE_PREFIX) in TRAIN_KEYS
  return {k: v for k, v in host_batch.items() if wanted(k)}


def global_batch_spec(host_batch: dict, mesh, rules) -> dict:
  """ShapeDtypeStructs (global shape, batch sharding) of the step's batch argument."""
  n = jax.process_count()
  return {k: jax.ShapeDtypeStruct((v.shape[0] * n,) + v.shape[1:], np.asarray(v).dtype,
                                  sharding=sharding_lib.batch_sharding(mesh, rules, v.ndim))
          for k, v in select(host_batch).items()}
