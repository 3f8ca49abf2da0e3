"""Shared by the autoencoder tests: tiny configs, small moving-square clips, and parameter trees
filled from an abstract init (no compile)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from configs import vae as vae_config
from vdm_jax.models.vae import presets

FRAMES, SIZE = 5, 8


def tiny_config(variant=None, preset="tiny", **model):
  """configs/vae.py:`variant` at FRAMES x SIZE x SIZE, whole clips (no crops), the CPU preset
  `preset`, then the `model` keys given."""
  c = vae_config.get_config(variant)
  c.frames, c.height, c.width = FRAMES, SIZE, SIZE
  c.data.crop_frames = c.data.crop_height = c.data.crop_width = 0
  c.model.update(presets.cpu(preset))
  c.model.update(model)
  return c


def clips(n, seed=0):
  """Moving squares on a flat background, [n, FRAMES, SIZE, SIZE, 3] in [-1, 1]."""
  rng = np.random.default_rng(seed)
  v = np.full((n, FRAMES, SIZE, SIZE, 3), -0.6, np.float32)
  for i in range(n):
    colour, y = rng.uniform(-1, 1, 3), rng.integers(0, SIZE - 3)
    for t in range(FRAMES):
      v[i, t, y:y + 3, t:t + 3] = colour
  return v


def random_params(abstract, seed):
  """numpy float32 arrays in the shapes of `abstract` (boxed or not): lecun-normal kernels,
  unit scales, zero biases and blend logits, so every path of the network is active."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    if path[-1].key == "scale":
      return np.ones(leaf.shape, np.float32)
    if path[-1].key in ("bias", "mix_logit"):
      return np.zeros(leaf.shape, np.float32)
    fan_in = max(int(np.prod(leaf.shape[:-1])), 1)
    return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(fill, nn.unbox(abstract))


def filled_params(fam, model, seed=0):
  """`random_params` of `model`'s init on FRAMES x SIZE x SIZE clips, as jax arrays."""
  init = fam.init_fn(model, batch_like={"video": np.zeros((2, FRAMES, SIZE, SIZE, 3))})
  return jax.tree.map(jnp.asarray, random_params(jax.eval_shape(init, jax.random.key(0)), seed))
