"""The `build_latents` mode: a latent stage's dataset, encoded once by its frozen autoencoder.

    python -m vdm_jax.main --mode=build_latents --config=configs/latent.py \\
        --config.latent.autoencoder=runs/vae3d --config.data.latents=runs/vae3d/latents

Every clip of the train and test splits of the dataset `config.data` names (built with
`--mode=build_data`) is cut at the autoencoder's geometry (its config's frames, height, width
and fps: `latents.clip_at_geometry`) and encoded to its posterior mean, `latent.batch_size`
clips per jitted call. The per-channel shift and scale come from the train split's latents and
are written beside the autoencoder (latent_stats.json); each split is written to
`data.latents` as <split>.safetensors + <split>.json (`vdm_jax.data.latents`).
"""
from typing import Callable, Optional

from vdm_jax import errors
from vdm_jax.data import build
from vdm_jax.data import latents as latents_lib
from vdm_jax.train import latent_codec

SPLITS = ("train", "test")


def build_latents(config, *, codec: Optional[latent_codec.LatentCodec] = None,
                  progress: Optional[Callable[[str], None]] = print) -> dict:
  """Builds the latent dataset of the stage `config` (see the module docstring); returns
  {split: sidecar}. `codec` replaces loading `latent.autoencoder` (tests, notebooks)."""
  out_dir = config.data.get("latents", "")
  if not out_dir:
    raise errors.ConfigError("--mode=build_latents writes to data.latents: set it to the "
                             "directory of the latent dataset.")
  if codec is None:
    step = int(config.latent.get("autoencoder_step", -1))
    codec = latent_codec.load_autoencoder(config.latent.autoencoder,
                                          step=None if step < 0 else step)
  frames, height, width, _ = codec.video_shape()
  fps = float(codec.config.fps)
  problems = codec.spec.geometry_errors(frames=frames, height=height, width=width)
  want = list(codec.spec.latent_shape(frames=frames, height=height, width=width))
  problems += latents_lib.shape_errors(config, {"latent_shape": want, "fps": [fps]},
                                       f"{frames} x {height} x {width} clips at {fps:g} fps "
                                       f"through {codec.path}")
  if problems:
    raise errors.ConfigError("Cannot build these latents:\n  - " + "\n  - ".join(problems))
  sources = build.make_builder(config).as_data_source()
  if "train" not in sources:
    raise errors.ConfigError(f"{config.data.name} has no train split to compute the latent "
                             f"statistics on (it has {sorted(sources)}).")
  batch = int(config.latent.get("batch_size", 16))
  geometry = dict(frames=frames, height=height, width=width, fps=fps)
  dataset = {"name": config.data.name, "split_sizes": {s: len(sources[s]) for s in sources}}
  if progress is not None:
    progress(f"build_latents: {config.data.name} -> {out_dir}: {frames} x {height} x {width} "
             f"clips at {fps:g} fps -> latents {want} with {codec.path} (step {codec.step})")
  stats, written = None, {}
  for split in [s for s in SPLITS if s in sources]:
    z, captions, rates = latents_lib.encode_source(
        sources[split], codec.encode_means, batch_size=batch, progress=progress, what=split,
        **geometry)
    if stats is None:   # the train split comes first
      stats = latents_lib.compute_stats(z)
      path = latents_lib.write_stats(
          codec.path, stats, step=codec.step, params_sha256=codec.digest,
          computed_on={"dataset": config.data.name, "split": split, "num_clips": len(z),
                       "latent_shape": list(z.shape[1:])})
      if progress is not None:
        progress(f"build_latents: per-channel shift {_fmt(stats.shift)}, scale "
                 f"{_fmt(stats.scale)} -> {path}")
    written[split] = latents_lib.write_split(
        out_dir, split, z, captions=captions, fps=rates, video_shape=codec.video_shape(),
        stats=stats, autoencoder=codec.identity(), dataset=dataset)
    if progress is not None:
      progress(f"build_latents: {split}: {len(z)} clips -> "
               f"{latents_lib.split_paths(out_dir, split)[0]}")
  return written


def _fmt(values) -> str:
  return "[" + ", ".join(f"{float(v):.3g}" for v in values) + "]"
