"""Encoding and decoding long videos in chunks, exactly, with the frame cache carried through
`lax.scan`.

The first frame (or latent) goes alone: it starts the video, so every causal layer pads with
zeros and the time resamplers treat it as the first frame. Its call returns the cache pytree
(the Flax collection 'cache', see layers.py); the remaining frames go in chunks of
`chunk_latents` latents (chunk_latents * temporal_factor frames), each call taking the cache
and returning the next. Because no layer mixes frames except causally, and every norm is per
frame, the result equals the whole-clip encode / decode up to float rounding. A last shorter
chunk takes whatever is left.

    mean, logvar = encode_chunked(model, params, video, chunk_latents=2)
    video = decode_chunked(model, params, z, chunk_latents=2)

`chunk_for_budget` picks the largest chunk whose compiled step fits a memory budget;
`decode_time_sharded` decodes the chunks in parallel, one per device of a mesh axis, each
causal layer exchanging a halo of past frames with its neighbour; `decode_tiled` bounds memory
in space with overlapping tiles blended by linear ramps.
"""
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vdm_jax.models.vae.network import AutoencoderKL, Decoder

CACHE = "cache"


def _chunks(x, size: int):
  """[B, N, ...] -> ([n, B, size, ...] full chunks, [B, N - n * size, ...] the rest)."""
  n = x.shape[1] // size
  full = x[:, :n * size].reshape((x.shape[0], n, size) + x.shape[2:])
  return jnp.swapaxes(full, 0, 1), x[:, n * size:]


def _unchunk(y):
  """[n, B, size, ...] -> [B, n * size, ...]."""
  y = jnp.swapaxes(y, 0, 1)
  return y.reshape((y.shape[0], y.shape[1] * y.shape[2]) + y.shape[3:])


def _run(fn: Callable, params, x, *, step: int):
  """fn applied to x[:, :1] (the start), then to chunks of `step` along axis 1 with the cache
  carried (an empty cache where no layer mixes frames); outputs (trees of [B, n, ...])
  concatenated along axis 1."""
  out0, state = fn({"params": params}, x[:, :1])
  full, rest = _chunks(x[:, 1:], step)

  def body(cache, chunk):
    out, state = fn({"params": params, CACHE: cache}, chunk)
    return state.get(CACHE, {}), out

  pieces = [out0]
  cache = state.get(CACHE, {})      # empty for a per-frame (2-D) autoencoder: nothing to carry
  if full.shape[0]:
    cache, outs = jax.lax.scan(body, cache, full)
    pieces.append(jax.tree.map(_unchunk, outs))
  if rest.shape[1]:
    pieces.append(fn({"params": params, CACHE: cache}, rest)[0])
  return jax.tree.map(lambda *a: jnp.concatenate(a, axis=1), *pieces)


def encode_chunked(model: AutoencoderKL, params, video, *, chunk_latents: int):
  """(mean, logvar) of `video` [B, 1 + f k, H, W, C], encoded `chunk_latents` latents at a
  time (f = the temporal compression)."""
  f = model.spec.temporal_factor
  if chunk_latents < 1:
    raise ValueError(f"chunk_latents={chunk_latents} must be at least 1")
  fn = functools.partial(model.apply, method=AutoencoderKL.encode, mutable=[CACHE])
  return _run(fn, params, video, step=chunk_latents * f)


def decode_chunked(model: AutoencoderKL, params, z, *, chunk_latents: int):
  """The video [B, 1 + f (T' - 1), H, W, C] of latents `z` [B, T', H', W', C'], decoded
  `chunk_latents` latents at a time."""
  if chunk_latents < 1:
    raise ValueError(f"chunk_latents={chunk_latents} must be at least 1")
  fn = functools.partial(model.apply, method=AutoencoderKL.decode, mutable=[CACHE])
  return _run(fn, params, z, step=chunk_latents)


def decode_time_sharded(model: AutoencoderKL, params, z, mesh, *, axis: str,
                        gather: bool = True):
  """`z` [B, 1 + k, H', W', C'] decoded with its time axis sharded over mesh axis `axis`
  (D devices, k divisible by D): the first latent is decoded alone (replicated, it starts the
  video) and gives the first device its cache; the other k latents are split into D contiguous
  shards decoded in parallel under `shard_map`, every causal layer receiving its past frames
  from the previous device (`ppermute`, layers.halo_past). The result equals `decode` up to
  float rounding. With gather=False it returns (the first frame, the other frames sharded over
  `axis`), so that no device holds the whole video."""
  devices, k = int(mesh.shape[axis]), int(z.shape[1]) - 1
  if k % devices or k // devices < 2:
    raise ValueError(f"decode_time_sharded: the {k} latents after the first must split into "
                     f"{devices} shards ({axis!r}) of at least 2 latents each")
  first, state = model.apply({"params": params}, z[:, :1], method=AutoencoderKL.decode,
                             mutable=[CACHE])
  decoder = Decoder(model.spec, halo_axis=axis)

  def shard(p, cache, zs):
    return decoder.apply({"params": p, CACHE: cache}, zs)

  zs = jax.reshard(z[:, 1:], NamedSharding(mesh, P(None, axis)))
  rest = jax.shard_map(shard, mesh=mesh, in_specs=(P(), P(), P(None, axis)),
                       out_specs=P(None, axis), check_vma=False)(
                           params["decoder"], state[CACHE]["decoder"], zs)
  if not gather:
    return first, rest
  rest = jax.reshard(rest, NamedSharding(mesh, P()))
  return jnp.concatenate([first, rest], axis=1)


