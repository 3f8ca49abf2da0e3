"""The video autoencoders: causality, exact chunked encode/decode, inflation from the 2-D model,
the temporal decoder's identity start, the KL term, presets and config errors."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.models.vae import AutoencoderKL, VAESpec, chunked, kl_to_standard_normal, presets
from vdm_jax.models.vae.inflate import inflate_2d_to_3d

FRAMES, SIZE = 13, 16       # 1 + 4 * 3 frames -> 4 latents of 4x4


def _model(**over):
  return AutoencoderKL(VAESpec.from_config(dict(presets.CPU["tiny"], **over)))


def real_init(model, x):
  """The model's own initialization (eager; the rbg key compiles its draws quickly)."""
  key = jax.random.key(0, impl="unsafe_rbg")
  return nn.unbox(model.init({"params": key, "sample": key}, x[:, :1])["params"])


def random_params(model, x, seed=0):
  """Every parameter random (no branch starts at zero or the identity, so every path of the
  network is visible); built from the abstract init, which costs no compile."""
  abstract = nn.unbox(jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "sample": jax.random.key(1)}, x[:, :1])["params"]))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name == "scale":
      value = 1.0 + 0.1 * rng.standard_normal(shape)
    elif name in ("bias", "mix_logit"):
      value = 0.1 * rng.standard_normal(shape)
    else:
      value = rng.standard_normal(shape) / np.sqrt(max(int(np.prod(shape[:-1])), 1))
    return jnp.asarray(value, jnp.float32)
  return jax.tree_util.tree_map_with_path(fill, abstract)


@functools.lru_cache(maxsize=None)
def _jitted(model):
  """(encode, decode) of `model`, jitted once per model."""
  enc = jax.jit(lambda p, x: model.apply({"params": p}, x, method=AutoencoderKL.encode))
  dec = jax.jit(lambda p, z: model.apply({"params": p}, z, method=AutoencoderKL.decode))
  return enc, dec


def _encode(model, params, x):
  return _jitted(model)[0](params, x)


def _decode(model, params, z):
  return _jitted(model)[1](params, z)


@pytest.fixture(scope="module")
def video():
  return jax.random.uniform(jax.random.key(7), (2, FRAMES, SIZE, SIZE, 3), minval=-1, maxval=1)


@pytest.fixture(scope="module", params=["conv", "pool"])
def causal(request, video):
  model = _model(time_resample=request.param)
  return model, random_params(model, video)


def test_latent_geometry(causal, video):
  model, params = causal
  mean, logvar = _encode(model, params, video)
  assert mean.shape == (2, 4, 4, 4, 4) == logvar.shape
  assert model.spec.latent_shape(frames=FRAMES, height=SIZE, width=SIZE) == (4, 4, 4, 4)
  assert _decode(model, params, mean).shape == video.shape


