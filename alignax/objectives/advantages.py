"""Advantage estimators of the GRPO family (docs/algorithms.md §2.1, §3, §4).

Layout: `N = P * G` rows, groups of `G = group_size` contiguous rows share a
prompt (TRL layout). Every estimator of `ADVANTAGE_ESTIMATORS` ("grpo",
"dr_grpo", "rloo", "f_grpo") has one call shape,
`fn(rewards [N], group_size, **params) -> [N]`, so a config picks one by name;
the step- and token-level estimators (GiGPO, TreeRPO, EMPG, REINFORCE++) take
their own inputs and are called by name directly.
"""
from typing import Optional, Tuple, Union

import chex
import jax
import jax.numpy as jnp

from alignax.objectives import primitives as P
from alignax.objectives.registries import register_advantage_estimator

# TRL adds 1e-4 to the std, outside the square root.
TRL_STD_EPS = 1e-4


def _scale_name(scale: Union[str, bool]) -> str:
  if scale is True:
    return "group"
  if scale is False:
    return "none"
  if scale not in ("group", "batch", "none"):
    raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
  return scale


@register_advantage_estimator("grpo")
def grpo_advantages(rewards: jax.Array, group_size: int, *,
                    scale: Union[str, bool] = "group",
                    eps: float = TRL_STD_EPS) -> jax.Array:
  """Group-relative advantages exactly as TRL 1.16 (docs/algorithms.md §2.1).

  `A = (r - nanmean_group r) / (s + eps)` with `s` the ddof=1 NaN-aware std of
  the group ("group"), of the whole batch ("batch", still the *group* mean),
  or no division ("none", = Dr. GRPO). NaN rewards (unscorable rows) are left
  out of the statistics and get advantage 0; groups with one scorable row get 0.
  Zero-std groups give exactly 0 (no NaN). An infinite reward is an error
  (`primitives.infinite_groups`: raised outside jit, NaN advantages for its
  group under jit). Paper: Shao et al. 2024
  (DeepSeekMath, arXiv:2402.03300). Source: TRL
  `GRPOTrainer._generate_and_score_completions`.

  Args:
    rewards: `[N]` rewards (NaN = unscorable).
    group_size: `G`, static; `N % G == 0`.
    scale: "group" | "batch" | "none", or True ("group") / False ("none").
    eps: added to the std (TRL: 1e-4).

  Returns:
    `[N]` advantages.

  Example:
    >>> r = jnp.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])  # two groups of 3
    >>> print(grpo_advantages(r, 3))  # the second group is all equal: 0
    [ 1.1545 -0.5773 -0.5773  0.      0.      0.    ]
    >>> print(grpo_advantages(r, 3, scale="none"))
    [ 0.6667 -0.3333 -0.3333  0.      0.      0.    ]
    >>> print(grpo_advantages(jnp.array([1.0, jnp.nan, 0.0, 0.5]), 2))  # NaN: unscorable
    [ 0.      0.     -0.7069  0.7069]
  """
  scale = _scale_name(scale)
  r = P.as_float(rewards)
  P.check_rank("rewards", r, 1)
  bad = P.infinite_groups(r, group_size)
  adv = r - P.nan_group_mean(r, group_size)
  if scale == "group":
    adv = adv / (P.nan_group_std(r, group_size) + eps)
  elif scale == "batch":
    std = P.nanstd(r) if r.shape[0] > 1 else jnp.zeros((), r.dtype)
    adv = adv / (std + eps)
  return jnp.where(bad, jnp.nan, jnp.nan_to_num(adv, nan=0.0))


@register_advantage_estimator("dr_grpo")
def dr_grpo_advantages(rewards: jax.Array, group_size: int) -> jax.Array:
  """Dr. GRPO: `A = r - group_mean(r)`, no std division (arXiv:2503.20783).

  Equal to `grpo_advantages(scale="none")` (TRL `scale_rewards="none"`).

  Example:
    >>> print(dr_grpo_advantages(jnp.array([1.0, 0.0, 0.0, 0.0]), 2))
    [ 0.5 -0.5  0.   0. ]
  """
  return grpo_advantages(rewards, group_size, scale="none")