def _tile_starts(size: int, tile: int, overlap: int) -> list:
  """Starts of tiles of length `tile` stepping tile - overlap, the last one flush with the end."""
  if tile >= size:
    return [0]
  starts = list(range(0, size - tile, tile - overlap)) + [size - tile]
  return sorted(set(starts))


def _ramp(tile: int, overlap: int, lead: bool, trail: bool):
  """Blend weights [tile * s] along one axis: linear ramps over the `overlap` pixels shared
  with a neighbouring tile before (`lead`) / after (`trail`), 1 elsewhere."""
  w = jnp.ones((tile,), jnp.float32)
  ramp = (jnp.arange(overlap, dtype=jnp.float32) + 0.5) / overlap
  if lead and overlap:
    w = w.at[:overlap].set(ramp)
  if trail and overlap:
    w = w.at[tile - overlap:].set(ramp[::-1])
  return w


def decode_tiled(model: AutoencoderKL, params, z, *, tile: int, overlap: int,
                 decode: Callable = None):
  """The video of latents `z` [B, T', H', W', C'] decoded in spatial tiles of tile x tile
  latents overlapping by `overlap` latents, blended with linear ramps over the overlap (the
  seams of tiles decoded apart fade into each other instead of showing as edges). `decode`
  (params, z_tile) -> video tile decodes one tile (default: the whole clip at once; pass a
  `decode_chunked` partial to bound time too). Peak memory is one tile's decode. Not exact: a
  tile's pixels near its edge miss the context beyond it, which the overlap hides."""
  s = model.spec.spatial_factor
  _, _, hl, wl, _ = z.shape
  if not 0 <= overlap < tile:
    raise ValueError(f"decode_tiled: overlap={overlap} must be in [0, tile={tile})")
  if decode is None:
    def decode(p, zt):
      return model.apply({"params": p}, zt, method=AutoencoderKL.decode)
  ys, xs = _tile_starts(hl, tile, overlap), _tile_starts(wl, tile, overlap)
  th, tw = min(tile, hl), min(tile, wl)
  total = weight = None
  for y in ys:
    for x in xs:
      out = decode(params, z[:, :, y:y + th, x:x + tw])            # [B, T, th s, tw s, C]
      # Ramps where a neighbour shares pixels (the last tile, flush with the end, may share
      # more than `overlap`: there both weigh 1 and average).
      wy = _ramp(th * s, overlap * s, y != ys[0], y != ys[-1])
      wx = _ramp(tw * s, overlap * s, x != xs[0], x != xs[-1])
      w = (wy[:, None] * wx[None, :])[None, None, :, :, None]
      if total is None:
        total = jnp.zeros(out.shape[:2] + (hl * s, wl * s, out.shape[-1]), jnp.float32)
        weight = jnp.zeros((1, 1, hl * s, wl * s, 1), jnp.float32)
      total = total.at[:, :, y * s:(y + th) * s, x * s:(x + tw) * s].add(w * out)
      weight = weight.at[:, :, y * s:(y + th) * s, x * s:(x + tw) * s].add(w)
  return total / weight


def decode_memory(model: AutoencoderKL, params_shapes, *, latent_shape: Sequence[int],
                  batch: int = 1, candidates=(1, 2, 4, 8, 16, 32)) -> dict:
  """{chunk_latents: bytes} of decoding latents `latent_shape` (T', H', W', C') in chunks of
  each candidate length: XLA's compiled temporary plus output memory (nothing is allocated:
  the parameters may be shapes)."""
  t = int(latent_shape[0])
  z = jax.ShapeDtypeStruct((batch,) + tuple(latent_shape), jnp.float32)
  sizes = {}
  for c in sorted(c for c in candidates if c <= max(t - 1, 1)):
    fn = jax.jit(functools.partial(decode_chunked, model, chunk_latents=c))
    mem = fn.lower(params_shapes, z).compile().memory_analysis()
    sizes[c] = float(mem.temp_size_in_bytes + mem.output_size_in_bytes)
  return sizes


def choose_chunk(sizes: dict, budget_bytes: float) -> int:
  """The largest chunk of `decode_memory`'s table that fits `budget_bytes`; ValueError when
  none does."""
  fitting = [c for c, b in sizes.items() if b <= budget_bytes]
  if not fitting:
    raise ValueError(f"no decode chunk fits {budget_bytes / 2**30:.3f} GiB (the smallest needs "
                     f"{min(sizes.values()) / 2**30:.3f} GiB); tile in space or raise the budget")
  return max(fitting)


def chunk_for_budget(model: AutoencoderKL, params_shapes, *, latent_shape: Sequence[int],
                     budget_bytes: float, batch: int = 1, candidates=(1, 2, 4, 8, 16, 32)
                     ) -> tuple[int, dict]:
  """(the largest chunk_latents among `candidates` whose chunked decode of `latent_shape`
  fits `budget_bytes`, the {chunk: bytes} table); ValueError when none fits."""
  sizes = decode_memory(model, params_shapes, latent_shape=latent_shape, batch=batch,
                        candidates=candidates)
  return choose_chunk(sizes, budget_bytes), sizes
