"""Example user reward functions, TRL's calling convention.

  --config.reward.functions=exact_match,examples/my_rewards.py:digits_only
"""


def _text(completion):
  # A string for plain prompts; [{"role": "assistant", "content": ...}] for chats.
  return completion if isinstance(completion, str) else completion[0]["content"]


def digits_only(prompts, completions, completion_ids, num_digits, **kwargs):
  """1.0 if the completion is exactly `num_digits` digits (a format reward);
  `num_digits` is a column of examples/reverse.jsonl."""
  return [float(_text(c).strip().isdigit() and len(_text(c).strip()) == n)
          for c, n in zip(completions, num_digits)]