def grpo_advantages_multi(rewards_per_func: jax.Array, weights: jax.Array,
                          group_size: int, *,
                          aggregation: str = "sum_then_normalize",
                          scale: Union[str, bool] = "group",
                          eps: float = TRL_STD_EPS) -> jax.Array:
  """GRPO advantages from several reward functions (docs/algorithms.md §2.1).

  "sum_then_normalize" (TRL default): `r = nansum_k w_k R[:, k]` (NaN if every
  function returned NaN for the row), then `grpo_advantages(r)`.
  "normalize_then_sum" (GDPO): normalise each function within the group,
  `(R_k - mean_k)/(std_k + eps)`, weighted nansum, then batch-normalise
  `(r - nanmean r)/(nanstd r + eps)`.

  Args:
    rewards_per_func: `[N, F]` (NaN = function did not score the row).
    weights: `[F]` reward weights.
    group_size: `G`.
    aggregation: "sum_then_normalize" | "normalize_then_sum".
    scale: passed to `grpo_advantages` for "sum_then_normalize".
    eps: std epsilon.

  Returns:
    `[N]` advantages.

  Example:
    >>> R = jnp.array([[1.0, 0.5], [0.0, jnp.nan], [1.0, 1.0], [jnp.nan, jnp.nan]])
    >>> w = jnp.array([1.0, 0.1])
    >>> print(grpo_advantages_multi(R, w, 2))  # sums 1.05 and 0.0; 1.1 and NaN
    [ 0.707 -0.707  0.     0.   ]
    >>> print(grpo_advantages_multi(R, w, 2, aggregation="normalize_then_sum"))
    [ 0.9999 -0.9999  0.      0.    ]
  """
  R = P.as_float(rewards_per_func)
  P.check_rank("rewards_per_func", R, 2)
  w = P.as_float(weights, R.dtype)
  P.check_shape("weights", w, (R.shape[1],), f" (one per reward function of"
                f" rewards_per_func {R.shape})")
  P.infinite_groups(R, group_size, "rewards_per_func")  # raises outside jit
  unscorable = jnp.all(jnp.isnan(R), axis=1)
  if aggregation == "sum_then_normalize":
    r = jnp.nansum(R * w[None], axis=1)
    r = jnp.where(unscorable, jnp.nan, r)
    return grpo_advantages(r, group_size, scale=scale, eps=eps)
  if aggregation != "normalize_then_sum":
    raise ValueError(f"unknown aggregation {aggregation!r}")
  g = R.reshape(-1, group_size, R.shape[1])
  mean_k = P.nanmean(g, axis=1, keepdims=True)
  std_k = (P.nanstd(g, axis=1, keepdims=True) if group_size > 1
           else jnp.zeros_like(mean_k))
  r = jnp.nansum(((g - mean_k) / (std_k + eps)).reshape(R.shape) * w[None], 1)
  r = jnp.where(unscorable, jnp.nan, r)
  std = P.nanstd(r) if r.shape[0] > 1 else jnp.zeros((), r.dtype)
  return jnp.nan_to_num((r - P.nanmean(r)) / (std + eps), nan=0.0)


@register_advantage_estimator("rloo")
def rloo_advantages(rewards: jax.Array, group_size: int, *,
                    normalize: bool = False,
                    eps: float = TRL_STD_EPS) -> jax.Array:
  """REINFORCE leave-one-out advantages (docs/algorithms.md §3.1).

  `b_n = (sum_{j in g(n)} r_j - r_n) / (c - 1)` with `c` the non-NaN count of
  the group; `A = r - b`, equal to `G/(G-1) (r - mean_g r)` without NaNs.
  `normalize=True` whitens over the batch `(A - nanmean A)/(nanstd A + eps)`.
  NaN rows and groups with one scorable row get 0; `G == 1` gives zeros.
  Paper: Ahmadian et al. 2024 (arXiv:2402.14740). Source: TRL
  `RLOOTrainer._generate_and_score_completions`.

  Args:
    rewards: `[N]`.
    group_size: `G`.
    normalize: TRL `normalize_advantages` (default False).
    eps: std epsilon of the optional whitening.

  Returns:
    `[N]` advantages.

  Example:
    >>> r = jnp.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])  # r minus the mean of the others
    >>> print(rloo_advantages(r, 3))
    [ 1.  -0.5 -0.5  0.   0.   0. ]
  """
  r = P.as_float(rewards)
  bad = P.infinite_groups(r, group_size)
  if group_size == 1:
    return jnp.where(bad, jnp.nan, jnp.zeros_like(r))
  g = P.group_view(r, group_size, "rewards")
  count = jnp.sum(~jnp.isnan(g), axis=1, keepdims=True).astype(r.dtype)
  total = jnp.nansum(g, axis=1, keepdims=True)
  adv = (r - ((total - g) / (count - 1)).reshape(-1))
  if normalize:
    adv = (adv - P.nanmean(adv)) / (P.nanstd(adv) + eps)
  return jnp.where(bad, jnp.nan, jnp.nan_to_num(adv, nan=0.0, posinf=0.0, neginf=0.0))


