"""The GRPO group batch: one typed pytree from prompts + completions + rewards.

`make_group_batch` is the one place where sampled completions and their rewards
become what a GRPO-family update trains on (docs/algorithms.md §2.1):

1. `combine_rewards`: rewards per function [N, F] -> one reward per completion
   [N], `sum_k w_k R[:, k]` over the functions that scored it (a function that
   returned None, NaN here, counts 0); NaN where *every* function returned None
   (an unscorable completion). TRL's `GRPOTrainer` does the same.
2. An unscorable completion carries no signal: the estimator leaves it out of
   its group's mean and std (and the batch std), and its advantage is 0. TRL
   1.16 does the same (NaN rows, `nanmean`/`nanstd`); filling it with its
   group's mean instead would keep the mean but shrink the std.
3. An advantage estimator of `objectives.ADVANTAGE_ESTIMATORS`, chosen by name
   ("grpo", "dr_grpo", "rloo", "f_grpo"), with the options it takes.

Layout (TRL's): N = prompts x G rows, the G completions of one prompt
contiguous. This module imports only jax, NumPy and `alignax.objectives`, so
`alignax.framework.train` can take a `GroupBatch` without a cycle; the step
that samples and updates is `alignax.rl.step`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from alignax import objectives


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GroupBatch:
  """What a GRPO-family update trains on: N rows, G-row groups contiguous.

  L = P + C (P prompt tokens, left-padded; C completion tokens, right-padded).

  sequences:         int32 [N, L], prompt + completion token ids.
  attention_mask:    bool [N, L], real tokens of `sequences`.
  completion_tokens: int32 [N, C], the sampled tokens (= sequences[:, P:]).
  completion_mask:   bool [N, C], True up to and including the stop token.
  old_logprobs:      float32 [N, C], log-probs of the sampled tokens under the
                     behaviour policy: the sampler's (on-policy), or the
                     trainer's before the update when `sampling_logprobs` is
                     set; or None: the trainer's own at update time
                     (`stop_gradient` of the current log-probs, valid for one
                     update per batch, TRL's num_iterations == 1).
  advantages:        float32 [N], one per completion (0 for unscorable ones).
  rewards:           float32 [N, F] per reward function (NaN: the function
                     returned None), or None; kept for logging, the loss does
                     not read it.
  ref_logprobs:      float32 [N, C] under the KL reference policy, or None
                     (needed when the loss's beta > 0).
  sampling_logprobs: float32 [N, C], the sampler's log-probs when the sampler
                     was not the policy being trained (one-step off-policy
                     rollouts, `alignax.rl.off_policy_batch`), or None. With it
                     the loss weights each token by the truncated importance
                     weight from sampler to trainer
                     (`objectives.sampling_importance_weights`).

  A pytree (fields that are None are empty subtrees), so it passes through
  `jax.jit`, `jax.tree.map` and `jax.device_put` whole.
  """

  sequences: jax.Array
  attention_mask: jax.Array
  completion_tokens: jax.Array
  completion_mask: jax.Array
  old_logprobs: Optional[jax.Array]
  advantages: jax.Array
  rewards: Optional[jax.Array] = None
  ref_logprobs: Optional[jax.Array] = None
  sampling_logprobs: Optional[jax.Array] = None

  @property
  def num_rows(self) -> int:
    return self.completion_tokens.shape[0]

  def replace(self, **changes) -> "GroupBatch":
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_mapping(cls, batch: Mapping[str, Any]) -> "GroupBatch":
    """A `GroupBatch` from the older string-keyed layout (same key names)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(batch) - names)
    if unknown:
      raise KeyError(f"unknown group batch key(s) {unknown}; a GroupBatch has {sorted(names)}.")
    return cls(**batch)


def as_group_batch(batch) -> GroupBatch:
  """`batch` if it is a `GroupBatch`, else `GroupBatch.from_mapping(batch)`."""
  return batch if isinstance(batch, GroupBatch) else GroupBatch.from_mapping(batch)


def combine_rewards(rewards_per_function, weights=None) -> np.ndarray:
  """One reward per completion [N] from rewards per function [N, F] (host).

  `sum_k w_k R[n, k]` over the functions that scored row n (NaN entries, a
  function's None, count 0); NaN where every function returned None. A 1-D
  [N] input is one function. weights: [F], default all 1.

  >>> r = np.array([[1.0, 0.5], [np.nan, 1.0], [np.nan, np.nan]], np.float32)
  >>> combine_rewards(r, [1.0, 0.1])
  array([1.05, 0.1 ,  nan], dtype=float32)
  """
  per = _per_function(rewards_per_function)
  w = (np.ones(per.shape[1], np.float32) if weights is None
       else np.asarray(weights, np.float32))
  if w.shape != (per.shape[1],):
    raise ValueError(f"{w.shape[0] if w.ndim == 1 else w.shape} reward weights for"
                     f" {per.shape[1]} reward functions; give one weight per function.")
  scored = ~np.isnan(per)
  total = np.where(scored, per * w, 0.0).sum(axis=1).astype(np.float32)
  total[~scored.any(axis=1)] = np.nan
  return total


class GroupRewards(NamedTuple):
  """The rewards of a group batch, on the host (NumPy).

  per_function: float32 [N, F] (NaN: the function returned None).
  total:        float32 [N], `combine_rewards` (NaN: unscorable); what the
                advantage estimator sees.
  unscorable:   bool [N].
  group_size:   G.
  """
  per_function: np.ndarray
  total: np.ndarray
  unscorable: np.ndarray
  group_size: int

  def group_metrics(self) -> dict[str, float]:
    """`reward_std_in_group` (mean over groups of the std of their scorable
    rewards, ddof 0; groups with none left out) and `solved_groups` (share of
    groups with a scorable reward > 0)."""
    grouped = self.total.reshape(-1, self.group_size)
    scored = ~np.isnan(grouped)
    has_any = scored.any(axis=1)
    with np.errstate(all="ignore"):
      std = np.nanstd(grouped[has_any], axis=1)
    solved = np.where(scored, grouped, -np.inf).max(axis=1) > 0
    return {"reward_std_in_group": float(std.mean()) if has_any.any() else 0.0,
            "solved_groups": float(solved.mean())}


def group_rewards(rewards_per_function, weights=None, *, group_size: int) -> GroupRewards:
  """`combine_rewards`, with the unscorable rows and the group size (host)."""
  per = _per_function(rewards_per_function)
  if per.shape[0] % group_size:
    raise ValueError(f"{per.shape[0]} completions are not whole groups of"
                     f" group_size={group_size}.")
  total = combine_rewards(per, weights)
  return GroupRewards(per, total, np.isnan(total), group_size)


def group_advantages(rewards: GroupRewards, *, advantage: str = "grpo",
                     advantage_options: Optional[Mapping[str, Any]] = None) -> jax.Array:
  """Advantages [N] of `rewards.total` by the estimator registered as
  `advantage` (called with the `advantage_options` it takes, see
  `objectives.accepted_options`); the estimators leave unscorable (NaN) rows
  out of their statistics, and those rows get 0."""
  estimator = objectives.ADVANTAGE_ESTIMATORS[advantage]
  adv = estimator(jnp.asarray(rewards.total), rewards.group_size,
                  **objectives.accepted_options(estimator, advantage_options or {}))
  if rewards.unscorable.any():
    adv = jnp.where(jnp.asarray(rewards.unscorable), 0.0, adv)
  return adv


def make_group_batch(generation, rewards, *, group_size: int, weights=None,
                     advantage: str = "grpo",
                     advantage_options: Optional[Mapping[str, Any]] = None,
                     ref_logprobs=None) -> GroupBatch:
  """The `GroupBatch` of sampled completions and their rewards.

  Args:
    generation: the sampler's output (`alignax.framework.sampling.Generation`,
      or anything with its `sequences`, `attention_mask`, `tokens`, `mask` and
      `logprobs`), N = prompts x group_size rows, groups contiguous.
    rewards: rewards per function [N, F] or [N] (NaN where a function returned
      None), or a `GroupRewards` already made by `group_rewards`.
    group_size: G, completions per prompt.
    weights: [F] reward weights (default all 1; ignored for a `GroupRewards`).
    advantage: a name of `objectives.ADVANTAGE_ESTIMATORS`.
    advantage_options: options for it, e.g. {"scale": "group"}; those it does
      not take are dropped.
    ref_logprobs: [N, C] under the KL reference, or None.

  Returns:
    A `GroupBatch`; rewards combine and unscorable completions are handled as
    in `group_rewards` and `group_advantages`.
  """
  if not isinstance(rewards, GroupRewards):
    rewards = group_rewards(rewards, weights, group_size=group_size)
  elif rewards.group_size != group_size:
    raise ValueError(f"rewards were grouped by {rewards.group_size}, not {group_size}.")
  if rewards.per_function.shape[0] != generation.tokens.shape[0]:
    raise ValueError(f"{rewards.per_function.shape[0]} rewards for"
                     f" {generation.tokens.shape[0]} completions.")
  advantages = group_advantages(rewards, advantage=advantage,
                                advantage_options=advantage_options)
  return GroupBatch(
      sequences=generation.sequences, attention_mask=generation.attention_mask,
      completion_tokens=generation.tokens, completion_mask=generation.mask,
      old_logprobs=generation.logprobs, advantages=advantages,
      rewards=jnp.asarray(rewards.per_function), ref_logprobs=ref_logprobs)


def _per_function(rewards) -> np.ndarray:
  per = np.asarray(rewards, np.float32)
  if per.ndim == 1:
    per = per[:, None]
  if per.ndim != 2:
    raise ValueError(f"rewards must be [N] or [N, F] (per function), got shape {per.shape}.")
  return per
