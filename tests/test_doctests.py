"""Docs that run: the docstring examples of `alignax.objectives` (and of
`alignax.rl.batch`) are executed here, so the README's test command checks them.

Every public function and class of the objective modules has at least one
example, and every name of the objective registries appears in one (a
registered function that is private, e.g. a policy loss, is shown through its
public entry point: `policy_loss(loss_type=...)`, `dpo_loss(loss_type=...)`).
Examples print arrays with `np.printoptions(precision=4, suppress=True)`.
"""
import doctest
import importlib
import inspect
import pkgutil
import re

import numpy as np
import pytest

import alignax.objectives
from alignax import _renamed
from alignax.objectives import curriculum, em, registries

MODULES = sorted(m.name for m in pkgutil.iter_modules(alignax.objectives.__path__,
                                                      "alignax.objectives.")
                 if m.name not in _renamed.MODULES) + ["alignax.rl.batch"]
# The objectives and estimators: every public function and class has an example.
OBJECTIVE_MODULES = ["alignax.objectives." + m for m in (
    "advantages", "policy", "dpo", "em", "mgda", "unlearning", "curriculum")]
# Registry -> the module whose examples show each of its names.
REGISTRIES = [(registries.ADVANTAGE_ESTIMATORS, "alignax.objectives.advantages"),
              (registries.POLICY_LOSSES, "alignax.objectives.policy"),
              (registries.AGGREGATIONS, "alignax.objectives.policy"),
              (registries.DPO_LOSSES, "alignax.objectives.dpo"),
              (em.EM_WEIGHTINGS, "alignax.objectives.em"),
              (curriculum.CURRICULA, "alignax.objectives.curriculum")]


def _doctests(name):
  module = importlib.import_module(name)
  return module, [t for t in doctest.DocTestFinder().find(module) if t.examples]


def _public(module):
  """Public functions (jitted ones too) and classes defined in `module`."""
  out = []
  for name, value in vars(module).items():
    if name.startswith("_") or getattr(value, "__module__", None) != module.__name__:
      continue
    if inspect.isclass(value) or inspect.isfunction(inspect.unwrap(value)):
      out.append(name)
  return out


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_pass(name):
  _, tests = _doctests(name)
  runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
  report = []
  with np.printoptions(precision=4, suppress=True):
    for test in tests:
      runner.run(test, out=report.append)
  result = runner.summarize(verbose=False)
  assert result.failed == 0, "".join(report)
  if name in OBJECTIVE_MODULES:
    assert result.attempted > 0


@pytest.mark.parametrize("name", OBJECTIVE_MODULES)
def test_every_public_function_has_an_example(name):
  module, tests = _doctests(name)
  with_examples = {t.name for t in tests}
  missing = [f for f in _public(module) if f"{name}.{f}" not in with_examples]
  assert not missing, f"{name}: no docstring example for {missing}"


def test_every_registered_name_has_an_example():
  missing = []
  for table, name in REGISTRIES:
    module, tests = _doctests(name)
    with_examples = {t.name for t in tests}
    text = "\n".join(e.source + e.want for t in tests for e in t.examples)
    for key, value in table.items():
      fn = getattr(value, "per_token", value)
      own = f"{name}.{getattr(fn, '__name__', '')}" in with_examples
      if not (own or re.search(rf"(?<![\w/]){re.escape(key)}(?![\w/])", text)):
        missing.append(f"{table.kind} {key!r}")
  assert not missing, f"no docstring example shows {missing}"
