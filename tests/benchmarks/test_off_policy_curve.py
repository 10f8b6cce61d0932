"""benchmarks/off_policy_curve.py: a run's curves read back from its workdir."""
import json

from tests.benchmarks import scripts


def test_read_run(tmp_path):
  scripts.load("seeds")  # off_policy_curve imports it, and benchmarks/ is not on sys.path
  curve = scripts.load("off_policy_curve")
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
