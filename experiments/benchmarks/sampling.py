"""Sampling benchmarks: latency and throughput of one cascade stage's sampler.

    bench = SamplingBench(config, mode="teacher")
    row = bench.measure(num_steps=256, batch_size=4, warmup=1, repeats=3)

Two modes, as the cascade samples them:
  teacher  the trained stage with classifier-free guidance (weight `config.sample`'s, null
           text as the unconditional input): every step evaluates the U-Net on 2B examples;
  student  a guidance-distilled student (Meng et al. 2022; `vdm_jax.distill`): the same U-Net
           with `guidance_weight_conditioning`, so each step is one evaluation on B examples.
Both run `vdm_jax.diffusion.sample` (DDIM, eta 0, dynamic thresholding) under one `jax.jit`,
the whole loop on device. Parameters are random (timing does not depend on training).

FLOPs per video come from XLA's cost analysis of one U-Net evaluation (the sampler's while
loop is counted once by XLA, so the loop itself is not used) times the evaluations per video.
"""
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmarks import common
from experiments.benchmarks import train_step as train_bench
from vdm_jax import diffusion
from vdm_jax.distill import objective as distill_objective
from vdm_jax.models import registry
from vdm_jax.train import flops as flops_lib

MODES = ("teacher", "student")
STUDENT_GUIDANCE_WEIGHT = 3.0


def _model_config(config, mode):
  if mode not in MODES:
    raise ValueError(f"sampling mode {mode!r} is not one of {MODES}")
  m = config.model.copy_and_resolve_references()
  m.guidance_weight_conditioning = mode == "student"
  return m


