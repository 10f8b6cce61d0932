"""Package-level contracts."""
import subprocess
import sys


def test_objectives_import_without_flax():
  code = ("import sys, alignax.objectives; "
          "bad = [m for m in sys.modules if m.split('.')[0] in ('flax', 'torch')]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True)


def test_subpackages_import():
  import alignax.framework.hf  # noqa: F401
  import alignax.framework.sharding  # noqa: F401
  import alignax.kernels  # noqa: F401
  import alignax.experiments  # noqa: F401


# --- No shadowing (issue 30) ------------------------------------------------
# The repository root is on sys.path whenever Python starts there (`python -m`,
# `pytest`, a notebook): a package folder at the root would shadow any PyPI
# distribution of the same name (transformers imports `kernels`; `agents` is
# openai-agents' module). Only `alignax` and `tests` may be packages there.

import os  # noqa: E402
import textwrap  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ALLOWED = {"alignax", "tests"}
# Names that PyPI distributions use or may use; each gets a fake distribution.
_FAKES = ("kernels", "agents", "framework", "experiments", "objectives", "recsys")


def _root_folders():
  return sorted(n for n in os.listdir(ROOT)
                if os.path.isdir(os.path.join(ROOT, n)) and n.isidentifier()
                and not n.startswith((".", "_")))


def _in_repo(path):
  return path is not None and os.path.realpath(path).startswith(ROOT + os.sep)


def test_no_top_level_folder_but_alignax_and_tests_is_a_package():
  # find_spec as a process started in the root sees it ('' first on sys.path).
  code = textwrap.dedent("""
      import importlib.util, json, sys
      out = {}
      for name in sys.argv[1:]:
        spec = importlib.util.find_spec(name)
        out[name] = None if spec is None else [
            spec.origin, list(spec.submodule_search_locations or [])]
      print(json.dumps(out))
  """)
  folders = _root_folders()
  assert "alignax" in folders
  proc = subprocess.run([sys.executable, "-c", code, *folders], cwd=ROOT,
                        capture_output=True, text=True, check=True)
  found = __import__("json").loads(proc.stdout)
  bad = []
  for name, spec in found.items():
    if name in _ALLOWED or spec is None:
      continue
    origin, _ = spec
    # A folder without __init__.py resolves at most as a namespace portion
    # (origin None), which every installed regular package of that name
    # outranks (test below); a real origin inside the repo is a shadow.
    if _in_repo(origin):
      bad.append(f"{name} -> {origin}")
  assert not bad, ("top-level folders importable as packages (move them under "
                   f"alignax/): {bad}")
  for name in folders:
    if name not in _ALLOWED:
      assert not os.path.exists(os.path.join(ROOT, name, "__init__.py")), name


def test_grpo_trains_from_the_root_beside_fake_distributions(tmp_path):
  # Fake distributions for every name the repo once used at the top, and for
  # every non-package folder at the root, *behind* the repo root on sys.path
  # (appended, so an installed real distribution, e.g. PyPI's `kernels` that
  # transformers imports, still comes first): each import must find a module
  # outside the repo, and the GRPO binary must train.
  fakes = tmp_path / "site"
  names = sorted(set(_FAKES) | (set(_root_folders()) - _ALLOWED))
  for name in names:
    (fakes / name).mkdir(parents=True)
    (fakes / name / "__init__.py").write_text("FAKE = True\n")
  workdir = tmp_path / "run"
  tiny = os.path.join("alignax", "experiments", "configs", "grpo.py") + ":tiny"
  code = textwrap.dedent(f"""
      import importlib, os, runpy, sys
      sys.path.append({str(fakes)!r})
      root = os.path.realpath(os.getcwd())
      for name in {names!r}:
        m = importlib.import_module(name)
        where = os.path.realpath(getattr(m, "__file__", None) or list(m.__path__)[0])
        assert not where.startswith(root + os.sep), (name, where)
      import alignax.kernels, alignax.agents
      runpy.run_module("alignax.experiments.grpo", run_name="__main__", alter_sys=True)
  """)
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run(
      [sys.executable, "-c", code, f"--config={tiny}", f"--workdir={workdir}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  summary = __import__("json").loads((workdir / "summary.json").read_text())
  assert summary["train/steps"] == 12, summary
  assert summary["eval/accuracy_after"] > summary["eval/accuracy_before"], summary


# --- Renamed modules (docs/api.md, "Renamed (deprecated aliases)") -----------
import re  # noqa: E402

from alignax import _renamed  # noqa: E402


def test_each_deprecated_alias_imports_as_the_new_module():
  # A fresh process, so that each old path is imported for the first time (and warns).
  code = textwrap.dedent("""
      import importlib, sys, warnings
      renamed = dict(a.split("=") for a in sys.argv[1:])
      for old, new in renamed.items():
        with warnings.catch_warnings(record=True) as caught:
          warnings.simplefilter("always")
          module = importlib.import_module(old)
        assert module is importlib.import_module(new), (old, module)
        assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message)
                   for w in caught), (old, [str(w.message) for w in caught])
        parent, _, leaf = old.rpartition(".")
        assert getattr(importlib.import_module(parent), leaf) is module, old
        exec(f"from {parent} import {leaf} as m; assert m is module", {"module": module})
      import alignax.objectives, alignax.objectives.registry, alignax.registry
      assert alignax.objectives.registry.Registry is alignax.registry.Registry
      assert alignax.objectives.Registry is alignax.registry.Registry
      print(len(renamed))
  """)
  args = [f"{old}={new}" for old, new in sorted(_renamed.MODULES.items())]
  proc = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert proc.stdout.split() == [str(len(args))]


def test_each_deprecated_alias_is_documented_and_unused_inside_the_package():
  api = open(os.path.join(ROOT, "docs", "api.md")).read()
  renamed = api[api.index("## Renamed (deprecated aliases)"):]
  aliases = {os.path.join(ROOT, *old.split(".")) + ".py" for old in _renamed.MODULES}
  for old, new in _renamed.MODULES.items():
    assert f"| `{old}`" in renamed and f"`{new}` |" in renamed, old
    assert os.path.isfile(os.path.join(ROOT, *new.split(".")) + ".py"), new
  # The package itself imports the new paths only (an alias is for users' code).
  pattern = re.compile("|".join(
      [rf"\bimport {re.escape(old)}\b|\bfrom {re.escape(old)} import\b"
       for old in _renamed.MODULES] +
      [rf"\bfrom {re.escape(old.rpartition('.')[0])} import [^\n]*\b{old.rpartition('.')[2]}\b"
       for old in _renamed.MODULES]))
  bad = []
  for folder, _, files in os.walk(os.path.join(ROOT, "alignax")):
    for name in files:
      path = os.path.join(folder, name)
      if name.endswith(".py") and path not in aliases and name != "_renamed.py":
        for line in open(path).read().splitlines():
          if pattern.search(line):
            bad.append(f"{os.path.relpath(path, ROOT)}: {line.strip()}")
  assert not bad, bad
