"""Test modules share fixtures and helpers only through the test libraries.

Shared helpers live in tests/cascade_testlib.py (the tiny cascade, random checkpoints, fake
text encoder, spy model), tests/train_testlib.py (a tiny denoiser and batches),
tests/mixture_testlib.py (the Gaussian mixture of the sampler tests),
tests/distill_toy.py and, for pytest fixtures, tests/conftest.py. No module in tests/ imports a
`test_*` module other than itself (nor `conftest`), and none uses a private name (`_x`) of
another module in tests/: a test module's contents are its own, free to change without breaking
another file. The check reads the sources with `ast` (nothing is imported or compiled) and also
reads the scripts that tests embed as strings for a subprocess.

The one intended exception is outside this check: the fixture generator
tests/fixtures/tiny_cascade/make_fixtures.py imports test_checkpoint_fixture to reuse the
test's recipe.
"""
import ast
import glob
import os
import re

TESTS = os.path.dirname(os.path.abspath(__file__))
_THIS = os.path.splitext(os.path.basename(__file__))[0]


def _local_modules():
  """{module name: path} of the Python files directly under tests/."""
  return {os.path.splitext(os.path.basename(p))[0]: p
          for p in sorted(glob.glob(os.path.join(TESTS, "*.py")))}


def _private(name):
  return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _forbidden_import(module, me):
  top = module.split(".")[0]
  return top != me and (top.startswith("test_") or top == "conftest")


def _import_nodes(tree):
  """Every import statement of a tree, inside functions and classes too."""
  return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def _check_tree(tree, me, local, where, first_line=1):
  problems, aliases = [], {}
  at = lambda n: f"{where}:{first_line - 1 + n.lineno}"
  for n in _import_nodes(tree):
    if isinstance(n, ast.Import):
      for a in n.names:
        if _forbidden_import(a.name, me):
          problems.append(f"{at(n)}: imports {a.name}")
        if a.name.split(".")[0] in local and a.name.split(".")[0] != me:
          aliases[a.asname or a.name.split(".")[0]] = a.name.split(".")[0]
    elif n.module and n.level == 0:
      if _forbidden_import(n.module, me):
        problems.append(f"{at(n)}: imports from {n.module}")
      if n.module.split(".")[0] in local and n.module.split(".")[0] != me:
        problems += [f"{at(n)}: imports private {n.module}.{a.name}"
                     for a in n.names if _private(a.name)]
  for n in ast.walk(tree):
    if (isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
        and n.value.id in aliases and _private(n.attr)):
      problems.append(f"{at(n)}: uses private {aliases[n.value.id]}.{n.attr}")
  return problems


def _embedded_scripts(tree):
  """(line, text) of string constants that hold import statements: scripts run by a
  subprocess (often format templates, so not parseable as a whole)."""
  for n in ast.walk(tree):
    if isinstance(n, ast.Constant) and isinstance(n.value, str) and re.search(
        r"^\s*(import|from)\s+\w", n.value, re.M):
      yield n.lineno, n.value


def _check_script(text, me, local, where, first_line):
  problems, aliases = [], {}
  for i, line in enumerate(text.splitlines()):
    line = line.strip()
    if not re.match(r"(import|from)\s+\w", line):
      continue
    try:
      tree = ast.parse(line)
    except SyntaxError:
      continue
    problems += _check_tree(tree, me, local, where, first_line + i)
    for n in _import_nodes(tree):
      if isinstance(n, ast.Import):
        aliases.update({a.asname or a.name.split(".")[0]: a.name.split(".")[0]
                        for a in n.names if a.name.split(".")[0] in local
                        and a.name.split(".")[0] != me})
  for alias, module in aliases.items():
    problems += [f"{where}:{first_line}: uses private {module}.{m}" for m in sorted(set(
        re.findall(rf"(?<![\w.]){re.escape(alias)}\.(_\w+)", text))) if _private(m)]
  return problems


def hygiene_problems(source, me, local, where, scripts=True):
  """What `source` (the module `me` in tests/) does against the rule above; `scripts=False`
  leaves out the strings that hold import statements."""
  tree = ast.parse(source)
  problems = _check_tree(tree, me, local, where)
  for line, text in _embedded_scripts(tree) if scripts else ():
    problems += _check_script(text, me, local, where, line)
  return problems


def test_no_module_in_tests_imports_a_test_module_or_its_private_names():
  local = _local_modules()
  assert "test_cascade_sampling" in local and "cascade_testlib" in local
  problems = []
  for name, path in local.items():
    with open(path, encoding="utf-8") as f:
      # This module's strings are the deliberate violations of the test below.
      problems += hygiene_problems(f.read(), name, set(local), os.path.relpath(path, TESTS),
                                   scripts=name != _THIS)
  assert not problems, (
      "move shared fixtures and helpers into a test library (cascade_testlib.py, "
      "train_testlib.py) or conftest.py, as public names:\n" + "\n".join(problems))


def test_the_check_catches_each_kind_of_violation():
  local = {"test_a", "test_b", "cascade_testlib", "conftest"}
  bad = {
      "from test_a import tiny": "imports from test_a",
      "import test_a as t": "imports test_a",
      "def f():\n  from test_a import tiny\n": "imports from test_a",
      "import conftest": "imports conftest",
      "from cascade_testlib import _helper": "imports private cascade_testlib._helper",
      "import cascade_testlib as tcs\ntcs._helper()": "uses private cascade_testlib._helper",
      "S = '''\nimport sys; sys.path.insert(0, {x!r})\nimport test_a as t\nt._state(1)\n'''":
          "imports test_a",
  }
  for source, message in bad.items():
    problems = hygiene_problems(source, "test_b", local, "test_b.py")
    assert any(message in p for p in problems), (source, problems)
  ok = ["import cascade_testlib as tcs\ntcs.PROMPTS, tcs.__file__",
        "from cascade_testlib import PROMPTS",
        "S = '''\nimport test_b as t\nt._state(1)\n'''",   # a script importing its own module
        "import numpy as np\nnp._private"]
  for source in ok:
    assert not hygiene_problems(source, "test_b", local, "test_b.py"), source
