"""Mesh creation, logical axis rules, sharded initialization and the multi-host start.

The mesh has four axes, `data`, `fsdp`, `tensor` and `sequence` (`vdm_jax.models.axes.MESH_AXES`;
a three-entry `sharding.mesh_shape` leaves `sequence` at 1), with
Auto axis types (GSPMD semantics: XLA propagates shardings from the annotated inputs, outputs
and `with_logical_constraint` calls). Parameters carry logical axis names
(`nn.with_logical_partitioning`); `config.sharding.logical_axis_rules` maps them to mesh axes.

Sharded initialization never materializes the full parameters on one device:
`jax.eval_shape(init)` gives the boxed abstract tree, its logical specs become
`NamedSharding`s, and `jax.jit(init, out_shardings=...)` creates every shard where it lives.
"""
import math
import os
from typing import Any, Callable, Sequence

from absl import logging
import flax.linen as nn
import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
import numpy as np

from vdm_jax.models import axes

Rules = tuple[tuple[str, Any], ...]


def resolve_mesh_shape(mesh_shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Replaces a single -1 in `mesh_shape` by "the rest" of `num_devices` and checks the product.

  Raises ValueError with what to change when the shape cannot cover the devices exactly.
  """
  shape = tuple(int(s) for s in mesh_shape)
  if len(shape) == len(axes.MESH_AXES) - 1:
    shape = shape + (1,)                  # (data, fsdp, tensor): no sequence parallelism
  elif len(shape) != len(axes.MESH_AXES):
    raise ValueError(f"sharding.mesh_shape={shape} must have 3 or 4 entries, one per mesh axis "
                     f"{axes.MESH_AXES} (3: sequence = 1).")
  if shape.count(-1) > 1:
    raise ValueError(f"sharding.mesh_shape={shape} has more than one -1; at most one axis "
                     "may take 'the rest' of the devices.")
  if any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"sharding.mesh_shape={shape}: entries must be positive or -1.")
  known = math.prod(s for s in shape if s != -1)
  if num_devices % known != 0:
    raise ValueError(
        f"sharding.mesh_shape={shape} needs a multiple of {known} devices, but there are "
        f"{num_devices}. Choose axis sizes whose product divides {num_devices}.")
  if -1 in shape:
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  elif known != num_devices:
    raise ValueError(
        f"sharding.mesh_shape={shape} covers {known} devices but there are {num_devices}. "
        "Make the product equal the device count, or use -1 for one axis.")
  return shape


def create_mesh(sharding_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor, sequence) mesh with Auto axis types from
  `config.sharding.mesh_shape`."""
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(sharding_cfg.mesh_shape, len(devices))
  return jax.make_mesh(shape, axes.MESH_AXES, axis_types=(AxisType.Auto,) * len(shape),
                       devices=devices)


def logical_rules(sharding_cfg) -> Rules:
  """The logical axis rules from the config as a tuple of (logical name, mesh axes) pairs:
  `sharding.sequence_parallel`'s rules (axes.SEQUENCE_PARALLEL_RULES), then the table."""
  mode = sharding_cfg.get("sequence_parallel", "none")
  if mode not in axes.SEQUENCE_PARALLEL_RULES:
    raise ValueError(f"sharding.sequence_parallel={mode!r} is not one of "
                     f"{tuple(axes.SEQUENCE_PARALLEL_RULES)}")
  rules = []
  for rule in tuple(axes.SEQUENCE_PARALLEL_RULES[mode]) + tuple(sharding_cfg.logical_axis_rules):
    if len(rule) != 2:
      raise ValueError(f"sharding.logical_axis_rules entry {rule!r} must be a pair "
                       "(logical_name, mesh_axis or tuple of mesh axes or None).")
    name, target = rule
    targets = (target,) if isinstance(target, str) else tuple(target or ())
    for t in targets:
      if t not in axes.MESH_AXES:
        raise ValueError(f"sharding.logical_axis_rules maps {name!r} to unknown mesh axis "
                         f"{t!r}; mesh axes are {axes.MESH_AXES}.")
    rules.append((name, target if isinstance(target, str) or target is None else tuple(target)))
  return tuple(rules)


def section_errors(sharding_cfg, *, model_family: str) -> list[str]:
  """The problems of a `sharding` section for a model of `model_family` (empty when valid)."""
  errors = []
  mode = sharding_cfg.get("sequence_parallel", "none")
  if mode not in axes.SEQUENCE_PARALLEL_RULES:
    errors.append(f"sharding.sequence_parallel={mode!r} is not one of "
                  f"{tuple(axes.SEQUENCE_PARALLEL_RULES)}")
  elif mode != "none":
    if model_family != "dit":
      errors.append(f"sharding.sequence_parallel={mode!r} shards the tokens of the video "
                    f"transformer (model.family='dit'), not of model.family={model_family!r}; "
                    "set it to 'none'")
    if not sharding_cfg.get("constrain_activations", True):
      errors.append(f"sharding.sequence_parallel={mode!r} works through the activation "
                    "constraints; set sharding.constrain_activations=True")
  shape = tuple(sharding_cfg.mesh_shape)
  if len(shape) not in (len(axes.MESH_AXES) - 1, len(axes.MESH_AXES)):
    errors.append(f"sharding.mesh_shape={shape} must have 3 or 4 entries, one per mesh axis "
                  f"{axes.MESH_AXES} (3: sequence = 1)")
  elif len(shape) == len(axes.MESH_AXES) and shape[-1] != 1 and mode == "none":
    errors.append(f"sharding.mesh_shape={shape} has a sequence axis of {shape[-1]} but "
                  "sharding.sequence_parallel='none' leaves it unused; choose 'ulysses' or "
                  "'ring', or fold it into another axis")
  return errors


def _axis_size(mesh: Mesh, entry) -> int:
  if entry is None:
    return 1
  names = (entry,) if isinstance(entry, str) else tuple(entry)
  return math.prod(mesh.shape[n] for n in names)


def fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """Drops the mesh axes of every dimension whose size they do not divide (it is replicated).

  Small layers (an RGB input conv, a 3-channel output) cannot be split 4 ways; they stay whole.
  """
  entries = list(spec) + [None] * (len(shape) - len(spec))
  fitted = [e if dim % _axis_size(mesh, e) == 0 else None for e, dim in zip(entries, shape)]
  return PartitionSpec(*fitted)


def logical_to_mesh_spec(names: Sequence[str | None], rules: Rules) -> PartitionSpec:
  """Maps logical dimension names to mesh axes by the first applicable rule of each name.

  Like `nn.logical_to_mesh_axes`, a mesh axis is used at most once per array, but a logical
  name may repeat (a conv kernel's (conv_space, conv_space, embed, mlp)): each occurrence takes
  the first rule whose mesh axes are still free. A rule mapping to None replicates the dim.
  """
  used: set[str] = set()
  out = []
  for name in names:
    assigned = None
    if name is not None:
      for rule_name, target in rules:
        if rule_name != name:
          continue
        mesh_names = (target,) if isinstance(target, str) else tuple(target or ())
        if not mesh_names:
          break
        if used.isdisjoint(mesh_names):
          assigned = target
          used.update(mesh_names)
          break
    out.append(assigned)
  return PartitionSpec(*out)


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules: Rules) -> Any:
  """NamedShardings for a tree of (possibly `nn.LogicallyPartitioned`) abstract arrays.

  Boxed leaves map through the rules; plain leaves (step counters, optimizer scalars) are
  replicated. The returned tree has the structure of `nn.unbox(abstract_tree)`.
  """
  logical = nn.get_partition_spec(abstract_tree)
  shapes = nn.unbox(abstract_tree)
  is_spec = lambda x: isinstance(x, PartitionSpec)
  return jax.tree.map(
      lambda spec, x: NamedSharding(mesh, fit_spec(logical_to_mesh_spec(spec, rules),
                                                   x.shape, mesh)),
      logical, shapes, is_leaf=is_spec)


