"""Make-A-Video's pieces: a text-to-image U-Net inflated into a video U-Net (pseudo-3D convs,
temporal attention, frame-rate embedding) that computes the image model frame by frame at
initialization; training with the spatial layers frozen; clips trained with the null condition
without a caption lookup; `--mode=inflate` through the training loop's state and checkpoints.
"""
from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import make_a_video
from vdm_jax import config_utils
from vdm_jax.data import build
from vdm_jax.data import pipeline
from vdm_jax.models import conditioning as model_conditioning
from vdm_jax.models import inflation
from vdm_jax.models import registry
from vdm_jax.models.unet import presets as unet_presets
from vdm_jax.sample import cascade
from vdm_jax.text import store
from vdm_jax.train import checkpoint as ckpt_lib
from vdm_jax.train import inputs
from vdm_jax.train import loop
from vdm_jax.train import optimizer as optimizer_lib
from vdm_jax.train import state as state_lib

B, T, H, W, C, L = 2, 4, 8, 8, 3, 5
# One level (fewer ops to compile); the video model has every kind of new layer.
ONE_LEVEL = dict(channel_mult=(1,), spatial_attention=(True,), text_embed_dim=384)
IMAGE = dict(ONE_LEVEL, temporal_mixing=("none",), temporal_conv_in_resblock=False,
             fps_conditioning=False)
VIDEO = dict(ONE_LEVEL, temporal_mixing=("attention",), temporal_conv_in_resblock=True,
             pseudo3d_convs=True, fps_conditioning=True, frame_position="sinusoidal")


def _inputs(fam, seed=0, b=B, t=T):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((b, t, H, W, C)), jnp.float32)
  logsnr = jnp.asarray(rng.uniform(-5, 5, b), jnp.float32)
  kw = dict(text_emb=jnp.asarray(rng.standard_normal((b, L, 384)), jnp.float32),
            text_mask=jnp.asarray(np.arange(L)[None].repeat(b, 0) < L - 2))
  if "fps" in fam.inputs:
    kw["fps"] = jnp.full((b,), 8.0)
  return x, logsnr, kw


def _shapes(fam):
  """The parameter shapes (no compile): enough for the refusals, which look at names and
  shapes only."""
  x, logsnr, kw = _inputs(fam)
  return jax.eval_shape(fam.module().init, jax.random.key(0), x, logsnr, **kw)["params"]


def _drawn(params, seed):
  """Every leaf drawn at random (numpy: no compile per shape), placed like `params`: a
  'trained' image model whose every weight matters."""
  rng = np.random.default_rng(seed)
  def draw(x):
    value = (0.3 * rng.standard_normal(x.shape)).astype(x.dtype)
    return jax.device_put(value, x.sharding) if isinstance(x, jax.Array) else value
  return jax.tree.map(draw, nn.unbox(params))


def _text_store(config):
  """The stage's text store with made-up embeddings, so no text encoder runs (none is needed:
  nothing here reads what the captions say)."""
  captions = inputs.training_captions(config)
  rng = np.random.default_rng(0)
  length = int(config.text.max_length)
  store.TextEmbeddingStore(
      captions=captions, embeddings=rng.standard_normal((len(captions), length, 384)),
      masks=np.ones((len(captions), length), bool), encoder_name=config.text.encoder,
  ).save(config.text.store_path)


