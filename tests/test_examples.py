"""The README's example files: reproducible from their script, and usable."""
import json
import os

from alignax.agents import prompt_data, rewards

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


def test_example_data_is_what_the_script_writes(tmp_path):
  import importlib.util
  spec = importlib.util.spec_from_file_location("make_examples",
                                                os.path.join(EXAMPLES, "make_examples.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  module.main(str(tmp_path / "reverse.jsonl"))
  with open(tmp_path / "reverse.jsonl") as a, open(os.path.join(EXAMPLES, "reverse.jsonl")) as b:
    assert a.read() == b.read()


def test_example_reward_runs_on_example_rows():
  examples = prompt_data.to_examples(
      prompt_data.load_rows(os.path.join(EXAMPLES, "reverse.jsonl")))[:3]
  rs = rewards.RewardSet(["exact_match", os.path.join(EXAMPLES, "my_rewards.py:digits_only")],
                         [1.0, 0.1])
  texts = [examples[0].ground_truth, "12", "abc"]
  result = rs.score(examples, [[1]] * 3, texts)
  n1 = len(examples[1].ground_truth)
  assert result.per_function[0].tolist() == [1.0, 1.0]
  assert result.per_function[1, 1] == float(n1 == 2) and result.per_function[2].tolist() == [0, 0]
