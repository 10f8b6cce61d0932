"""Re-weighted EM over trajectories: EXSEARCH, DRO (docs/algorithms.md §6, §7).

E-step: self-normalised importance weights from the gold answer's likelihood;
M-step: a weighted token-mean NLL. `EM_WEIGHTINGS` holds the E-step weightings a
config chooses by name (EXSEARCH's posterior and its two baselines):

>>> ll, correct = jnp.array([-1.0, -2.0, 0.0, -1.0]), jnp.array([1.0, 0.0, 0.0, 1.0])
>>> for name, fn in EM_WEIGHTINGS.items():  # two questions of 2 samples
...   print(f"{name:14s}", fn(ll, correct, 2))
exsearch       [0.7311 0.2689 0.7311 0.2689]
uniform        [0.5 0.5 0.5 0.5]
rejection_sft  [1. 0. 0. 1.]
"""
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from alignax.objectives import primitives as P
from alignax.registry import Registry


def answer_loglik(logp: jax.Array, answer_mask: jax.Array) -> jax.Array:
  """Token-mean log-likelihood of the gold answer, `[N, T] -> [N]` (§6.2).

  `l_n = sum_t logp m / max(sum_t m, 1)` (the reference stores `-l` as CE).

  Example:
    >>> logp = jnp.array([[-1.0, -2.0, -3.0], [-0.5, -9.0, -9.0]])
    >>> print(answer_loglik(logp, jnp.array([[0, 1, 1], [1, 0, 0]])))
    [-2.5 -0.5]
  """
  P.check_same_shape(logp=logp, answer_mask=answer_mask)
  return P.masked_mean(logp, answer_mask, axis=-1)


def em_weights(log_likelihoods: jax.Array, group_size: int, *,
               temperature: float = 1.0) -> jax.Array:
  """Self-normalised EM weights: softmax of `l / tau` within each group.

  `w_k = exp(l_k/tau) / sum_j exp(l_j/tau)` over the contiguous group of
  `group_size` trajectories of one question (EXSEARCH arXiv:2505.20128 §6.2,
  DRO arXiv:2505.03075 §7.1). Each group sums to 1; NaN log-likelihoods get
  weight 0 and an all-NaN group gets all zeros.

  Args:
    log_likelihoods: `[N]`.
    group_size: `K`, static.
    temperature: `tau > 0`.

  Returns:
    `[N]` weights.

  Example:
    >>> ll = jnp.array([-1.0, -2.0, -3.0, 0.0, jnp.nan, 0.0])  # two questions, 3 samples each
    >>> print(em_weights(ll, 3))
    [0.6652 0.2447 0.09   0.5    0.     0.5   ]
    >>> print(em_weights(ll, 3, temperature=100.0))  # a high temperature: nearly uniform
    [0.3367 0.3333 0.33   0.5    0.     0.5   ]
  """
  P.check_temperature(temperature)
  g = P.group_view(log_likelihoods, group_size, "log_likelihoods") / temperature
  valid = ~jnp.isnan(g)
  z = jnp.where(valid, g, -jnp.inf)
  m = jnp.max(z, axis=1, keepdims=True)
  e = jnp.where(valid, jnp.exp(z - jnp.where(jnp.isfinite(m), m, 0.0)), 0.0)
  return P.safe_divide(e, jnp.sum(e, axis=1, keepdims=True)).reshape(-1)