def kl_penalized_rewards(rewards: jax.Array, old_logp: jax.Array,
                         ref_logp: jax.Array, mask: jax.Array,
                         beta: float) -> jax.Array:
  """TRL RLOO reward shaping: `r - beta * sum_t (old_logp - ref_logp) m` (k1).

  Args:
    rewards: `[N]`. old_logp, ref_logp, mask: `[N, T]`. beta: KL coefficient.

  Returns:
    `[N]` shaped rewards.

  Example:
    >>> old = jnp.array([[-1.0, -2.0], [-1.0, -1.0]])
    >>> ref = jnp.array([[-1.5, -2.0], [-1.0, -3.0]])
    >>> print(kl_penalized_rewards(jnp.array([1.0, 0.0]), old, ref, jnp.ones((2, 2)), 0.1))
    [ 0.95 -0.2 ]
  """
  P.check_same_shape(old_logp=old_logp, ref_logp=ref_logp, mask=mask)
  kl = P.masked_sum(P.as_float(old_logp) - P.as_float(ref_logp), mask, axis=-1)
  return P.as_float(rewards) - beta * kl


# --------------------------------------------------------------------------
# DAPO (arXiv:2503.14476), docs/algorithms.md §3.3


def dynamic_sampling_filter(rewards: jax.Array, group_size: int) -> jax.Array:
  """DAPO dynamic sampling: keep groups whose rewards are not all equal.

  `keep[p] = max_g r > min_g r` over the non-NaN rewards of prompt `p` (exact
  float compare; a group with < 2 scorable rows is dropped).

  Args:
    rewards: `[N]`.
    group_size: `G`.

  Returns:
    `[P]` bool, True = keep the group.

  Example:
    >>> print(dynamic_sampling_filter(jnp.array([1.0, 1.0, 0.0, 1.0, jnp.nan, 0.0]), 2))
    [False  True False]
  """
  g = P.group_view(rewards, group_size)
  valid = ~jnp.isnan(g)
  hi = jnp.max(jnp.where(valid, g, -jnp.inf), axis=1)
  lo = jnp.min(jnp.where(valid, g, jnp.inf), axis=1)
  return hi > lo


def overlong_reward_penalty(lengths: jax.Array, max_len: int,
                            cache_len: int) -> jax.Array:
  """DAPO soft overlong punishment, added to the task reward (§3.3).

  ```
  R_len = 0                               if |y| <= L_max - L_cache
        = ((L_max - L_cache) - |y|)/L_cache if L_max - L_cache < |y| <= L_max
        = -1                              if |y| > L_max
  ```

  Args:
    lengths: `[N]` completion lengths.
    max_len: `L_max`.
    cache_len: `L_cache` (soft buffer), > 0.

  Returns:
    `[N]` penalties in `[-1, 0]`.

  Example:
    >>> print(overlong_reward_penalty(jnp.array([10, 14, 16, 20]), max_len=16, cache_len=4))
    [ 0.  -0.5 -1.  -1. ]
  """
  n = P.as_float(lengths)
  start = max_len - cache_len
  soft = (start - n) / cache_len
  return jnp.where(n <= start, 0.0, jnp.where(n <= max_len, soft, -1.0))


