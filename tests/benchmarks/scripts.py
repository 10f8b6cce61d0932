"""The benchmark scripts under test, imported from benchmarks/ by file name."""
import importlib.util
import os
import sys

BENCHMARKS = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks")


def load(name: str):
  """benchmarks/<name>.py as module `name`, registered in sys.modules (dataclasses
  resolve a module's annotations through it, and scripts import each other)."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(BENCHMARKS, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module