def segment_em_weights(log_likelihoods: jax.Array, segment_ids: jax.Array,
                       num_segments: int, temperature: float = 1.0) -> jax.Array:
  """`em_weights` for ragged groups (after DRO's de-duplication), §7.1.

  Args:
    log_likelihoods: `[N]` (NaN -> weight 0).
    segment_ids: `[N]` question ids in `[0, num_segments)`.
    num_segments: static.
    temperature: `tau > 0`.

  Returns:
    `[N]` weights summing to 1 within each non-empty segment.

  Example:
    >>> ll = jnp.array([-1.0, -2.0, 0.0, -3.0, -3.0])
    >>> print(segment_em_weights(ll, jnp.array([0, 0, 1, 1, 1]), num_segments=2))
    [0.7311 0.2689 0.9094 0.0453 0.0453]
  """
  P.check_temperature(temperature)
  P.check_same_shape(log_likelihoods=log_likelihoods, segment_ids=segment_ids)
  x = P.as_float(log_likelihoods) / temperature
  valid = ~jnp.isnan(x)
  z = jnp.where(valid, x, -jnp.inf)
  m = jax.ops.segment_max(z, segment_ids, num_segments)
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  e = jnp.where(valid, jnp.exp(z - m[segment_ids]), 0.0)
  total = jax.ops.segment_sum(e, segment_ids, num_segments)
  return P.safe_divide(e, total[segment_ids])


def weighted_sequence_nll(logp: jax.Array, mask: jax.Array,
                          weights: jax.Array):
  """Re-weighted M-step loss (EXSEARCH §6.3, DRO §7.2).

  Per row the token-mean NLL `nll_n = -sum_t logp m / max(sum_t m, 1)`; the
  objective of §6.3 is `sum_n w_n nll_n`. Returned as a normalised value and an
  additive normaliser, the gradient-accumulation contract of §1.3:
  `value = sum_n w_n nll_n / sum_n w_n`, `normaliser = sum_n w_n`, so
  `value * normaliser` is the §6.3 sum (with `em_weights` the normaliser is
  the number of questions). Weights are constants (no gradient).

  Args:
    logp: `[N, T]`. mask: `[N, T]` trainable tokens. weights: `[N]`.

  Returns:
    `(value scalar, normaliser scalar)`; 0 when all weights are 0.

  Example:
    >>> logp = jnp.array([[-1.0, -3.0], [-2.0, -2.0]])
    >>> value, total = weighted_sequence_nll(logp, jnp.ones((2, 2)), jnp.array([0.75, 0.25]))
    >>> print(float(value), float(total))  # (0.75 * 2 + 0.25 * 2) / 1
    2.0 1.0
  """
  P.check_same_shape(logp=logp, mask=mask)
  w = jax.lax.stop_gradient(P.as_float(weights, P.compute_dtype(logp)))
  P.check_shape("weights", w, (logp.shape[0],), f" (one per row of logp {logp.shape})")
  nll = -P.masked_mean(logp, mask, axis=-1)
  total = jnp.sum(w)
  return P.safe_divide(jnp.sum(w * nll), total), total


def first_occurrences(outputs: Sequence, question_ids) -> np.ndarray:
  """bool [N]: True for the first of identical outputs (token lists or strings)
  of the same question (DRO de-duplicates before the softmax, §7.1).

  Example:
    >>> first_occurrences([[1, 2], [1, 2], [3], [1, 2]], [0, 0, 0, 1])
    array([ True, False,  True,  True])
  """
  seen, keep = set(), []
  for out, q in zip(outputs, question_ids):
    key = (int(q), tuple(out) if not isinstance(out, str) else out)
    keep.append(key not in seen)
    seen.add(key)
  return np.asarray(keep, bool)


