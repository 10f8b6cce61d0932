"""Scoring sampled completions with reward functions, and evaluating a policy.

`Policy` holds what the host needs to sample from a policy and score its
completions with a `RewardSet` (`alignax.agents.scoring.rewards`): the
tokenizer, stop and pad ids, the reward functions and the mesh.
`Policy.scorer(data, rows, G)` is the `score(tokens, mask)` function that
`alignax.rl.rollout` / `grpo_step` call; `evaluate` gives the held-out
greedy reward and accuracy and pass@k / mean@k of `alignax.experiments.grpo`.

`data` is a `prompt_data.PromptData` (`examples`, `prompt_ids`); completion i
of a batch belongs to `data.examples[rows[i // num_generations]]`. Not
imported by `alignax.rl` itself (it reads `alignax.agents`, which imports
`alignax.rl.batch`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import numpy as np

from alignax.agents.data import prompt_data
from alignax.agents.scoring import rewards as rewards_lib
from alignax.framework import run_records, sampling


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
  """How completions are sampled: `sampling.generate`'s options (no top-k /
  top-p when greedy)."""

  max_new_tokens: int
  temperature: float = 1.0
  top_k: int = 0        # 0: off
  top_p: float = 1.0    # 1.0: off
  compact: bool = False

  @classmethod
  def from_mapping(cls, rollout) -> "SamplingOptions":
    """From a config's `rollout` block (max_new_tokens, temperature, top_k,
    top_p, compact)."""
    return cls(rollout["max_new_tokens"], rollout["temperature"], rollout["top_k"],
               rollout["top_p"], rollout["compact"])

  def generate_options(self, policy: "Policy", temperature: Optional[float] = None) -> dict:
    """`sampling.generate` keywords at `temperature` (default: this one's)."""
    t = self.temperature if temperature is None else temperature
    return dict(max_new_tokens=self.max_new_tokens, temperature=t,
                top_k=(self.top_k or None) if t else None,
                top_p=(self.top_p if self.top_p < 1.0 else None) if t else None,
                eos_token_id=policy.stop_ids, pad_token_id=policy.pad_id, mesh=policy.mesh,
                compact=self.compact)


@dataclasses.dataclass
class Policy:
  """What the loop needs to sample from and score the policy (host side)."""

  tokenizer: Any
  stop_ids: tuple[int, ...]
  pad_id: int
  rewards: rewards_lib.RewardSet
  mesh: Any

  def score(self, data, rows, num_generations, tokens, mask):
    """(RewardResult, texts) of host `tokens`/`mask` [N, C], completion i of
    `data.examples[rows[i // num_generations]]`."""
    ids = [row[m].tolist() for row, m in zip(tokens, mask)]
    texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
    examples = [data.examples[i] for i in rows for _ in range(num_generations)]
    return self.rewards.score(examples, ids, texts), texts

  def scorer(self, data, rows, num_generations):
    """score(tokens, mask) -> rewards per function [N, F] of the completions of `rows`."""
    return _Scorer(self, data, rows, num_generations)

  def sample(self, model, data, rows, options: SamplingOptions, *, temperature,
             num_generations, seed):
    """Samples and scores completions of `rows` of `data` (evaluation):
    (RewardResult, texts)."""
    gen = sampling.generate(model, [data.prompt_ids[i] for i in rows],
                            num_generations=num_generations, seed=seed,
                            **options.generate_options(self, temperature))
    # Whole batch on every process (gathered across processes when sharded).
    tokens, mask = run_records.to_host((gen.tokens, gen.mask))
    return self.score(data, rows, num_generations, tokens, mask)


@dataclasses.dataclass(frozen=True)
class _Scorer:
  policy: Policy
  data: Any
  rows: Any
  num_generations: int

  def __call__(self, tokens, mask):
    return self.policy.score(self.data, self.rows, self.num_generations, tokens,
                             mask)[0].per_function


def rollout_metrics(rollout, names) -> dict:
  """The training metrics of a scored `alignax.rl.Rollout`: `train/reward`,
  `train/reward/<name>` (reward functions `names`), the group statistics,
  `train/completion_length`, and `perf/decode_row_steps` (the rows the decode
  ran, summed over its steps; compaction lowers it) when the sampler counts it."""
  rewards = rollout.rewards
  metrics = rewards_lib.RewardResult(rewards.per_function, rewards.total,
                                     names).metrics("train/")
  metrics.update({f"train/{k}": v for k, v in rewards.group_metrics().items()})
  gen = rollout.generation
  lengths, row_steps = run_records.to_host((gen.mask.sum(1), gen.row_steps))
  metrics["train/completion_length"] = float(lengths.mean())
  if row_steps is not None:
    metrics["perf/decode_row_steps"] = float(row_steps)
  return metrics


def split_list(value, cast=str) -> list:
  """A list option given as "a,b" (command line) or a sequence (Python)."""
  items = value.split(",") if isinstance(value, str) else list(value or ())
  return [cast(x.strip() if isinstance(x, str) else x) for x in items
          if not (isinstance(x, str) and not x.strip())]


def reward_set(functions, weights, *, max_completion_length: int,
               overlong_buffer: int = 0) -> rewards_lib.RewardSet:
  """The `RewardSet` of `functions` and `weights` (each "a,b" or a sequence;
  unknown names, files and bad weights fail here); `overlong_penalty` gets
  `max_completion_length` and `overlong_buffer` (0: a quarter of it)."""
  try:
    weights = split_list(weights, float)
  except ValueError:
    raise ValueError(f"config.reward.weights={weights!r}: give numbers"
                     " separated by commas, e.g. 1.0,0.1.") from None
  settings = {"overlong_penalty": dict(
      max_completion_length=max_completion_length,
      overlong_buffer=overlong_buffer or max(1, max_completion_length // 4))}
  return rewards_lib.RewardSet(split_list(functions), weights, settings)


def accuracy_index(name: str, rewards: rewards_lib.RewardSet) -> int:
  """The reward function that `evaluate` counts as accuracy (`''`: the first)."""
  if not name:
    return 0
  if name not in rewards.names:
    raise ValueError(f"config.eval.accuracy_reward={name!r} is not one of the reward"
                     f" functions {list(rewards.names)}.")
  return rewards.names.index(name)


def evaluate(model, policy: Policy, data, options: SamplingOptions, *, size: int,
             batch_size: int, log_samples: int, num_samples: int, accuracy: int,
             seed: int, step: int):
  """Greedy reward/accuracy and pass@k / mean@k (k = `num_samples`, sampled at
  `options.temperature`; 0: none) on the first `size` rows of `data` (0: all).

  Returns (metrics, samples): `eval/reward`, `eval/reward/<name>`,
  `eval/accuracy` (reward function `accuracy` >= 1), `eval/pass@k`,
  `eval/mean@k`; and the first `log_samples` greedy (prompt, completion,
  rewards) records.
  """
  n = len(data) if not size else min(size, len(data))
  greedy, per_k, samples = [], [], []
  for lo in range(0, n, batch_size):
    rows = np.arange(lo, min(n, lo + batch_size))
    result, texts = policy.sample(model, data, rows, options, temperature=0.0,
                                  num_generations=1, seed=0)
    greedy.append(result)
    for j in range(min(len(rows), log_samples - len(samples))):
      ex = data.examples[rows[j]]
      samples.append({"prompt": prompt_data.prompt_key(ex.prompt), "completion": texts[j],
                      "ground_truth": ex.ground_truth, "reward": result.total[j],
                      **{f"reward/{k}": result.per_function[j, i]
                         for i, k in enumerate(result.names)}})
    if num_samples:
      key = jax.random.fold_in(jax.random.key(seed + 1), step * 100003 + lo)
      result_k, _ = policy.sample(model, data, rows, options,
                                  temperature=options.temperature,
                                  num_generations=num_samples, seed=key)
      per_k.append(result_k.per_function[:, accuracy].reshape(len(rows), num_samples))
  result = rewards_lib.RewardResult(
      np.concatenate([g.per_function for g in greedy]),
      np.concatenate([g.total for g in greedy]), greedy[0].names)
  metrics = result.metrics("eval/")
  metrics["eval/accuracy"] = float(
      np.mean(np.nan_to_num(result.per_function[:, accuracy]) >= 1.0))
  if per_k:
    correct = np.nan_to_num(np.concatenate(per_k)) >= 1.0
    metrics[f"eval/pass@{num_samples}"] = float(correct.any(axis=1).mean())
    metrics[f"eval/mean@{num_samples}"] = float(correct.mean())
  return metrics, samples
