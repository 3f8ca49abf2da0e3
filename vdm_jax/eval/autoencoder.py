"""How well an autoencoder (model.family='vae') reconstructs the test clips: `--mode=eval`.

    python -m vdm_jax.main --mode=eval --config=configs/vae.py --workdir=runs/vae3d

The first `eval.num_videos` test clips at the config's geometry are encoded to their posterior
means and decoded (the whole clip at once), and the reconstructions are scored against the
clips:
  psnr            dB over each clip in [-1, 1] (10 log10(4 / MSE)), mean over clips; also per
                  frame position (`psnr_per_frame`): a causal VAE's first frame is compressed in
                  space only
  error_flicker   mean |e_t - e_{t-1}| over pixels, e = reconstruction - clip (in [-1, 1]):
                  the part of the frame-to-frame change that the clip does not have. A per-frame
                  autoencoder's independent errors flicker; a temporal decoder smooths them.
  caption_accuracy / real_caption_accuracy
                  the moving-shapes detectors read the reconstructions and the clips themselves
                  against the captions (moving_shapes data only)
Written to `<out>/eval.json` (default `<workdir>/eval`), with the checkpoint step.
"""
import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import sharding
from vdm_jax.data import build
from vdm_jax.eval import evaluate
from vdm_jax.models import registry
from vdm_jax.models.vae.network import AutoencoderKL
from vdm_jax.train import checkpoint as ckpt_lib


def to_float(videos_uint8: np.ndarray) -> np.ndarray:
  return np.asarray(videos_uint8, np.float32) / 127.5 - 1.0


def reconstruct(model: AutoencoderKL, params: Any, videos: np.ndarray, *,
                batch_size: int = 8) -> np.ndarray:
  """Posterior-mean reconstructions of float videos [N, T, H, W, C] in [-1, 1], in batches."""
  @jax.jit
  def run(x):
    mean, _ = model.apply({"params": params}, x, method=AutoencoderKL.encode)
    return model.apply({"params": params}, mean, method=AutoencoderKL.decode)

  out = []
  for i in range(0, len(videos), batch_size):
    chunk = videos[i:i + batch_size]
    n = len(chunk)
    if n < batch_size:   # one compiled shape: pad the last batch
      chunk = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:], chunk.dtype)])
    out.append(np.asarray(run(jnp.asarray(chunk)))[:n])
  return np.concatenate(out)


def reconstruction_metrics(real: np.ndarray, recon: np.ndarray) -> dict:
  """psnr, psnr_per_frame, error_flicker and mse of float videos in [-1, 1] (see module doc)."""
  err = np.clip(recon, -1.0, 1.0) - real
  mse_clip = np.mean(np.square(err), axis=(1, 2, 3, 4))
  mse_frame = np.mean(np.square(err), axis=(0, 2, 3, 4))
  db = lambda m: 10.0 * np.log10(4.0 / np.maximum(m, 1e-10))
  flicker = float(np.mean(np.abs(np.diff(err, axis=1)))) if err.shape[1] > 1 else 0.0
  return {"psnr": float(np.mean(db(mse_clip))), "mse": float(np.mean(mse_clip)),
          "psnr_per_frame": [round(float(v), 2) for v in db(mse_frame)],
          "error_flicker": flicker}


def evaluate_workdir(config, workdir: str, *, out_dir: Optional[str] = None,
                     num_videos: Optional[int] = None, step: Optional[int] = None) -> dict:
  """Scores the EMA autoencoder of `workdir`'s newest good checkpoint (or `step`) on the
  test clips; writes and returns eval.json's dict."""
  fam = registry.family(config.model)
  if fam.is_denoiser:
    raise ValueError("evaluate_workdir scores autoencoders; a denoiser's --mode=eval is "
                     "vdm_jax.cli.stage_modes.evaluate_workdir")
  mesh = sharding.create_mesh(config.sharding)
  params, _, restored_step = ckpt_lib.restore_ema_params(config, workdir, step=step, mesh=mesh)
  n = int(num_videos or config.eval.num_videos)
  split = build.load_split_examples(config, "test", n)
  real_u8 = evaluate.real_at_geometry(split["video"], float(split["fps"][0]), config)
  real = to_float(real_u8)
  recon = reconstruct(fam.module(), params, real)
  out = {"step": int(restored_step), "num_videos": int(len(real)),
         "geometry": [int(config.frames), int(config.height), int(config.width)],
         "latent_shape": list(fam.spec.latent_shape(frames=config.frames, height=config.height,
                                                    width=config.width))}
  out.update(reconstruction_metrics(real, recon))
  if "moving_shapes" in tuple(config.eval.metrics) and config.data.name == "moving_shapes":
    captions = list(split["caption"])
    fps = float(config.fps)
    read = lambda v: evaluate.evaluate_videos(
        evaluate.to_uint8(v), captions, fps=fps, metrics=("moving_shapes",),
        compute_fvd=False)["caption_accuracy"]
    out["caption_accuracy"] = read(np.clip(recon, -1.0, 1.0))
    out["real_caption_accuracy"] = read(real)
  out_dir = out_dir or os.path.join(workdir, "eval")
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "eval.json"), "w", encoding="utf-8") as f:
    json.dump(out, f, indent=2)
  print(f"autoencoder step {out['step']} on {out['num_videos']} test clips: PSNR "
        f"{out['psnr']:.2f} dB, error flicker {out['error_flicker']:.4f}"
        + (f", detectors on the reconstructions: {_short(out['caption_accuracy'])}"
           if "caption_accuracy" in out else "")
        + f"; wrote {os.path.join(out_dir, 'eval.json')}", flush=True)
  return out


def _short(acc: dict) -> str:
  return " ".join(f"{k} {v:.2f}" for k, v in acc.items() if isinstance(v, float))
