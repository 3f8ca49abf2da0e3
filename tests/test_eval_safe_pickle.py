"""The restricted unpickler: loads numpy arrays and containers, refuses anything that runs code."""
import builtins
import collections
import os
import pickle

import numpy as np
import pytest

from vdm_jax.eval import i3d, safe_pickle


class _RunsShell:
  """A pickle payload that would run a shell command when loaded with plain pickle."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


class _RunsEval:

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (builtins.eval, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_round_trips_arrays_and_containers(protocol):
  tree = {"params": collections.OrderedDict(a=np.arange(6, dtype=np.float32).reshape(2, 3)),
          "list": [np.int64(3), np.array([True, False]), (1.5, "x", None, b"raw")],
          "half": np.ones((2, 2), np.float16)}
  out = safe_pickle.safe_loads(pickle.dumps(tree, protocol=protocol))
  assert isinstance(out["params"], collections.OrderedDict)
  np.testing.assert_array_equal(out["params"]["a"], tree["params"]["a"])
  assert out["params"]["a"].dtype == np.float32 and out["half"].dtype == np.float16
  assert out["list"][0] == 3 and out["list"][2] == (1.5, "x", None, b"raw")
  np.testing.assert_array_equal(out["list"][1], [True, False])


@pytest.mark.parametrize("payload_cls,refused", [(_RunsShell, "system"), (_RunsEval, "eval")])
def test_refuses_code_and_does_not_run_it(tmp_path, payload_cls, refused):
  marker = tmp_path / "ran"
  data = pickle.dumps({"w": np.zeros(2), "evil": payload_cls(str(marker))})
  with pytest.raises(pickle.UnpicklingError, match=f"refused global .*{refused}"):
    safe_pickle.safe_loads(data)
  assert not marker.exists(), "the refused payload ran"


def test_refuses_object_arrays_and_other_globals():
  with pytest.raises(pickle.UnpicklingError, match="object"):
    safe_pickle.safe_loads(pickle.dumps(np.array([1, "a"], dtype=object)))
  with pytest.raises(pickle.UnpicklingError, match="refused global '.*set'"):
    safe_pickle.safe_loads(pickle.dumps({1, 2}, protocol=2))
  with pytest.raises(pickle.UnpicklingError, match="refused"):
    safe_pickle.safe_loads(pickle.dumps(np.ma.masked_array([1.0, 2.0])))


def test_loads_the_packaged_i3d_checkpoint():
  raw = safe_pickle.safe_load(i3d.default_checkpoint_path())
  assert set(raw) == {"params", "batch_stats"}
  kernel = raw["params"]["Conv3d_1a_7x7"]["Conv_0"]["kernel"]
  assert kernel.shape == (7, 7, 7, 3, 64) and kernel.dtype == np.float32
  assert np.all(np.isfinite(kernel)) and kernel.std() > 0
  params = i3d.load_i3d_params()["params"]  # BN folded, shapes checked against the module
  assert params["Logits/Conv3d_0c_1x1"]["Conv_0"]["kernel"].shape == (1, 1, 1, 1024, 400)
  assert params["Mixed_5c"]["Branch_3/Conv3d_0b_1x1"]["Conv_0"]["bias"].shape == (128,)
