"""A CPU-sized variant of configs/default.py for tests and the demo (a few minutes on a laptop).

    python -m vdm_jax.main --mode=train --config=configs/tiny.py --workdir=/tmp/tiny

A small U-Net (about 0.2M parameters) on 8 frames of 16x16 moving shapes, MiniLM text, a short
warmup + cosine schedule, frequent logs, checkpoints and 16-step samples.
"""
from configs import default


def get_config(arg=None):
  c = default.get_config(arg)
  c.frames, c.height, c.width = 8, 16, 16

  m = c.model
  m.base_channels = 16
  m.channel_mult = (1, 2)
  m.spatial_attention = (False, True)
  m.temporal_mixing = ("attention", "attention")
  m.num_heads = 2
  m.head_dim = 16
  m.num_groups = 4
  m.cond_embed_dim = 64
  m.rel_pos_buckets = 8
  m.rel_pos_max_distance = 16

  c.data.num_train_examples = 512
  c.data.num_eval_examples = 64

  t = c.train
  t.batch_size = 8
  t.num_steps = 300
  t.lr = 1e-3
  t.warmup_steps = 20
  t.ema_decay = 0.999
  t.log_every = 10
  t.checkpoint_every = 100
  t.keep_last = 2
  t.sample_every = 150

  c.sample.num_steps = 16
  c.eval.num_videos = 16
  return c
