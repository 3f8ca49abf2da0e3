"""The library's import structure: layers, private names, imports inside functions.

Layers, lowest first (a module may import its own layer and the layers below it, never above):

  0  errors, integrity, weights                 shared plain-Python helpers, exported-weights files
  1  diffusion                                  pure math
  2  models                                     Flax modules, one folder per family
  3  data, text, media, sharding                inputs, text conditioning, video files, meshes
  4  train                                      state, step, runner, objective, checkpoints
  5  distill                                    distillation rounds on the train runner
  6  sample, export                             stages, samplers, cascade, exported weights
  7  eval                                       evaluators, FVD
  8  cli, main, demo, config_utils, compile_cache, cpu_flags   entry points and their helpers

Parsed with `ast` (nothing imported), so it is fast and sees imports inside functions too.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "vdm_jax")

LAYERS = {
    "errors": 0, "integrity": 0, "weights": 0,
    "diffusion": 1,
    "models": 2,
    "data": 3, "text": 3, "media": 3, "sharding": 3,
    "train": 4,
    "distill": 5,
    "sample": 6, "export": 6,
    "eval": 7,
    "cli": 8, "main": 8, "demo": 8, "config_utils": 8, "compile_cache": 8, "cpu_flags": 8,
}
# Imports that may sit inside a function: optional or heavy dependencies that most users of
# the module never need (tfds, grain, video codecs, tokenizers, the I3D pickle reader, ...).
LAZY_OK = ("tensorflow_datasets", "grain", "tensorboardX", "imageio", "imageio_ffmpeg", "PIL",
           "tokenizers", "sentencepiece", "safetensors", "tqdm", "jax.experimental.pallas",
           "numpy.core", "numpy._core", "subprocess", "importlib",
           # the tfds builders: importing one imports tensorflow_datasets
           "vdm_jax.data.video_folder", "vdm_jax.data.image_folder",
           "vdm_jax.data.moving_shapes.builder")


def library_modules():
  """{dotted module name: path} of every module under vdm_jax/."""
  out = {}
  for dirpath, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(dirpath, f)
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
  return out


MODULES = library_modules()


def layer_of(module: str) -> int:
  top = module.split(".")[1] if module.count(".") else ""
  if top not in LAYERS:
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS (and the README)")
  return LAYERS[top]


def imports(tree):
  """(node, imported dotted name, inside a function) for every import of a module tree."""
  out = []

  def visit(node, in_function):
    for child in ast.iter_child_nodes(node):
      inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
      if isinstance(child, ast.Import):
        out.extend((child, a.name, in_function) for a in child.names)
      elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
        for a in child.names:
          full = f"{child.module}.{a.name}"
          out.append((child, full if full in MODULES else child.module, in_function))
      visit(child, inner)
  visit(tree, False)
  return out


def parsed():
  return {name: ast.parse(open(path, encoding="utf-8").read(), path)
          for name, path in MODULES.items()}


TREES = parsed()
# Scripts that use the library (their private names are checked too).
SCRIPTS = {os.path.relpath(os.path.join(d, f), ROOT): ast.parse(
    open(os.path.join(d, f), encoding="utf-8").read(), os.path.join(d, f))
           for d, _, files in os.walk(os.path.join(ROOT, "experiments")) for f in files
           if f.endswith(".py")}


def test_every_module_is_in_a_layer():
  for name in MODULES:
    if name != "vdm_jax":
      layer_of(name)


def test_no_module_imports_from_a_layer_above_it():
  bad = []
  for name, tree in TREES.items():
    if name == "vdm_jax":
      continue
    for node, target, _ in imports(tree):
      if target.startswith("vdm_jax.") and layer_of(target) > layer_of(name):
        bad.append(f"{MODULES[name]}:{node.lineno} ({name}, layer {layer_of(name)}) imports "
                   f"{target} (layer {layer_of(target)})")
  assert not bad, "\n".join(bad)


def test_imports_inside_functions_are_only_optional_heavy_dependencies():
  bad = []
  for name, tree in TREES.items():
    for node, target, in_function in imports(tree):
      if in_function and not any(target == ok or target.startswith(ok + ".")
                                 for ok in LAZY_OK):
        bad.append(f"{MODULES[name]}:{node.lineno} imports {target} inside a function")
  assert not bad, "\n".join(bad)


def test_no_private_name_is_used_outside_its_module():
  """In the library and in the experiments' scripts."""
  bad = []
  for name, tree in list(TREES.items()) + list(SCRIPTS.items()):
    aliases = {}   # local name -> library module
    for node, target, _ in imports(tree):
      if not target.startswith("vdm_jax"):
        continue
      for a in node.names:
        if isinstance(node, ast.ImportFrom):
          full = f"{node.module}.{a.name}"
          if full in MODULES:
            aliases[a.asname or a.name] = full
          elif a.name.startswith("_"):
            bad.append(f"{MODULES.get(name, name)}:{node.lineno} imports private {full}")
        elif a.asname:
          aliases[a.asname] = a.name
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id in aliases and node.attr.startswith("_")
          and not node.attr.startswith("__")):
        bad.append(f"{MODULES.get(name, name)}:{node.lineno} uses "
                   f"{aliases[node.value.id]}.{node.attr}")
  assert not bad, "\n".join(bad)


@pytest.mark.parametrize("source, expect", [
    ("from vdm_jax.train import loop\n", "imports vdm_jax.train.loop"),
    ("def f():\n  import json\n", "inside a function"),
    ("from vdm_jax.data import pipeline\nx = pipeline._text\n", "pipeline._text"),
])
def test_the_checks_catch_a_violation(source, expect, monkeypatch):
  """Each check fails on a planted violation in a diffusion-layer module."""
  fake = "vdm_jax.diffusion.planted"
  monkeypatch.setitem(MODULES, fake, "planted.py")
  monkeypatch.setitem(TREES, fake, ast.parse(source))
  checks = (test_no_module_imports_from_a_layer_above_it,
            test_imports_inside_functions_are_only_optional_heavy_dependencies,
            test_no_private_name_is_used_outside_its_module)
  messages = []
  for check in checks:
    try:
      check()
    except AssertionError as e:
      messages.append(str(e))
  assert any(expect in m for m in messages), messages
