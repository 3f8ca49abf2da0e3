"""Sequence parallelism of the video transformer on 8 fake CPU devices: the training loss and
gradients with the tokens sharded over the `sequence` mesh axis (Ulysses all-to-all, ring
attention) equal the single-device ones, and each mode really runs its collectives.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dit as dit_config
from vdm_jax import config_utils
from vdm_jax import errors
from vdm_jax import sharding
from vdm_jax.models import attention
from vdm_jax.models import registry
from vdm_jax.models.dit import presets
from vdm_jax.train import objective

B, T, HW, L = 2, 4, 8, 8          # 4 x 4 x 4 = 64 video tokens (+ 8 text tokens when joint)


def _config(mode, **model):
  c = dit_config.get_config()
  c.frames, c.height, c.width = T, HW, HW
  c.model = presets.tiny(num_heads=8, hidden_dim=48, mlp_dim=64, **model)
  c.sharding.mesh_shape = (1, 1, 1, 8) if mode != "none" else (1, 1, 1)
  c.sharding.sequence_parallel = mode
  return c


def _batch(c, seed=0):
  rng = np.random.default_rng(seed)
  mask = np.ones((B, L), bool)
  mask[0, 5:] = False
  return {"video": jnp.asarray(rng.uniform(-1, 1, (B, T, HW, HW, 3)), jnp.float32),
          "fps": jnp.full((B,), 4.0), "is_image": jnp.array([False, True]),
          "text_emb": jnp.asarray(rng.standard_normal((B, L, c.model.text_embed_dim)),
                                  jnp.float32),
          "text_mask": jnp.asarray(mask)}


def _loss_and_grads(c, params, batch):
  """(loss, grads, the lowered and the compiled program as text) of the real objective, under
  the config's mesh and rules (no mesh for 'none')."""
  loss_fn = objective.make_loss_fn(c, registry.family(c.model).module())
  fn = jax.jit(jax.value_and_grad(lambda p, b: loss_fn(p, b, jax.random.key(3))[0]))
  if c.sharding.sequence_parallel == "none":
    return (*fn(params, batch), None)
  mesh = sharding.create_mesh(c.sharding)
  rules = sharding.logical_rules(c.sharding)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    lowered = fn.lower(params, batch)
    text = lowered.as_text() + lowered.compile().as_text()
    loss, grads = fn(params, batch)
  return loss, grads, text


@pytest.fixture(scope="module", params=["cross", "joint"])
def case(request):
  c = _config("none", text_conditioning=request.param)
  model = registry.family(c.model).module()
  batch = _batch(c)
  fam = registry.family(c.model)
  params = nn.unbox(fam.init_fn(model, batch_like=batch)(jax.random.key(0)))
  # Open every gate (the init is the identity): random modulation and output layers.
  leaves, treedef = jax.tree_util.tree_flatten(params)
  rng = np.random.default_rng(1)
  leaves = [leaf + 0.2 * jnp.asarray(rng.standard_normal(leaf.shape), leaf.dtype)
            for leaf in leaves]
  params = jax.tree_util.tree_unflatten(treedef, leaves)
  loss, grads, _ = _loss_and_grads(c, params, batch)
  return request.param, params, batch, loss, grads


def test_sequence_parallel_step_equals_single_device(case):
  """Ulysses with cross-attention text, ring attention with joint text (text padding and an
  image row's frame mask travel the ring with the keys)."""
  text_mode, params, batch, loss, grads = case
  # Ulysses: XLA's all-to-alls in the compiled step; ring: our ppermute in the traced program
  # (GSPMD alone would gather the keys instead).
  mode, collective = {"cross": ("ulysses", "all-to-all"),
                      "joint": ("ring", "stablehlo.collective_permute")}[text_mode]
  c = _config(mode, text_conditioning=text_mode)
  config_utils.validate_config(c)
  sp_loss, sp_grads, hlo = _loss_and_grads(c, params, batch)
  np.testing.assert_allclose(float(sp_loss), float(loss), rtol=1e-5, atol=1e-6)
  for (path, g), s in zip(jax.tree_util.tree_leaves_with_path(grads),
                          jax.tree_util.tree_leaves(sp_grads)):
    np.testing.assert_allclose(np.asarray(s), np.asarray(g), rtol=1e-4, atol=1e-5,
                               err_msg=jax.tree_util.keystr(path))
  assert collective in hlo, f"{mode}: no {collective} in the compiled step"


def test_ring_attention_equals_attention_with_masks():
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((2, 16, 2, 6)), jnp.float32) for _ in range(3))
  mask = jnp.asarray(rng.uniform(size=(2, 1, 16, 16)) < 0.4).at[0, 0, 3].set(False)
  mesh = sharding.create_mesh(_config("ring").sharding)
  with jax.set_mesh(mesh):
    ring = jax.jit(lambda q, k, v, m: attention.ring_attention(q, k, v, mask=m,
                                                               axis_name="sequence"))
    out = ring(q, k, v, mask)
    with pytest.raises(ValueError, match="divisible by 8"):
      attention.ring_attention(q[:, :12], k, v, axis_name="sequence")
  ref = attention.dot_product_attention(q, k, v, mask=mask)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(out[0, 3]).max()) == 0.0          # a row with no key: zeros


def test_sequence_parallel_config_errors():
  c = _config("ulysses")
  c.sharding.sequence_parallel = "tree"
  with pytest.raises(errors.ConfigError, match="sequence_parallel='tree' is not one of"):
    config_utils.validate_config(c)
  c = _config("none")
  c.sharding.mesh_shape = (1, 1, 1, 8)
  with pytest.raises(errors.ConfigError, match="leaves it unused"):
    config_utils.validate_config(c)
  c = _config("ring")
  c.sharding.constrain_activations = False
  with pytest.raises(errors.ConfigError, match="constrain_activations=True"):
    config_utils.validate_config(c)


def test_sequence_parallel_shards_the_parameters_over_fsdp_and_sequence():
  rules = sharding.logical_rules(_config("ring").sharding)
  spec = sharding.logical_to_mesh_spec(("embed", "mlp"), rules)
  assert spec == jax.sharding.PartitionSpec(("fsdp", "sequence"), "tensor")
  none = sharding.logical_rules(_config("none").sharding)
  assert sharding.logical_to_mesh_spec(("embed", "mlp"), none) == jax.sharding.PartitionSpec(
      "fsdp", "tensor")
