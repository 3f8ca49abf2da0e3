"""Where the FLOPs of a train step go: by layer type (block) and by operation class.

    table = breakdown(closed_jaxpr)        # {(block, op_class): flops}
    summary = summarize(table)             # shares by op class and by block

Hardware independent: it walks the step's jaxpr (`jax.make_jaxpr`; nothing is compiled or
run), descending into nested jaxprs (jit, remat, custom_vjp, scan x length, cond: the most
expensive branch), and counts
  conv        conv_general_dilated: 2 * output elements * kernel input features * kernel taps
  dense       dot_general without batch dimensions (dense, conv-free projections, q/k/v/out)
  attention   dot_general with batch dimensions (the q.k and p.v contractions of attention)
  norm        arithmetic inside GroupNorm / LayerNorm modules (one FLOP per output element)
  elementwise other arithmetic (SiLU, softmax, FiLM, residual adds, loss, optimizer, EMA):
              one FLOP per output element (reductions: per input element)
Layout-only primitives (reshape, transpose, broadcast, convert, slices, concatenate, gather)
count zero, as in XLA's cost model. Flax puts each module's path into the equations' name
stack (`jvp(SpaceTimeUNet)/down1_0_spatial_attn/attention/...`), which names the block:
resblock (its 3x3 convs, FiLM, skip), temporal_conv_in_resblock, spatial_attn, cross_attn,
temporal_attn, temporal_conv, resample, conv_in_out, conditioning, and outside_model (loss,
optimizer, EMA). The matmul and conv counts are exact; the elementwise ones approximate XLA's.
"""
import collections
import math
import re

OP_CLASSES = ("conv", "dense", "attention", "norm", "elementwise")
BLOCKS = ("resblock", "temporal_conv_in_resblock", "spatial_attn", "cross_attn", "temporal_attn",
          "temporal_conv", "resample", "conv_in_out", "conditioning", "outside_model")

_LAYOUT = frozenset((
    "reshape", "broadcast_in_dim", "transpose", "convert_element_type", "squeeze",
    "expand_dims", "concatenate", "slice", "dynamic_slice", "dynamic_update_slice", "gather",
    "iota", "copy", "copy_p", "rev", "pad", "reshard", "stop_gradient", "sharding_constraint",
    "split", "device_put", "random_bits", "random_seed", "random_wrap", "random_unwrap",
    "random_fold_in", "random_split", "threefry2x32", "shift_right_logical", "shift_left",
    "or", "and", "not", "xor", "eq", "ne", "lt", "le", "gt", "ge", "select_and_scatter_add",
    "optimization_barrier", "name", "pvary", "bitcast_convert_type", "argmax", "argmin",
    "scatter", "scatter-add", "scatter_add", "clamp"))
_REDUCTIONS = frozenset(("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax",
                         "reduce_or", "reduce_and", "cumsum", "cumlogsumexp", "cummax"))
_NORM_SEGMENT = re.compile(r"^(norm\d*|norm_out|text_norm|GroupNorm_\d+|LayerNorm_\d+)$")


def is_norm_path(path: str) -> bool:
  """Whether a name-stack path lies inside a GroupNorm / LayerNorm module."""
  return any(_NORM_SEGMENT.match(s) for s in re.split(r"[/()]", path) if s)


def _nested(eqn):
  """(jaxpr, multiplicity, is_branch) of the jaxprs an equation calls."""
  out = []
  for key, value in eqn.params.items():
    values = value if isinstance(value, (tuple, list)) else (value,)
    jaxprs = []
    for v in values:
      if hasattr(v, "eqns"):
        jaxprs.append(v)
      elif hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
        jaxprs.append(v.jaxpr)
    if not jaxprs:
      continue
    mult = int(eqn.params.get("length", 1)) if eqn.primitive.name == "scan" else 1
    out.append((jaxprs, mult, key == "branches"))
  return out


def _size(aval):
  return int(math.prod(getattr(aval, "shape", ()) or (1,)))


def _conv_flops(eqn):
  lhs, rhs = (v.aval for v in eqn.invars[:2])
  out = eqn.outvars[0].aval
  spec = eqn.params["dimension_numbers"].rhs_spec   # (out feature, in feature, spatial...)
  in_features = rhs.shape[spec[1]]
  taps = math.prod(rhs.shape[d] for d in spec[2:])
  del lhs
  return 2 * _size(out) * in_features * taps


def _dot_flops(eqn):
  lhs = eqn.invars[0].aval
  (contract_l, _), _ = eqn.params["dimension_numbers"]
  return 2 * _size(eqn.outvars[0].aval) * math.prod(lhs.shape[d] for d in contract_l)


