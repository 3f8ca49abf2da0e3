"""Guided then progressive distillation of a video-transformer stage, end to end: a DiT teacher's
training workdir (configs/dit.py at test size, checkpoint 0 of drawn weights), `--mode=distill`'s
function with configs/distill.py's section, and the student rounds loaded and sampled as stages.
"""
import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import dit as dit_config
from configs import distill as distill_config
from vdm_jax import distill
from vdm_jax.data import build
from vdm_jax.models import inflation
from vdm_jax.models.dit import presets
from vdm_jax.sample import sampler
from vdm_jax.sample import stage as stage_lib
from vdm_jax.text import store
from vdm_jax.train import inputs
from vdm_jax.train import loop

T, H, W = 2, 8, 8
PROMPT_DIM = 384


def _teacher_config(tmp, variant):
  c = dit_config.get_config(variant)
  c.model = presets.tiny(text_embed_dim=PROMPT_DIM)
  c.frames, c.height, c.width = T, H, W
  d = c.data
  d.data_dir = str(tmp / "data")
  d.num_train_examples, d.num_eval_examples = 8, 4
  d.source_frames, d.source_resolution = T, H
  d.crop_frames = d.crop_height = d.crop_width = 0
  d.images_per_video = 0
  c.text.store_path = str(tmp / "store.safetensors")
  c.train.batch_size = 8                  # one row per fake CPU device
  c.train.async_checkpointing = False
  c.sample.num_steps = 4
  return c


def _fake_text_store(config):
  """The captions' store with drawn embeddings: no text encoder runs (nothing here reads what
  the captions say)."""
  captions = inputs.training_captions(config)
  rng = np.random.default_rng(0)
  length = int(config.text.max_length)
  store.TextEmbeddingStore(
      captions=captions, embeddings=rng.standard_normal((len(captions), length, PROMPT_DIM)),
      masks=np.ones((len(captions), length), bool), encoder_name=config.text.encoder,
  ).save(config.text.store_path)
  return captions


def _drawn(params, seed):
  """Weights drawn at random (a trained model is not zero-initialized anywhere)."""
  rng = np.random.default_rng(seed)

  def draw(x):
    value = (0.2 * rng.standard_normal(x.shape)).astype(x.dtype)
    return jax.device_put(value, x.sharding) if isinstance(x, jax.Array) else value
  return jax.tree.map(draw, nn.unbox(params))


# The v-prediction transformer with cross-attention text, and the rectified-flow one (velocity
# prediction, its own schedule) with Latte's alternating blocks and joint text attention.
@pytest.fixture(scope="module",
                params=["layout=full", "layout=alternating,text=joint,objective=flow"])
def distilled(request, tmp_path_factory):
  tmp = tmp_path_factory.mktemp("dit_distill")
  teacher_cfg = _teacher_config(tmp, request.param)
  build.build_dataset(teacher_cfg)
  captions = _fake_text_store(teacher_cfg)
  teacher_dir = str(tmp / "teacher")
  trainer = loop.Trainer(teacher_cfg, teacher_dir, compile_step=False)
  drawn = _drawn(trainer.state.params, 1)
  trainer.save(0, trainer.state.replace(params=drawn, ema_params=drawn))
  trainer.checkpointer.close()

  config = distill_config.distill_config(teacher_cfg.copy_and_resolve_references(),
                                         mode="guided", start=4, end=2, small=True)
  config.distill.guided_steps = config.distill.steps_per_round = 2
  config.train.log_every = config.train.checkpoint_every = 1
  workdir = str(tmp / "distill")
  result = distill.run_distillation(config, workdir, teacher_dir)
  return dict(result=result, workdir=workdir, teacher=jax.device_get(drawn),
              captions=captions)


def test_a_transformer_teacher_distils_into_guided_then_halved_students(distilled):
  rounds = distilled["result"].rounds
  assert [(r["stage"], r["teacher_steps"], r["student_steps"]) for r in rounds] == [
      ("guided", 4, 4), ("progressive", 4, 2)]
  assert all(np.isfinite(r["final_loss"]) for r in rounds)
  assert distilled["result"].teacher_step == 0


def test_the_students_are_transformer_stages_that_sample_in_their_steps(distilled):
  rounds = distilled["result"].rounds
  previous = None
  for record in rounds:
    stage = stage_lib.load_stage_from_workdir(record["directory"], devices=jax.devices()[:1],
                                              text_encoder=None)
    assert stage.config.model.family == "dit" and stage.takes_guidance_weight
    assert int(stage.config.sample.num_steps) == record["student_steps"]
    params = inflation.flat_paths(jax.device_get(stage.params))
    # Every round trained its student: the weights moved from where the round started (the
    # teacher's; the guided student's new guidance-weight layers are not in the teacher).
    start = inflation.flat_paths(distilled["teacher"]) if previous is None else previous
    moved = [float(np.abs(np.asarray(params[k]) - np.asarray(start[k])).max())
             for k in start if k in params]
    assert len(moved) == len(start) and max(moved) > 0
    previous = params
  prompts = distilled["captions"][:2]
  videos = sampler.sample_stage(stage, key=jax.random.key(0), prompts=list(prompts),
                                guidance_weight=2.0)
  assert videos.shape == (2, T, H, W, 3) and np.all(np.isfinite(videos))
  other = sampler.sample_stage(stage, key=jax.random.key(0), prompts=list(prompts),
                               guidance_weight=0.0)
  assert np.abs(other - videos).max() > 1e-6          # w reaches the distilled transformer
