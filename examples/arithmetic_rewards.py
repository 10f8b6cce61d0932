"""Rewards of the arithmetic tasks (examples/make_arithmetic.py), in TRL's
calling convention: TRL's `GRPOTrainer(reward_funcs=[last_number_correct])`
and `--config.reward.functions=examples/arithmetic_rewards.py:last_number_correct`
call the same function unchanged.
"""
import re

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _text(completion):
  # A string for plain prompts; [{"role": "assistant", "content": ...}] for chats.
  return completion if isinstance(completion, str) else completion[-1]["content"]


def last_number(text: str):
  """The last number in `text` (commas dropped), or None."""
  found = _NUMBER.findall(text)
  return found[-1].replace(",", "") if found else None


def last_number_correct(prompts, completions, answer, **kwargs):
  """1.0 if the last number in the completion equals the `answer` column."""
  out = []
  for c, a in zip(completions, answer):
    got = last_number(_text(c))
    try:
      out.append(float(got is not None and float(got) == float(a)))
    except ValueError:
      out.append(0.0)
  return out


def has_number(prompts, completions, **kwargs):
  """1.0 if the completion states a number at all: the well-formed share, so a
  gain in accuracy can be told apart from a gain in format."""
  return [float(last_number(_text(c)) is not None) for c in completions]
