"""The evaluators that `eval.metrics` chooses: named sets of figures of generated videos.

    metrics = evaluators.metrics_from_config(config.eval)     # e.g. ("fvd", "moving_shapes")
    result = evaluate.evaluate_videos(videos, prompts, real_videos, fps=fps, metrics=metrics)

An `Evaluator` has a name, says what it reads besides the videos (`needs`) and computes a dict
of figures from `Inputs`; `evaluate_videos` merges the dicts of the chosen evaluators in
REGISTRY order (so the order of eval.metrics does not change the results' key order):

  moving_shapes  caption accuracy per attribute and temporal consistency, read from the pixels
                 by the moving-shapes detectors; prompts must follow that caption grammar
                 (or be ClipSpecs / labels). Keys "caption_accuracy", "consistency" and, with
                 real clips, "real_consistency".
  fvd            Fréchet Video Distance to the real clips with the Kinetics-400 I3D. Keys
                 "fvd", "fvd_num_videos", "fvd_frames" ("fvd_note"); skipped without real clips.

Any dataset can be scored with eval.metrics = ("fvd",). The deprecated `eval.fvd = False` still
removes "fvd" from eval.metrics. `validate_eval_config` lists the errors of a config's `eval`
section (unknown metric names) for `config_utils.validate_config`.
"""
import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from vdm_jax.data.moving_shapes import accuracy
from vdm_jax.data.moving_shapes import consistency
from vdm_jax.data.moving_shapes import detectors
from vdm_jax.eval import fvd as fvd_lib

NEEDS = ("targets", "fps", "real_videos")
DEFAULT_METRICS = ("fvd", "moving_shapes")


@dataclasses.dataclass(frozen=True)
class Inputs:
  """What evaluators read: the generated videos and what they are compared with."""
  videos: np.ndarray                          # uint8 [N, T, H, W, 3]
  targets: Optional[Sequence[Any]] = None     # N prompts: captions, ClipSpecs or labels
  fps: Optional[float] = None                 # frame rate of `videos`
  real_videos: Optional[np.ndarray] = None    # uint8 [M, T', H', W', 3]
  extractor: Optional[Any] = None             # I3D features; None = the packaged weights
  repeat_short: bool = True                   # stretch clips shorter than 9 frames for I3D


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """A named set of figures.

  `needs` is a subset of NEEDS: without "targets" or "fps" `evaluate_videos` raises, without
  "real_videos" it skips the evaluator. `compute(inputs)` returns {figure: value}.
  """
  name: str
  needs: Tuple[str, ...]
  compute: Callable[[Inputs], Dict[str, Any]]
  description: str = ""


def _consistency(videos: np.ndarray, dets: Sequence[detectors.Detection]) -> Dict[str, float]:
  return consistency.summarize([consistency.clip_consistency(v, d) for v, d in zip(videos, dets)])


def moving_shapes_figures(inputs: Inputs) -> Dict[str, Any]:
  """Caption accuracy and consistency of the videos (and of the real clips, if given)."""
  for target in inputs.targets:  # before the detectors run
    try:
      accuracy.as_target(target)
    except ValueError as e:
      raise ValueError(f"{e}. The 'moving_shapes' evaluator reads moving-shapes prompts; "
                       "score other videos with other metrics, e.g. eval.metrics=('fvd',)."
                       ) from e
  videos, fps = inputs.videos, inputs.fps
  dets = detectors.detect_batch(videos, fps)
  out = dict(caption_accuracy=accuracy.caption_accuracy(dets, inputs.targets,
                                                        with_motion=videos.shape[1] > 1),
             consistency=_consistency(videos, dets))
  if inputs.real_videos is not None:
    real = inputs.real_videos
    out["real_consistency"] = _consistency(real, detectors.detect_batch(real, fps))
  return out


def fvd_figures(inputs: Inputs) -> Dict[str, Any]:
  """FVD of the videos against the real clips (`fvd.fvd_of`)."""
  extractor = inputs.extractor or fvd_lib.I3DFeatureExtractor()
  return fvd_lib.fvd_of(inputs.videos, inputs.real_videos, extractor, inputs.repeat_short)


REGISTRY: Dict[str, Evaluator] = {}


def register(evaluator: Evaluator) -> Evaluator:
  """Adds `evaluator` to REGISTRY (after the others: its figures come last)."""
  if evaluator.name in REGISTRY:
    raise ValueError(f"An evaluator named {evaluator.name!r} is already registered.")
  unknown = set(evaluator.needs) - set(NEEDS)
  if unknown:
    raise ValueError(f"Evaluator {evaluator.name!r} needs {sorted(unknown)}: not in {NEEDS}.")
  REGISTRY[evaluator.name] = evaluator
  return evaluator


register(Evaluator("moving_shapes", ("targets", "fps"), moving_shapes_figures,
                   "caption accuracy and temporal consistency (moving-shapes detectors)"))
register(Evaluator("fvd", ("real_videos",), fvd_figures,
                   "Fréchet Video Distance to the real clips (Kinetics-400 I3D)"))


def unknown_metrics_error(metrics: Sequence[str]) -> Optional[str]:
  """An error message when `metrics` is not a tuple of names of REGISTRY, else None."""
  if isinstance(metrics, str) or not all(isinstance(m, str) for m in metrics):
    return f"eval.metrics={metrics!r} must be a tuple of names, e.g. ('fvd',)"
  unknown = [m for m in metrics if m not in REGISTRY]
  if unknown:
    return f"eval.metrics: unknown metric(s) {unknown}; known metrics: {tuple(REGISTRY)}"
  return None


def check_metrics(metrics: Sequence[str]) -> Tuple[str, ...]:
  """`metrics` as a tuple; raises ValueError naming the known ones if a name is unknown."""
  error = unknown_metrics_error(metrics)
  if error:
    raise ValueError(error)
  return tuple(metrics)


def metrics_from_config(eval_cfg) -> Tuple[str, ...]:
  """The metrics the `eval` config section chooses: eval.metrics, less "fvd" when the
  deprecated eval.fvd is False."""
  metrics = check_metrics(eval_cfg.get("metrics", DEFAULT_METRICS))
  if not eval_cfg.get("fvd", True):
    metrics = tuple(m for m in metrics if m != "fvd")
  return metrics


def validate_eval_config(config) -> List[str]:
  """The errors of an experiment config's `eval` section (for config_utils.validate_config)."""
  error = unknown_metrics_error((config.get("eval") or {}).get("metrics", DEFAULT_METRICS))
  return [error] if error else []
