"""The seven Imagen Video stage configs (paper and CPU scale): per-stage choices and shape chains.

Paper-scale models are only traced (jax.eval_shape): nothing is allocated.
"""
import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import demo, imagen_video
from vdm_jax import config_utils
from vdm_jax.data import pipeline
from vdm_jax.models import registry
from vdm_jax.models.unet import presets as unet_presets
from vdm_jax.sample import cascade

ORDER = imagen_video.STAGE_ORDER


@pytest.mark.parametrize("scale", ["paper", "cpu"])
@pytest.mark.parametrize("name", ORDER)
def test_stage_follows_the_papers_choices(name, scale):
  c = imagen_video.stage_config(name, scale)
  config_utils.validate_config(c)
  m, kind = c.model, unet_presets.IMAGEN_VIDEO_STAGES[name]["kind"]
  assert c.stage == kind
  assert c.diffusion.prediction == "v"
  if kind == "base":
    assert set(m.temporal_mixing) == {"attention"}
    assert not m.temporal_conv_in_resblock and m.lowres_conditioning == "none"
    assert not m.cond_aug_conditioning
  else:  # temporal convs, conditioning augmentation, the previous stage's video as input
    assert set(m.temporal_mixing) == {"conv"} and m.temporal_conv_in_resblock
    assert m.cond_aug_conditioning and 0 < c.train.cond_aug_max_t <= 1
    assert m.lowres_conditioning == ("spatial" if kind == "ssr" else "temporal")
    assert c.sample.cond_aug_logsnr < c.diffusion.logsnr_max  # some noise when sampling
  assert any(m.spatial_attention) == (name in ("base", "ssr1", "ssr2"))
  assert m.text_cross_attention == any(m.spatial_attention)
  assert (c.frames, c.height, c.width, c.fps) == imagen_video.geometry(name, scale)
  # Crops cut only where the model has no attention along that axis, and chain correctly.
  g = pipeline.stage_geometry(c)
  if g.cropped:
    assert kind != "base"
    assert g.window[1:] == (c.height, c.width) or not any(m.spatial_attention)
  if scale == "paper":
    assert c.model.dtype == "bfloat16" and c.text.encoder == "t5"


def _apply_shape(config, x_shape, lowres_shape):
  """(output shape, parameter count) of one stage's model traced with jax.eval_shape (no
  allocation)."""
  fam = registry.family(config.model)
  model = fam.module()
  x, logsnr, kw = fam.abstract_inputs(frames=x_shape[1], height=x_shape[2], width=x_shape[3],
                                      lowres=lowres_shape)
  def run(x, logsnr, kw):  # one trace: the output of the init pass
    return model.init_with_output(jax.random.key(0), x, logsnr, **kw)
  out, variables = jax.eval_shape(run, x, logsnr, kw)
  leaves = jax.tree_util.tree_leaves(nn.unbox(variables["params"]))
  return out.shape, sum(int(np.prod(leaf.shape)) for leaf in leaves)


@pytest.mark.parametrize("scale", ["paper", "cpu"])
def test_stage_shapes_chain(scale):
  c = imagen_video.get_config(f"cascade,scale={scale}")
  named = cascade.stage_configs(c)
  assert [n for n, _ in named] == list(ORDER)
  cascade.check_chain(named)
  prev = None
  for name, s in named:
    shape = (1, s.frames, s.height, s.width, 3)
    out, n_params = _apply_shape(s, shape, prev)
    assert out == shape, name
    if scale == "paper":   # the paper's parameter count per stage (Fig. 6), within 10%
      published = unet_presets.IMAGEN_VIDEO_STAGES[name]["published_params"]
      assert abs(n_params / published - 1) < 0.1, (name, n_params, published)
      assert shape[1:4] == tuple(unet_presets.IMAGEN_VIDEO_STAGES[name][k]
                                 for k in ("frames", "height", "width"))
      if prev is not None:
        assert prev == unet_presets.lowres_shape(name)
    prev = out
  assert prev == ((1, 128, 768, 1280, 3) if scale == "paper" else (1, 64, 128, 128, 3))


def test_check_chain_names_the_broken_link():
  c = imagen_video.get_config("cascade,scale=cpu,stages=base+tsr1+ssr1")
  c.cascade.stages.ssr1.data.lowres_height = 8
  with pytest.raises(ValueError, match=r"ssr1 \(ssr\).*lowres_height"):
    cascade.check_chain(cascade.stage_configs(c))
  c = imagen_video.get_config("cascade,scale=cpu,stages=base+tsr1")
  c.cascade.stages.tsr1.fps = 6.0
  with pytest.raises(ValueError, match=r"tsr1 \(tsr\).*whole multiple"):
    cascade.check_chain(cascade.stage_configs(c))
  c.cascade.stages.tsr1.fps = 8.0
  c.cascade.stages.tsr1.data.lowres_width = 8
  with pytest.raises(ValueError, match=r"tsr1 \(tsr\).*lowres_height/width"):
    cascade.check_chain(cascade.stage_configs(c))
  with pytest.raises(ValueError, match="first stage must be a base"):
    cascade.check_chain(cascade.stage_configs(c)[1:])


def test_variants_and_their_errors():
  c = imagen_video.get_config("cascade,scale=cpu,stages=base+tsr1+ssr1")
  assert tuple(c.cascade.order) == ("base", "tsr1", "ssr1")
  assert (c.frames, c.height, c.width) == (16, 32, 32)  # the top level is the final stage
  for _, s in cascade.stage_configs(c):  # one dataset at the final stage's geometry
    assert (s.data.source_frames, s.data.source_resolution, s.data.source_fps) == (16, 32, 8.0)
  assert imagen_video.get_config("stage=ssr2,scale=paper").height == 192
  with pytest.raises(ValueError, match="prefix"):
    imagen_video.get_config("cascade,stages=base+ssr1")
  with pytest.raises(ValueError, match="Unknown variant keys"):
    imagen_video.get_config("stage=base,sclae=cpu")
  with pytest.raises(ValueError, match="Unknown Imagen Video stage"):
    imagen_video.get_config("stage=ssr9")


def test_demo_config_is_a_valid_three_stage_cascade():
  c = demo.get_config()
  named = cascade.stage_configs(c)
  assert [n for n, _ in named] == list(demo.STAGES)
  cascade.check_chain(named)
  for _, s in named:
    config_utils.validate_config(s)
    pipeline.stage_geometry(s)  # crops and lowres sizes are consistent
    assert s.text.store_path == named[0][1].text.store_path  # embeddings encoded once
  # The base samples stochastically; its distilled student replays DDIM steps, so it does not.
  from vdm_jax import demo as demo_lib  # pylint: disable=g-import-not-at-top
  assert c.cascade.stages["base"].sample.eta == 1.0
  student = demo_lib.distill_config(c, 1.0)
  assert (student.sample.sampler, student.sample.eta) == ("ddim", 0.0)
  # The demo prompts stay inside the demo's vocabulary (what its data teach).
  from vdm_jax.data.moving_shapes import grammar  # pylint: disable=g-import-not-at-top
  vocab = grammar.check_vocabulary({k: tuple(v) for k, v in c.data.vocabulary.items()})
  for prompt in c.sample.prompts:
    parsed = grammar.parse_caption(prompt)
    assert parsed["background"] in vocab["background"]
    for obj in parsed["objects"]:
      for kind in ("shape", "color", "size", "motion", "speed"):
        assert obj[kind] is None or obj[kind] in vocab[kind], (prompt, kind)
