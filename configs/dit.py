"""The video diffusion transformer (model.family='dit') on the demo's moving shapes.

    python -m vdm_jax.main --mode=train --config=configs/dit.py --workdir=runs/dit_base
    python -m vdm_jax.main --mode=train --config=configs/dit.py:layout=alternating ...
    python -m vdm_jax.main --mode=train --config=configs/dit.py:text=joint ...

The demo's base stage (configs/demo.py: 8 x 16 x 16 @ 4 fps moving shapes, MiniLM captions,
v-prediction, the same data, optimizer and sampler settings) with its U-Net replaced by the
CPU-scale transformer of vdm_jax/models/dit/presets.py (patches 1x2x2: 512 tokens). Variants
(comma-separated): layout=full|alternating, text=cross|joint, objective=v|flow (flow: rectified
flow, velocity prediction, logit-normal t, Euler sampling).
"""
from configs import demo
from vdm_jax import config_utils
from vdm_jax.models.dit import presets

LAYOUTS = ("full", "alternating")
TEXT = ("cross", "joint")
OBJECTIVES = ("v", "flow")


def get_config(arg=None):
  v = config_utils.parse_variant(arg)
  layout = v.pop("layout", "full")
  text = v.pop("text", "cross")
  objective = v.pop("objective", "v")
  if v or layout not in LAYOUTS or text not in TEXT or objective not in OBJECTIVES:
    raise ValueError(f"configs/dit.py takes layout={LAYOUTS}, text={TEXT}, "
                     f"objective={OBJECTIVES}; got {arg!r}")
  c = demo.get_config().cascade.stages["base"]
  c.model = presets.default_section()
  c.model.attention_layout = layout
  c.model.text_conditioning = text
  if objective == "flow":
    d = c.diffusion
    d.schedule = "rectified_flow"
    d.prediction = "flow"
    d.loss_weighting = "flow"
    d.t_sampling = "logit_normal"
    c.sample.sampler = "euler"
    c.sample.eta = 0.0                   # the ODE (the base stage samples with eta = 1)
  return c
