"""evaluate_videos: the evaluators eval.metrics chooses (caption accuracy, consistency, FVD)
gathered into one JSON-ready dict."""
import json

import numpy as np
import pytest

from configs import default
from vdm_jax.data.moving_shapes import grammar, render
from vdm_jax.eval import evaluate, evaluators, fvd, i3d


class _MeanColourFeatures:
  """A cheap feature extractor with I3D's interface (mean and std of each channel)."""

  def __init__(self):
    self.frames_seen = []

  def features(self, videos):
    videos = np.asarray(videos, np.float64)
    self.frames_seen.append(videos.shape[1])
    return np.concatenate([videos.mean(axis=(1, 2, 3)), videos.std(axis=(1, 2, 3))], axis=1)


@pytest.fixture(scope="module")
def clips():
  rng = np.random.default_rng(5)
  specs = [grammar.sample_spec(rng, frames=8, height=16, width=16, fps=8.0)
           for _ in range(8)]
  return specs, np.stack([render.render(s) for s in specs])


def test_real_clips_score_perfectly_and_json_is_written(clips, tmp_path):
  specs, videos = clips
  out = tmp_path / "eval" / "eval.json"
  floats = videos.astype(np.float32) / 127.5 - 1.0  # the models' [-1, 1] range
  result = evaluate.evaluate_videos(floats, specs, compute_fvd=False, out_path=str(out))
  assert result["caption_accuracy"]["all"] == 1.0
  assert result["consistency"]["flicker"] == 0.0
  assert (result["num_videos"], result["frames"], result["fps"]) == (8, 8, 8.0)
  assert json.loads(out.read_text()) == result


def test_fvd_is_computed_on_stretched_short_clips(clips):
  specs, videos = clips
  rng = np.random.default_rng(0)
  noisy = np.clip(videos + rng.normal(0, 60, videos.shape), 0, 255).astype(np.uint8)
  extractor = _MeanColourFeatures()
  captions = [grammar.caption(s) for s in specs]
  result = evaluate.evaluate_videos(noisy, captions, videos, extractor, fps=8.0)
  assert extractor.frames_seen == [16, 16]  # 8 frames repeated to reach I3D's 9
  assert result["fvd"] > 0 and result["fvd_num_videos"] == [8, 8]
  assert result["caption_accuracy"]["all"] < 1.0
  assert result["consistency"]["flicker"] > result["real_consistency"]["flicker"] == 0.0
  same = evaluate.evaluate_videos(videos, captions, videos, _MeanColourFeatures(), fps=8.0)
  assert abs(same["fvd"]) < 1e-9
  with pytest.raises(ValueError, match="too short"):
    fvd.fvd_of(videos, videos, extractor, repeat_short=False)


def test_user_errors_are_explained(clips):
  specs, videos = clips
  with pytest.raises(ValueError, match="one prompt per video"):
    evaluate.evaluate_videos(videos, specs[:3], compute_fvd=False)
  with pytest.raises(ValueError, match="pass fps="):
    evaluate.evaluate_videos(videos, [grammar.caption(s) for s in specs], compute_fvd=False)
  with pytest.raises(ValueError, match=r"\[N, T, H, W, 3\]"):
    evaluate.evaluate_videos(videos[0], specs[:1], compute_fvd=False, fps=8.0)
  assert i3d.MIN_FRAMES == 9


def test_single_frame_videos_are_scored_without_motion():
  rng = np.random.default_rng(2)
  specs = [grammar.sample_spec(rng, frames=1, height=32, width=32, fps=8.0, image=True)
           for _ in range(3)]
  videos = np.stack([render.render(s) for s in specs])                 # [3, 1, 32, 32, 3]
  labels = [grammar.labels_to_dict(s) for s in specs]  # labels say "still"; frames cannot
  result = evaluate.evaluate_videos(videos, labels, compute_fvd=False, fps=8.0)
  assert result["caption_accuracy"]["all"] == 1.0
  assert "motion" not in result["caption_accuracy"]
  assert result["consistency"]["flicker"] is None  # no frame pairs: NaN, written as null


def test_metrics_choose_the_evaluators(clips):
  specs, videos = clips
  extractor = _MeanColourFeatures()
  shapes = evaluate.evaluate_videos(videos[:2], specs[:2], videos[:2], extractor,
                                    metrics=("moving_shapes",))
  assert shapes["caption_accuracy"]["all"] == 1.0 and "real_consistency" in shapes
  assert "fvd" not in shapes and extractor.frames_seen == []   # I3D never ran
  alone = evaluate.evaluate_videos(videos, None, videos[::-1], extractor, metrics=("fvd",))
  assert abs(alone["fvd"]) < 1e-9 and alone["fps"] is None   # no prompts, no frame rate needed
  assert "caption_accuracy" not in alone and "consistency" not in alone
  with pytest.raises(ValueError, match=r"unknown metric\(s\) \['psnr'\]; known metrics: "
                                       r"\('moving_shapes', 'fvd'\)"):
    evaluate.evaluate_videos(videos, specs, metrics=("fvd", "psnr"))


def test_eval_config_chooses_the_metrics():
  c = default.get_config()
  assert evaluators.metrics_from_config(c.eval) == ("fvd", "moving_shapes")
  assert evaluators.validate_eval_config(c) == []
  c.eval.fvd = False  # the deprecated switch still turns FVD off
  assert evaluators.metrics_from_config(c.eval) == ("moving_shapes",)
  c.eval.metrics = ("fvd", "psnr")
  assert evaluators.validate_eval_config(c) == [
      "eval.metrics: unknown metric(s) ['psnr']; known metrics: ('moving_shapes', 'fvd')"]