def block_of(path: str) -> str:
  """The U-Net block type an equation's name-stack path belongs to (see module docstring)."""
  if "SpaceTimeUNet" not in path:
    return "outside_model"
  segments = [s for s in re.split(r"[/()]", path) if s]
  for seg in segments:
    for block in ("spatial_attn", "cross_attn", "temporal_attn", "temporal_conv"):
      if seg.endswith("_" + block):
        return block
    if seg.endswith("_resample"):
      return "resample"
    if re.search(r"_res\d+$", seg):
      return "temporal_conv_in_resblock" if "temporal" in segments else "resblock"
    if seg in ("conv_in", "conv_out", "norm_out"):
      return "conv_in_out"
    if seg in ("cond", "text_norm"):
      return "conditioning"
  return "conditioning"   # module-level glue (lowres resize, concat) of the U-Net call


def op_class(eqn, path: str) -> str:
  name = eqn.primitive.name
  if name == "conv_general_dilated":
    return "conv"
  if name == "dot_general":
    (_, _), (batch_l, _) = eqn.params["dimension_numbers"]
    return "attention" if batch_l else "dense"
  return "norm" if is_norm_path(path) else "elementwise"


def _eqn_flops(eqn) -> int:
  name = eqn.primitive.name
  if name == "conv_general_dilated":
    return _conv_flops(eqn)
  if name == "dot_general":
    return _dot_flops(eqn)
  if name in _LAYOUT:
    return 0
  if name in _REDUCTIONS:
    return _size(eqn.invars[0].aval)
  return sum(_size(v.aval) for v in eqn.outvars)


def level_of(path: str) -> str:
  """The U-Net level ('0', '1', ...; 'mid' for the middle block) of a name-stack path, or
  '-' outside the level structure (conditioning, conv_in/out, loss, optimizer)."""
  m = re.search(r"(?:^|[/()])(?:down|up)(\d+)_", path)
  if m:
    return m.group(1)
  return "mid" if re.search(r"(?:^|[/()])mid_", path) else "-"


def breakdown(closed_jaxpr, *, group=None) -> dict:
  """{(group, op_class): FLOPs} of a (closed) jaxpr, nested jaxprs included; the group of an
  equation is `group(name-stack path)`, by default its block (`block_of`)."""
  group = group or block_of
  table = collections.Counter()

  def walk(jaxpr, prefix, mult):
    for eqn in jaxpr.eqns:
      stack = str(eqn.source_info.name_stack)
      path = f"{prefix}/{stack}" if prefix and stack else (prefix or stack)
      nested = _nested(eqn)
      if nested:
        for jaxprs, m, is_branch in nested:
          if is_branch:   # cond: the most expensive branch
            best = max(jaxprs, key=lambda j: sum(_total_of(j).values()))
            walk(best, path, mult * m)
          else:
            for j in jaxprs:
              walk(j, path, mult * m)
        continue
      flops = _eqn_flops(eqn)
      if flops:
        table[(group(path), op_class(eqn, path))] += mult * flops

  def _total_of(j):
    sub = collections.Counter()
    for eqn in j.eqns:
      sub[eqn.primitive.name] += _eqn_flops(eqn)
    return sub

  walk(getattr(closed_jaxpr, "jaxpr", closed_jaxpr), "", 1)
  return dict(table)


def summarize(table: dict) -> dict:
  """Totals, shares by op class and by block, and the block x class matrix (as nested dicts)."""
  total = sum(table.values())
  by_class = {c: sum(v for (_, cl), v in table.items() if cl == c) for c in OP_CLASSES}
  by_block = {b: sum(v for (bl, _), v in table.items() if bl == b) for b in BLOCKS}
  matrix = {b: {c: table.get((b, c), 0) for c in OP_CLASSES} for b in BLOCKS
            if by_block[b]}
  share = lambda d: {k: (v / total if total else 0.0) for k, v in d.items()}
  return dict(total_flops=total, by_class=by_class, by_block=by_block,
              class_share=share(by_class), block_share=share(by_block), matrix=matrix)


def by_level(table: dict) -> dict:
  """{level: {op_class: share of the total}} of a `breakdown(..., group=level_of)` table."""
  total = sum(table.values())
  levels = sorted({lv for lv, _ in table},
                  key=lambda x: (0, int(x)) if x.isdigit() else ((1, 0) if x == "mid" else (2, 0)))
  return {lv: {c: table.get((lv, c), 0) / total for c in OP_CLASSES} for lv in levels}
