"""The peer's side of experiments/benchmarks/peer_side_by_side.py: imagen-pytorch's `Unet3D`
train step, run in its own virtual environment (torch is never a dependency of vdm_jax).

    <torch venv>/bin/python worker_torch.py --src DIR --frames 8 --size 32 --batch 4 ...

DIR holds the unpacked imagen-pytorch wheel (its `imagen_pytorch/` folder). Only its
`imagen_video` module is imported: the package `__init__` imports torchvision and the T5 helper
asks the Hugging Face hub for a config (no network here), so an empty package object and a
local stand-in for `imagen_pytorch.t5` (the text embeddings are given, never encoded) take
their place. Protocol: one JSON line of facts on start; then for each line "run N" on stdin,
N timed train steps (forward, MSE loss against a v-target, backward, Adam) and one JSON line
with their seconds.
"""
import argparse
import os
import sys
import time
import types

import protocol  # this folder (sys.path[0])


def _import_unet3d(src):
  sys.path.insert(0, src)
  pkg = types.ModuleType("imagen_pytorch")
  pkg.__path__ = [os.path.join(src, "imagen_pytorch")]
  sys.modules["imagen_pytorch"] = pkg
  t5 = types.ModuleType("imagen_pytorch.t5")
  t5.DEFAULT_T5_NAME = "local"
  t5.get_encoded_dim = lambda name: 768

  def no_t5(*args, **kwargs):
    raise RuntimeError("the benchmark passes text embeddings; T5 is not used")
  t5.t5_encode_text = no_t5
  sys.modules["imagen_pytorch.t5"] = t5
  from imagen_pytorch.imagen_video import Unet3D  # pylint: disable=g-import-not-at-top
  return Unet3D


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--src", required=True)
  p.add_argument("--frames", type=int, default=8)
  p.add_argument("--size", type=int, default=32)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--dim", type=int, default=64)
  p.add_argument("--text_len", type=int, default=16)
  p.add_argument("--text_dim", type=int, default=384)
  args = p.parse_args()
  import torch  # pylint: disable=g-import-not-at-top
  unet3d = _import_unet3d(args.src)
  torch.manual_seed(0)
  model = unet3d(dim=args.dim, dim_mults=(1, 2, 4), num_resnet_blocks=2,
                 text_embed_dim=args.text_dim, max_text_len=args.text_len,
                 layer_attns=False, layer_cross_attns=True)
  opt = torch.optim.Adam(model.parameters(), lr=1e-4)
  b, f, s = args.batch, args.frames, args.size
  x = torch.rand(b, 3, f, s, s) * 2 - 1
  text = torch.randn(b, args.text_len, args.text_dim)
  mask = torch.ones(b, args.text_len, dtype=torch.bool)
  mask[:, (3 * args.text_len) // 4:] = False

  def step():
    t = torch.rand(b)
    noise = torch.randn_like(x)
    alpha = torch.cos(t * torch.pi / 2).view(b, 1, 1, 1, 1)
    sigma = torch.sin(t * torch.pi / 2).view(b, 1, 1, 1, 1)
    z = alpha * x + sigma * noise
    out = model(z, t, text_embeds=text, text_mask=mask)
    loss = ((out - (alpha * noise - sigma * x)) ** 2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss)

  start = time.perf_counter()
  step()
  first = time.perf_counter() - start
  protocol.serve(step, {"params": sum(q.numel() for q in model.parameters()),
                        "torch": torch.__version__, "threads": torch.get_num_threads(),
                        "first_step_s": first})

if __name__ == "__main__":
  main()