# --------------------------------------------------------------------------
# REINFORCE++ (arXiv:2501.03262), docs/algorithms.md §3.2 [INFERRED]


def masked_whiten(x: jax.Array, mask: jax.Array, eps: float = 1e-8):
  """`(x - mean) / sqrt(var + eps)` over active entries (ddof 0, OpenRLHF).

  Example:
    >>> x = jnp.array([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    >>> mask = jnp.array([[1, 1, 1], [1, 0, 0]])
    >>> print((masked_whiten(x, mask) * mask))
    [[-1.3416 -0.4472  0.4472]
     [ 1.3416  0.      0.    ]]
  """
  mean = P.masked_mean(x, mask)
  var = P.masked_mean((x - mean) ** 2, mask)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def reinforce_pp_advantages(outcome: jax.Array, token_kl: jax.Array,
                            mask: jax.Array, *, baseline: Optional[str] = None,
                            group_size: Optional[int] = None,
                            eps: float = 1e-8) -> jax.Array:
  """REINFORCE++ token advantages (docs/algorithms.md §3.2, [INFERRED]).

  Per-token reward `rho_t = -token_kl_t` plus the outcome reward at the last
  active token; return `G_t = sum_{s >= t} rho_s` (gamma = 1); advantages are
  `G` whitened over all active tokens of the batch. `baseline="group"`
  (REINFORCE++-baseline) first subtracts the group mean of the outcome.

  Args:
    outcome: `[N]` outcome rewards.
    token_kl: `[N, T]` per-token KL penalty already multiplied by its
      coefficient (e.g. `beta * kl_estimator(old, ref, "k1")`).
    mask: `[N, T]` (active tokens are a prefix of each row).
    baseline: None | "group".
    group_size: required with `baseline="group"`.
    eps: whitening epsilon.

  Returns:
    `[N, T]` advantages (0 on padding).

  Example:
    >>> mask = jnp.array([[1, 1, 1], [1, 1, 0]])
    >>> outcome = jnp.array([-1.0, 1.0])
    >>> print(reinforce_pp_advantages(outcome, jnp.zeros((2, 3)), mask))
    [[-0.8165 -0.8165 -0.8165]
     [ 1.2247  1.2247  0.    ]]
  """
  P.check_same_shape(token_kl=token_kl, mask=mask)
  m = P.as_float(mask)
  out = P.as_float(outcome)
  if baseline == "group":
    out = out - P.group_mean(out, group_size)
  elif baseline is not None:
    raise ValueError(f"unknown baseline {baseline!r}")
  length = jnp.sum(m, axis=1).astype(jnp.int32)
  last = jax.nn.one_hot(length - 1, m.shape[1], dtype=m.dtype)  # 0 row if empty
  rho = (-P.as_float(token_kl) + out[:, None] * last) * m
  returns = jnp.flip(jnp.cumsum(jnp.flip(rho, 1), axis=1), 1)
  return masked_whiten(returns, m, eps) * m


# --------------------------------------------------------------------------
# GiGPO (arXiv:2505.10978), docs/algorithms.md §4.1


def discounted_returns(step_rewards: jax.Array, traj_ids: jax.Array,
                       gamma: float) -> jax.Array:
  """`R_t = r_t + gamma R_{t+1}` within a trajectory (GiGPO Eq. 5).

  Rows of one trajectory must be contiguous and in time order; the recursion
  restarts wherever `traj_ids` changes.

  Args:
    step_rewards: `[S]` per-step rewards.
    traj_ids: `[S]` trajectory ids.
    gamma: discount.

  Returns:
    `[S]` discounted returns.

  Example:
    >>> r = jnp.array([0.0, 0.0, 1.0, 0.0, 1.0])
    >>> print(discounted_returns(r, jnp.array([0, 0, 0, 1, 1]), gamma=0.9))
    [0.81 0.9  1.   0.9  1.  ]
  """
  r = P.as_float(step_rewards)
  ids = jnp.asarray(traj_ids)
  same_next = jnp.concatenate([ids[1:] == ids[:-1], jnp.array([False])])

  def step(carry, xs):
    rew, cont = xs
    ret = rew + gamma * jnp.where(cont, carry, 0.0)
    return ret, ret

  _, out = jax.lax.scan(step, jnp.zeros((), r.dtype), (r, same_next),
                        reverse=True)
  return out


