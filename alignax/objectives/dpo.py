"""DPO and the MOAT pair construction (docs/algorithms.md §5, §8.1).

Inputs are sequence log-probs `[B]` (masked sums of per-token log-probs, see
`sequence_logprobs`). DPO loss variants are registered in `DPO_LOSSES`.
"""
from typing import Optional

import jax
import jax.numpy as jnp

from alignax.objectives import primitives as P
from alignax.objectives.registries import get_dpo_loss, register_dpo_loss


def sequence_logprobs(logp: jax.Array, mask: jax.Array) -> jax.Array:
  """`sum_t logp m` per row: `[B, T] -> [B]` (an empty row gives 0).

  Example:
    >>> logp = jnp.array([[-1.0, -2.0, -3.0], [-0.5, -9.0, -9.0]])
    >>> print(sequence_logprobs(logp, jnp.array([[1, 1, 1], [1, 0, 0]])))
    [-6.  -0.5]
  """
  P.check_same_shape(logp=logp, mask=mask)
  return P.masked_sum(logp, mask, axis=-1)


def perplexity_scores(logp: jax.Array, mask: jax.Array, *,
                      count_threshold: Optional[float] = None) -> jax.Array:
  """Token-mean NLL (log-perplexity) per row, MOAT grounder score (§8.1).

  `score = sum_t -logp m / max(count, 1)`; `count = sum m`, or with
  `count_threshold` (MOAT: 1e-9) only tokens whose NLL is `>= threshold` are
  counted in the denominator, as the reference `modeling_ppllama.py`.

  Args:
    logp: `[N, T]`. mask: `[N, T]`.
    count_threshold: optional NLL threshold for the token count.

  Returns:
    `[N]` scores (lower = more likely).

  Example:
    >>> logp = jnp.array([[-1.0, -2.0, -3.0], [-0.5, 0.0, -9.0]])
    >>> mask = jnp.array([[1, 1, 1], [1, 1, 0]])
    >>> print(perplexity_scores(logp, mask))
    [2.   0.25]
    >>> print(perplexity_scores(logp, mask, count_threshold=1e-9))  # the 0-NLL token not counted
    [2.  0.5]
  """
  P.check_same_shape(logp=logp, mask=mask)
  m = P.as_float(mask, P.compute_dtype(logp))
  nll = -P.zero_masked(P.as_float(logp), m)
  count_m = m if count_threshold is None else m * (nll >= count_threshold)
  return jnp.sum(nll * m, -1) / P.clamp_min1(jnp.sum(count_m, -1))


def build_dpo_pairs(scores: jax.Array, group_size: int, min_gap: float = 0.1):
  """MOAT Stage-1 pairs: chosen = argmin score, rejected = argmax (§8.1).

  Per group of `group_size` samples of one task; the pair is valid when
  `max - min >= min_gap`. Ties pick the first index (argmin/argmax).
  Source: `MOAT build_compare_dpo_data.py::get_minmax`.

  Args:
    scores: `[N]` (lower = better, e.g. `perplexity_scores`).
    group_size: `K` samples per task.
    min_gap: minimum score gap (0.1 in the run script).

  Returns:
    `(chosen_idx [P], rejected_idx [P], valid [P] bool)`, indices into `[N]`.

  Example:
    >>> scores = jnp.array([0.5, 0.2, 0.9, 1.0, 1.05, 1.0])  # two tasks of 3 samples
    >>> chosen, rejected, valid = build_dpo_pairs(scores, 3, min_gap=0.1)
    >>> print(chosen, rejected, valid)
    [1 3] [2 4] [ True False]
  """
  g = P.group_view(scores, group_size)
  base = jnp.arange(g.shape[0]) * group_size
  chosen = base + jnp.argmin(g, axis=1)
  rejected = base + jnp.argmax(g, axis=1)
  valid = (jnp.max(g, axis=1) - jnp.min(g, axis=1)) >= min_gap
  return chosen, rejected, valid


# --------------------------------------------------------------------------
# Per-pair DPO losses: fn(delta, chosen_lr, rejected_lr, beta, eps) -> [B].


@register_dpo_loss("sigmoid")
def _sigmoid(d, cl, rl, beta, eps):
  del cl, rl
  # eps = 0 is TRL's "sigmoid"; eps > 0 is cDPO (TRL ignores it there).
  return -(1.0 - eps) * jax.nn.log_sigmoid(beta * d) - eps * jax.nn.log_sigmoid(
      -beta * d)


@register_dpo_loss("robust")
def _robust(d, cl, rl, beta, eps):
  del cl, rl
  return (-(1.0 - eps) * jax.nn.log_sigmoid(beta * d)
          + eps * jax.nn.log_sigmoid(-beta * d)) / (1.0 - 2.0 * eps)


