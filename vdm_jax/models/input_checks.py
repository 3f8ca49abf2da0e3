"""The keyword-input check every family's module runs before tracing a layer.

`check_inputs(module_name, spec, input_flags, x, logsnr, **inputs)` raises ValueError for a
malformed input, an input the spec requires but is missing, or one given that the spec does not
use (it would be ignored). `spec` has `inputs`, `text_embed_dim` and `geometry_errors`;
`input_flags` maps each input to the spec property that switches it on (None: optional).
"""
import jax.numpy as jnp

_WHY = {"text_emb": "text conditioning", "text_mask": "text conditioning"}


def check_inputs(module_name, spec, input_flags, x, logsnr, *, why=None, **inputs):
  """Raises ValueError naming the bad input and the fix (see the module docstring)."""
  why = dict(_WHY, **(why or {}))
  if x.ndim != 5:
    raise ValueError(f"x must be a video [B, T, H, W, C], got shape {x.shape}")
  b, t, h, w, _ = x.shape
  geometry = spec.geometry_errors(frames=t, height=h, width=w)
  if geometry:
    raise ValueError(f"{module_name} cannot take x of shape {x.shape}: " + "; ".join(geometry))
  if logsnr.shape != (b,):
    raise ValueError(f"logsnr must have shape [B] = ({b},), got {logsnr.shape}")
  for name, flag in input_flags.items():
    if flag is None or name == "text_mask":   # optional inputs
      continue
    needed, value, flag = name in spec.inputs, inputs[name], why.get(name, flag)
    if needed and value is None:
      raise ValueError(f"{module_name} needs `{name}` because model.{flag} is set; pass it "
                       f"(or turn the option off)")
    if not needed and value is not None:
      raise ValueError(f"{module_name} got `{name}` but model.{flag} is off, so it would be "
                       f"ignored; drop it or turn the option on")
  if inputs["text_mask"] is not None and inputs["text_emb"] is None:
    raise ValueError(f"{module_name} got `text_mask` without `text_emb`")
  text, mask = inputs["text_emb"], inputs["text_mask"]
  if text is not None:
    if text.ndim != 3 or text.shape[0] != b or text.shape[-1] != spec.text_embed_dim:
      raise ValueError(f"text_emb must be [B={b}, L, text_embed_dim={spec.text_embed_dim}], "
                       f"got {text.shape}")
    if mask is not None and (mask.shape != text.shape[:2] or mask.dtype != jnp.bool_):
      raise ValueError(f"text_mask must be bool [B, L] = {text.shape[:2]}, got "
                       f"{mask.dtype} {mask.shape}")
  for name in ("fps", "cond_aug_logsnr", "guidance_weight", "is_image"):
    value = inputs[name]
    if value is not None and value.shape != (b,):
      raise ValueError(f"{name} must have shape [B] = ({b},), got {value.shape}")
  if inputs["is_image"] is not None and inputs["is_image"].dtype != jnp.bool_:
    raise ValueError(f"is_image must be bool, got {inputs['is_image'].dtype}")
  low = inputs["lowres_video"]
  if low is not None and (low.ndim != 5 or low.shape[0] != b):
    raise ValueError(f"lowres_video must be [B={b}, T', H', W', C], got {low.shape}")
  cond, mask = inputs["frame_cond"], inputs["frame_mask"]
  if cond is not None and cond.shape != x.shape:
    raise ValueError(f"frame_cond must have the shape of x [B, T, H, W, C] = {x.shape} (the "
                     f"known frames at their positions, zeros elsewhere), got {cond.shape}")
  if mask is not None and (mask.shape != x.shape[:2] or not (
      mask.dtype == jnp.bool_ or jnp.issubdtype(mask.dtype, jnp.floating))):
    raise ValueError(f"frame_mask must be bool or float [B, T] = {x.shape[:2]} (1 = known "
                     f"frame), got {mask.dtype} {mask.shape}")
