"""A 3-D causal VAE inflated from a trained per-frame (2-D) one (MAGVIT's inflation).

    params3d, report = inflate_2d_to_3d(params2d, fresh_params3d, mode="newest")

Every 2-D kernel [1, kh, kw, Cin, Cout] becomes a causal 3-D kernel [kt, kh, kw, Cin, Cout]:
  - "newest" (MAGVIT's central-frame inflation, for a causal conv the newest frame): the 2-D
    kernel at the last time tap, zeros on the past ones. At initialization every conv acts on
    each frame alone, the time downsamplers keep frames 0, f, 2f, ... and the time upsamplers
    repeat, so the latent j of a clip is the 2-D latent of frame f j and the decoded frame t is
    the 2-D decoding of latent ceil(t / f): a clip without time compression is encoded and
    decoded exactly frame by frame.
  - "average": the 2-D kernel divided by kt at every tap (a static clip is still encoded as
    the 2-D model encodes its frame, away from the zero padding of the first frames).
Parameters of the same shape are copied; the time resamplers (absent from a 2-D model) keep
their initialization. Anything else is refused, naming the parameter.
"""
import dataclasses

from flax import traverse_util
import jax.numpy as jnp

from vdm_jax.models.inflation import SEP, flat_paths

MODES = ("newest", "average")


@dataclasses.dataclass(frozen=True)
class VAEInflationReport:
  copied: tuple       # same shape, copied
  inflated: tuple     # 2-D kernels made 3-D
  kept: tuple         # only in the 3-D model (time resamplers), at their initialization

  def summary(self) -> str:
    return (f"{len(self.copied)} arrays copied, {len(self.inflated)} kernels inflated to 3-D, "
            f"{len(self.kept)} new arrays at their initialization ({', '.join(self.kept[:4])}"
            f"{', ...' if len(self.kept) > 4 else ''})")


def inflate_2d_to_3d(params2d, params3d, *, mode: str = "newest"):
  """(params, VAEInflationReport): `params3d` (a fresh init of the 3-D VAE) with the 2-D VAE's
  parameters put in (see the module docstring)."""
  if mode not in MODES:
    raise ValueError(f"inflation mode {mode!r} is not one of {MODES}")
  src, dst = flat_paths(params2d), flat_paths(params3d)
  missing = sorted(set(src) - set(dst))
  if missing:
    raise ValueError(f"the 2-D model has parameters the 3-D one lacks: {missing[:3]}; inflate "
                     "into a 3-D VAE of the same widths and blocks")
  out, copied, inflated, kept = {}, [], [], []
  for path, target in dst.items():
    if path not in src:
      if "_time" not in path:
        raise ValueError(f"the 3-D model's {path} is not in the 2-D one and is not a time "
                         "resampler; the two networks differ")
      out[path] = target
      kept.append(path)
      continue
    source = jnp.asarray(src[path])
    if source.shape == target.shape:
      out[path] = source.astype(target.dtype)
      copied.append(path)
    elif (source.ndim == 5 and source.shape[0] == 1
          and source.shape[1:] == target.shape[1:]):
      kt = target.shape[0]
      if mode == "newest":
        k = jnp.zeros(target.shape, target.dtype).at[kt - 1].set(source[0].astype(target.dtype))
      else:
        k = jnp.broadcast_to(source / kt, target.shape).astype(target.dtype)
      out[path] = k
      inflated.append(path)
    else:
      raise ValueError(f"{path}: the 2-D model's shape {source.shape} does not inflate to "
                       f"{target.shape}")
  report = VAEInflationReport(tuple(copied), tuple(inflated), tuple(kept))
  return traverse_util.unflatten_dict(out, sep=SEP), report
