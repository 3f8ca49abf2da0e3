"""The Imagen Video cascade: a base stage, then temporal (TSR) and spatial (SSR) super-resolution.

    cascade = Cascade.from_config(config, root)      # loads every stage's EMA parameters
    videos = cascade.sample(["a red circle moving left"], seed=0)
    videos["base"], ..., videos[cascade.names[-1]]   # [N, T, H, W, 3] in [-1, 1] per stage

`config` is a cascade config (configs/imagen_video.py:cascade,...): the final stage's config
plus `cascade.order` (stage names, base first), `cascade.stages.<name>` (each stage's full
config) and `cascade.seed`. Stage <name> is trained in, and loaded from, `<root>/<name>`.

Each stage samples with its own `sample` section: steps, guidance weight and schedule
(constant | oscillating), the conditioning-augmentation level of its low-resolution input
(`sample.cond_aug_logsnr`), `sample.shared_init_noise`, and the seed `sample.seed` (-1: the
cascade seed + the stage's index). The stage after stage i gets stage i's output as `lowres`.
A latent stage (data.latents, a base stage) outputs its decoded videos, so pixel SR stages can
follow it (`check_chain` reads its output geometry through its autoencoder).
A temporal SR stage is either Imagen Video's (model.lowres_conditioning='temporal') or masked
frame interpolation (Make-A-Video: model.frame_mask_conditioning; the previous frames are kept
at frames 0, s, 2s, ... and the rest filled, see vdm_jax/sample/sampler.py).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Mapping, Optional, Sequence

from absl import logging
import jax
import numpy as np

from vdm_jax.media import writer
from vdm_jax.models import conditioning as model_conditioning
from vdm_jax.sample import sampler
from vdm_jax.sample import stage as stage_lib


def is_cascade_config(config) -> bool:
  """Whether `config` describes a cascade (has a `cascade` section with stages)."""
  return "cascade" in config and bool(config.cascade.get("order", ()))


def stage_configs(config) -> list[tuple[str, Any]]:
  """[(name, stage config)] in cascade order; raises ValueError for a malformed section."""
  if not is_cascade_config(config):
    raise ValueError("This config has no `cascade` section: use a cascade config, e.g. "
                     "configs/imagen_video.py:cascade,scale=cpu.")
  order = tuple(config.cascade.order)
  missing = [n for n in order if n not in config.cascade.stages]
  if missing:
    raise ValueError(f"cascade.order names {missing} but cascade.stages has no such entries "
                     f"(it has {sorted(config.cascade.stages)}).")
  return [(n, config.cascade.stages[n]) for n in order]


def check_chain(named: Sequence[tuple[str, Any]]) -> None:
  """Raises ValueError when a stage's low-resolution input is not its predecessor's output.

  The first stage must be a base stage; an SSR stage keeps frames and fps and is conditioned
  on the previous size (data.lowres_height/width); a TSR stage keeps the size, multiplies the
  frame count and fps by the same factor k (data.lowres_frames = the previous frames); a
  masked-interpolation TSR stage must also train on the masks it samples with ('stride:k' in
  train.frame_mask_patterns).
  """
  errors = []
  for i, (name, c) in enumerate(named):
    sr = stage_lib.is_sr_config(c)
    if i == 0:
      if sr or c.stage != "base":
        errors.append(f"{name}: the first stage must be a base stage (stage='base', no lowres "
                      "conditioning)")
      continue
    prev_name, p = named[i - 1]
    p = stage_lib.video_config(p)   # what it outputs: a latent stage's decoded videos
    if not sr or c.stage not in ("ssr", "tsr"):
      errors.append(f"{name}: stages after the first must be 'ssr' or 'tsr' with "
                    "model.lowres_conditioning set (or 'tsr' with "
                    "model.frame_mask_conditioning: masked frame interpolation)")
      continue
    d = c.data
    if c.channels != p.channels:
      errors.append(f"{name}: channels={c.channels} but {prev_name} makes {p.channels}")
    if c.stage == "ssr":
      want = (p.frames, p.height, p.width, p.fps)
      got = (c.frames, int(d.lowres_height), int(d.lowres_width), c.fps)
      if got != want:
        errors.append(f"{name} (ssr): frames, data.lowres_height/width, fps = {got} must be "
                      f"{prev_name}'s frames, height, width, fps = {want}")
      if int(d.lowres_frames) not in (0, c.frames):
        errors.append(f"{name} (ssr): data.lowres_frames={d.lowres_frames} must be 0 or its "
                      f"frames={c.frames}")
      if c.height < p.height or c.width < p.width:
        errors.append(f"{name} (ssr): {c.height}x{c.width} is smaller than {prev_name}'s "
                      f"{p.height}x{p.width}")
    else:
      if (int(d.lowres_frames), c.height, c.width) != (p.frames, p.height, p.width):
        errors.append(f"{name} (tsr): data.lowres_frames, height, width = "
                      f"{(int(d.lowres_frames), c.height, c.width)} must be {prev_name}'s "
                      f"frames, height, width = {(p.frames, p.height, p.width)}")
      if (int(d.lowres_height) or c.height, int(d.lowres_width) or c.width) != (c.height,
                                                                                 c.width):
        errors.append(f"{name} (tsr): data.lowres_height/width = {d.lowres_height}x"
                      f"{d.lowres_width} must be 0 or its own {c.height}x{c.width}")
      try:
        k = model_conditioning.temporal_factor(c.frames, p.frames)
      except ValueError:
        k = None
      if k is None or abs(c.fps - k * p.fps) > 1e-6 * c.fps or (
          c.frames != k * p.frames and not stage_lib.is_interpolation_stage(c)):
        errors.append(f"{name} (tsr): {c.frames} frames at {c.fps} fps must be a whole "
                      f"multiple k of {prev_name}'s {p.frames} frames (or k x ({p.frames} - 1) + 1 "
                      f"for masked interpolation, both ends kept) at k x {p.fps} fps")
      elif stage_lib.is_interpolation_stage(c):
        stride = f"stride:{k}"
        if stride not in tuple(c.train.get("frame_mask_patterns", ())):
          errors.append(f"{name} (tsr, interpolation): fills {k - 1} of every {k} frames, so "
                        f"train.frame_mask_patterns must include {stride!r}; it is "
                        f"{tuple(c.train.get('frame_mask_patterns', ()))}")
  if errors:
    raise ValueError("The cascade does not chain:\n  - " + "\n  - ".join(errors))


def stage_workdir(root: str, name: str) -> str:
  return os.path.join(root, name)


def parse_distilled(spec: str) -> dict[str, str]:
  """"base=dir1,ssr1=dir2" -> {"base": "dir1", "ssr1": "dir2"} ("" -> {})."""
  out = {}
  for item in (p.strip() for p in spec.split(",")):
    if not item:
      continue
    name, sep, path = item.partition("=")
    if not sep or not name.strip() or not path.strip():
      raise ValueError(f"cascade.distilled item {item!r} is not name=<round directory>.")
    out[name.strip()] = path.strip()
  return out


@dataclasses.dataclass(frozen=True)
class StageSampling:
  """How one stage of the cascade samples (from its config's `sample` section)."""
  num_steps: int
  guidance_weight: float
  guidance_schedule: str
  guidance_low: float
  cond_aug_logsnr: Optional[float]   # None for a base stage
  seed: int
  shared_init_noise: bool

  @classmethod
  def from_config(cls, stage_config, *, index: int, cascade_seed: int) -> "StageSampling":
    s = stage_config.sample
    sr = stage_lib.is_sr_config(stage_config)
    seed = int(s.get("seed", -1))
    return cls(num_steps=int(s.num_steps), guidance_weight=float(s.guidance_weight),
               guidance_schedule=str(s.guidance_schedule),
               guidance_low=float(s.get("guidance_low", 1.0)),
               cond_aug_logsnr=(float(s.get("cond_aug_logsnr", stage_config.diffusion.logsnr_max))
                                if sr else None),
               seed=seed if seed >= 0 else int(cascade_seed) + index,
               shared_init_noise=bool(s.get("shared_init_noise", False)))

  @classmethod
  def of_student(cls, stage_config, student: stage_lib.Stage, *, index: int,
                 cascade_seed: int) -> "StageSampling":
    """How a distilled `student` samples in place of the stage `stage_config`: the stage's
    settings at the student's step count, with a constant guidance weight for a guided student
    (the weight is its input)."""
    base = cls.from_config(stage_config, index=index, cascade_seed=cascade_seed)
    schedule = "constant" if student.takes_guidance_weight else base.guidance_schedule
    return dataclasses.replace(base, num_steps=int(student.config.sample.num_steps),
                               guidance_schedule=schedule)

  def sampler_kwargs(self) -> dict:
    return dict(num_steps=self.num_steps, guidance_weight=self.guidance_weight,
                guidance_schedule=self.guidance_schedule, guidance_low=self.guidance_low,
                shared_init_noise=self.shared_init_noise,
                **({} if self.cond_aug_logsnr is None else
                   {"cond_aug_logsnr": self.cond_aug_logsnr}))


def distilled_stage(stage_config, round_dir: str, *, index: int, cascade_seed: int,
                    text_encoder: Optional[Any] = None,
                    devices: Optional[Sequence[Any]] = None
                    ) -> tuple[stage_lib.Stage, StageSampling]:
  """A distillation round's student (`<distill workdir>/rounds/<round>`, see vdm_jax/distill)
  in place of the stage `stage_config`: its own config (geometry checked against the stage's),
  its student step count, and the stage's guidance weight, given to a guided student as an
  input (one network evaluation per step, a constant weight)."""
  stage = stage_lib.load_stage_from_workdir(round_dir, text_encoder=text_encoder,
                                            devices=devices)
  c = stage.config
  mine = (int(c.frames), int(c.height), int(c.width), float(c.fps))
  want = (int(stage_config.frames), int(stage_config.height), int(stage_config.width),
          float(stage_config.fps))
  if mine != want:
    raise ValueError(f"The distilled student in {round_dir} samples (frames, height, width, fps)"
                     f" = {mine}, but the cascade stage it replaces has {want}.")
  return stage, StageSampling.of_student(stage_config, stage, index=index,
                                         cascade_seed=cascade_seed)


class Cascade:
  """Loaded stages run in order: base from text, every later stage from its predecessor."""

  def __init__(self, names: Sequence[str], stages: Sequence[stage_lib.Stage],
               settings: Sequence[StageSampling]):
    if not len(names) == len(stages) == len(settings) or not names:
      raise ValueError("Give one name, stage and StageSampling per stage (at least one).")
    check_chain([(n, s.config) for n, s in zip(names, stages)])
    self.names, self.stages, self.settings = list(names), list(stages), list(settings)

  @classmethod
  def from_config(cls, config, root: str, *, text_encoder: Optional[Any] = None,
                  steps: Optional[Mapping[str, int]] = None,
                  devices: Optional[Sequence[Any]] = None,
                  distilled: Optional[Mapping[str, str]] = None) -> "Cascade":
    """Loads every stage of a cascade config from `<root>/<name>` (EMA parameters of the
    latest checkpoint, or of `steps[name]`) onto its mesh over `devices` (default: all).
    Stages with equal `text` sections share one text encoder (`text_encoder`, or the first
    one loaded). `distilled` {name: round directory} (default: `cascade.distilled`) replaces
    stages by distilled students (see `distilled_stage`)."""
    named = stage_configs(config)
    check_chain(named)
    if distilled is None:
      distilled = parse_distilled(str(config.cascade.get("distilled", "")))
    unknown = set(distilled) - {n for n, _ in named}
    if unknown:
      raise ValueError(f"cascade.distilled names {sorted(unknown)}, which are not stages of "
                       f"this cascade {[n for n, _ in named]}.")
    seed = int(config.cascade.get("seed", 0))
    stages, settings, encoders = [], [], {}
    for i, (name, c) in enumerate(named):
      text_key = json.dumps(c.text.to_dict(), sort_keys=True, default=str)
      enc = text_encoder if text_encoder is not None else encoders.get(text_key)
      if name in distilled:
        stage, stage_settings = distilled_stage(c, distilled[name], index=i, cascade_seed=seed,
                                                text_encoder=enc, devices=devices)
      else:
        stage = stage_lib.load_stage(c, stage_workdir(root, name),
                                     step=(steps or {}).get(name), text_encoder=enc,
                                     devices=devices)
        stage_settings = StageSampling.from_config(c, index=i, cascade_seed=seed)
      if stage.text_encoder is not None:
        encoders.setdefault(text_key, stage.text_encoder)
      stages.append(stage)
      settings.append(stage_settings)
    return cls([n for n, _ in named], stages, settings)

  def with_stage(self, name: str, stage: stage_lib.Stage, settings: StageSampling) -> "Cascade":
    """This cascade with stage `name` replaced (e.g. by its distilled student)."""
    if name not in self.names:
      raise ValueError(f"{name!r} is not a stage of this cascade {self.names}.")
    i = self.names.index(name)
    return Cascade(self.names, self.stages[:i] + [stage] + self.stages[i + 1:],
                   self.settings[:i] + [settings] + self.settings[i + 1:])

  def sample(self, prompts: Sequence[str], *, seed: Optional[int] = None, batch_size: int = 0,
             until: Optional[str] = None) -> dict[str, np.ndarray]:
    """Runs the stages on `prompts`; returns {name: videos float32 [N, T, H, W, C]} in order.

    `seed` shifts every stage's seed by (seed - its default cascade seed); `batch_size` > 0
    samples in chunks of that many prompts; `until` stops after that stage.
    """
    prompts = list(prompts)
    out: dict[str, np.ndarray] = {}
    videos = None
    for name, stage, s in zip(self.names, self.stages, self.settings):
      stage_seed = s.seed + (0 if seed is None else int(seed))
      start = time.perf_counter()
      videos = sampler.sample_stage_batched(
          stage, key=jax.random.key(stage_seed), prompts=prompts, batch_size=batch_size,
          lowres=videos if stage.is_sr else None, **s.sampler_kwargs())
      logging.info("cascade: %s -> %s in %.1fs", name, videos.shape, time.perf_counter() - start)
      out[name] = videos
      if name == until:
        break
    return out

  @property
  def final(self) -> stage_lib.Stage:
    return self.stages[-1]


def _stage_dirs(out_dir: str, names: Sequence[str]) -> dict[str, str]:
  return {n: os.path.join(out_dir, f"{i}_{n}") for i, n in enumerate(names)}


def write_stage_videos(out_dir: str, cascade: Cascade, videos: Mapping[str, np.ndarray],
                       prompts: Sequence[str]) -> dict[str, list[str]]:
  """Writes every stage's videos (GIF + MP4 + prompts.txt) to `out_dir/<i>_<name>/` and the
  last stage's again to `out_dir/final/`; returns {directory name: paths}."""
  written = {}
  dirs = _stage_dirs(out_dir, cascade.names)
  for name, stage in zip(cascade.names, cascade.stages):
    if name in videos:
      written[name] = writer.write_videos(dirs[name], list(videos[name]),
                                          fps=float(stage.config.fps), prompts=prompts)
  last = cascade.names[-1]
  if last in videos:
    written["final"] = writer.write_videos(os.path.join(out_dir, "final"), list(videos[last]),
                                           fps=float(cascade.final.config.fps),
                                           prompts=prompts)
  return written


def sample_cascade(config, root: str, prompts: Sequence[str], *, out_dir: Optional[str] = None,
                   seed: Optional[int] = None, cascade: Optional[Cascade] = None,
                   batch_size: int = 0) -> dict:
  """The `sample` mode of a cascade config: runs the cascade of `root` on `prompts` (in chunks
  of `batch_size`, 0 = all at once) and writes each stage's videos and the final ones under
  `out_dir` (default root/samples/cli).
  Returns {"videos": {name: [N, T, H, W, C]}, "paths": {...}, "seconds": total seconds}."""
  cascade = cascade or Cascade.from_config(config, root)
  out_dir = out_dir or os.path.join(root, "samples", "cli")
  start = time.perf_counter()
  videos = cascade.sample(prompts, seed=seed, batch_size=batch_size)
  seconds = time.perf_counter() - start
  paths = write_stage_videos(out_dir, cascade, videos, list(prompts))
  print(f"Cascade {' -> '.join(cascade.names)}: {len(prompts)} prompts in {seconds:.1f}s; "
        f"wrote {out_dir}/<stage>/ and {out_dir}/final/", flush=True)
  return {"videos": videos, "paths": paths, "seconds": seconds}
