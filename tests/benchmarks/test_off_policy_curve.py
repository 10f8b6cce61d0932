"""benchmarks/off_policy_curve.py: a run's curves read back from its workdir."""
import importlib.util
import json
import os
import sys

_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks")


def _load(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(_DIR, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


def test_read_run(tmp_path):
  _load("seeds")
  curve = _load("off_policy_curve")
  ratio = "train/sampling/importance_sampling_ratio/"
  rows = [{"step": 0, "eval/accuracy": 0.03},
          {"step": 1, "train/reward": 0.25, ratio + "mean": 1.0, ratio + "min": 0.9},
          {"step": 2, "train/reward": 0.5, "eval/accuracy": 0.4}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (tmp_path / "summary.json").write_text(json.dumps(
      {"train/seconds": 12.5, "eval/pass@4_after": 0.6}))
  run = curve.read_run(str(tmp_path))
  assert run["eval_accuracy"] == {0: 0.03, 2: 0.4}
  assert run["train_reward"] == {1: 0.25, 2: 0.5}
  assert run["importance_ratio"] == {1: {"mean": 1.0, "min": 0.9}}
  assert (run["train_seconds"], run["pass@4_after"]) == (12.5, 0.6)
