"""Train-step benchmarks: throughput, TFLOP/s, MFU and compiled memory of one stage's step.

    bench = TrainStepBench(config, devices=jax.local_devices()[:1])
    row = bench.measure(warmup=1, repeats=5)          # runs the real jitted train step
    compiled = bench.compile_abstract(batch_size=64)  # no parameters allocated
    fit = bench.largest_batch(limit_bytes=70e9)        # binary search on memory_analysis

The step is the project's own (`vdm_jax.train.step.make_train_step`: conditioning dropout,
value_and_grad of the v-prediction diffusion loss, clipping + AdamW, EMA, non-finite skip)
over `objective.make_loss_fn`, with the state sharded as `state.init_train_state` lays it out
and the step jitted as `vdm_jax.train.loop.Trainer` does. Inputs and parameters are random
(never zeros).
"""
import functools
import time
from typing import Optional, Sequence

import jax
import numpy as np

from experiments.benchmarks import common
from vdm_jax import sharding as sharding_lib
from vdm_jax.models import registry
from vdm_jax.train import flops as flops_lib
from vdm_jax.train import objective
from vdm_jax.train import optimizer as optimizer_lib
from vdm_jax.train import state as state_lib
from vdm_jax.train import step as step_lib


def random_batch(config, batch_size: int, *, seed: int = 0) -> dict:
  """A host batch with the keys and shapes the pipeline gives the train step (random values).

  video [B, T, H, W, C] in [-1, 1], fps [B], is_image [B] (all False), text_emb [B, L, D] and
  text_mask [B, L] (about a quarter of each caption padded) when the model reads text, lowres
  [B, T', H', W', C] for SR stages.
  """
  rng = np.random.default_rng(seed)
  b = batch_size
  batch = {"video": rng.uniform(-1, 1, (b, config.frames, config.height, config.width,
                                        config.channels)).astype(np.float32),
           "fps": np.full((b,), config.fps, np.float32),
           "is_image": np.zeros((b,), bool)}
  if registry.family(config.model).needs_text:
    length = int(config.text.max_length)
    batch["text_emb"] = rng.standard_normal(
        (b, length, int(config.model.text_embed_dim))).astype(np.float32)
    valid = rng.integers(max(1, (3 * length) // 4), length + 1, size=(b,))
    batch["text_mask"] = np.arange(length)[None, :] < valid[:, None]
  if config.model.lowres_conditioning != "none":
    d = config.data
    batch["lowres"] = rng.uniform(-1, 1, (b, int(d.lowres_frames), int(d.lowres_height),
                                          int(d.lowres_width), config.channels)
                                  ).astype(np.float32)
  return batch


class TrainStepBench:
  """The train step of one experiment config on a data-parallel mesh of `devices`."""

  def __init__(self, config, *, devices: Optional[Sequence[jax.Device]] = None):
    self.config = config
    self.devices = list(devices or jax.local_devices()[:1])
    self.mesh = sharding_lib.create_mesh(config.sharding, devices=self.devices)
    self.rules = sharding_lib.logical_rules(config.sharding)
    self.model = registry.family(config.model).module()
    self.tx = optimizer_lib.make_optimizer(config.train)
    self.loss_fn = objective.make_loss_fn(config, self.model)
    self._init_fn = registry.family(config.model).init_fn(self.model,
                                             batch_like=random_batch(config, 1))
    self._abstract = None

  def _abstract_state(self):
    if self._abstract is None:
      self._abstract = state_lib.abstract_train_state(
          init_params_fn=self._init_fn, key=jax.random.key(0), tx=self.tx, mesh=self.mesh,
          rules=self.rules)
    return self._abstract

  def batch_spec(self, batch_size: int) -> dict:
    """ShapeDtypeStructs (with batch shardings) of the step's batch argument."""
    host = random_batch(self.config, 1)
    return {k: jax.ShapeDtypeStruct((batch_size,) + v.shape[1:], v.dtype,
                                    sharding=sharding_lib.batch_sharding(self.mesh, self.rules,
                                                                         v.ndim))
            for k, v in host.items()}

  def step_fn(self, batch_size: int) -> step_lib.ShardedFn:
    """The jitted, sharded train step for a global batch of `batch_size`."""
    _, shardings = self._abstract_state()
    return step_lib.make_train_step(
        loss_fn=self.loss_fn, tx=self.tx,
        lr_schedule=optimizer_lib.learning_rate_schedule(self.config.train),
        train_cfg=self.config.train, seed=0,
        cond_drop_prob=float(self.config.diffusion.cond_drop_prob), mesh=self.mesh,
        rules=self.rules, state_shardings=shardings, batch_like=self.batch_spec(batch_size))

  def pure_step(self):
    """The unjitted train step (state, batch) -> (state, metrics) with its settings bound."""
    t = self.config.train
    return functools.partial(
        step_lib.train_step, loss_fn=self.loss_fn, tx=self.tx,
        lr_schedule=optimizer_lib.learning_rate_schedule(t), seed=0,
        ema_decay=float(t.ema_decay), ema_warmup=bool(t.ema_warmup),
        grad_accum_steps=int(t.grad_accum_steps),
        cond_drop_prob=float(self.config.diffusion.cond_drop_prob))

  def abstract_args(self, batch_size: int):
    """(abstract state, abstract batch): ShapeDtypeStructs carrying their shardings."""
    target, _ = self._abstract_state()
    return target, self.batch_spec(batch_size)

  def lower(self, batch_size: int):
    """The lowered (not compiled) train step on abstract arguments."""
    return self.step_fn(batch_size).lower(*self.abstract_args(batch_size))

  def compile_abstract(self, batch_size: int):
    """(compiled step, compile seconds) without allocating parameters or data."""
    compiled, lower_s, compile_s = common.timed_compile(lambda: self.lower(batch_size))
    return compiled, lower_s + compile_s

  def saved_residual_bytes(self, batch_size: int, *, detail: bool = False):
    """Bytes of the values the backward pass keeps from the forward pass (jax.vjp residuals
    of the loss w.r.t. the parameters, excluding the parameters themselves), by tracing only.

    This is the activation memory each remat policy leaves, independent of the backend: XLA's
    CPU compiler does not realize remat savings in its buffer assignment (jax issue #19822),
    so memory_analysis on CPU cannot show them. With `detail`, returns (total, {dtype: bytes},
    {producer: bytes}) where producer is 'norm' (inside a GroupNorm/LayerNorm), 'softmax'
    (attention probabilities), or the U-Net block that made the value.
    """
    from experiments.benchmarks import flops_breakdown  # pylint: disable=g-import-not-at-top
    state, batch = self.abstract_args(batch_size)
    key = jax.random.key(0)

    def residuals(params, batch):
      _, vjp_fn = jax.vjp(lambda p: self.loss_fn(p, batch, key)[0], params)
      return jax.tree.leaves(vjp_fn)

    closed = jax.make_jaxpr(residuals)(state.params, batch)
    producer = {o: e for e in closed.jaxpr.eqns for o in e.outvars}
    inputs = set(closed.jaxpr.invars)
    seen, total = set(), 0
    by_dtype, by_producer = {}, {}
    for v in closed.jaxpr.outvars:
      if v in inputs or v in seen or not hasattr(v, "aval"):
        continue
      seen.add(v)
      n = int(np.prod(v.aval.shape)) * np.dtype(v.aval.dtype).itemsize
      total += n
      if detail:
        eqn = producer.get(v)
        path = str(eqn.source_info.name_stack) if eqn is not None else ""
        segments = [x for x in path.replace("(", "/").replace(")", "/").split("/") if x]
        if flops_breakdown.is_norm_path(path):
          kind = "norm"
        elif eqn is not None and segments and segments[-1] == "attention" and (
            eqn.primitive.name in ("exp", "jit", "pjit", "div")):
          kind = "softmax"
        else:
          kind = flops_breakdown.block_of(path)
        by_dtype[str(v.aval.dtype)] = by_dtype.get(str(v.aval.dtype), 0) + n
        by_producer[kind] = by_producer.get(kind, 0) + n
    return (total, by_dtype, by_producer) if detail else total

  def param_count(self) -> int:
    target, _ = self._abstract_state()
    return state_lib.param_count(target.params)

  def memory(self, batch_size: int) -> dict:
    """Compiled memory and FLOPs of the step at `batch_size` (abstract compile)."""
    compiled, seconds = self.compile_abstract(batch_size)
    return dict(common.compiled_stats(compiled), compile_s=seconds, batch_size=batch_size)

  def random_state(self, *, seed: int = 0) -> state_lib.TrainState:
    """A train state in its shards with random parameters (normal, scale 0.02; the EMA a copy)
    and the optimizer state `tx.init` gives them. Avoids compiling the model's initializers,
    which costs as much as compiling the step on CPU; step times do not depend on the values.
    """
    target, shardings = self._abstract_state()
    rng = np.random.default_rng(seed)
    host = jax.tree.map(lambda x: (0.02 * rng.standard_normal(x.shape)).astype(x.dtype),
                        target.params)
    params = jax.device_put(host, shardings.params)
    ema = jax.device_put(host, shardings.ema_params)
    with jax.set_mesh(self.mesh):
      opt_state = jax.jit(self.tx.init, out_shardings=shardings.opt_state)(params)
    zero = lambda s: jax.device_put(np.zeros((), np.int32), s)
    return state_lib.TrainState(
        step=zero(shardings.step), params=params, ema_params=ema, opt_state=opt_state,
        nonfinite_count=zero(shardings.nonfinite_count),
        consecutive_nonfinite=zero(shardings.consecutive_nonfinite))

  def prepare(self, *, batch_size: Optional[int] = None) -> "common.Prepared":
    """Compiles the real step on a random state and batch; returns the call to time and the
    function that turns its timing into a row (see `measure`)."""
    b = int(batch_size or self.config.train.batch_size)
    sharding_lib.check_batch_divisible(b, self.mesh, self.rules)
    state = self.random_state()
    batch = sharding_lib.host_to_global(random_batch(self.config, b, seed=1), self.mesh,
                                        self.rules)
    start = time.perf_counter()
    lowered = self.step_fn(b).lower(state, batch)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    # XLA counts a while loop's body once: scale by the microbatches of gradient accumulation.
    stats = common.compiled_stats(
        compiled, loop_trip_count=int(self.config.train.grad_accum_steps))
    # XLA's count before optimization: a check on the compiled count (a backend whose cost
    # model skipped a custom call, e.g. a cuDNN kernel, would show as a large gap).
    stats["flops_unoptimized"] = common.lowered_flops(
        lowered, loop_trip_count=int(self.config.train.grad_accum_steps))
    holder = [state]
    params = state_lib.param_count(state.params)
    del state

    def run_once():
      holder[0], metrics = compiled(holder[0], batch)
      return holder[0].step, metrics["loss"]

    def finish(timing):
      loss = float(np.asarray(jax.device_get(run_once()[1])))
      holder.clear()      # frees the state
      step_s = timing["median_s"]
      flops = stats["flops"]
      peak = flops_lib.peak_flops_per_device(self.devices[0])
      return dict(
          batch_size=b, frames=int(self.config.frames), params=params,
          devices=len(self.devices), step_s=step_s, timing=timing, compile_s=compile_s,
          examples_per_s=b / step_s, frames_per_s=b * int(self.config.frames) / step_s,
          tflops_per_device=(flops / step_s / 1e12) if flops else None,
          mfu=(flops / step_s / peak) if (flops and peak) else None,
          loss_finite=bool(np.isfinite(loss)), **stats)

    return common.Prepared(run_once=run_once, finish=finish)

  def measure(self, *, batch_size: Optional[int] = None, warmup: int = 1,
              repeats: int = 5) -> dict:
    """Compiles and times the real step; returns a row of throughput, FLOPs and memory.

    Examples/s and frames/s are global; TFLOP/s and MFU are per device (XLA's FLOPs of the
    partitioned program per device over the median step time; MFU against the chip's peak
    dense bf16 rate, None on CPU).
    """
    prepared = self.prepare(batch_size=batch_size)
    return prepared.finish(common.time_calls(prepared.run_once, warmup=warmup,
                                             repeats=repeats))

  def largest_batch(self, *, limit_bytes: float, max_batch: int = 4096,
                    max_compiles: int = 10) -> dict:
    """The largest global batch whose compiled peak memory (temp + args + outputs) fits in
    `limit_bytes`, searched on abstract compiles (nothing runs).

    Two probes (1 and 2 data-parallel units) fit peak = a + b * batch; the prediction and one
    batch ~6% above it are compiled; then doubling (while everything fits) and bisection
    between the largest batch that fits and the smallest that does not. Batches are multiples
    of the data-parallel size. Returns the batch (None if even one unit does not fit), its
    peak bytes, whether the search closed to one unit, and every probe (batch, peak bytes;
    inf where the compiler itself ran out of memory).
    """
    unit = sharding_lib.data_parallel_size(self.mesh, self.rules)
    probes = {}

    def fits(b):
      if b not in probes:
        try:
          probes[b] = float(self.memory(b)["peak_bytes"])
        except Exception as e:  # pylint: disable=broad-except
          if not common.is_out_of_memory(e):
            raise
          probes[b] = float("inf")
      return probes[b] <= limit_bytes

    def result(lo, hi):
      return dict(batch_size=lo, peak_bytes=probes.get(lo), limit_bytes=float(limit_bytes),
                  resolved=lo is not None and (hi is not None and hi - lo <= unit
                                               or lo >= max_batch),
                  probes=sorted(probes.items()), compiles=len(probes))

    def round_down(b):
      return max(unit, min(max_batch, b) // unit * unit)

    if not fits(unit):
      return result(None, unit)
    lo, hi = unit, None
    if not fits(2 * unit):
      return result(unit, 2 * unit)
    lo = 2 * unit
    slope = (probes[2 * unit] - probes[unit]) / unit
    if slope > 0:
      guess = round_down(int(unit + (limit_bytes - probes[unit]) / slope))
      if guess > lo:
        if fits(guess):
          lo = guess
          above = round_down(guess + max(unit, guess // 16))
          if above > lo:
            if fits(above):
              lo = above
            else:
              hi = above
        else:
          hi = guess
    while hi is None and lo < max_batch and len(probes) < max_compiles:
      b = round_down(2 * lo)
      if fits(b):
        lo = b
      else:
        hi = b
    while hi is not None and hi - lo > unit and len(probes) < max_compiles:
      mid = round_down((lo + hi) // 2)
      if mid <= lo:
        break
      if fits(mid):
        lo = mid
      else:
        hi = mid
    return result(lo, hi)
