"""Joint image-video training (VDM section 4.2): the extra images of a batch train as
one-frame videos beside the clips. The pipeline side (how the images are made and packed) is
tested in test_data_pipeline.py; the U-Net's per-frame image path in test_unet.py.

Compiles: one loss gradient of a one-level U-Net with temporal attention and temporal convs
(two groups: the clips and the images), and the cost analyses of three lowered losses.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from configs import distill as distill_configs
from vdm_jax.distill import settings as distill_settings
from vdm_jax.models import registry
from vdm_jax.models.unet import presets as unet_presets
from vdm_jax.train import inputs
from vdm_jax.train import objective
from vdm_jax.train import step as sp

B, K, T, H, W, C, L, D = 4, 2, 4, 8, 8, 3, 5, 16


def joint_config():
  c = default.get_config()
  c.frames, c.height, c.width = T, H, W
  c.model = unet_presets.tiny(channel_mult=(1,), spatial_attention=(False,),
                              temporal_mixing=("attention",), temporal_conv_in_resblock=True,
                              text_cross_attention=False, text_pooled_conditioning=True,
                              fps_conditioning=True)
  c.data.images_per_video = K
  return c


def joint_batch(seed=0, videos=B, images=B * K):
  rng = np.random.default_rng(seed)
  batch = {"video": rng.uniform(-1, 1, (videos, T, H, W, C)).astype(np.float32),
           "fps": np.full((videos,), 4.0, np.float32), "is_image": np.zeros((videos,), bool),
           "text_emb": rng.standard_normal((videos, L, D)).astype(np.float32),
           "text_mask": np.ones((videos, L), bool)}
  if images:
    batch.update({
        "images/video": rng.uniform(-1, 1, (images, 1, H, W, C)).astype(np.float32),
        "images/fps": np.zeros((images,), np.float32),
        "images/is_image": np.ones((images,), bool),
        "images/text_emb": rng.standard_normal((images, L, D)).astype(np.float32),
        "images/text_mask": np.ones((images, L), bool),
        "images/index": np.arange(images, dtype=np.int32)})
  return batch


@pytest.fixture(scope="module")
def setup():
  config = joint_config()
  model = registry.family(config.model).module()
  batch = inputs.select(joint_batch())
  init = registry.family(config.model).init_fn(model, batch_like=batch)
  rng = np.random.default_rng(3)
  params = jax.tree.map(lambda a: jnp.asarray(0.1 * rng.standard_normal(a.shape), a.dtype),
                        nn.unbox(jax.eval_shape(init, jax.random.key(0))))
  loss_fn = objective.make_loss_fn(config, model)
  return config, model, params, loss_fn, batch


def test_select_keeps_the_image_rows_but_not_their_index():
  batch = inputs.select(joint_batch())
  assert "images/video" in batch and "images/text_emb" in batch
  assert "images/index" not in batch and "index" not in batch


def test_images_join_the_loss_without_changing_the_clips_part(setup):
  config, model, params, loss_fn, batch = setup
  key = jax.random.key(7)
  value_and_grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  (loss, aux), grads = value_and_grad(params, batch, key)
  videos, images = objective.split_joint_batch(batch)
  assert sorted(images) == ["fps", "is_image", "text_emb", "text_mask", "video"]
  per_example = np.asarray(aux["loss_per_example"])
  assert per_example.shape == (B + B * K,)
  np.testing.assert_array_equal(aux["row_is_image"], [False] * B + [True] * (B * K))
  # the loss is the mean over every row, clips and images alike
  assert float(loss) == pytest.approx(per_example.mean(), rel=1e-5)
  # the clips' rows are exactly what a batch without images gives with the same key
  (_, vid_aux) = jax.jit(loss_fn)(params, videos, key)
  np.testing.assert_allclose(per_example[:B], vid_aux["loss_per_example"], rtol=1e-5)
  # every image row contributes to the gradient, through the same weights
  assert np.all(np.isfinite(per_example)) and np.all(per_example[B:] > 0)
  assert float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(grads))) > 0
  # each image's loss depends on its own caption (text reaches the image rows)
  other = dict(batch, **{"images/text_emb": batch["images/text_emb"][::-1]})
  (_, aux2) = jax.jit(loss_fn)(params, other, key)
  assert not np.allclose(aux2["loss_per_example"][B:], per_example[B:])
  np.testing.assert_allclose(aux2["loss_per_example"][:B], per_example[:B], rtol=1e-6)


def test_an_image_costs_one_frame_not_a_clip(setup):
  """FLOPs of the loss gradient: clips alone, clips + K single-frame images per clip (VDM's
  packing), and the same images tiled over T frames as whole rows."""
  config, model, params, loss_fn, batch = setup
  videos, _ = objective.split_joint_batch(batch)
  tiled = joint_batch(videos=B * (K + 1), images=0)
  tiled["is_image"] = np.arange(B * (K + 1)) >= B
  grad = jax.jit(jax.grad(lambda p, b, k: loss_fn(p, b, k)[0]))

  def flops(b):
    cost = grad.lower(params, b, jax.random.key(0)).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])

  clips, packed, whole_rows = flops(videos), flops(batch), flops(inputs.select(tiled))
  # K images per clip of T frames: about K / T = 0.5 of the clips' compute, not K = 2 clips
  assert 1.3 * clips < packed < 1.7 * clips
  assert whole_rows > 2.7 * clips


def test_accumulated_microbatches_keep_rows_and_flags_aligned(setup):
  _, _, params, loss_fn, batch = setup
  batch = jax.tree.map(jnp.asarray, batch)
  loss, per_example, is_image, _, _ = jax.jit(
      lambda p, b: sp._grads(p, b, jax.random.key(1), loss_fn, 2))(params, batch)  # pylint: disable=protected-access
  assert per_example.shape == (B + B * K,) and int(is_image.sum()) == B * K
  assert float(loss) == pytest.approx(float(per_example.mean()), rel=1e-5)


def test_conditioning_dropout_reaches_the_images():
  n = 4000
  batch = {"text_emb": jnp.ones((n, 3, 2)), "text_mask": jnp.ones((n, 3), bool),
           "images/text_emb": jnp.ones((2 * n, 3, 2)),
           "images/text_mask": jnp.ones((2 * n, 3), bool)}
  out = sp.apply_cond_dropout(batch, jax.random.key(1), 0.1)
  vid = np.asarray(out["text_emb"][:, 0, 0] == 0)
  img = np.asarray(out["images/text_emb"][:, 0, 0] == 0)
  assert abs(vid.mean() - 0.1) < 0.02 and abs(img.mean() - 0.1) < 0.02
  np.testing.assert_array_equal(np.asarray(out["images/text_mask"]).any(axis=1), ~img)
  assert not np.array_equal(img[:n], vid), "the images get their own draws"


def test_microbatch_check_names_the_images():
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  rules = (("batch", "data"),)
  c = default.get_config()
  c.train.grad_accum_steps = 4
  like = {"video": np.zeros((4, 1)), "images/video": np.zeros((6, 1))}
  with pytest.raises(ValueError, match="extra images"):
    sp.check_microbatches(like, c.train, mesh, rules)


def test_distillation_refuses_extra_images():
  c = distill_configs.get_config("base=tiny,mode=progressive,start=8,end=4")
  c.data.images_per_video = 2
  with pytest.raises(ValueError, match="images_per_video"):
    distill_settings.check_distill_config(c)