def _stage_configs(tmp):
  image_cfg = make_a_video.get_config("t2i")
  video_cfg = make_a_video.get_config("motion")
  for c, model in ((image_cfg, IMAGE), (video_cfg, VIDEO)):
    c.model.update(unet_presets.tiny(**model))
    c.frames, c.height, c.width = (1 if c is image_cfg else T), H, W
    c.data.data_dir = str(tmp / "data")
    c.data.num_train_examples, c.data.num_eval_examples = 8, 4
    c.data.source_frames, c.data.source_resolution = T, H
    c.text.store_path = str(tmp / f"store_{c.data.name}.safetensors")
    c.train.batch_size = 8                # one row per fake CPU device
  return image_cfg, video_cfg


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """A text-to-image stage's workdir (checkpoint 0 holding drawn weights) and a video stage
  inflated from it by --mode=inflate's function, through the training loop's state, init and
  checkpoints; the two models and their parameters."""
  tmp = tmp_path_factory.mktemp("mav")
  image_cfg, video_cfg = _stage_configs(tmp)
  for c in (image_cfg, video_cfg):
    build.build_dataset(c)
    _text_store(c)
  image_dir, video_dir = str(tmp / "t2i"), str(tmp / "video")
  trainer = loop.Trainer(image_cfg, image_dir, compile_step=False)
  drawn = _drawn(trainer.state.params, 1)
  trainer.save(0, trainer.state.replace(params=drawn, ema_params=drawn))
  trainer.checkpointer.close()
  video_cfg.train.init_from = image_dir
  loop.initialize_workdir(video_cfg, video_dir)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1),
                           ("data", "fsdp", "tensor"))
  inflated, step, saved = ckpt_lib.restore_workdir_ema(video_dir, mesh=mesh)
  image, video = registry.family(image_cfg.model), registry.family(video_cfg.model)
  new = tuple(sorted(set(inflation.flat_paths(inflated)) - set(inflation.flat_paths(drawn))))
  return dict(image=image, video=video, image_params=jax.device_get(drawn),
              inflated=jax.device_get(inflated), new=new, step=step, saved=saved,
              image_dir=image_dir, video_dir=video_dir, video_cfg=video_cfg,
              video_apply=jax.jit(video.module().apply),
              image_apply=jax.jit(image.module().apply))


def _apply_video(m, params, x, logsnr, kw):
  return m["video_apply"]({"params": params}, x, logsnr, **kw)


def _image_per_frame(m, x, logsnr, kw):
  """The image model on each frame alone: without temporal layers, the U-Net treats frames as
  a batch (tests/test_unet.py checks that against one-frame videos)."""
  kw = {k: v for k, v in kw.items() if k != "fps"}
  return m["image_apply"]({"params": m["image_params"]}, x, logsnr, **kw)


def test_inflated_model_equals_the_image_model_frame_by_frame(models):
  x, logsnr, kw = _inputs(models["video"], seed=3)
  video = _apply_video(models, models["inflated"], x, logsnr, kw)
  image = _image_per_frame(models, x, logsnr, kw)
  assert float(jnp.std(image)) > 0.1
  np.testing.assert_allclose(np.asarray(video), np.asarray(image), atol=1e-6, rtol=0)
  # Every kind of new layer is there: the pseudo-3D conv after each spatial conv, temporal
  # conv blocks, temporal attention, fps and frame embeddings (their last layer zeroed).
  new = set(models["new"])
  for part in ("down0_res0/temporal_conv1/", "down0_res0/temporal/", "down0_0_temporal_attn/",
               "mid_res1/temporal_conv1/", "up0_res1/temporal/", "cond/fps/",
               "frame_position/"):
    assert any(p.startswith(part) for p in new), part
  flat = inflation.flat_paths(models["inflated"])
  zeroed = [p for p in new if p.startswith(("cond/fps/out/", "frame_position/out/"))]
  assert zeroed and all(not flat[p].any() for p in zeroed)


def test_inflated_temporal_layers_mix_frames_once_trained(models):
  """Sensitivity of the check above: a changed temporal weight (attention output, pseudo-3D
  conv) moves the output, so the equality is the identity initialization at work."""
  x, logsnr, kw = _inputs(models["video"], seed=3)
  image = np.asarray(_image_per_frame(models, x, logsnr, kw))
  flat = inflation.flat_paths(models["inflated"])
  for path in ("down0_0_temporal_attn/attention/out/kernel",
               "down0_res0/temporal_conv1/conv/kernel", "cond/fps/out/kernel"):
    changed = dict(flat)
    changed[path] = flat[path] + 0.05
    out = _apply_video(models, traverse_util.unflatten_dict(changed, sep="/"), x, logsnr, kw)
    assert np.abs(np.asarray(out) - image).max() > 1e-3, path


