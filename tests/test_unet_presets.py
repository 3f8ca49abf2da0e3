"""U-Net presets and the logical sharding annotations of the model (no compiles)."""
import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import default as default_config
from vdm_jax.models import axes
from vdm_jax.models import registry
from vdm_jax.models.unet import presets as unet_presets
from vdm_jax.models.unet import SpaceTimeUNet
from vdm_jax.models.unet import spec as unet_spec

_KNOWN_AXES = {axes.EMBED, axes.MLP, axes.HEADS, axes.KV, axes.NORM, axes.CONV_SPACE,
               axes.REL_BUCKETS, None}


def test_the_default_section_names_every_spec_field_and_presets_use_its_keys():
  schema = set(unet_presets.default_section().keys())
  fields = {f.name for f in dataclasses.fields(unet_spec.UNetSpec)}
  assert schema == fields | {"family"}, schema ^ (fields | {"family"})
  assert set(unet_presets.tiny().keys()) == schema
  assert set(unet_presets.imagen_video_stage("base").keys()) == schema
  assert default_config.get_config().model.family == "unet"
  assert registry.family(default_config.get_config().model).name == "unet"
  unet_spec.UNetSpec.from_config(default_config.get_config().model)


def test_imagen_video_stage_architectures():
  """Temporal attention in the base; temporal convs in the SR stages; spatial attention only
  in the base and the first two SSR stages (Imagen Video Sec. 2.3)."""
  with_spatial = set()
  for name in unet_presets.IMAGEN_VIDEO_STAGES:
    spec = unet_spec.UNetSpec.from_config(unet_presets.imagen_video_stage(name))
    if name == "base":
      assert set(spec.temporal_mixing) == {"attention"}
      assert spec.lowres_conditioning == "none" and not spec.temporal_conv_in_resblock
    else:
      assert set(spec.temporal_mixing) == {"conv"} and spec.temporal_conv_in_resblock
      assert spec.cond_aug_conditioning
      assert spec.lowres_conditioning == ("spatial" if name.startswith("ssr") else "temporal")
    if any(spec.spatial_attention):
      with_spatial.add(name)
    assert spec.text_embed_dim == unet_presets.T5_XXL_DIM
  assert with_spatial == {"base", "ssr1", "ssr2"}
  total = sum(s["published_params"] for s in unet_presets.IMAGEN_VIDEO_STAGES.values())
  assert abs(total - unet_presets.IMAGEN_VIDEO_TOTAL_PARAMS) / total < 0.01
  assert unet_presets.lowres_shape("base") is None
  assert unet_presets.lowres_shape("ssr1") == (1, 32, 24, 40, 3)
  with pytest.raises(ValueError, match="unknown Imagen Video stage"):
    unet_presets.imagen_video_stage("ssr9")


def _abstract(cfg, b=4, t=4, h=8, w=8):
  model = SpaceTimeUNet(config=cfg)
  x, logsnr, kw = registry.family(cfg).abstract_inputs(frames=t, height=h, width=w, batch=b)
  boxed = jax.eval_shape(lambda x, l, kw: model.init(jax.random.key(0), x, l, **kw),
                         x, logsnr, kw)
  return model, (x, logsnr, kw), boxed


def test_count_params_matches_the_parameter_tree():
  cfg = unet_presets.tiny()
  _, _, boxed = _abstract(cfg)
  n = sum(int(np.prod(l.shape)) for l in jax.tree_util.tree_leaves(nn.unbox(boxed)))
  assert registry.family(cfg).count_params(frames=4, height=8, width=8) == n
  # Parameters do not depend on the frame count or size.
  assert registry.family(cfg).count_params(frames=2, height=16, width=16) == n


def test_every_parameter_has_logical_axis_names():
  cfg = unet_presets.tiny(temporal_conv_in_resblock=True, guidance_weight_conditioning=True)
  _, _, boxed = _abstract(cfg)
  leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(l, nn.LogicallyPartitioned) for l in leaves)
  for leaf in leaves:
    assert len(leaf.names) == leaf.value.ndim, leaf
    assert set(leaf.names) <= _KNOWN_AXES, leaf.names
  used = {n for leaf in leaves for n in leaf.names}
  assert {axes.EMBED, axes.MLP, axes.HEADS, axes.KV, axes.REL_BUCKETS} <= used


def test_sharded_lowering_places_constraints_on_a_mesh():
  """With the default rules on a (data, fsdp, tensor) = (2, 2, 2) mesh, the parameter specs
  resolve to mesh axes and the forward pass lowers with sharding constraints."""
  cfg = unet_presets.tiny(num_heads=2, head_dim=8)
  model, (x, logsnr, kw), boxed = _abstract(cfg)
  mesh = jax.make_mesh((2, 2, 2, 1), axes.MESH_AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * 4)
  rules = axes.DEFAULT_RULES
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
  specs = [s.spec for s in jax.tree_util.tree_leaves(shardings)]
  assert any(axes.MESH_TENSOR in tuple(s) for s in specs)
  assert any(axes.MESH_FSDP in tuple(s) for s in specs)
  params = nn.unbox(boxed)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    lowered = jax.jit(lambda p, x, l, kw: model.apply(p, x, l, **kw)).lower(
        params, x, logsnr, kw)
  text = lowered.as_text()
  video = '[{"data", "fsdp"}, {}, {}, {}, {}]> : tensor<4x4x'    # [B, T, H, W, C]
  heads = '[{"data", "fsdp"}, {}, {"tensor"}, {}]>'                   # [B', L, N, D]
  assert text.count(video) >= 10
  assert text.count(heads) >= 10