def batch_axes(rules: Rules):
  """The mesh axes that the logical `batch` axis maps to (None: replicated)."""
  return logical_to_mesh_spec((axes.BATCH,), rules)[0]


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int) -> NamedSharding:
  """Sharding of a `[B, ...]` array of rank `ndim`: B split over the batch mesh axes."""
  return NamedSharding(mesh, PartitionSpec(batch_axes(rules), *([None] * (ndim - 1))))


def data_parallel_size(mesh: Mesh, rules: Rules) -> int:
  """How many ways the global batch is split."""
  return _axis_size(mesh, batch_axes(rules))


def check_batch_divisible(global_batch: int, mesh: Mesh, rules: Rules, what="train.batch_size"):
  """Raises ValueError unless the global batch splits evenly over devices and processes."""
  dp = data_parallel_size(mesh, rules)
  if global_batch % dp != 0:
    raise ValueError(f"{what}={global_batch} must be divisible by the data-parallel size {dp} "
                     f"(mesh {dict(mesh.shape)}, batch over {batch_axes(rules)}).")
  if global_batch % jax.process_count() != 0:
    raise ValueError(f"{what}={global_batch} must be divisible by the number of processes "
                     f"{jax.process_count()}.")


def sharded_init(init_fn: Callable[..., Any], *args, mesh: Mesh, rules: Rules):
  """Runs `init_fn(*args)` (which returns a boxed tree) directly into sharded, unboxed arrays.

  Returns (tree, shardings). `args` are small (keys, example shapes) and are replicated.
  """
  abstract = jax.eval_shape(init_fn, *args)
  shardings = logical_shardings(abstract, mesh, rules)
  unboxed_init = lambda *a: nn.unbox(init_fn(*a))
  # No logical-rules context here: unboxing a parameter inside `init` would then constrain it by
  # its names, and flax rejects names that repeat (conv kernels); out_shardings place it anyway.
  with jax.set_mesh(mesh):
    tree = jax.jit(unboxed_init, out_shardings=shardings)(*args)
  return tree, shardings