def _normalise_in_segments(x, ids, num_segments, mode, eps, singleton_mean):
  mean, std, count = P.segment_mean_std(x, ids, num_segments)
  single = count[ids] <= 1
  mean_n = jnp.where(single, singleton_mean, mean[ids])
  std_n = jnp.where(single, 1.0, std[ids])
  adv = x - mean_n
  return adv / (std_n + eps) if mode == "mean_std_norm" else adv


def _num_rows(ids, num_segments):
  return jax.ops.segment_sum(jnp.ones(ids.shape), ids, num_segments)


def gigpo_advantages(episode_rewards: jax.Array, step_returns: jax.Array,
                     group_ids: jax.Array, anchor_ids: jax.Array, *,
                     omega: float = 1.0, mode: str = "mean_std_norm",
                     eps: float = 1e-6, num_segments: Optional[int] = None,
                     episode_stats: str = "steps",
                     traj_ids: Optional[jax.Array] = None) -> jax.Array:
  """GiGPO: episode-level plus anchor-state step-level advantages (§4.1).

  ```
  A_E = (E - mean_g E) / (std_g E + eps)     (or E - mean_g E for "mean_norm")
  A_S = (R - mean_s R) / (std_s R + eps)     over step groups s = (group, anchor)
  A   = A_E + omega * A_S
  ```
  std has ddof=1. A singleton episode group uses mean 0, std 1; a singleton
  step group uses its own value as mean (A_S = 0) and std 1, as the reference.
  Paper: Feng et al. 2025 (arXiv:2505.10978); reference
  `gigpo/core_gigpo.py::compute_gigpo_outcome_advantage`.

  Args:
    episode_rewards: `[S]` total episode reward of each step-row's trajectory.
    step_returns: `[S]` discounted returns (`discounted_returns`).
    group_ids: `[S]` int episode-group ids in `[0, num_segments)`.
    anchor_ids: `[S]` int step-group ids in `[0, num_segments)`: the caller maps
      each distinct `(group_id, anchor_obs)` pair to one id.
    omega: weight of the step-level advantage.
    mode: "mean_std_norm" | "mean_norm".
    eps: std epsilon (1e-6 in the reference).
    num_segments: static upper bound on ids (default `S`).
    episode_stats: "steps" (reference: statistics over step-rows) or
      "trajectories" (each trajectory counted once; needs `traj_ids`).
    traj_ids: `[S]` int trajectory ids in `[0, num_segments)`.

  Returns:
    `[S]` advantages.

  Example:
    >>> # One group, two trajectories of two steps (episode rewards 1 and 0);
    >>> # their first steps share an anchor state (step group 0).
    >>> adv = gigpo_advantages(
    ...     episode_rewards=jnp.array([1.0, 1.0, 0.0, 0.0]),
    ...     step_returns=jnp.array([0.9, 1.0, 0.0, 0.0]),
    ...     group_ids=jnp.array([0, 0, 0, 0]), anchor_ids=jnp.array([0, 1, 0, 2]))
    >>> print(adv)
    [ 1.5731  0.866  -1.5731 -0.866 ]
  """
  if mode not in ("mean_std_norm", "mean_norm"):
    raise ValueError(f"unknown mode {mode!r}")
  e = P.as_float(episode_rewards)
  P.check_same_shape(episode_rewards=e, step_returns=step_returns, group_ids=group_ids,
                     anchor_ids=anchor_ids)
  S = num_segments or e.shape[0]
  weights = None
  if episode_stats == "trajectories":
    rows = _num_rows(traj_ids, S)
    weights = 1.0 / rows[traj_ids]  # each trajectory weighs 1 in total
  elif episode_stats != "steps":
    raise ValueError(f"unknown episode_stats {episode_stats!r}")
  if weights is None:
    a_e = _normalise_in_segments(e, group_ids, S, mode, eps, 0.0)
  else:
    mean, _, count = P.segment_mean_std(e, group_ids, S, weights=weights)
    dev = e - mean[group_ids]
    var = P.safe_divide(jax.ops.segment_sum(weights * dev * dev, group_ids, S),
                        jnp.maximum(count - 1, 0.0))
    single = count[group_ids] <= 1
    mean_n = jnp.where(single, 0.0, mean[group_ids])
    std_n = jnp.where(single, 1.0, jnp.sqrt(var)[group_ids])
    a_e = e - mean_n
    a_e = a_e / (std_n + eps) if mode == "mean_std_norm" else a_e
  R = P.as_float(step_returns, e.dtype)
  a_s = _normalise_in_segments(R, anchor_ids, S, mode, eps, R)
  return a_e + omega * a_s


