"""What the user sees and the objective's plumbing: FLOPs from XLA, the MFU table, the log line,
the metric files, loop config checks, and the batch -> U-Net input mapping."""
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from vdm_jax.diffusion import schedules
from vdm_jax.models import registry
from vdm_jax.train import flops
from vdm_jax.train import loop
from vdm_jax.train import metrics
from vdm_jax.train import objective


def test_compiled_flops_come_from_xla():
  f = jax.jit(lambda a, b: a @ b)
  compiled = f.lower(jnp.ones((16, 32)), jnp.ones((32, 8))).compile()
  assert flops.compiled_flops(compiled) == pytest.approx(2 * 16 * 32 * 8, rel=0.05)
  assert flops.compiled_flops(compiled, loop_trip_count=4) == pytest.approx(
      4 * flops.compiled_flops(compiled))


@pytest.mark.parametrize("platform,kind,peak", [
    ("gpu", "NVIDIA H100 80GB HBM3", 989e12), ("gpu", "NVIDIA H200", 989e12),
    ("gpu", "NVIDIA A100-SXM4-40GB", 312e12), ("tpu", "TPU v4", 275e12),
    ("tpu", "TPU v5 lite", 197e12), ("tpu", "TPU v5p", 459e12), ("tpu", "TPU v6 lite", 918e12),
    ("cpu", "cpu", None), ("gpu", "NVIDIA GeForce GTX 1080", None)])
def test_peak_flops_table(platform, kind, peak):
  device = types.SimpleNamespace(platform=platform, device_kind=kind)
  assert flops.peak_flops_per_device(device) == peak


def test_throughput_and_log_line():
  t = metrics.Throughput(global_batch=8, flops_per_device_step=1e12,
                         peak_flops_per_device=4e12)
  t.reset(0)
  t._last_time -= 2.0  # pylint: disable=protected-access  (pretend 2 s passed)
  rates = t.update(4)
  assert rates["steps_per_sec"] == pytest.approx(2.0, rel=0.05)
  assert rates["examples_per_sec"] == pytest.approx(16.0, rel=0.05)
  assert rates["tflops_per_device"] == pytest.approx(2.0, rel=0.05)
  assert rates["mfu"] == pytest.approx(0.5, rel=0.05)
  line = metrics.format_log_line(4, 10, {"loss": 0.25, **rates})
  assert line.startswith("step 4/10 | loss 0.2500 | 2.0") and "MFU 50." in line
  no_peak = metrics.Throughput(global_batch=8, flops_per_device_step=1e12,
                               peak_flops_per_device=None)
  no_peak.reset(0)
  no_peak._last_time -= 1.0  # pylint: disable=protected-access
  r = no_peak.update(1)
  assert "mfu" not in r and r["tflops_per_device"] == pytest.approx(1.0, rel=0.05)


def test_metrics_writer_writes_jsonl_and_tensorboard_only_when_enabled(tmp_path):
  w = metrics.MetricsWriter(str(tmp_path / "on"), enabled=True)
  w.write_scalars(3, {"loss": np.float32(0.5), "lr": 1e-3})
  w.close()
  rows = [json.loads(x) for x in open(tmp_path / "on" / "metrics.jsonl")]
  assert rows == [{"step": 3, "loss": 0.5, "lr": 1e-3}]
  assert list((tmp_path / "on" / "tensorboard").iterdir())
  off = metrics.MetricsWriter(str(tmp_path / "off"), enabled=False)
  off.write_scalars(3, {"loss": 0.5})
  off.close()
  assert not (tmp_path / "off").exists()


@pytest.mark.parametrize("key,value,message", [
    ("train.log_every", 0, "train.log_every=0 must be >= 1"),
    ("train.sample_every", -1, "train.sample_every=-1 must be >= 0"),
    ("train.lr_schedule", "cosine", "train.lr_schedule='cosine'"),
    ("diffusion.cond_drop_prob", 1.0, r"cond_drop_prob=1.0 must lie in \[0, 1\)"),
])
def test_loop_config_errors(key, value, message):
  c = default.get_config()
  section, name = key.split(".")
  c[section][name] = value
  with pytest.raises(ValueError, match=message):
    loop.check_loop_config(c)


def _batch(b=2, lowres=False):
  out = {"video": np.zeros((b, 4, 8, 8, 3), np.float32), "fps": np.full((b,), 8.0, np.float32),
         "is_image": np.zeros((b,), bool), "index": np.arange(b),
         "text_emb": np.zeros((b, 5, 384), np.float32), "text_mask": np.ones((b, 5), bool)}
  if lowres:
    out["lowres"] = np.zeros((b, 4, 4, 4, 3), np.float32)
  return out


def test_model_inputs_follow_the_model_config():
  m = default.get_config().model
  kw = registry.family(m).model_inputs(_batch())
  assert sorted(kw) == ["fps", "is_image", "text_emb", "text_mask"]
  m.text_cross_attention = m.text_pooled_conditioning = m.fps_conditioning = False
  assert sorted(registry.family(m).model_inputs(_batch())) == ["is_image"]
  m.lowres_conditioning = "spatial"
  with pytest.raises(ValueError, match="no 'lowres' video"):
    registry.family(m).model_inputs(_batch())
  assert registry.family(m).model_inputs(_batch(lowres=True))["lowres_video"].shape == (2, 4, 4, 4, 3)


def test_conditioning_augmentation_noises_lowres_up_to_max_t():
  sched = schedules.LogSNRSchedule()
  low = jnp.ones((512, 1, 2, 2, 3))
  noisy, logsnr = objective.augment_lowres(low, jax.random.key(0), schedule=sched, max_t=0.5)
  assert logsnr.shape == (512,)
  assert float(logsnr.min()) >= float(sched(jnp.float32(0.5))) - 1e-4
  alpha = np.sqrt(jax.nn.sigmoid(logsnr))[:, None, None, None, None]
  resid = np.asarray(noisy) - alpha * 1.0
  assert 0.1 < resid.std() < 1.0, "noise was added, scaled by sigma"
