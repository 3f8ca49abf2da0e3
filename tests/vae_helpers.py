"""Shared by the autoencoder tests: small moving-square clips and a filled-in parameter tree."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

FRAMES, SIZE = 5, 8


def clips(n, seed=0):
  """Moving squares on a flat background, [n, FRAMES, SIZE, SIZE, 3] in [-1, 1]."""
  rng = np.random.default_rng(seed)
  v = np.full((n, FRAMES, SIZE, SIZE, 3), -0.6, np.float32)
  for i in range(n):
    colour, y = rng.uniform(-1, 1, 3), rng.integers(0, SIZE - 3)
    for t in range(FRAMES):
      v[i, t, y:y + 3, t:t + 3] = colour
  return v


def filled_params(fam, model, seed=0):
  """The abstract init (no compile) filled with numpy draws (lecun-normal kernels, unit
  scales, zero biases and blend logits): every path of the network active."""
  init = fam.init_fn(model, batch_like={"video": np.zeros((2, FRAMES, SIZE, SIZE, 3))})
  abstract = nn.unbox(jax.eval_shape(init, jax.random.key(0)))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    if path[-1].key == "scale":
      return jnp.ones(leaf.shape, jnp.float32)
    if path[-1].key in ("bias", "mix_logit"):
      return jnp.zeros(leaf.shape, jnp.float32)
    fan_in = max(int(np.prod(leaf.shape[:-1])), 1)
    return jnp.asarray(rng.standard_normal(leaf.shape) / np.sqrt(fan_in), jnp.float32)
  return jax.tree_util.tree_map_with_path(fill, abstract)
