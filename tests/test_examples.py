"""The README's example files: reproducible from their script, and usable."""
import json
import os

from alignax.agents.data import prompt_data
from alignax.agents.scoring import rewards

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


def _load(name):
  import importlib.util
  spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_arithmetic_files_are_what_the_script_writes(tmp_path):
  make = _load("make_arithmetic")
  for task in make.TASKS:
    paths = make.write(task, str(tmp_path))
    for split, path in paths.items():
      with open(path) as a, open(os.path.join(EXAMPLES, os.path.basename(path))) as b:
        assert a.read() == b.read(), (task, split)
    train = {json.loads(l)["prompt"] for l in open(paths["train"])}
    held_out = [json.loads(l) for l in open(paths["eval"])]
    assert len(held_out) >= 200 and not train & {r["prompt"] for r in held_out}


def test_word_problem_answers_follow_from_their_numbers():
  # An independent check of each template's arithmetic, from its text.
  import re
  make = _load("make_arithmetic")
  rows = [json.loads(l) for l in open(os.path.join(EXAMPLES, "word_problems_eval.jsonl"))]
  for row in rows:
    n = list(map(int, re.findall(r"\d+", row["prompt"])))
    p = row["prompt"]
    if "packs of" in p:
      want = n[0] + n[1] * n[2] - n[3]
    elif "shares all" in p:
      want = (n[0] + n[1]) / n[2]
    elif "times as many" in p:
      want = n[0] * n[1] - n[2]
    elif "change" in p:
      want = n[2] - n[0] * n[1]
    else:
      want = n[0] * n[1] - n[2] + n[3]
    assert float(row["answer"]) == want and want >= 0, row
  assert len({r["prompt"].split()[2] for r in rows}) > 5  # varied templates
  del make


def test_two_step_answers_follow_from_their_numbers():
  # An independent check of each template's arithmetic, from its text.
  import re
  rows = [json.loads(l) for l in open(os.path.join(EXAMPLES, "two_step_eval.jsonl"))]
  kinds = set()
  for row in rows:
    n = list(map(int, re.findall(r"\d+", row["prompt"])))
    p = row["prompt"]
    if "gives away" in p and "packs" in p:
      kinds.add("packs_minus")
      want = n[0] * n[1] - n[2]
    elif "packs" in p:
      kinds.add("packs_plus")
      want = n[0] + n[1] * n[2]
    elif "loses" in p:
      kinds.add("lose_find")
      want = n[0] - n[1] + n[2]
    else:
      kinds.add("buy_give")
      want = n[0] + n[1] - n[2]
    assert len(n) == 3 and float(row["answer"]) == want and want >= 0, row
  assert len(kinds) == 4


def test_arithmetic_rewards_in_trl_convention():
  r = _load("arithmetic_rewards")
  completions = ["17 + 25 = 42", "The answer is 41.", "forty-two", "1,042",
                 [{"role": "assistant", "content": "So 42"}]]
  answers = ["42", "42", "42", "1042", "42"]
  assert r.last_number_correct([None] * 5, completions, answer=answers) == [1, 0, 0, 1, 1]
  assert r.has_number([None] * 5, completions) == [1, 1, 0, 1, 1]


def test_two_ops_answers_follow_from_their_expressions():
  # Left to right, from the prompt's text; every operator pair occurs.
  import re
  # Held-out: two operations only; train: about half one operation (a curriculum).
  def ops(split):
    rows = [json.loads(l) for l in open(os.path.join(EXAMPLES, f"two_ops_{split}.jsonl"))]
    out = []
    for row in rows:
      m = re.fullmatch(r"What is (\d+) ([+-]) (\d+)(?: ([+-]) (\d+))?\?", row["prompt"])
      a, op1, b, op2, c = m.groups()
      value = int(a) + int(b) if op1 == "+" else int(a) - int(b)
      assert value >= 0, row
      if op2:
        value = value + int(c) if op2 == "+" else value - int(c)
      assert value >= 0 and row["answer"] == str(value), row
      assert all(10 <= int(x) <= 99 for x in (a, b, c or 10)), row
      out.append((row["prompt"], op1 + (op2 or "")))
    return out
  held_out, train = ops("eval"), ops("train")
  assert {k for _, k in held_out} == {"++", "+-", "-+", "--"}
  assert 0.4 < sum(len(k) == 1 for _, k in train) / len(train) < 0.6
  assert len(train) == 4000 and not {p for p, _ in train} & {p for p, _ in held_out}