class SamplingBench:
  """The sampler of one stage (config) in teacher or student mode on the default device."""

  def __init__(self, config, mode: str):
    self.config = config
    self.mode = mode
    self.model_cfg = _model_config(config, mode)
    self.model = registry.family(self.model_cfg).module()
    self.schedule = diffusion.schedule_from_config(config.diffusion, resolution=config.height)
    self._params = None

  @property
  def guided(self) -> bool:
    """Whether steps evaluate the model twice (teacher with classifier-free guidance)."""
    return self.mode == "teacher" and registry.family(self.model_cfg).needs_text

  def conditioning(self, batch_size: int, *, seed: int = 0):
    """(cond, uncond) model inputs for `batch_size` videos; uncond None unless guided."""
    host = train_bench.random_batch(self.config, batch_size, seed=seed)
    cond = registry.family(self.model_cfg).model_inputs(host)
    cond = {k: jnp.asarray(v) for k, v in cond.items() if k != "is_image"}
    if self.model_cfg.cond_aug_conditioning:
      cond["cond_aug_logsnr"] = jnp.full((batch_size,), 6.0, jnp.float32)
    uncond = None
    if self.guided:
      uncond = dict(cond, text_emb=jnp.zeros_like(cond["text_emb"]),
                    text_mask=jnp.zeros_like(cond["text_mask"]))
    return cond, uncond

  def params(self):
    """Random parameters of the stage's U-Net (normal, scale 0.02; shapes from eval_shape)."""
    if self._params is None:
      cond, _ = self.conditioning(1)
      if self.mode == "student":
        cond["guidance_weight"] = jnp.zeros((1,), jnp.float32)
      x = jnp.zeros((1, self.config.frames, self.config.height, self.config.width,
                     self.config.channels), jnp.float32)
      shapes = jax.eval_shape(
          lambda: self.model.init(jax.random.key(0), x, jnp.zeros((1,), jnp.float32), **cond))
      rng = np.random.default_rng(0)
      self._params = jax.tree.map(
          lambda leaf: jnp.asarray(0.02 * rng.standard_normal(leaf.shape), leaf.dtype),
          nn.unbox(shapes)["params"])
    return self._params

  def sample_fn(self, *, num_steps: int, batch_size: int):
    """fn(params, key, cond, uncond) -> videos [B, T, H, W, C]: the jittable sampler."""
    c, s = self.config, self.config.sample
    shape = (batch_size, c.frames, c.height, c.width, c.channels)
    guided = self.guided

    def fn(params, key, cond, uncond):
      if self.mode == "student":
        model_fn = distill_objective.make_student_model_fn(
            self.model, params, guidance_weight=STUDENT_GUIDANCE_WEIGHT)
      else:
        def model_fn(z, logsnr, cd):
          return self.model.apply({"params": params}, z, logsnr, **cd, train=False)
      return diffusion.sample(
          model_fn=model_fn, shape=shape, key=key, num_steps=num_steps,
          schedule=self.schedule, sampler="ddim", eta=0.0, prediction=c.diffusion.prediction,
          cond=cond, uncond=uncond if guided else None,
          guidance_weight=float(s.guidance_weight) if guided else 0.0, clip=s.clip,
          dynamic_percentile=float(s.dynamic_percentile))
    return fn

  def evaluation_flops(self, batch_size: int):
    """XLA's FLOPs of one U-Net evaluation on `batch_size` examples (the lowered forward,
    before optimization: no compile)."""
    cond, _ = self.conditioning(batch_size)
    if self.mode == "student":
      cond["guidance_weight"] = jnp.full((batch_size,), STUDENT_GUIDANCE_WEIGHT, jnp.float32)
    z = jax.ShapeDtypeStruct((batch_size, self.config.frames, self.config.height,
                              self.config.width, self.config.channels), jnp.float32)
    logsnr = jax.ShapeDtypeStruct((batch_size,), jnp.float32)
    fwd = jax.jit(lambda p, z, l, cd: self.model.apply({"params": p}, z, l, **cd))
    return common.lowered_flops(fwd.lower(self.params(), z, logsnr, cond))

  def prepare(self, *, num_steps: int, batch_size: int) -> common.Prepared:
    """Compiles the sampler; returns the call to time and the function that turns its timing
    into a row (see `measure`)."""
    params = self.params()
    cond, uncond = self.conditioning(batch_size)
    key = jax.random.key(1)
    start = time.perf_counter()
    compiled = jax.jit(self.sample_fn(num_steps=num_steps, batch_size=batch_size)).lower(
        params, key, cond, uncond).compile()
    compile_s = time.perf_counter() - start
    mem = common.compiled_stats(compiled)
    evals = num_steps * (2 if self.guided else 1)
    eval_flops = self.evaluation_flops(batch_size)
    flops = eval_flops * evals if eval_flops else None

    def run_once():
      return compiled(params, key, cond, uncond)

    def finish(timing):
      videos = np.asarray(jax.device_get(run_once()))
      call_s = timing["median_s"]
      peak = flops_lib.peak_flops_per_device()
      return dict(
          mode=self.mode, num_steps=num_steps, batch_size=batch_size, guided=self.guided,
          network_evaluations_per_video=evals, call_s=call_s, s_per_video=call_s / batch_size,
          videos_per_s=batch_size / call_s, timing=timing, compile_s=compile_s,
          flops_per_call=flops,
          tflops_per_device=(flops / call_s / 1e12) if flops else None,
          mfu=(flops / call_s / peak) if (flops and peak) else None,
          temp_bytes=mem["temp_bytes"], peak_bytes=mem["peak_bytes"],
          output_finite=bool(np.all(np.isfinite(videos))))

    return common.Prepared(run_once=run_once, finish=finish)

  def measure(self, *, num_steps: int, batch_size: int, warmup: int = 1,
              repeats: int = 3) -> dict:
    """Compiles and times the sampler: seconds per call, per video, videos/s and, with FLOPs
    per video, TFLOP/s and MFU (None on CPU)."""
    prepared = self.prepare(num_steps=num_steps, batch_size=batch_size)
    return prepared.finish(common.time_calls(prepared.run_once, warmup=warmup,
                                             repeats=repeats))
