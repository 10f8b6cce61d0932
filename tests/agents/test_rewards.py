"""Reward functions: built-ins, TRL's own functions through our path, None, errors."""
import math
import os

import numpy as np
import pytest
from trl.rewards import accuracy_reward, get_soft_overlong_punishment, think_format_reward

from alignax.agents.scoring import rewards
from alignax.agents.data.prompt_data import Example


def _ex(prompt, gt, **cols):
  return Example(prompt, gt, {"ground_truth": gt, **cols}, "test")


def _msgs(texts):
  return [[{"role": "assistant", "content": t}] for t in texts]


COMPLETIONS = [r"<think>add</think> The answer is \boxed{\frac{1}{3}}",
               r"<think>hmm</think> \boxed{\frac{1}{2}}",
               "no think tags, 1/3",
               r"<think>x</think><think>y</think> \boxed{1/3}"]
SOLUTIONS = [r"$\frac{1}{3}$", r"$\frac{1}{3}$", r"$\frac{1}{3}$", r"$\frac{1}{3}$"]


def test_trl_reward_functions_run_unchanged_through_the_reward_set():
  examples = [_ex([{"role": "user", "content": "q"}], "1/3", solution=s) for s in SOLUTIONS]
  rs = rewards.RewardSet(["trl.rewards:accuracy_reward", "trl.rewards:think_format_reward"],
                         [1.0, 0.5])
  result = rs.score(examples, [[1, 2]] * 4, COMPLETIONS)
  # Called directly, as TRL's GRPOTrainer calls them (conversational completions).
  acc = accuracy_reward(_msgs(COMPLETIONS), SOLUTIONS)
  fmt = think_format_reward(_msgs(COMPLETIONS))
  np.testing.assert_array_equal(result.per_function[:, 0], np.asarray(acc, np.float32))
  np.testing.assert_array_equal(result.per_function[:, 1], np.asarray(fmt, np.float32))
  np.testing.assert_allclose(result.total, np.asarray(acc) + 0.5 * np.asarray(fmt))
  assert result.names == ("accuracy_reward", "think_format_reward")


def test_math_accuracy_agrees_with_trl_accuracy_reward_on_boxed_answers():
  gold = ["1/3", "1/3", "1/3", "1/3"]
  ours = rewards.math_accuracy(["q"] * 4, COMPLETIONS, [[1]] * 4, ground_truth=gold)
  trl = accuracy_reward(_msgs(COMPLETIONS), SOLUTIONS)
  boxed = [0, 1, 3]  # TRL only reads LaTeX/boxed answers; ours also reads plain text
  assert [ours[i] for i in boxed] == [trl[i] for i in boxed]
  more = rewards.math_accuracy(
      [""] * 6, ["so #### 42", "I get 41, no: 42", "0.5", r"\boxed{1000}", "7", "x"],
      [[1]] * 6, ground_truth=["42", "42", r"\frac{1}{2}", "1,000", "8", None])
  assert more == [1.0, 1.0, 1.0, 1.0, 0.0, None]


def test_builtins():
  assert rewards.exact_match(["p"] * 3, [" 12 ", "13", "x"], [[1]] * 3,
                             ground_truth=["12", "12", None]) == [1.0, 0.0, None]
  assert rewards.think_format([""] * 3, ["<think>a</think> 4", "<think>a</think>", "4"],
                              [[1]] * 3) == [1.0, 0.0, 0.0]
  # Same as TRL's regex on completions TRL's accepts with an answer after </think>.
  assert rewards.think_format([""], _msgs(["<think>\nr\n</think>\nA"]), [[1]]) == \
      think_format_reward(_msgs(["<think>\nr\n</think>\nA"]))
  assert rewards.boxed_format([""] * 2, [r"so \boxed{3}", "3"], [[1]] * 2) == [1.0, 0.0]


def test_overlong_penalty_matches_trl():
  ids = [[0] * n for n in (0, 5, 6, 9, 10, 12)]
  trl = get_soft_overlong_punishment(max_completion_len=10, soft_punish_cache=4)(ids)
  ours = rewards.overlong_penalty(None, None, ids, max_completion_length=10, overlong_buffer=4)
  np.testing.assert_allclose(ours, trl)


def test_none_is_skipped_like_trl():
  def half(prompts, completions, completion_ids, **kw):
    return [None, 1.0, None, 0.0]
  def never(prompts, completions, completion_ids, **kw):
    return [None, 2.0, None, None]
  rs = rewards.RewardSet(["exact_match"], [])
  rs.names, rs.functions, rs.weights = ("half", "never"), [half, never], np.asarray([1.0, 0.5])
  result = rs(["p"] * 4, ["c"] * 4, [[1]] * 4, {})
  np.testing.assert_array_equal(np.isnan(result.total), [True, False, True, False])
  np.testing.assert_allclose(result.total[[1, 3]], [2.0, 0.0])  # None counts 0 in the sum
  m = result.metrics("train/")
  assert m["train/reward/half"] == 0.5 and m["train/reward/never"] == 2.0
  assert m["train/reward"] == 1.0  # mean over scorable samples


def test_user_function_from_file_and_module(tmp_path):
  path = tmp_path / "r.py"
  path.write_text("def length(prompts, completions, completion_ids, **kw):\n"
                  "  return [float(len(i)) for i in completion_ids]\n")
  rs = rewards.RewardSet([f"{path}:length", "alignax.agents.scoring.rewards:boxed_format"], "")
  result = rs(["p", "q"], ["a", r"\boxed{1}"], [[1], [1, 2, 3]], {})
  np.testing.assert_array_equal(result.per_function, [[1, 0], [3, 1]])


@pytest.mark.parametrize("spec,error,match", [
    ("exact_mach", KeyError, r"exact_mach.*registered: \['boxed_format', 'exact_match'"),
    ("nowhere/r.py:f", FileNotFoundError, "no file 'nowhere/r.py'"),
    ("alignax.agents.scoring.rewards:nope", AttributeError, "has no function 'nope'"),
    ("alignax.nothing_here:f", ImportError, "cannot import module"),
])
def test_bad_reward_names(spec, error, match):
  with pytest.raises(error, match=match):
    rewards.RewardSet([spec])


def test_weights_must_match():
  with pytest.raises(ValueError, match="weights has 1 values but .* names 2 functions"):
    rewards.RewardSet(["exact_match", "think_format"], [1.0])


def _set_with(fn):
  rs = rewards.RewardSet(["exact_match"])
  rs.names, rs.functions = ("bad",), [fn]
  return rs


def test_raising_function_names_function_and_sample():
  def bad(prompts, completions, completion_ids, **kw):
    return [1.0 / len(c) for c in completions]
  with pytest.raises(RuntimeError, match=r"'bad' raised ZeroDivisionError.* on sample 2 "
                     r"\(prompt 'p2', completion ''\)"):
    _set_with(bad)(["p0", "p1", "p2"], ["a", "b", ""], [[1]] * 3, {})


def test_wrong_length_and_non_finite():
  with pytest.raises(ValueError, match="'bad' returned 1 values for 2 completions"):
    _set_with(lambda **kw: [1.0])(["p", "q"], ["a", "b"], [[1]] * 2, {})
  with pytest.raises(ValueError, match=r"'bad' returned nan for sample 1 \(prompt 'q'"):
    _set_with(lambda **kw: [1.0, math.nan])(["p", "q"], ["a", "b"], [[1]] * 2, {})
