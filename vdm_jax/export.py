"""Exported stages: EMA parameters as safetensors, each stage's config as JSON, one manifest.

An exported cascade is a directory (the demo cascade ships one inside the package,
`vdm_jax/assets/demo_cascade/`):

    manifest.json                  format, version, stage order, per stage its files, training
                                   steps and compute, the recipe (config, command, commit), and
                                   the sha256 of EVERY file it lists
    <name>/params.safetensors      the stage's EMA parameters, one tensor per parameter named by
                                   its path ("down0_res0/conv1/kernel"), float32
    <name>/config.json             the stage's full experiment config (model, diffusion, sample...)

Extra stages (a distilled student beside the stage it replaces) are listed under
`manifest["distilled"]` the same way. A latent stage's frozen autoencoder is exported beside it
as `<name>_autoencoder/` (its parameters, config and latent_stats.json, listed under
`manifest["autoencoders"]`), and the stage's config names it by that relative path, so an
exported latent stage samples decoded videos anywhere. Nothing is unpickled: safetensors holds
raw arrays and a JSON header. Every file's sha256 is checked against the manifest *before* it
is parsed, so a flipped bit or a truncated file is refused with `IntegrityError` naming the
file, and a parameter tree that does not match the model its config builds is refused naming
the differing parameters.
"""
import os
import shutil
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from vdm_jax import sharding as sharding_lib
from vdm_jax.data import latents as latents_lib
from vdm_jax.integrity import sha256_file
from vdm_jax.models import registry
from vdm_jax.sample import cascade as cascade_lib
from vdm_jax.sample import stage as stage_lib
from vdm_jax.train import checkpoint as ckpt_lib
# The file format lives in vdm_jax/weights.py (below the models); these names are its API here too.
from vdm_jax.weights import CONFIG, FORMAT, MANIFEST, PARAMS, VERSION  # pylint: disable=unused-import
from vdm_jax.weights import IntegrityError, read_manifest, verify  # pylint: disable=unused-import
from vdm_jax.weights import entries, entry_files, flatten_params, load_params, read_json
from vdm_jax.weights import unflatten_params
from vdm_jax.weights import verify_file, write_json

def write_stage(directory: str, name: str, params: Any, config, *,
                autoencoder: Optional[str] = None) -> dict:
  """Writes `<directory>/<name>/params.safetensors` and `config.json`; returns the manifest
  entry {"params": rel path, "config": rel path, "num_params": n}. A latent stage's config
  names `autoencoder` (the exported autoencoder's directory, relative to `directory`)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.join(directory, name), exist_ok=True)
  flat = flatten_params(params)
  rel_params, rel_config = f"{name}/{PARAMS}", f"{name}/{CONFIG}"
  save_file(flat, os.path.join(directory, rel_params), metadata={"format": FORMAT})
  payload = ckpt_lib.config_to_dict(config)
  # Paths of the training machine mean nothing elsewhere: the loader's caller sets them.
  payload.get("data", {})["data_dir"] = "data"
  payload.get("text", {})["store_path"] = ""
  if autoencoder is not None:
    payload["latent"]["autoencoder"] = autoencoder
    payload["data"]["latents"] = "latents"      # a latent stage; its dataset stays behind
  write_json(os.path.join(directory, rel_config), payload)
  return {"params": rel_params, "config": rel_config,
          "num_params": int(sum(v.size for v in flat.values()))}


def write_manifest(directory: str, manifest: dict) -> dict:
  """Adds format, version and the sha256 of every file the stage entries list; writes it."""
  manifest = dict(manifest, format=FORMAT, version=VERSION)
  files = {}
  for entry in entries(manifest).values():
    for rel in entry_files(entry):
      files[rel] = sha256_file(os.path.join(directory, rel))
  manifest["sha256"] = files
  write_json(os.path.join(directory, MANIFEST), manifest)
  return manifest


def _check_tree(flat: Mapping[str, np.ndarray], abstract: Mapping[str, Any], path: str) -> None:
  missing = sorted(set(abstract) - set(flat))
  extra = sorted(set(flat) - set(abstract))
  shapes = sorted(k for k in set(flat) & set(abstract)
                  if tuple(flat[k].shape) != tuple(abstract[k].shape))
  if missing or extra or shapes:
    def show(keys):
      return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
    parts = [f"missing {show(missing)}" if missing else "",
             f"unexpected {show(extra)}" if extra else "",
             "shapes differ for " + show([f"{k} {tuple(flat[k].shape)} vs "
                                          f"{tuple(abstract[k].shape)}" for k in shapes])
             if shapes else ""]
    raise IntegrityError(f"{path} does not hold the parameters of the model its config.json "
                         f"builds: {'; '.join(p for p in parts if p)}.")


def load_stage(directory: str, entry: dict, manifest: dict, *,
               text_encoder: Optional[Any] = None,
               devices: Optional[Sequence[Any]] = None, step: int = 0):
  """A `vdm_jax.sample.stage.Stage` from one manifest entry (both files verified first), made
  as a restored checkpoint's is (`stage.make_stage`)."""
  config_path = verify_file(directory, manifest, entry["config"])
  params_path = verify_file(directory, manifest, entry["params"])
  config = ml_collections.ConfigDict(read_json(config_path, "The stage config"))
  ae = config.get("latent", {}).get("autoencoder", "")
  if latents_lib.is_latent_config(config) and ae and not os.path.isabs(ae):
    config.latent.autoencoder = os.path.join(directory, ae)   # exported beside the stage
  mesh = sharding_lib.create_mesh(config.sharding, devices)
  rules = sharding_lib.logical_rules(config.sharding)
  fam = registry.family(config.model)
  init_fn = fam.init_fn(fam.module(), batch_like=fam.example_batch(config))
  abstract = jax.eval_shape(init_fn, jax.random.key(0))
  shardings = sharding_lib.logical_shardings(abstract, mesh, rules)
  flat = load_params(params_path)
  _check_tree(flat, flatten_abstract(nn.unbox(abstract)), params_path)
  params = jax.tree.map(lambda x, s: jax.device_put(np.asarray(x), s),
                        unflatten_params(flat), shardings)
  return stage_lib.make_stage(config, params, shardings, step=int(entry.get("step", step)),
                              mesh=mesh, text_encoder=text_encoder)


