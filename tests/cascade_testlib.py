"""Shared test helpers: a tiny CPU cascade (configs, random checkpoints, a fake text encoder)
and a spy model that records the inputs a stage's loss gives the network."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from configs import imagen_video
from vdm_jax.models import registry
from vdm_jax.sample import cascade
from vdm_jax.train import checkpoint as ckpt_lib
from vdm_jax.train import objective
from vdm_jax.train import optimizer as optimizer_lib
from vdm_jax.train import state as state_lib

TEXT_DIM = 16
GEOMETRY = {"base": (4, 8, 8, 4.0), "tsr1": (8, 8, 8, 8.0), "ssr1": (8, 16, 16, 8.0)}
SPATIAL = {"base": (False, True), "tsr1": (False, False), "ssr1": (False, True)}



class FakeTextEncoder:
  """Deterministic per-prompt embeddings [N, 4, 16] (no weights to load)."""
  dim = TEXT_DIM

  def encode(self, prompts):
    emb = np.stack([np.random.default_rng(abs(hash(p)) % 2**32).normal(size=(4, TEXT_DIM))
                    for p in prompts]).astype(np.float32)
    return emb, np.ones(emb.shape[:2], bool)


def tiny_cascade_config(data_dir="data", stages=tuple(GEOMETRY), tsr="lowres"):
  """The CPU cascade cut after `stages` (TSR stages as `tsr`), at GEOMETRY with tiny widths."""
  c = imagen_video.cascade_config("cpu", tuple(stages), tsr=tsr)
  final = GEOMETRY[stages[-1]]
  for s in [c] + [s for _, s in cascade.stage_configs(c)]:
    d = s.data
    d.data_dir, d.source_frames, d.source_resolution = data_dir, final[0], final[1]
    d.source_fps = final[3]
    d.num_train_examples, d.num_eval_examples = 4, 4
    s.eval.fvd = False
  for name, s in cascade.stage_configs(c):
    s.frames, s.height, s.width, s.fps = GEOMETRY[name]
    m = s.model
    m.base_channels, m.channel_mult, m.spatial_attention = 8, (1, 2), SPATIAL[name]
    m.temporal_mixing = (m.temporal_mixing[0],) * 2
    m.text_cross_attention = any(SPATIAL[name])
    m.num_heads, m.head_dim, m.num_groups, m.cond_embed_dim = 2, 8, 4, 32
    m.text_embed_dim = TEXT_DIM
    s.text.max_length = 4
    s.sharding.mesh_shape = (1, 1, 1)
    s.sample.num_steps = 2
    s.data.crop_frames = s.data.crop_height = s.data.crop_width = 0
  for prev, name in zip(stages, stages[1:]):   # each SR stage reads its predecessor's geometry
    d = c.cascade.stages[name].data
    d.lowres_frames, d.lowres_height, d.lowres_width = GEOMETRY[prev][:3]
  return c


def save_random_checkpoint(config, workdir, seed=0, optimizer_state=True):
  """A step-1 checkpoint of the stage's train state with random N(0, 0.02) weights, made from
  its abstract shape (jax.eval_shape: nothing to compile); `optimizer_state=False` leaves the
  optimizer's moments zero (a small file)."""
  model = registry.family(config.model).module()
  init_fn = registry.family(config.model).init_fn(model,
                                     batch_like=registry.family(config.model).example_batch(config))
  tx = optimizer_lib.make_optimizer(config.train)
  abstract = jax.eval_shape(
      lambda k: state_lib.create_train_state(nn.unbox(init_fn(k)), tx), jax.random.key(0))
  rng = np.random.default_rng(seed)

  def fill(leaf):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      return rng.normal(0.0, 0.02, leaf.shape).astype(leaf.dtype)
    return np.zeros(leaf.shape, leaf.dtype)

  state = jax.tree.map(fill, abstract)
  if not optimizer_state:
    state = state.replace(opt_state=jax.tree.map(np.zeros_like, state.opt_state))
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  ckpt.save(1, state, None, config)
  ckpt.close()


PROMPTS = ["a large red circle moving left slowly on a black background",
           "a small blue square standing still on a white background"]


class SpyModel:
  """Stands in for the U-Net in the loss: records the inputs it is called with."""

  def __init__(self):
    self.calls = []

  def apply(self, variables, z, logsnr, **kw):
    kw.pop("train", None), kw.pop("rngs", None)
    self.calls.append(kw)
    return jnp.zeros_like(z)


def inputs_seen_by_model(config, batch):
  """The keyword inputs the training loss passes to the model (one jitted call)."""
  def run(batch):
    spy = SpyModel()
    objective.make_loss_fn(config, spy)(None, batch, jax.random.key(1))
    return spy.calls[-1]
  return jax.device_get(jax.jit(run)(batch))
