r"""Reward functions with TRL's calling convention, built-ins and user functions.

A reward function is called as TRL's `GRPOTrainer` calls it, so TRL's own
functions (`trl.rewards.accuracy_reward`, `think_format_reward`, ...) run
unchanged:

  fn(prompts, completions, completion_ids, **columns) -> list[float | None]

for N completions: `prompts` [N] (each a string, or a list of `{"role",
"content"}` messages for conversational data), `completions` [N] (a string, or
`[{"role": "assistant", "content": text}]` for conversational data),
`completion_ids` [N] token-id lists, and every other dataset column as a list
of N values (`ground_truth`: the normalised gold answer, see
`agents.data.prompt_data`). `None` means "no reward from this function for that
sample": it is left out of that function's mean, counts 0 in the weighted sum,
and a sample for which every function returns None gets advantage 0 (TRL).

Names a config can use (`--config.reward.functions=a,b`):
  * a registered built-in: `exact_match`, `math_accuracy`, `think_format`,
    `boxed_format`, `overlong_penalty` (see `REWARDS`);
  * `path/to/file.py:fn`, a function in a Python file;
  * `package.module:fn`, a function in an importable module.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import inspect
import math
import os
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from alignax.registry import Registry
from alignax.rl import batch as rl_batch

RewardFn = Callable[..., Sequence[Any]]

# name -> reward function with TRL's signature.
REWARDS = Registry("reward function")


def completion_text(completion) -> str:
  """The text of a completion: a string, or the content of its last message."""
  if isinstance(completion, str):
    return completion
  return completion[-1]["content"]


def _ground_truths(kwargs):
  gt = kwargs.get("ground_truth")
  if gt is None:
    raise ValueError(
        "this reward needs the gold answer (the `ground_truth` column, set by the"
        " dataset formats from data.answer_field / gsm8k / math / verl); the dataset"
        " has none.")
  return gt


@REWARDS.register("exact_match")
def exact_match(prompts, completions, completion_ids, **kwargs):
  """1.0 if the completion text, stripped, equals the gold answer, else 0.0
  (None where the row has no gold answer)."""
  del prompts, completion_ids
  return [None if gt is None else float(completion_text(c).strip() == str(gt).strip())
          for c, gt in zip(completions, _ground_truths(kwargs))]


@functools.lru_cache(maxsize=4096)
def _parse_gold(gt: str):
  import math_verify  # pylint: disable=g-import-not-at-top
  parsed = math_verify.parse(gt)
  return parsed or math_verify.parse(f"${gt}$")


@REWARDS.register("math_accuracy")
def math_accuracy(prompts, completions, completion_ids, **kwargs):
  r"""1.0 if the completion's answer equals the gold answer mathematically.

  Uses `math-verify` (as TRL's `accuracy_reward`): the completion's answer is the
  last `\boxed{...}`, LaTeX expression or number (so `#### 42`, `\frac{1}{2}`,
  `1/2`, `0.5` and `1,000` all work); the gold answer is parsed the same way.
  None where the gold answer cannot be parsed.
  """
  import math_verify  # pylint: disable=g-import-not-at-top
  del prompts, completion_ids
  out = []
  for c, gt in zip(completions, _ground_truths(kwargs)):
    gold = _parse_gold(str(gt)) if gt is not None else None
    if not gold:
      out.append(None)
      continue
    out.append(float(math_verify.verify(gold, math_verify.parse(completion_text(c)))))
  return out


_THINK = re.compile(r"^\s*<think>(?!.*<think>).*?</think>\s*\S", re.DOTALL)
_BOXED = re.compile(r"\\boxed\{.+?\}", re.DOTALL)


@REWARDS.register("think_format")
def think_format(prompts, completions, completion_ids, **kwargs):
  """1.0 for `<think>...</think>` followed by a non-empty answer, else 0.0."""
  del prompts, completion_ids, kwargs
  return [float(bool(_THINK.match(completion_text(c)))) for c in completions]


@REWARDS.register("boxed_format")
def boxed_format(prompts, completions, completion_ids, **kwargs):
  r"""1.0 if the completion puts an answer in `\boxed{...}`, else 0.0."""
  del prompts, completion_ids, kwargs
  return [float(bool(_BOXED.search(completion_text(c)))) for c in completions]


@REWARDS.register("overlong_penalty")
def overlong_penalty(prompts, completions, completion_ids, *, max_completion_length: int,
                     overlong_buffer: int, **kwargs):
  """DAPO's soft overlong punishment (Yu et al., 2025, eq. 13; TRL's
  `get_soft_overlong_punishment`): 0 up to `L - buffer` tokens, then linearly
  down to -1 at `L = max_completion_length`, -1 beyond."""
  del prompts, completions, kwargs
  start = max_completion_length - overlong_buffer
  out = []
  for ids in completion_ids:
    n = len(ids)
    if n <= start:
      out.append(0.0)
    elif n <= max_completion_length:
      out.append((start - n) / overlong_buffer)
    else:
      out.append(-1.0)
  return out


def _load_file_function(path: str, fn_name: str, spec: str):
  if os.path.isdir(path):
    raise FileNotFoundError(f"Reward function {spec!r}: {path!r} is a directory; give"
                            " a Python file, path/to/file.py:function.")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Reward function {spec!r}: no file {path!r}.")
  module_name = "_alignax_reward_" + re.sub(r"\W", "_", os.path.abspath(path))
  module_spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:
    raise ImportError(f"Reward function {spec!r}: importing {path!r} failed: {e!r}") from e
  return module


def resolve(spec: str) -> tuple[str, RewardFn]:
  """Returns (name, function) for a registered name, `file.py:fn` or `pkg.mod:fn`.

  Raises (before anything is compiled) a `ValueError`/`KeyError` listing the
  registered names for an unknown name, `FileNotFoundError` for a missing file,
  `ImportError` for a module that does not import, `AttributeError` if the
  function is not in it.
  """
  spec = spec.strip()
  if ":" not in spec:
    return spec, REWARDS[spec]
  where, _, fn_name = spec.rpartition(":")
  if where.endswith(".py") or os.sep in where or "/" in where:
    module = _load_file_function(where, fn_name, spec)
  else:
    try:
      module = importlib.import_module(where)
    except ImportError as e:
      raise ImportError(f"Reward function {spec!r}: cannot import module {where!r}: {e}") from e
  fn = getattr(module, fn_name, None)
  if fn is None or not callable(fn):
    public = sorted(n for n, v in vars(module).items()
                    if callable(v) and not n.startswith("_") and inspect.isfunction(v))
    raise AttributeError(f"Reward function {spec!r}: {where!r} has no function {fn_name!r}"
                         f" (it defines: {public}).")
  return fn_name, fn


def _short(x, limit: int = 200) -> str:
  s = repr(x)
  return s if len(s) <= limit else s[:limit] + "..."


@dataclasses.dataclass
class RewardResult:
  """Rewards of N completions from F functions.

  per_function: float32 [N, F], NaN where a function returned None.
  total: float32 [N], the weighted sum over functions (None counts 0); NaN
    where every function returned None (an unscorable sample); see
    `alignax.rl.combine_rewards`.
  """

  per_function: np.ndarray
  total: np.ndarray
  names: tuple[str, ...]

  def metrics(self, prefix: str) -> dict[str, float]:
    """`{prefix}reward` (mean of total over scorable samples) and
    `{prefix}reward/<name>` (each function's mean over the samples it scored)."""
    def nanmean(x):
      return float(np.mean(x[~np.isnan(x)])) if np.any(~np.isnan(x)) else float("nan")
    out = {f"{prefix}reward": nanmean(self.total)}
    for i, name in enumerate(self.names):
      out[f"{prefix}reward/{name}"] = nanmean(self.per_function[:, i])
    return out


class RewardSet:
  """Weighted reward functions, called as TRL calls them, with checked outputs.

  Args:
    specs: names (see `resolve`).
    weights: one per function, or empty for all 1.0.
    settings: `{name: {keyword: value}}` bound to the function of that name
      (e.g. `overlong_penalty`'s `max_completion_length`, `overlong_buffer`).
  """

  def __init__(self, specs: Sequence[str], weights: Sequence[float] = (),
               settings: Mapping[str, Mapping[str, Any]] | None = None):
    specs = [s for s in specs if s.strip()]
    if not specs:
      raise ValueError("config.reward.functions is empty; name at least one reward function"
                       f" (registered: {sorted(REWARDS)}, or path/to/file.py:fn).")
    weights = list(weights) or [1.0] * len(specs)
    if len(weights) != len(specs):
      raise ValueError(
          f"config.reward.weights has {len(weights)} values but config.reward.functions"
          f" names {len(specs)} functions ({', '.join(specs)}); give one weight per"
          " function, or none for all 1.0.")
    if not all(math.isfinite(w) for w in weights):
      raise ValueError(f"config.reward.weights must be finite numbers, got {weights}.")
    settings = settings or {}
    self.names, self.functions = [], []
    for spec in specs:
      name, fn = resolve(spec)
      if name in self.names:
        raise ValueError(f"Reward function {name!r} is named twice in config.reward.functions.")
      if settings.get(name):
        fn = functools.partial(fn, **settings[name])
      self.names.append(name)
      self.functions.append(fn)
    self.names = tuple(self.names)
    self.weights = np.asarray(weights, np.float32)

  def _call_one(self, i: int, prompts, completions, completion_ids, columns):
    name, fn = self.names[i], self.functions[i]
    try:
      values = list(fn(prompts=prompts, completions=completions,
                       completion_ids=completion_ids, **columns))
    except Exception as e:  # pylint: disable=broad-except
      sample = self._failing_sample(fn, prompts, completions, completion_ids, columns)
      where = (f" on sample {sample} (prompt {_short(prompts[sample])}, completion"
               f" {_short(completions[sample])})" if sample is not None else "")
      raise RuntimeError(f"Reward function {name!r} raised {e!r}{where}.") from e
    n = len(prompts)
    if len(values) != n:
      raise ValueError(f"Reward function {name!r} returned {len(values)} values for {n}"
                       " completions; it must return one per completion.")
    out = np.empty(n, np.float32)
    for j, v in enumerate(values):
      try:
        out[j] = np.nan if v is None else float(v)
      except (TypeError, ValueError):
        raise TypeError(f"Reward function {name!r} returned {v!r} for sample {j}; expected a"
                        " float or None.") from None
      if v is not None and not np.isfinite(out[j]):
        raise ValueError(
            f"Reward function {name!r} returned {v!r} for sample {j} (prompt"
            f" {_short(prompts[j])}, completion {_short(completions[j])}); rewards must be"
            " finite (return None to skip a sample).")
    return out

  @staticmethod
  def _failing_sample(fn, prompts, completions, completion_ids, columns):
    """Index of the first sample the function raises on alone (None if none)."""
    for j in range(len(prompts)):
      try:
        fn(prompts=prompts[j:j + 1], completions=completions[j:j + 1],
           completion_ids=completion_ids[j:j + 1],
           **{k: v[j:j + 1] for k, v in columns.items()})
      except Exception:  # pylint: disable=broad-except
        return j
    return None

  def __call__(self, prompts: Sequence, completions: Sequence,
               completion_ids: Sequence[Sequence[int]],
               columns: Mapping[str, Sequence]) -> RewardResult:
    """Scores N completions; `columns` are lists of N values each."""
    per = np.stack([self._call_one(i, list(prompts), list(completions), list(completion_ids),
                                   {k: list(v) for k, v in columns.items()})
                    for i in range(len(self.functions))], axis=1)
    return RewardResult(per, rl_batch.combine_rewards(per, self.weights), self.names)

  def score(self, examples: Sequence, completion_ids: Sequence[Sequence[int]],
            texts: Sequence[str]) -> RewardResult:
    """Scores completion i of `examples[i]` (an `agents.data.prompt_data.Example`,
    repeated per completion), passing prompts, completions and columns as TRL
    does: a conversational prompt gets `[{"role": "assistant", "content": text}]`
    completions, a string prompt gets the text."""
    if not len(examples) == len(completion_ids) == len(texts):
      raise ValueError(f"{len(examples)} examples, {len(completion_ids)} completion id"
                       f" lists and {len(texts)} texts; expected one of each per completion.")
    completions = [[{"role": "assistant", "content": t}] if ex.is_conversational else t
                   for ex, t in zip(examples, texts)]
    keys = dict.fromkeys(k for ex in examples for k in ex.columns)
    columns = {k: [ex.columns.get(k) for ex in examples] for k in keys}
    return self([ex.prompt for ex in examples], completions, completion_ids, columns)
