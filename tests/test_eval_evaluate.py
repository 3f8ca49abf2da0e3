"""evaluate_videos: caption accuracy, consistency and FVD gathered into one JSON-ready dict."""
import json

import numpy as np
import pytest

from vdm_jax.data import procedural
from vdm_jax.eval import evaluate, i3d


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
  specs = [procedural.sample_spec(rng, frames=8, height=16, width=16, fps=8.0)
           for _ in range(8)]
  return specs, np.stack([procedural.render(s) for s in specs])


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
  captions = [procedural.caption(s) for s in specs]
  result = evaluate.evaluate_videos(noisy, captions, videos, extractor, fps=8.0)
  assert extractor.frames_seen == [16, 16]  # 8 frames repeated to reach I3D's 9
  assert result["fvd"] > 0 and result["fvd_num_videos"] == [8, 8]
  assert result["caption_accuracy"]["all"] < 1.0
  assert result["consistency"]["flicker"] > result["real_consistency"]["flicker"] == 0.0
  same = evaluate.evaluate_videos(videos, captions, videos, _MeanColourFeatures(), fps=8.0)
  assert abs(same["fvd"]) < 1e-9
  with pytest.raises(ValueError, match="too short"):
    evaluate.fvd_of(videos, videos, extractor, repeat_short=False)


def test_user_errors_are_explained(clips):
  specs, videos = clips
  with pytest.raises(ValueError, match="one prompt per video"):
    evaluate.evaluate_videos(videos, specs[:3], compute_fvd=False)
  with pytest.raises(ValueError, match="pass fps="):
    evaluate.evaluate_videos(videos, [procedural.caption(s) for s in specs], compute_fvd=False)
  with pytest.raises(ValueError, match=r"\[N, T, H, W, 3\]"):
    evaluate.evaluate_videos(videos[0], specs[:1], compute_fvd=False, fps=8.0)
  assert i3d.MIN_FRAMES == 9


def test_single_frame_videos_are_scored_without_motion():
  rng = np.random.default_rng(2)
  specs = [procedural.sample_spec(rng, frames=1, height=32, width=32, fps=8.0, image=True)
           for _ in range(3)]
  videos = np.stack([procedural.render(s) for s in specs])                 # [3, 1, 32, 32, 3]
  labels = [procedural.labels_to_dict(s) for s in specs]  # labels say "still"; frames cannot
  result = evaluate.evaluate_videos(videos, labels, compute_fvd=False, fps=8.0)
  assert result["caption_accuracy"]["all"] == 1.0
  assert "motion" not in result["caption_accuracy"]
  assert result["consistency"]["flicker"] is None  # no frame pairs: NaN, written as null
