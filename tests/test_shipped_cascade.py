"""The demo cascade that ships inside the package (vdm_jax/assets/demo_cascade): it verifies,
loads, and samples a prompt whose colour the detectors read back; damaged files are refused."""
import dataclasses
import os
import shutil

import jax
import pytest

from vdm_jax import demo, export
from vdm_jax.data.moving_shapes import detectors

WEIGHTS = demo.packaged_weights()
PROMPT = "a large red circle moving right quickly on a black background"


def test_the_package_ships_a_verified_cascade_with_its_recipe():
  manifest = export.verify(WEIGHTS)
  assert manifest["order"] == ["base", "tsr1", "ssr1"]
  assert "base" in manifest["distilled"]
  total = sum(os.path.getsize(os.path.join(WEIGHTS, f)) for f in manifest["sha256"])
  assert total <= 30 * 2 ** 20                      # the budget: 30 MB in all
  for entry in list(manifest["stages"].values()) + list(manifest["distilled"].values()):
    assert entry["step"] > 0 and entry["compute"].get("cpu_s", 0) > 0
  assert manifest["recipe"]["command"].startswith("python -m vdm_jax.demo --train")


def test_the_manifest_carries_the_training_curve_the_gallery_shows():
  curve = export.verify(WEIGHTS)["training_curve"]
  for stage in ("base", "tsr1", "ssr1"):                 # every stage has its curve
    assert len(curve["curves"][stage]) >= 2
  rows = demo.curve_table(curve)
  base_rows = [r for r in rows if r.startswith("base: ")]
  assert len(base_rows) == len(curve["curves"]["base"])
  # a fine-tune panel's branch point is its parent's row, not a second one
  branched = [p for ps in curve["curves"].values() for p in ps if p.get("branch_point")]
  assert len(rows) == sum(len(ps) for ps in curve["curves"].values()) - len(branched)
  assert set(next(iter(rows.values()))) >= {"shape", "motion", "all"}


@pytest.mark.parametrize("distilled", [False, True])
def test_a_prompt_sampled_with_few_steps_has_the_prompts_colour(distilled):
  cascade = export.load_cascade(WEIGHTS, distilled=distilled, devices=jax.devices()[:1])
  cascade.settings = [dataclasses.replace(s, num_steps=min(s.num_steps, 8))
                      for s in cascade.settings]
  videos = cascade.sample([PROMPT])
  final = videos["ssr1"][0]
  found = detectors.detect((final + 1.0) * 127.5, fps=float(cascade.final.config.fps))
  assert [o.color for o in found.objects][:1] == ["red"]
  assert found.background == "black"


def test_a_damaged_shipped_file_is_refused_naming_it(tmp_path):
  copy = str(tmp_path / "demo_cascade")
  shutil.copytree(WEIGHTS, copy)
  path = os.path.join(copy, "ssr1", export.PARAMS)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([byte[0] ^ 1]))
  with pytest.raises(export.IntegrityError, match="ssr1/params.safetensors is corrupt"):
    export.load_cascade(copy, devices=jax.devices()[:1])
  with open(path, "r+b") as f:
    f.truncate(100)
  with pytest.raises(export.IntegrityError, match="ssr1/params.safetensors is corrupt"):
    export.verify(copy)