# --------------------------------------------------------------------------
# F-GRPO (arXiv:2602.06717), docs/algorithms.md §4.2


def focal_advantage_scale(rewards: jax.Array, group_size: int,
                          gamma_f: float = 1.0, *,
                          correct_threshold: float = 0.0) -> jax.Array:
  """F-GRPO focal difficulty scale `g = (1 - mu_pos)^gamma_f` per group (§4.2).

  `mu_pos` = fraction of the group's rewards `> correct_threshold` (binary
  rewards: the success rate). Multiply any advantage by `g` to down-weight
  prompts the policy already solves.

  Args:
    rewards: `[N]` binary-style rewards.
    group_size: `G`.
    gamma_f: focal exponent (default 1.0; not verified against the paper).
    correct_threshold: a reward above it counts as correct.

  Returns:
    `[N]` scales in `[0, 1]`.

  Example:
    >>> r = jnp.array([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0])  # success 1/4 and 3/4
    >>> print(focal_advantage_scale(r, 4))
    [0.75 0.75 0.75 0.75 0.25 0.25 0.25 0.25]
  """
  correct = (P.as_float(rewards) > correct_threshold).astype(P.as_float(rewards).dtype)
  return (1.0 - P.group_mean(correct, group_size)) ** gamma_f


@register_advantage_estimator("f_grpo")
def focal_grpo_advantages(rewards: jax.Array, group_size: int, *,
                          gamma_f: float = 1.0, scale="group",
                          eps: float = TRL_STD_EPS) -> jax.Array:
  """`grpo_advantages(r) * focal_advantage_scale(r)` (F-GRPO on GRPO).

  Example:
    >>> r = jnp.array([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    >>> print(focal_grpo_advantages(r, 4))  # the mostly solved group counts less
    [ 1.1248 -0.3749 -0.3749 -0.3749  0.125   0.125   0.125  -0.3749]
  """
  return (grpo_advantages(rewards, group_size, scale=scale, eps=eps)
          * focal_advantage_scale(rewards, group_size, gamma_f))


# --------------------------------------------------------------------------
# TreeRPO (§4.3) [INFERRED]


def tree_node_values(leaf_rewards: jax.Array,
                     leaf_to_node: jax.Array) -> jax.Array:
  """Node value = mean reward of the leaves below it (TreeRPO, §4.3).

  Args:
    leaf_rewards: `[L]`.
    leaf_to_node: `[L, M]` bool, True where leaf `l` lies under node `m`.

  Returns:
    `[M]` node values (0 for a node with no leaf).

  Example:
    >>> leaf_to_node = jnp.array([[1, 1, 0], [1, 0, 1], [1, 0, 1]])  # root, two children
    >>> print(tree_node_values(jnp.array([1.0, 0.0, 1.0]), leaf_to_node))
    [0.6667 1.     0.5   ]
  """
  r = P.as_float(leaf_rewards)
  a = P.as_float(leaf_to_node, r.dtype)
  chex.assert_shape(a, (r.shape[0], None))
  return P.safe_divide(r @ a, jnp.sum(a, axis=0))


