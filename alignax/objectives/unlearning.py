"""CAU unlearning objectives, difficulty scores and ranking metrics.

Pure jax.numpy functions (no Flax, no model) for curriculum approximate
unlearning of session recommenders (CAU, arXiv:2508.15263; docs/algorithms.md
§9). Shapes: `B` = batch of unlearning samples, `I` = number of item logits
(index 0 is the padding item, which a model gives a very negative logit), `U` =
size of the unlearning set, `P` = number of parameters, `D` = embedding width.

An unlearning sample is a session prefix `v_{1:t-1}` whose next item `v_t` must be
forgotten; `logits` are the model's scores for the item after the prefix.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from alignax.objectives import primitives as P

_EPS = 1e-12


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of `x` over `mask`; 0 (not NaN) when the mask is empty."""
  return P.masked_sum(x, mask) / jnp.maximum(jnp.sum(mask.astype(jnp.float32)), 1.0)


def _rows(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """Zeroes masked-out rows by `where`: a NaN in a padding row must not reach
  the gradient through the softmax (0 * NaN)."""
  return jnp.where(jnp.asarray(mask)[:, None] != 0, logits, 0)


def _target_logprob(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """log P(target) under softmax(logits): [B, I], [B] -> [B]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  # Clip so that masked-out (e.g. -1) targets never index out of range; their
  # values are masked by the caller.
  safe = jnp.clip(targets, 0, logits.shape[-1] - 1)
  return jnp.take_along_axis(logp, safe[:, None], axis=-1)[:, 0]


def cau_unlearn_loss(logits: jax.Array, target_items: jax.Array,
                     mask: jax.Array | None = None) -> jax.Array:
  """L_unlearn = mean_b log P_theta(v_t | v_{1:t-1}) (§9.1).

  Minimising it is gradient ascent on the cross-entropy of the forgotten item.

  Args:
    logits: [B, I] scores after each unlearning prefix.
    target_items: [B] int, the item `v_t` to forget.
    mask: optional [B] bool, False for padding rows of a ragged batch.

  Returns:
    Scalar masked mean of the log-probabilities (0 for an empty mask).

  Example:
    >>> logits = jnp.log(jnp.array([[0.1, 0.6, 0.3], [0.1, 0.1, 0.8]]))
    >>> print(round(float(cau_unlearn_loss(logits, jnp.array([1, 2]))), 4))  # mean log(0.6), log(0.8)
    -0.367
    >>> print(round(float(cau_unlearn_loss(logits, jnp.array([1, 2]),
    ...                                    mask=jnp.array([True, False]))), 4))
    -0.5108
  """
  P.check_rank("logits", logits, 2)
  P.check_shape("target_items", target_items, (logits.shape[0],),
                f" (one per row of logits {logits.shape})")
  if mask is None:
    mask = jnp.ones(target_items.shape, bool)
  P.check_same_shape(target_items=target_items, mask=mask)
  return _masked_mean(_target_logprob(_rows(logits, mask), target_items), mask)


def cau_normal_loss(logits: jax.Array, next_items: jax.Array,
                    valid: jax.Array) -> jax.Array:
  """L_normal = mean_b -log P_theta(v_{t+1} | v_{1:t-1}) over valid rows (§9.1).

  Keeps the session's next real item predictable once `v_t` is skipped.

  Args:
    logits: [B, I] scores after each prefix `v_{1:t-1}`.
    next_items: [B] int, `v_{t+1}` (any value where `valid` is False).
    valid: [B] bool, False when `t = n` (no next item) or for padding rows.

  Returns:
    Scalar masked mean negative log-likelihood (0 when nothing is valid).

  Example:
    >>> logits = jnp.log(jnp.array([[0.1, 0.6, 0.3], [0.1, 0.1, 0.8]]))
    >>> valid = jnp.array([True, False])  # the second prefix has no next item
    >>> print(round(float(cau_normal_loss(logits, jnp.array([2, 0]), valid)), 4))  # -log 0.3
    1.204
  """
  P.check_rank("logits", logits, 2)
  for name, x in (("next_items", next_items), ("valid", valid)):
    P.check_shape(name, x, (logits.shape[0],), f" (one per row of logits {logits.shape})")
  return _masked_mean(-_target_logprob(_rows(logits, valid), next_items), valid)


def kl_to_original(logits: jax.Array, orig_logits: jax.Array,
                   mask: jax.Array | None = None) -> jax.Array:
  """L_KL = mean_b KL(P_theta0 || P_theta) over full item distributions (§9.1).

  Args:
    logits: [B, I] current model scores.
    orig_logits: [B, I] frozen original model scores (treated as constants).
    mask: optional [B] bool row mask.

  Returns:
    Scalar mean KL; exactly 0 when the two agree.

  Example:
    >>> orig = jnp.log(jnp.array([[0.5, 0.5]]))
    >>> print(round(float(kl_to_original(jnp.log(jnp.array([[0.9, 0.1]])), orig)), 4))
    0.5108
    >>> print(float(kl_to_original(orig, orig)))
    0.0
  """
  P.check_rank("logits", logits, 2)
  P.check_same_shape(logits=logits, orig_logits=orig_logits)
  if mask is None:
    mask = jnp.ones(logits.shape[:1], bool)
  logp = jax.nn.log_softmax(_rows(logits, mask).astype(jnp.float32), axis=-1)
  logp0 = jax.nn.log_softmax(
      _rows(jax.lax.stop_gradient(orig_logits), mask).astype(jnp.float32), axis=-1)
  p0 = jnp.exp(logp0)
  # where(): items with p0 == 0 (e.g. -inf padding logits) contribute 0, not NaN.
  per_item = jnp.where(p0 > 0, p0 * (logp0 - logp), 0.0)
  return _masked_mean(jnp.sum(per_item, axis=-1), mask)


def minmax_normalize(x: jax.Array) -> jax.Array:
  """Maps [U] scores linearly onto [0, 1]; a constant vector maps to zeros.

  Example:
    >>> print(minmax_normalize(jnp.array([2.0, 4.0, 3.0])), minmax_normalize(jnp.ones(2)))
    [0.  1.  0.5] [0. 0.]
  """
  x = x.astype(jnp.float32)
  lo, hi = jnp.min(x), jnp.max(x)
  return jnp.where(hi - lo > _EPS, (x - lo) / jnp.maximum(hi - lo, _EPS), 0.0)


def gradient_difficulty(per_sample_grads: jax.Array, *,
                        normalize: bool = True) -> jax.Array:
  """d_grad(u) = ||grad_theta L_unlearn(u)||_2, min-max normalised (§9.3).

  A larger gradient means the sample is more entangled with the model (harder).

  Args:
    per_sample_grads: [U, P] flattened per-sample gradients of L_unlearn.
    normalize: min-max normalise to [0, 1] over the unlearning set.

  Returns:
    [U] difficulty scores.

  Example:
    >>> grads = jnp.array([[3.0, 4.0], [1.0, 0.0], [0.0, 3.0]])  # norms 5, 1, 3
    >>> print(gradient_difficulty(grads), gradient_difficulty(grads, normalize=False))
    [1.  0.  0.5] [5. 1. 3.]
  """
  P.check_rank("per_sample_grads", per_sample_grads, 2)
  d = jnp.linalg.norm(per_sample_grads.astype(jnp.float32), axis=-1)
  return minmax_normalize(d) if normalize else d


def embedding_difficulty(session_repr: jax.Array, item_emb: jax.Array, *,
                         normalize: bool = True) -> jax.Array:
  """d_emb(u) = cos(h(v_{1:t-1}), e_{v_t}), min-max normalised (§9.3).

  Args:
    session_repr: [U, D] session representations of the prefixes.
    item_emb: [U, D] embeddings of the items to forget.
    normalize: min-max normalise to [0, 1] over the unlearning set.

  Returns:
    [U] difficulty scores (higher = the model associates them more = harder).

  Example:
    >>> h = jnp.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    >>> e = jnp.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    >>> print(embedding_difficulty(h, e, normalize=False), embedding_difficulty(h, e))
    [1.     0.7071 0.    ] [1.     0.7071 0.    ]
  """
  P.check_rank("session_repr", session_repr, 2)
  P.check_same_shape(session_repr=session_repr, item_emb=item_emb)
  h = session_repr.astype(jnp.float32)
  e = item_emb.astype(jnp.float32)
  cos = jnp.sum(h * e, -1) / jnp.maximum(
      jnp.linalg.norm(h, axis=-1) * jnp.linalg.norm(e, axis=-1), _EPS)
  return minmax_normalize(cos) if normalize else cos


def target_rank(scores: jax.Array, targets: jax.Array) -> jax.Array:
  """1-based rank of each target: 1 + #items with a strictly higher score (§9.6).

  Args:
    scores: [B, I] item scores.
    targets: [B] int target items.

  Returns:
    [B] int32 ranks.

  Example:
    >>> scores = jnp.array([[0.1, 0.5, 0.3, 0.5], [0.9, 0.2, 0.4, 0.1]])
    >>> print(target_rank(scores, jnp.array([2, 0])))  # 1 + #strictly higher scores
    [3 1]
  """
  P.check_rank("scores", scores, 2)
  P.check_shape("targets", targets, (scores.shape[0],),
                f" (one per row of scores {scores.shape})")
  target_score = jnp.take_along_axis(scores, targets[:, None], axis=-1)
  return 1 + jnp.sum(scores > target_score, axis=-1).astype(jnp.int32)


def _ranking_metric(per_row: jax.Array, mask: jax.Array | None) -> jax.Array:
  if mask is None:
    return jnp.mean(per_row)
  return _masked_mean(per_row, mask)


def hit_rate_at_k(scores: jax.Array, targets: jax.Array, k: int,
                  mask: jax.Array | None = None) -> jax.Array:
  """HR@K = mean 1[rank(y) <= K] with full ranking over all items (§9.6).

  Args:
    scores: [B, I] item scores.
    targets: [B] int target items.
    k: cut-off (static).
    mask: optional [B] bool row mask.

  Returns:
    Scalar hit rate.

  Example:
    >>> scores = jnp.array([[0.1, 0.5, 0.3, 0.5], [0.9, 0.2, 0.4, 0.1]])  # ranks 3 and 1
    >>> print(float(hit_rate_at_k(scores, jnp.array([2, 0]), k=2)))
    0.5
  """
  hits = (target_rank(scores, targets) <= k).astype(jnp.float32)
  return _ranking_metric(hits, mask)


def ndcg_at_k(scores: jax.Array, targets: jax.Array, k: int,
              mask: jax.Array | None = None) -> jax.Array:
  """NDCG@K = mean 1[rank(y) <= K] / log2(rank(y) + 1), one relevant item (§9.6).

  Args:
    scores: [B, I] item scores.
    targets: [B] int target items.
    k: cut-off (static).
    mask: optional [B] bool row mask.

  Returns:
    Scalar NDCG.

  Example:
    >>> scores = jnp.array([[0.1, 0.5, 0.3, 0.5], [0.9, 0.2, 0.4, 0.1]])  # ranks 3 and 1
    >>> print(float(ndcg_at_k(scores, jnp.array([2, 0]), k=3)))  # (1/log2(4) + 1) / 2
    0.75
  """
  rank = target_rank(scores, targets)
  gain = jnp.where(rank <= k, 1.0 / jnp.log2(rank.astype(jnp.float32) + 1.0),
                   0.0)
  return _ranking_metric(gain, mask)