def dro_weights(log_likelihoods, question_ids, num_questions: int, keep, valid, *,
                temperature: float = 1.0, renormalize_after_filter: bool = False,
                selector_logprobs=None, proposal_logprobs=None):
  """DRO E-step weights [N] (§7.1) of N sampled selections.

  Args: log_likelihoods [N] (the gold answer's, given each selection),
  question_ids [N] in [0, num_questions), keep [N] (False for a duplicate,
  `first_occurrences`), valid [N] (False for a malformed selection);
  selector_logprobs, proposal_logprobs [N] (optional, together): `log
  p_phi(z_j|x)`, the selection's log-probability under the selector itself,
  and `log q(z_j)`, under the distribution it was sampled from (the
  selector's, tempered and top-p truncated).

  The self-normalised importance weight of the posterior `p(z|x, y*)`:

      w_j = exp(l_j / tau) * p_phi(z_j) / q(z_j)  /  sum_k (same)

  over the kept samples of a question. Without the log-probs (or when q is
  the selector, temperature 1 and top_p 1) the ratio is 1 and
  `w = softmax(l / tau)` (`segment_em_weights`). tau = 1 is the paper's.
  Duplicates (`keep` False) are removed *before* the normalisation;
  malformed samples (`valid` False) are dropped *after* it, and with
  `renormalize_after_filter` the remaining weights of each question are
  re-normalised to sum to 1 (a question with none left keeps zeros).

  Example:
    >>> ll = jnp.array([0.0, 0.0, -1.0, -1.0])  # one question, 4 selections
    >>> keep = jnp.array([True, False, True, True])  # the second repeats the first
    >>> valid = jnp.array([True, True, True, False])  # the last is malformed
    >>> print(dro_weights(ll, [0, 0, 0, 0], 1, keep, valid))
    [0.5761 0.     0.2119 0.    ]
    >>> print(dro_weights(ll, [0, 0, 0, 0], 1, keep, valid, renormalize_after_filter=True))
    [0.7311 0.     0.2689 0.    ]
    >>> # Sampled from a sharpened selector: p_phi / q corrects for the proposal.
    >>> lp, lq = jnp.array([-1.0, -1.0, -3.0, -2.0]), jnp.array([-0.5, -0.5, -3.5, -1.0])
    >>> print(dro_weights(ll, [0, 0, 0, 0], 1, keep, valid, renormalize_after_filter=True,
    ...                   selector_logprobs=lp, proposal_logprobs=lq))
    [0.5 0.  0.5 0. ]
  """
  if (selector_logprobs is None) != (proposal_logprobs is None):
    raise ValueError("dro_weights needs both selector_logprobs and proposal_logprobs,"
                     " or neither.")
  P.check_temperature(temperature)
  ll = jnp.asarray(log_likelihoods, jnp.float32) / temperature
  if selector_logprobs is not None:
    ll = ll + (jnp.asarray(selector_logprobs, jnp.float32)
               - jnp.asarray(proposal_logprobs, jnp.float32))
  ll = jnp.where(jnp.asarray(keep), ll, jnp.nan)
  qids = jnp.asarray(question_ids, jnp.int32)
  w = segment_em_weights(ll, qids, num_questions)
  w = jnp.where(jnp.asarray(valid), w, 0.0)
  if renormalize_after_filter:
    total = jax.ops.segment_sum(w, qids, num_questions)[qids]
    w = jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0), 0.0)
  return w


# EM weightings a config chooses by name (EXSEARCH §6.2 and its baselines),
# each `fn(log_likelihoods [N], correct [N], group_size, *, temperature) -> [N]`
# over contiguous groups of `group_size` samples of one question; `correct`
# is 1.0 where the sample's own answer is right.
EM_WEIGHTINGS = Registry("EM weighting")


@EM_WEIGHTINGS.register("exsearch")
def _posterior(log_likelihoods, correct, group_size: int, *, temperature: float = 1.0):
  del correct
  return em_weights(log_likelihoods, group_size, temperature=temperature)


@EM_WEIGHTINGS.register("uniform")
def _uniform(log_likelihoods, correct, group_size: int, *, temperature: float = 1.0):
  """1/K: EM without the posterior."""
  del correct, temperature
  return jnp.full(jnp.shape(log_likelihoods), 1.0 / group_size)


@EM_WEIGHTINGS.register("rejection_sft")
def _rejection(log_likelihoods, correct, group_size: int, *, temperature: float = 1.0):
  """1 for the samples whose own answer is right, else 0."""
  del log_likelihoods, group_size, temperature
  return jnp.asarray(correct, jnp.float32)