def flatten_abstract(tree: Any) -> dict:
  out = {}

  def walk(t, prefix):
    if isinstance(t, Mapping):
      for k in t:
        walk(t[k], f"{prefix}{k}/")
    else:
      out[prefix.rstrip("/")] = t
  walk(tree, "")
  return out


def load_cascade(directory: str, *, distilled: bool = False,
                 text_encoder: Optional[Any] = None,
                 devices: Optional[Sequence[Any]] = None, cascade_seed: int = 0):
  """The `Cascade` of an exported directory (every file verified first). With
  `distilled=True`, every stage that has a distilled student is replaced by it (sampling at
  the student's step count, the stage's guidance weight as its input)."""
  manifest = verify(directory)
  names = list(manifest["order"])
  stages, settings = [], []
  for i, name in enumerate(names):
    entry = manifest["stages"][name]
    student = manifest.get("distilled", {}).get(name) if distilled else None
    stage = load_stage(directory, student or entry, manifest, text_encoder=text_encoder,
                       devices=devices)
    if stage.text_encoder is not None:
      text_encoder = stage.text_encoder
    s = cascade_lib.StageSampling.from_config(stage.config, index=i, cascade_seed=cascade_seed)
    if student is not None:   # the teacher stage's sampling, at the student's step count
      teacher = read_json(os.path.join(directory, entry["config"]), "The stage config")
      s = cascade_lib.StageSampling.of_student(ml_collections.ConfigDict(teacher), stage,
                                               index=i, cascade_seed=cascade_seed)
    stages.append(stage)
    settings.append(s)
  return cascade_lib.Cascade(names, stages, settings)


def git_commit(path: str) -> str:
  """The commit of the checkout holding `path` ('' when it is not a git checkout)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  try:
    out = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True,
                         text=True, timeout=10, check=False)
    dirty = subprocess.run(["git", "-C", path, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10, check=False)
  except (OSError, subprocess.SubprocessError):
    return ""
  commit = out.stdout.strip() if out.returncode == 0 else ""
  return commit + ("+uncommitted" if commit and dirty.stdout.strip() else "")


def export_cascade(config, root: str, directory: str, *, distilled: Optional[Mapping] = None,
                   compute: Optional[Mapping] = None, recipe: Optional[dict] = None,
                   steps: Optional[Mapping[str, int]] = None,
                   devices: Optional[Sequence[Any]] = None) -> dict:
  """Exports the EMA parameters of every stage of cascade `config` trained under
  `<root>/<name>` (latest checkpoint, or `steps[name]`) and of distilled students
  (`distilled` {stage name: round directory}) to `directory`; returns the manifest.

  `compute` {label: {...}} is recorded per stage (steps, CPU / wall seconds, machine);
  `recipe` (config name, command, commit) for the whole cascade.
  """
  os.makedirs(directory, exist_ok=True)
  manifest: dict = {"order": [], "stages": {}, "distilled": {}, "recipe": dict(recipe or {})}
  compute = dict(compute or {})
  for name, c in cascade_lib.stage_configs(config):
    stage = stage_lib.load_stage(c, cascade_lib.stage_workdir(root, name),
                                 step=(steps or {}).get(name), text_encoder=_NO_TEXT,
                                 devices=devices)
    autoencoder = None
    if stage.codec is not None:        # a latent stage: its autoencoder and statistics too
      autoencoder = f"{name}_autoencoder"
      ae_entry = write_stage(directory, autoencoder, stage.codec.params, stage.codec.config)
      stats = f"{autoencoder}/{latents_lib.STATS_FILE}"
      shutil.copyfile(os.path.join(stage.codec.path, latents_lib.STATS_FILE),
                      os.path.join(directory, stats))
      ae_entry.update(step=int(stage.codec.step), stats=stats)
      manifest.setdefault("autoencoders", {})[name] = ae_entry
    entry = write_stage(directory, name, stage.params, stage.config, autoencoder=autoencoder)
    entry.update(step=int(stage.step), compute=compute.get(name, {}))
    manifest["order"].append(name)
    manifest["stages"][name] = entry
  for name, round_dir in dict(distilled or {}).items():
    stage = stage_lib.load_stage_from_workdir(round_dir, text_encoder=_NO_TEXT,
                                              devices=devices)
    entry = write_stage(directory, f"{name}_distilled", stage.params, stage.config)
    entry.update(step=int(stage.step), compute=compute.get(f"{name} distilled", {}),
                 round=os.path.basename(os.path.normpath(round_dir)))
    manifest["distilled"][name] = entry
  return write_manifest(directory, manifest)


class _NoText:
  """Stands in for a text encoder where only the parameters are wanted."""
  dim = 0


_NO_TEXT = _NoText()