@register_dpo_loss("hinge")
def _hinge(d, cl, rl, beta, eps):
  del cl, rl, eps
  return jax.nn.relu(1.0 - beta * d)


@register_dpo_loss("ipo")
def _ipo(d, cl, rl, beta, eps):
  del cl, rl, eps
  return (d - 1.0 / (2.0 * beta)) ** 2


def dpo_loss(chosen_logps: jax.Array, rejected_logps: jax.Array,
             ref_chosen_logps: jax.Array, ref_rejected_logps: jax.Array, *,
             beta: float = 0.1, label_smoothing: float = 0.0,
             loss_type: str = "sigmoid",
             chosen_lengths: Optional[jax.Array] = None,
             rejected_lengths: Optional[jax.Array] = None):
  """Direct Preference Optimization (Rafailov et al. 2023, arXiv:2305.18290).

  `d = (pi_c - ref_c) - (pi_r - ref_r)`, then per pair:
    sigmoid: `-(1-eps) log s(beta d) - eps log s(-beta d)` (eps = 0: TRL
      "sigmoid"; eps > 0: cDPO. NOTE TRL's "sigmoid" ignores label_smoothing,
      we implement the classic cDPO form instead);
    robust: `[-(1-eps) log s(beta d) + eps log s(-beta d)] / (1 - 2 eps)`;
    hinge: `relu(1 - beta d)`;
    ipo: `(d_bar - 1/(2 beta))^2` with `d_bar` from length-normalised log-ratios
      (each log-ratio divided by `max(length, 1)`; pass `chosen_lengths` and
      `rejected_lengths` as TRL does, else no normalisation), Azar et al. 2023.
  `loss = mean_B`. Source: TRL `DPOTrainer._compute_loss`.

  Args:
    chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps: `[B]`.
    beta: inverse temperature (TRL default 0.1).
    label_smoothing: eps.
    loss_type: a key of `DPO_LOSSES` (static).
    chosen_lengths, rejected_lengths: `[B]` completion token counts (IPO).

  Returns:
    `(loss scalar, metrics)` with `rewards/chosen`, `rewards/rejected`,
    `rewards/accuracies`, `rewards/margins` (means of `beta * log-ratio`).

  Example:
    >>> pi_c, pi_r = jnp.array([-1.0, -2.0]), jnp.array([-3.0, -2.5])
    >>> ref_c, ref_r = jnp.array([-1.5, -2.0]), jnp.array([-2.5, -2.0])
    >>> from alignax.objectives import DPO_LOSSES
    >>> for loss_type in DPO_LOSSES:  # every registered variant
    ...   loss, _ = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=0.1, loss_type=loss_type)
    ...   print(f"{loss_type:8s} {float(loss):.4f}")
    sigmoid  0.6564
    robust   0.6564
    hinge    0.9250
    ipo      18.1250
    >>> _, metrics = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=0.1)
    >>> {k: round(float(v), 4) for k, v in metrics.items()}
    {'rewards/chosen': 0.025, 'rewards/rejected': -0.05, 'rewards/accuracies': 1.0, 'rewards/margins': 0.075}
  """
  P.check_same_shape(chosen_logps=chosen_logps, rejected_logps=rejected_logps,
                     ref_chosen_logps=ref_chosen_logps,
                     ref_rejected_logps=ref_rejected_logps,
                     chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
  dtype = P.compute_dtype(chosen_logps)
  f = lambda x: P.as_float(x, dtype)
  chosen_lr = f(chosen_logps) - f(ref_chosen_logps)
  rejected_lr = f(rejected_logps) - f(ref_rejected_logps)
  if loss_type == "ipo" and chosen_lengths is not None:
    d = (chosen_lr / P.clamp_min1(f(chosen_lengths))
         - rejected_lr / P.clamp_min1(f(rejected_lengths)))
  else:
    d = chosen_lr - rejected_lr
  per_pair = get_dpo_loss(loss_type)(d, chosen_lr, rejected_lr, beta,
                                     label_smoothing)
  chosen_r = jax.lax.stop_gradient(beta * chosen_lr)
  rejected_r = jax.lax.stop_gradient(beta * rejected_lr)
  metrics = {
      "rewards/chosen": jnp.mean(chosen_r),
      "rewards/rejected": jnp.mean(rejected_r),
      "rewards/accuracies": jnp.mean((chosen_r > rejected_r).astype(dtype)),
      "rewards/margins": jnp.mean(chosen_r - rejected_r),
  }
  return jnp.mean(per_pair), metrics
