"""Caption accuracy: do the attributes read from a video match what it was prompted with?

Targets may be given as a `grammar.ClipSpec`, a caption string (`grammar.parse_caption`),
a parsed caption dict {"background", "objects": [...]}, or the flat labels of
`grammar.labels_to_dict`. Predictions are `detectors.Detection`s or the same dict form.

Per clip, the predicted objects are matched to the target objects (the one-to-one assignment
agreeing on the most attributes); a target object with no partner gets every attribute wrong.
Attributes whose target is None (motion and speed of an image caption) are not scored, except
that speed None is the right answer for a "still" object.
"""
import itertools
from typing import Any, Dict, List, Mapping, Optional, Sequence

from vdm_jax.data.moving_shapes import grammar

OBJECT_ATTRIBUTES = ("color", "shape", "size", "motion", "speed")
CLIP_ATTRIBUTES = ("background", "num_objects")
ATTRIBUTES = CLIP_ATTRIBUTES + OBJECT_ATTRIBUTES


def as_target(target: Any, with_motion: bool = True) -> Dict[str, Any]:
  """Any supported target form -> {"background": str, "objects": [dict of OBJECT_ATTRIBUTES]}.

  with_motion=False drops motion and speed (single-frame videos show none).
  """
  if isinstance(target, grammar.ClipSpec):
    out = dict(background=target.background, objects=[o.attributes() for o in target.objects])
    with_motion = with_motion and not target.is_image
  elif isinstance(target, str):
    out = grammar.parse_caption(target)
  elif hasattr(target, "attributes") and callable(target.attributes):  # a Detection
    out = target.attributes()
  elif isinstance(target, Mapping) and "objects" in target:
    out = dict(background=target["background"], objects=[dict(o) for o in target["objects"]])
  elif isinstance(target, Mapping) and "num_objects" in target:
    # Geometry is a placeholder: only the attributes are read.
    spec = grammar.labels_from_dict(target, fps=1.0, frames=2, height=16, width=16)
    out = dict(background=spec.background, objects=[o.attributes() for o in spec.objects])
  else:
    raise TypeError(f"cannot read attributes from a {type(target).__name__}: pass a ClipSpec, "
                    "a caption, a parsed caption dict or the flat labels of labels_to_dict")
  if not with_motion:
    out["objects"] = [dict(o, motion=None, speed=None) for o in out["objects"]]
  return out


def _agree(pred: Optional[Mapping], target: Mapping) -> Dict[str, Optional[bool]]:
  """Per object attribute: True/False, or None when the target does not say (not scored)."""
  out = {}
  for a in OBJECT_ATTRIBUTES:
    want = target.get(a)
    if want is None and not (a == "speed" and target.get("motion") == "still"):
      out[a] = None
    else:
      out[a] = pred is not None and pred.get(a) == want
  return out


def match_objects(pred_objects: Sequence[Mapping], target_objects: Sequence[Mapping]
                  ) -> List[Optional[Mapping]]:
  """For each target object, its predicted partner (or None): the assignment with most agreement."""
  n_t, n_p = len(target_objects), len(pred_objects)
  slots = list(range(n_p)) + [None] * n_t
  best, best_score = [None] * n_t, -1
  for perm in itertools.permutations(slots, n_t):
    if any(p is not None and perm.count(p) > 1 for p in perm):
      continue
    score = sum(bool(v) for t, p in zip(target_objects, perm)
                for v in _agree(pred_objects[p] if p is not None else None, t).values())
    if score > best_score:
      best, best_score = [pred_objects[p] if p is not None else None for p in perm], score
  return best


def score_clip(pred: Any, target: Any, with_motion: bool = True) -> Dict[str, List[int]]:
  """attribute -> [correct, scored] for one clip, plus "all" (every scored attribute right)."""
  pred, target = as_target(pred), as_target(target, with_motion)
  counts = {a: [0, 0] for a in ATTRIBUTES}
  counts["background"] = [int(pred["background"] == target["background"]), 1]
  counts["num_objects"] = [int(len(pred["objects"]) == len(target["objects"])), 1]
  all_ok = counts["background"][0] == 1 and counts["num_objects"][0] == 1
  for t, p in zip(target["objects"], match_objects(pred["objects"], target["objects"])):
    for a, ok in _agree(p, t).items():
      if ok is not None:
        counts[a][0] += int(ok)
        counts[a][1] += 1
        all_ok = all_ok and ok
  counts["all"] = [int(all_ok), 1]
  return counts


def caption_accuracy(preds: Sequence[Any], targets: Sequence[Any],
                     with_motion: bool = True) -> Dict[str, float]:
  """Accuracy per attribute and "all" (the fraction of clips with every attribute right).

  Object attributes are averaged over target objects, clip attributes over clips. Attributes
  never scored (e.g. motion for images, or with_motion=False) are absent. "num_clips" holds the
  number of clips.
  """
  if len(preds) != len(targets):
    raise ValueError(f"{len(preds)} predictions for {len(targets)} targets")
  total = {a: [0, 0] for a in ATTRIBUTES + ("all",)}
  for p, t in zip(preds, targets):
    for a, (ok, n) in score_clip(p, t, with_motion).items():
      total[a][0] += ok
      total[a][1] += n
  out = {a: ok / n for a, (ok, n) in total.items() if n}
  out["num_clips"] = len(preds)
  return out