def test_temporal_parameters_are_what_the_image_model_lacks(models):
  image_paths = set(inflation.flat_paths(models["image_params"]))
  labels = inflation.flat_paths(models["video"].trainable_labels(models["inflated"],
                                                                  "temporal"))
  assert {p for p, v in labels.items() if v == "trainable"} == set(labels) - image_paths
  assert set(inflation.flat_paths(models["video"].trainable_labels(
      models["inflated"], "all")).values()) == {"trainable"}


def test_inflation_refuses_another_network():
  """Only names and shapes decide, so parameter shapes stand in for parameters."""
  two = dict(channel_mult=(1, 2), spatial_attention=(False, True), text_embed_dim=384)
  image_cfg = dict(IMAGE, **two, temporal_mixing=("none", "none"))
  image = _shapes(registry.family(unet_presets.tiny(**image_cfg)))
  video = registry.family(unet_presets.tiny(**dict(VIDEO, **two, temporal_mixing=(
      "conv", "attention"))))
  # The same network plus temporal layers inflates (traced on shapes alone).
  jax.eval_shape(lambda a, b: video.inflate(a, b)[0], image, _shapes(video))
  wider = registry.family(unet_presets.tiny(**dict(image_cfg, base_channels=16)))
  with pytest.raises(ValueError, match="differ in shape"):
    video.inflate(_shapes(wider), _shapes(video))
  # A video config with a spatial layer the image model lacks: refused, naming it.
  more = registry.family(unet_presets.tiny(**dict(VIDEO, **dict(two, spatial_attention=(
      True, True)), temporal_mixing=("conv", "attention"))))
  with pytest.raises(ValueError, match="not temporal.*down0_0_"):
    more.inflate(image, _shapes(more))
  fewer = registry.family(unet_presets.tiny(**dict(VIDEO, **dict(two, spatial_attention=(
      False, False)), temporal_mixing=("conv", "attention"), text_cross_attention=False)))
  with pytest.raises(ValueError, match="lacks"):
    fewer.inflate(image, _shapes(fewer))


def test_frozen_spatial_layers_stay_put(models):
  """train.trainable='temporal': adamw steps (weight decay on, every gradient non-zero) change
  temporal parameters only; frozen ones keep their exact bits, in the parameters and in their
  EMA. With 'all' the same steps move every parameter."""
  video = models["video"]
  t = make_a_video.get_config("motion").train
  t.weight_decay, t.lr_schedule, t.warmup_steps, t.lr = 0.1, "constant", 0, 1e-2
  params = models["inflated"]
  grads = _drawn(params, 5)
  temporal = set(models["new"])

  def two_steps(train_cfg):
    tx = optimizer_lib.make_optimizer(train_cfg, video.config)

    @jax.jit
    def run(p, g):
      opt_state = tx.init(p)
      for _ in range(2):
        updates, opt_state = tx.update(g, opt_state, p)
        p = optimizer_lib.optax.apply_updates(p, updates)
      return p
    return run(params, grads)

  new_params = two_steps(t)
  ema = inflation.flat_paths(state_lib.ema_update(params, new_params, jnp.float32(0.99)))
  before, after = inflation.flat_paths(params), inflation.flat_paths(new_params)
  moved = {p for p in before if not np.array_equal(before[p], after[p])}
  assert moved == temporal
  for p in set(before) - temporal:
    assert np.array_equal(ema[p], before[p]), p
  t.trainable = "all"
  after = inflation.flat_paths(two_steps(t))
  assert all(not np.array_equal(before[p], after[p]) for p in before)


class _NoLookups:
  max_length, dim = 6, 4

  def __init__(self):
    self.looked_up = []

  def lookup(self, caption):
    self.looked_up.append(caption)
    return np.ones((6, 4), np.float32), np.ones((6,), bool)


def _make_rows(ignore_captions):
  g = pipeline.Geometry(frames=2, height=4, width=4, fps=8.0, stage="base", images_per_video=0,
                        lowres_frames=2, lowres_height=4, lowres_width=4)
  store = _NoLookups()
  return pipeline.MakeRows(g, text_store=store, ignore_captions=ignore_captions), store


