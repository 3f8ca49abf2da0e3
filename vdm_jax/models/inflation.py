"""An image model inflated into a video model (Make-A-Video), and the temporal / spatial split
of a family's parameters that training with frozen spatial layers uses.

A family marks which of its parameters are temporal (`ModelFamily.temporal_param(path)`, paths
written "down0_res0/temporal/conv/kernel"): the layers that mix frames and the inputs that only
a video has (frame rate, frame position). An image model is the same network without them.

    params, report = inflate(image_params, video_init_params,
                             is_temporal=fam.temporal_param, zero_when_new=fam.zero_when_inflated)

copies every parameter of the image model into the video model unchanged and keeps the video
model's fresh initialization for the rest, which must all be temporal. A family's temporal
layers start as the identity (zero-initialized residual branches: temporal convs, the output
projection of temporal attention), so the inflated model computes the image model frame by
frame; new parameters that would not (the last layer of a new conditioning embedding, e.g. the
frame rate's) are named by `zero_when_new` and set to zero. Anything else is refused naming the
parameters: an image model of other widths, or a video model that differs in a spatial layer.
"""
import dataclasses
import math
from typing import Any, Callable

from flax import traverse_util
import flax.linen as nn
import jax.numpy as jnp

SEP = "/"


def flat_paths(params: Any) -> dict:
  """{"a/b/kernel": leaf} of a nested parameter dict (FrozenDict or dict; logically boxed
  leaves are unboxed)."""
  return traverse_util.flatten_dict(dict(nn.unbox(params)), sep=SEP)


def label_tree(params: Any, is_trainable: Callable[[str], bool]) -> Any:
  """The tree of `params` with each leaf replaced by "trainable" or "frozen" (for
  optax.multi_transform)."""
  flat = flat_paths(params)
  labels = {k: "trainable" if is_trainable(k) else "frozen" for k in flat}
  return traverse_util.unflatten_dict(labels, sep=SEP)


@dataclasses.dataclass(frozen=True)
class InflationReport:
  """What `inflate` did: parameters copied from the image model, new ones kept at their
  initialization, and new ones set to zero."""
  copied: tuple
  new: tuple
  zeroed: tuple
  copied_count: int
  new_count: int

  def summary(self) -> str:
    text = (f"{len(self.copied)} arrays ({self.copied_count:,} parameters) copied from the "
            "source model")
    if not self.new:
      return text + "; nothing new"
    return (text + f"; {len(self.new)} new temporal arrays ({self.new_count:,} parameters), "
            f"{len(self.zeroed)} of them zeroed (the others zero-initialized already or not on "
            "the residual path) so the new layers start as the identity")


def inflate(source: Any, target: Any, *, is_temporal: Callable[[str], bool],
            zero_when_new: Callable[[str], bool]) -> tuple[dict, InflationReport]:
  """The video model's parameters: `source`'s where it has them, `target`'s (a fresh
  initialization of the video model) elsewhere. Raises ValueError naming the parameters when
  the two are not the same network up to temporal layers."""
  src, tgt = flat_paths(source), flat_paths(target)
  missing = sorted(k for k in src if k not in tgt)
  if missing:
    raise ValueError(
        f"the video model lacks {len(missing)} parameter(s) of the image model ("
        f"{', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}): inflation needs the "
        "same network with temporal layers added; make the video config's model section equal "
        "the image stage's except for its temporal keys")
  shapes = [f"{k} {tuple(src[k].shape)} -> {tuple(tgt[k].shape)}" for k in sorted(src)
            if tuple(src[k].shape) != tuple(tgt[k].shape)]
  if shapes:
    raise ValueError(
        f"{len(shapes)} parameter(s) differ in shape between the image and the video model "
        f"({'; '.join(shapes[:3])}{'; ...' if len(shapes) > 3 else ''}): the video config must "
        "keep the image stage's widths, levels and inputs")
  new = sorted(k for k in tgt if k not in src)
  spatial = [k for k in new if not is_temporal(k)]
  if spatial:
    raise ValueError(
        f"the video model has {len(spatial)} new parameter(s) that are not temporal ("
        f"{', '.join(spatial[:4])}{', ...' if len(spatial) > 4 else ''}): a spatial layer the "
        "image model was trained without would start random; add it to the image stage too")
  out, zeroed = {}, []
  for k, value in tgt.items():
    if k in src:
      out[k] = jnp.asarray(src[k], dtype=value.dtype)
    elif zero_when_new(k):
      out[k] = jnp.zeros_like(value)
      zeroed.append(k)
    else:
      out[k] = value
  report = InflationReport(
      copied=tuple(sorted(src)), new=tuple(new), zeroed=tuple(sorted(zeroed)),
      copied_count=int(sum(math.prod(v.shape) for v in src.values())),
      new_count=int(sum(math.prod(tgt[k].shape) for k in new)))
  return traverse_util.unflatten_dict(out, sep=SEP), report