def sibling_advantages(node_values: jax.Array, parent_ids: jax.Array,
                       num_parents: int, eps: float = 1e-6) -> jax.Array:
  """`A = (v - mean_sib v) / (std_sib v + eps)` over siblings (§4.3).

  std has ddof=1; a node without siblings gets 0.

  Args:
    node_values: `[M]`.
    parent_ids: `[M]` ints in `[0, num_parents)`.
    num_parents: static.
    eps: std epsilon.

  Returns:
    `[M]` advantages.

  Example:
    >>> values = jnp.array([0.6667, 1.0, 0.5])  # the root, then two siblings
    >>> print(sibling_advantages(values, jnp.array([0, 1, 1]), num_parents=2))
    [ 0.      0.7071 -0.7071]
  """
  v = P.as_float(node_values)
  mean, std, count = P.segment_mean_std(v, parent_ids, num_parents)
  adv = (v - mean[parent_ids]) / (std[parent_ids] + eps)
  return jnp.where(count[parent_ids] > 1, adv, 0.0)


# --------------------------------------------------------------------------
# EMPG (arXiv:2509.09265), §4.4 [INFERRED]


def empg_advantages(adv: jax.Array, step_entropy: jax.Array,
                    next_step_entropy: jax.Array, *, k: float = 1.0,
                    k_future: float = 1.0, zeta: float = 0.05,
                    eps: float = 1e-8) -> jax.Array:
  """Entropy-modulated step advantages (EMPG, §4.4, [INFERRED]).

  ```
  H^ = (H - min H) / (max H - min H + eps)          (batch min/max)
  g  = exp(-k H^) / mean(exp(-k H^))                (mean 1)
  f  = exp(-k_future H^_next)   (0 where next_step_entropy is NaN: last step)
  A' = g * A + zeta * f;   A' -= mean(A')
  ```

  Args:
    adv: `[S]` trajectory advantages broadcast to steps.
    step_entropy: `[S]` mean token entropy of each step.
    next_step_entropy: `[S]` entropy of the next step (NaN at the last step).
    k, k_future, zeta: coefficients.
    eps: epsilon of the min-max normalisation.

  Returns:
    `[S]` modulated advantages (zero mean).

  Example:
    >>> adv = jnp.array([1.0, 1.0, -1.0])
    >>> h = jnp.array([0.1, 0.5, 0.9])
    >>> print(empg_advantages(adv, h, jnp.array([0.5, 0.9, jnp.nan])))
    [ 0.9062  0.2964 -1.2026]
  """
  h = P.as_float(step_entropy)
  P.check_same_shape(adv=adv, step_entropy=h, next_step_entropy=next_step_entropy)
  lo, hi = jnp.min(h), jnp.max(h)
  norm = lambda x: (x - lo) / (hi - lo + eps)
  e = jnp.exp(-k * norm(h))
  g = e / jnp.mean(e)
  nxt = P.as_float(next_step_entropy, h.dtype)
  has_next = ~jnp.isnan(nxt)
  f = jnp.where(has_next, jnp.exp(-k_future * norm(jnp.where(has_next, nxt, 0.))),
                0.0)
  out = g * P.as_float(adv, h.dtype) + zeta * f
  return out - jnp.mean(out)


# --------------------------------------------------------------------------
# COPO (§4.6) [INFERRED]


def copo_blend(local_loss: jax.Array, global_loss: jax.Array,
               group_correct_frac: jax.Array) -> jax.Array:
  """COPO blend `mean(w L_local + (1 - w) L_global)` (§4.6, [INFERRED]).

  `w = H(c) / log 2` with `H(c) = -c log c - (1-c) log(1-c)` the outcome
  entropy of a group's success rate `c`: mixed groups (high entropy) rely on
  the local GRPO loss, uniform groups (local advantage 0) on the global one.

  Args:
    local_loss: `[P]` or scalar. global_loss: `[P]` or scalar.
    group_correct_frac: `[P]` success rate per group.

  Returns:
    Scalar.

  Example:
    >>> # A half-solved group (weight 1: local loss) and a solved one (weight 0).
    >>> print(copo_blend(jnp.array([1.0, 2.0]), jnp.array([3.0, 3.0]), jnp.array([0.5, 1.0])))
    2.0
  """
  c = jnp.clip(P.as_float(group_correct_frac), 0.0, 1.0)
  xlogx = lambda x: jnp.where(x > 0, x * jnp.log(jnp.where(x > 0, x, 1.0)), 0.)
  w = -(xlogx(c) + xlogx(1.0 - c)) / jnp.log(2.0)
  return jnp.mean(w * local_loss + (1.0 - w) * global_loss)