def host_to_global(batch: dict[str, np.ndarray], mesh: Mesh, rules: Rules) -> dict[str, jax.Array]:
  """Per-process numpy arrays `[b_local, ...]` -> global arrays `[B, ...]` sharded on batch."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, rules, np.ndim(v)),
                                                    np.asarray(v))
          for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Host values (the same on every process) -> global arrays replicated over the mesh."""
  sharding = NamedSharding(mesh, PartitionSpec())

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
  return jax.tree.map(put, tree)


# Environment variables that say a launcher started us as one of several processes.
_MULTI_PROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")
_WORLD_SIZE_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_NUM_PROCESSES")


def _spans_hosts_from_env() -> bool:
  if any(os.environ.get(k) for k in _MULTI_PROCESS_ENV):
    return True
  for k in _WORLD_SIZE_ENV:
    if os.environ.get(k, "1").isdigit() and int(os.environ.get(k, "1")) > 1:
      return True
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return len([h for h in hosts.split(",") if h]) > 1


def maybe_initialize_distributed(config=None) -> bool:
  """Calls `jax.distributed.initialize()` when this run spans processes; a no-op otherwise.

  Multi-process is decided by `config.sharding.distributed` ("auto" | "always" | "never") and,
  for "auto", by the environment: a coordinator address (JAX_COORDINATOR_ADDRESS), a launcher
  world size > 1 (SLURM, Open MPI, JAX_NUM_PROCESSES) or several TPU worker hosts.
  `config.sharding.coordinator_address` / `num_processes` / `process_id` (or the environment
  variables JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID) are passed through;
  what is missing jax's cluster auto-detection fills in. Must run before any other jax call.
  Returns True when distributed mode is (now) active.
  """
  if jax.distributed.is_initialized():
    return True
  s = config.sharding if config is not None and "sharding" in config else None
  mode = s.get("distributed", "auto") if s is not None else "auto"
  if mode not in ("auto", "always", "never"):
    raise ValueError(f"sharding.distributed={mode!r}; use 'auto', 'always' or 'never'.")
  address = (s.get("coordinator_address", "") if s is not None else "") or None
  if mode == "never" or (mode == "auto" and not address and not _spans_hosts_from_env()):
    return False
  kwargs = {}
  if address:
    kwargs["coordinator_address"] = address
  num = s.get("num_processes", 0) if s is not None else 0
  num = num if num > 0 else int(os.environ.get("JAX_NUM_PROCESSES", "0") or 0)
  pid = s.get("process_id", -1) if s is not None else -1
  pid = pid if pid >= 0 else int(os.environ.get("JAX_PROCESS_ID", "-1") or -1)
  if num > 0:
    kwargs["num_processes"] = num
  if pid >= 0:
    kwargs["process_id"] = pid
  logging.info("Initializing jax.distributed with %s", kwargs or "cluster auto-detection")
  jax.distributed.initialize(**kwargs)
  logging.info("Process %d of %d, %d local / %d global devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True