@pytest.mark.parametrize("t", [1, 6])
def test_changing_frame_t_changes_nothing_before_it(causal, video, t):
  model, params = causal
  changed = video.at[:, t].add(0.5)
  mean, _ = _encode(model, params, video)
  mean2, _ = _encode(model, params, changed)
  first_latent = -(-t // 4)          # frame t sits in latent ceil(t / 4)
  diff = np.abs(np.asarray(mean2 - mean)).max(axis=(0, 2, 3, 4))
  assert np.all(diff[:first_latent] == 0) and np.all(diff[first_latent:first_latent + 1] > 1e-4)
  z2 = mean.at[:, first_latent].add(0.5)     # a latent changes no frame before its own
  frames = np.abs(np.asarray(_decode(model, params, z2) - _decode(model, params, mean)))
  frames = frames.max(axis=(0, 2, 3, 4))
  assert np.all(frames[:4 * first_latent - 3] == 0) and frames[4 * first_latent - 3] > 1e-4


def test_chunked_encode_and_decode_equal_the_whole_clip(causal, video):
  """After the first latent: 3 chunks of 1; a chunk of 2 and a remainder of 1 (conv); 3."""
  model, params = causal
  mean, logvar = _encode(model, params, video)
  whole = _decode(model, params, mean)
  for chunk in (1, 2) if model.spec.time_resample == "conv" else (3,):
    m, lv = jax.jit(functools.partial(chunked.encode_chunked, model, chunk_latents=chunk))(
        params, video)
    np.testing.assert_allclose(m, mean, atol=1e-5)
    np.testing.assert_allclose(lv, logvar, atol=1e-5)
    part = jax.jit(functools.partial(chunked.decode_chunked, model, chunk_latents=chunk))(
        params, mean)
    np.testing.assert_allclose(part, whole, atol=1e-5)


def test_chunked_decode_of_a_per_frame_autoencoder(video):
  """A 2-D autoencoder caches nothing: its chunks carry an empty cache and still match."""
  model = _model(**presets.CPU["tiny2d"])
  params = random_params(model, video[:, :5])
  z = jax.random.normal(jax.random.key(5), (1, 6, 4, 4, 4), jnp.float32)
  part = jax.jit(functools.partial(chunked.decode_chunked, model, chunk_latents=2))(params, z)
  np.testing.assert_allclose(part, _decode(model, params, z), atol=1e-5)


def test_the_inflated_3d_vae_reproduces_the_2d_vae_per_frame(video):
  small = dict(channels=(8, 16), time_down=(True,), mid_attention=False)   # 2x in time
  m2 = _model(**dict(presets.CPU["tiny2d"], **dict(small, time_down=(False,))))
  m3 = _model(**small)
  clip = video[:, :5]
  p2, fresh = random_params(m2, clip, seed=3), real_init(m3, clip)
  p3, report = inflate_2d_to_3d(p2, fresh, mode="newest")
  assert report.inflated and report.kept and all("_time" in k for k in report.kept)
  mean2, _ = _encode(m2, p2, clip)           # one latent per frame
  mean3, _ = _encode(m3, p3, clip)           # latent j <- frame 2 j
  np.testing.assert_allclose(mean3, mean2[:, ::2], atol=1e-5)
  keep = np.array([0] + [-(-t // 2) for t in range(1, 5)])   # frame t <- latent ceil(t / 2)
  np.testing.assert_allclose(_decode(m3, p3, mean3), _decode(m2, p2, mean2[:, ::2])[:, keep],
                             atol=1e-5)
  # Without time compression the inflated model is the 2-D model on every frame.
  m3full = _model(**dict(small, time_down=(False,)))
  p3full, _ = inflate_2d_to_3d(p2, random_params(m3full, clip, seed=5))
  np.testing.assert_allclose(_encode(m3full, p3full, clip)[0], mean2, atol=1e-5)


def test_inflation_refuses_other_widths(video):
  m2, m3 = _model(**presets.CPU["tiny2d"]), _model(channels=(8, 16, 32))
  with pytest.raises(ValueError, match="does not inflate"):
    inflate_2d_to_3d(random_params(m2, video), random_params(m3, video))


def test_the_temporal_decoder_starts_as_the_2d_decoder(video):
  m2 = _model(**presets.CPU["tiny2d"])
  mt = _model(**dict(presets.CPU["tiny2d"], temporal_decoder=True))
  p2, pt = random_params(m2, video, seed=1), real_init(mt, video)
  flat2 = {k: v for k, v in jax.tree_util.tree_leaves_with_path(p2)}
  temporal = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(pt)
              if k not in flat2]
  assert temporal and all("temporal" in k for k in temporal)
  merged = jax.tree_util.tree_map_with_path(lambda k, v: flat2.get(k, v), pt)
  z = _encode(m2, p2, video)[0]
  np.testing.assert_allclose(_decode(mt, merged, z), _decode(m2, p2, z), atol=1e-5)
  # ... and its temporal layers do mix frames once trained away from zero.
  moved = jax.tree_util.tree_map_with_path(
      lambda k, v: v + 0.1 if "temporal" in jax.tree_util.keystr(k) else v, merged)
  assert float(jnp.abs(_decode(mt, moved, z) - _decode(m2, p2, z)).max()) > 1e-3


def test_kl_matches_its_closed_form_by_monte_carlo():
  key = jax.random.key(0)
  mean = jnp.array([[0.3, -1.2, 0.0]])
  logvar = jnp.array([[-0.5, 0.4, 0.0]])
  kl = kl_to_standard_normal(mean, logvar)
  z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, (400_000, 3))
  log_q = -0.5 * (jnp.square(z - mean) / jnp.exp(logvar) + logvar)
  log_p = -0.5 * jnp.square(z)
  mc = jnp.mean(jnp.sum(log_q - log_p, axis=-1))
  assert kl.shape == (1,)
  np.testing.assert_allclose(kl[0], mc, rtol=0.02)
  assert float(kl_to_standard_normal(jnp.zeros((1, 3)), jnp.zeros((1, 3)))[0]) == 0.0


@pytest.mark.parametrize("name", list(presets.PAPER))
def test_paper_presets_are_within_5_percent_of_the_reference_counts(name):
  pre = presets.PAPER[name]
  spec = VAESpec.from_config(pre.section)
  model = AutoencoderKL(spec)
  x = jax.ShapeDtypeStruct((1, 1 + spec.temporal_factor, 16, 16, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(
      {"params": jax.random.key(0), "sample": jax.random.key(1)}, x)["params"], x)
  count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(nn.unbox(shapes)))
  assert abs(count / pre.reference - 1) < 0.05, (name, count, pre.reference)


def test_bad_configs_fail_with_a_clear_error():
  spec = VAESpec.from_config(presets.CPU["tiny"])
  assert any("1 + 4k" in e for e in spec.geometry_errors(frames=16, height=16, width=16))
  assert any("multiples of the spatial compression 4" in e
             for e in spec.geometry_errors(frames=13, height=18, width=16))
  assert spec.geometry_errors(frames=13, height=16, width=16) == []
  with pytest.raises(ValueError, match="temporal_kernel=3"):
    VAESpec.from_config(dict(presets.CPU["tiny2d"], time_down=(True, False)))
  with pytest.raises(ValueError, match="one entry per level"):
    VAESpec.from_config(dict(presets.CPU["tiny"], time_down=(True,)))
  with pytest.raises(ValueError, match="norm_groups"):
    VAESpec.from_config(dict(presets.CPU["tiny"], norm_groups=3))
  with pytest.raises(ValueError, match="not a key"):
    VAESpec.from_config(dict(presets.CPU["tiny"], chanels=(8,)))
  model = _model()
  with pytest.raises(ValueError, match="even number"):   # 1 + 3 frames reach a downsampler
    jax.eval_shape(lambda x: model.init({"params": jax.random.key(0),
                                         "sample": jax.random.key(1)}, x),
                   jax.ShapeDtypeStruct((1, 4, 16, 16, 3), jnp.float32))


def test_decode_chunk_from_a_memory_budget():
  model = _model(channels=(8, 8), time_down=(True,), mid_attention=False)
  shapes = jax.eval_shape(lambda: random_params(model, jnp.zeros((1, 5, 32, 32, 3))))
  chunk, sizes = chunked.chunk_for_budget(model, shapes, latent_shape=(9, 16, 16, 4),
                                          budget_bytes=1e12, candidates=(1, 4))
  assert chunk == 4 and sizes[4] > sizes[1] > 0
  assert chunked.choose_chunk(sizes, (sizes[1] + sizes[4]) / 2) == 1
  with pytest.raises(ValueError, match="no decode chunk fits"):
    chunked.choose_chunk(sizes, 1.0)


def _check_time_sharded(model, params, video):
  latent = _encode(model, params, video)[0]
  z = jax.random.normal(jax.random.key(3), (1, 17) + latent.shape[2:], jnp.float32)
  mesh = jax.make_mesh((8,), ("time",), devices=jax.devices()[:8])
  sharded = jax.jit(functools.partial(chunked.decode_time_sharded, model, mesh=mesh,
                                      axis="time"))(params, z)
  np.testing.assert_allclose(sharded, _decode(model, params, z), atol=1e-5)
  return z, mesh


def test_time_sharded_decode_on_8_devices_equals_the_single_device_decode(causal, video):
  """1 + 16 latents, 2 per device of an 8-device 'time' axis: each causal layer's halo comes
  from the previous device by ppermute; the first device's from the first latent's cache
  (the conv resamplers: the pool ones hold no cache, the convs around them are the same)."""
  model, params = causal
  if model.spec.time_resample != "conv":
    pytest.skip("the conv resamplers cover the halo of every cached layer")
  z, mesh = _check_time_sharded(model, params, video)
  with pytest.raises(ValueError, match="at least 2 latents"):
    chunked.decode_time_sharded(model, params, z[:, :9], mesh, axis="time")


def test_time_sharded_temporal_decoder_equals_the_single_device_decode(video):
  model = _model(**dict(presets.CPU["tiny2d"], temporal_decoder=True))
  _check_time_sharded(model, random_params(model, video), video)


def test_spatial_tiles_blend_without_seams(causal, video):
  """Tiles that each decode to a constant (their mean latent column) blend into a ramp across
  the overlap, with no jump larger than the tile difference over the overlap's pixels; abutting
  tiles jump by the whole difference. On the model: one tile covering everything is the plain
  decode, and overlapping tiles are closer to the whole decode than abutting ones (per-frame
  norms and the receptive field make any tiling inexact)."""
  model, params = causal
  if model.spec.time_resample != "conv":
    pytest.skip("one resampler is enough")
  s = model.spec.spatial_factor
  cols = jnp.broadcast_to(jnp.arange(12.0)[None, None, None, :, None], (1, 1, 4, 12, 1))

  def constant(p, zt):
    del p
    return jnp.full(zt.shape[:2] + (zt.shape[2] * s, zt.shape[3] * s, 3), zt[..., 0].mean())

  abut = np.asarray(chunked.decode_tiled(model, None, cols, tile=4, overlap=0,
                                         decode=constant))[0, 0, 0, :, 0]
  np.testing.assert_allclose(np.diff(abut).max(), 4.0)            # tile means 1.5, 5.5, 9.5
  blend = np.asarray(chunked.decode_tiled(model, None, cols, tile=6, overlap=3,
                                          decode=constant))[0, 0, 0, :, 0]
  steps = np.diff(blend)                                          # tile means 2.5, 5.5, 8.5
  assert (steps >= -1e-6).all() and steps.max() <= 3.0 / (3 * s) + 1e-5
  assert blend[0] == pytest.approx(2.5) and blend[-1] == pytest.approx(8.5)

  z = jax.random.normal(jax.random.key(5), (1, 3, 8, 8, model.spec.latent_channels))
  whole = np.asarray(_decode(model, params, z))
  dec = _jitted(model)[1]
  np.testing.assert_allclose(chunked.decode_tiled(model, params, z, tile=8, overlap=0,
                                                  decode=dec), whole, atol=1e-6)
  err = {ov: np.abs(np.asarray(chunked.decode_tiled(model, params, z, tile=4, overlap=ov,
                                                      decode=dec)) - whole).mean()
         for ov in (0, 2)}
  assert err[2] < 0.85 * err[0]
  with pytest.raises(ValueError, match="overlap"):
    chunked.decode_tiled(model, params, z, tile=4, overlap=4)
