"""The `make demo` config: a small text-to-video base model on procedural moving shapes.

    python -m vdm_jax.demo                       # what `make demo` runs
    python -m vdm_jax.main --mode=train --config=configs/demo.py --workdir=/tmp/demo

8 frames of 32x32 at 8 fps, a ~1M-parameter factorized space-time U-Net (spatial attention
at the lower level, temporal attention at both), MiniLM text, v-prediction with the cosine
schedule. Sized to train in about ten minutes on a 2-core CPU.
"""
from configs import tiny


def get_config(arg=None):
  c = tiny.get_config(arg)
  c.frames, c.height, c.width, c.fps = 8, 32, 32, 8.0

  m = c.model
  m.base_channels = 32
  m.channel_mult = (1, 2, 2)
  m.spatial_attention = (False, False, True)
  m.temporal_mixing = ("attention", "attention", "attention")
  m.num_heads = 4
  m.head_dim = 16
  m.num_groups = 8
  m.cond_embed_dim = 128

  d = c.data
  d.data_dir = "demo_out/data"
  d.source_frames = 8
  d.source_resolution = 32
  d.source_fps = 8.0
  d.num_train_examples = 4096
  d.num_eval_examples = 64
  d.two_object_prob = 0.0                 # one object per clip: learns faster on a CPU

  t = c.train
  t.batch_size = 16
  t.num_steps = 1500
  t.lr = 1e-3
  t.warmup_steps = 100
  t.ema_decay = 0.995
  t.log_every = 50
  t.checkpoint_every = 500
  t.sample_every = 0

  s = c.sample
  s.num_steps = 32
  s.guidance_weight = 2.0
  s.prompts = ("a large red circle moving right slowly on a black background",
               "a large blue square moving down quickly on a white background",
               "a large yellow triangle standing still on a gray background",
               "a large green star moving left quickly on a black background")
  c.eval.num_videos = 32
  return c