def _record(caption):
  return {"video": np.zeros((4, 4, 4, 3), np.uint8), "fps": np.float32(8.0),
          "caption": caption.encode(), "_index": 0}


def test_clips_without_captions_get_the_null_condition_without_a_lookup():
  rows, store = _make_rows(ignore_captions=True)
  row = rows.random_map(_record("a red circle moving left"), np.random.default_rng(0))
  assert store.looked_up == []
  assert row["text_emb"].shape == (6, 4) and not row["text_emb"].any()
  assert row["text_mask"].shape == (6,) and not row["text_mask"].any()
  rows, store = _make_rows(ignore_captions=False)
  row = rows.random_map(_record(""), np.random.default_rng(0))
  assert store.looked_up == [] and not row["text_mask"].any()
  row = rows.random_map(_record("a red circle"), np.random.default_rng(0))
  assert store.looked_up == ["a red circle"] and row["text_mask"].all()


def test_captions_ignore_config():
  c = make_a_video.get_config("motion")
  assert build.ignores_captions(c) and c.train.trainable == "temporal"
  c.data.captions = "sometimes"
  assert any("data.captions" in e for e in build.validate_data_config(c))
  c.data.captions = "use"
  c.train.trainable = "spatial"
  assert any("train.trainable" in e for e in optimizer_lib.optimizer_errors(c.train))


def test_inflate_mode_wrote_checkpoint_0_of_the_image_weights(models):
  assert models["step"] == 0 and models["saved"].train.init_from == models["image_dir"]
  ema = inflation.flat_paths(models["inflated"])
  for path, value in inflation.flat_paths(models["image_params"]).items():
    np.testing.assert_array_equal(ema[path], value)
  with pytest.raises(Exception, match="already holds checkpoints"):   # never inflated over
    loop.initialize_workdir(models["video_cfg"], models["video_dir"])


def test_a_checkpoint_trained_frozen_is_not_resumed_unfrozen(models):
  cfg = models["video_cfg"].copy_and_resolve_references()
  cfg.train.trainable = "all"
  with pytest.raises(ckpt_lib.CheckpointError, match="train.trainable.*init_from"):
    loop.Trainer(cfg, models["video_dir"], compile_step=False)


def test_make_a_video_configs_validate_and_chain():
  for scale in ("cpu", "paper"):
    for variant in make_a_video.VARIANTS:
      if (variant, scale) == ("sr", "paper"):
        continue
      c = make_a_video.get_config(f"{variant},scale={scale}")
      if c.data.name == "image_folder":
        c.data.image_dir = "images"
      config_utils.validate_config(c)
    c = make_a_video.get_config(f"cascade,scale={scale}")
    cascade.check_chain(cascade.stage_configs(c))
  c = make_a_video.get_config("cascade,scale=paper")
  assert [(c.cascade.stages[n].frames, c.cascade.stages[n].height) for n in c.cascade.order] == [
      (16, 64), (76, 64), (76, 256), (76, 768)]
  assert "stride:5" in c.cascade.stages["interp"].train.frame_mask_patterns
  assert c.cascade.stages["sr_h"].sample.shared_init_noise
  assert make_a_video.get_config("motion").model.pseudo3d_convs


def test_interpolation_that_keeps_both_ends():
  """16 -> 76 frames (Make-A-Video): the known frames sit at 0, 5, ..., 75."""
  assert model_conditioning.temporal_factor(76, 16) == 5
  assert model_conditioning.temporal_factor(16, 8) == 2      # Imagen Video's TSR: k * T
  with pytest.raises(ValueError, match="regular stride"):
    model_conditioning.temporal_factor(10, 3)
  low = jnp.arange(16, dtype=jnp.float32).reshape(1, 16, 1, 1, 1) + 1
  cond, mask = model_conditioning.place_known_frames(low, frames=76)
  assert np.flatnonzero(np.asarray(mask[0])).tolist() == list(range(0, 76, 5))
  np.testing.assert_array_equal(np.asarray(cond[0, ::5, 0, 0, 0]), np.arange(1, 17))
  assert float(jnp.abs(cond).sum()) == float(low.sum())
