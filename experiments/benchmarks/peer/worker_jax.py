"""Our side of experiments/benchmarks/peer_side_by_side.py: the SpaceTimeUNet train step at
the peer's configuration (experiments/benchmarks/train_step.py's real step: v-prediction loss,
conditioning dropout, clipping, AdamW, EMA), on one device. Same protocol as worker_torch.py.
"""
import argparse
import os
import sys
import time

import protocol  # this folder (sys.path[0])

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))))


def peer_equal_config(*, frames: int, size: int, batch: int, dim: int, text_len: int,
                      text_dim: int):
  """configs/default.py as close to imagen-pytorch 2.1.0's Unet3D(dim, dim_mults=(1, 2, 4),
  num_resnet_blocks=2, layer_attns=False, layer_cross_attns=True) as our options allow:
  channel multipliers 1-2-4, pseudo-3D ResBlocks (a temporal conv after each of the two spatial
  convs, like the peer's Conv3d in both Blocks), temporal attention and text cross-attention
  once per level and path (`model.mixers='last_block'`, the peer's one attention per level),
  no spatial self-attention, FiLM from a 4 * dim embedding (the peer's time_cond_dim), no
  frame-rate input (the peer has none), pooled text in the FiLM embedding (the peer's text
  hiddens), 4 x 32 heads. 19.97M parameters against the peer's 19.0M; forward 39.6 GFLOP by
  XLA's count at batch 1, 8x32x32 (the peer's by torch's FlopCounterMode: 44.7). Still not
  equal: our down path is wider (the peer changes width in its downsample, so its down blocks
  run at 64-64-128), our resamplers are 3x3 convs, and the peer's attention pooling, global
  context and middle space-time attention are not ours. `mixers='every_block'` gives the
  configuration of the first one-core figures (21.9M)."""
  from configs import default  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.frames, c.height, c.width = frames, size, size
  m = c.model
  m.base_channels, m.channel_mult, m.num_res_blocks = dim, (1, 2, 4), 2
  m.spatial_attention = (False, False, False)
  m.cross_attention_levels = (True, True, True)
  m.text_cross_attention = True
  m.text_pooled_conditioning = True
  m.fps_conditioning = False
  m.temporal_mixing = ("attention",) * 3
  m.mixers = "last_block"
  m.temporal_conv_in_resblock = True
  m.pseudo3d_convs = True
  m.cond_embed_dim = 4 * dim
  m.num_heads, m.head_dim, m.num_groups = 4, 32, 8
  m.text_embed_dim = text_dim
  c.text.max_length = text_len
  c.train.batch_size = batch
  c.sharding.mesh_shape = (1, 1, 1)
  return c


def main():
  p = argparse.ArgumentParser()
  for name, default in (("frames", 8), ("size", 32), ("batch", 4), ("dim", 64),
                        ("text_len", 16), ("text_dim", 384)):
    p.add_argument(f"--{name}", type=int, default=default)
  p.add_argument("--devices", type=int, default=1,
                 help="data-parallel over this many CPU devices (one thread each: a way to "
                      "use several cores; the batch splits between them)")
  args = p.parse_args()
  devices = args.devices
  del args.devices
  if devices > 1:
    # First: XLA stops reading XLA_FLAGS at a word that is not a --flag.
    os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices} " +
                               os.environ.get("XLA_FLAGS", "")).strip()
  import jax  # pylint: disable=g-import-not-at-top
  from experiments.benchmarks import train_step  # pylint: disable=g-import-not-at-top
  config = peer_equal_config(**vars(args))
  config.sharding.mesh_shape = (devices, 1, 1)
  bench = train_step.TrainStepBench(config, devices=jax.devices()[:devices])
  start = time.perf_counter()
  prepared = bench.prepare(batch_size=args.batch)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  jax.block_until_ready(prepared.run_once())
  first = time.perf_counter() - start
  from vdm_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  params = state_lib.param_count(bench.abstract_args(args.batch)[0].params)
  protocol.serve(lambda: jax.block_until_ready(prepared.run_once()),
                 {"params": int(params), "jax": jax.__version__, "devices": devices,
                  "compile_s": compile_s,
                  "first_step_s": first})

if __name__ == "__main__":
  main()
