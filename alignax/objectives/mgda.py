"""MGDA: min-norm point of the hull of K gradients (docs/algorithms.md §9.2).

Sener & Koltun 2018, "Multi-Task Learning as Multi-Objective Optimization"
(arXiv:1810.04650): the Pareto-stationary common descent direction is
`sum_i alpha_i g_i` with `alpha = argmin_{alpha in simplex} alpha^T M alpha`,
`M = G G^T` the Gram matrix of the gradients. Used by CAU (§9).
"""
import functools
import itertools
from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from alignax.objectives import primitives as P

# Enumerating supports costs 2^K small solves; beyond this use Frank-Wolfe.
MAX_EXACT_K = 10


def min_norm_two(gram2: jax.Array, *,
                 reference_conventions: bool = False) -> jax.Array:
  """Exact min-norm weights for two gradients.

  `gamma = (M22 - M12) / (M11 + M22 - 2 M12)` clipped to [0, 1],
  `alpha = (gamma, 1 - gamma)`; a denominator <= 1e-12 (identical gradients)
  gives 0.5. `reference_conventions=True` reproduces `min_norm_solvers.py`
  (`M12 >= M11 -> 0.999`, `M12 >= M22 -> 0.001`), which is not exactly optimal.

  Args:
    gram2: `[2, 2]` Gram matrix.

  Returns:
    `[2]` weights on the simplex.

  Example:
    >>> g = jnp.array([[1.0, 0.0], [0.0, 2.0]])  # two orthogonal gradients
    >>> print(min_norm_two(g @ g.T))  # weights 0.8 / 0.2: the point (0.8, 0.4) of the segment
    [0.8 0.2]
  """
  chex.assert_shape(gram2, (2, 2))
  m = P.as_float(gram2)
  m11, m12, m22 = m[0, 0], m[0, 1], m[1, 1]
  den = m11 + m22 - 2.0 * m12
  gamma = jnp.clip((m22 - m12) / jnp.where(den > 1e-12, den, 1.0), 0.0, 1.0)
  gamma = jnp.where(den > 1e-12, gamma, 0.5)
  if reference_conventions:
    gamma = jnp.where(m12 >= m22, 0.001, gamma)
    gamma = jnp.where(m12 >= m11, 0.999, gamma)
  return jnp.stack([gamma, 1.0 - gamma])


def _supports(k: int) -> np.ndarray:
  """All non-empty subsets of range(k) as a `[2^k - 1, k]` 0/1 array."""
  return np.array([s for s in itertools.product((0, 1), repeat=k) if any(s)],
                  dtype=np.float32)


@jax.jit
def _min_norm_exact(m: jax.Array) -> jax.Array:
  """Exact simplex QP by enumerating supports (active-set, small K).

  For a support S the KKT system `2 M_SS a + lam 1 = 0, 1^T a = 1, a_{~S} = 0`
  is solved (pinv, so singular M from colinear gradients is fine); each
  solution is projected onto the simplex (clip, renormalise) and the feasible
  point with the smallest objective wins. The optimum's own support is among
  the candidates, so the minimum is the global optimum of the convex QP.
  """
  k = m.shape[0]
  s = jnp.asarray(_supports(k), m.dtype)  # [C, K]

  def solve(sv):
    inside = sv[:, None] * sv[None, :]
    top = jnp.where(inside > 0, 2.0 * m, 0.0) + jnp.diag(1.0 - sv)
    a = jnp.zeros((k + 1, k + 1), m.dtype)
    a = a.at[:k, :k].set(top).at[:k, k].set(sv).at[k, :k].set(sv)
    rhs = jnp.zeros((k + 1,), m.dtype).at[k].set(1.0)
    alpha = (jnp.linalg.pinv(a) @ rhs)[:k] * sv
    alpha = jnp.maximum(alpha, 0.0)
    total = jnp.sum(alpha)
    alpha = jnp.where(total > 0, alpha / jnp.where(total > 0, total, 1.0),
                      sv / jnp.sum(sv))
    return alpha, alpha @ m @ alpha

  alphas, objs = jax.vmap(solve)(s)
  return alphas[jnp.argmin(objs)]


@functools.partial(jax.jit, static_argnames=("max_iter",))
def min_norm_frank_wolfe(gram: jax.Array, *, max_iter: int = 250,
                         tol: float = 1e-3) -> jax.Array:
  """Frank–Wolfe for the simplex QP, as Sener & Koltun (§9.2).

  From `alpha = 1/K`: `i* = argmin_i (M alpha)_i`; exact line search towards
  `e_{i*}` with `a = alpha^T M alpha, b = (M alpha)_{i*}, c = M_{i*i*}`,
  `gamma = clip((a - b)/(a + c - 2b), 0, 1)`; stop when `|d alpha|_1 < tol`.

  Example:
    >>> g = jnp.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    >>> print(min_norm_frank_wolfe(g @ g.T, max_iter=500, tol=1e-6).round(2))  # ~ exact
    [0.8 0.2 0. ]
  """
  m = P.as_float(gram)
  k = m.shape[0]

  def cond(state):
    it, _, change = state
    return (it < max_iter) & (change >= tol)

  def body(state):
    it, alpha, _ = state
    ma = m @ alpha
    i = jnp.argmin(ma)
    a, b, c = alpha @ ma, ma[i], m[i, i]
    den = a + c - 2.0 * b
    gamma = jnp.clip((a - b) / jnp.where(den > 1e-12, den, 1.0), 0.0, 1.0)
    gamma = jnp.where(den > 1e-12, gamma, 0.0)
    new = (1.0 - gamma) * alpha + gamma * jax.nn.one_hot(i, k, dtype=m.dtype)
    return it + 1, new, jnp.sum(jnp.abs(new - alpha))

  init = (0, jnp.full((k,), 1.0 / k, m.dtype), jnp.asarray(jnp.inf, m.dtype))
  return jax.lax.while_loop(cond, body, init)[1]


def min_norm_weights(gram: jax.Array, *, method: str = "auto") -> jax.Array:
  """MGDA weights: the simplex point minimising `w^T gram w` (docs/api.md).

  Args:
    gram: `[K, K]` Gram matrix `M = G G^T` (positive semi-definite).
    method: "auto" (K = 2: exact formula; K <= 10: exact enumeration QP;
      else Frank–Wolfe), "two", "exact", "frank_wolfe".

  Returns:
    `[K]` weights, `>= 0`, summing to 1; uniform when `M = 0`. NaN in `M`
    propagates to NaN weights.

  Example:
    >>> g = jnp.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])  # three gradients in 2-D
    >>> w = min_norm_weights(gram_matrix(g))
    >>> print(w, w @ g)  # the min-norm point of their hull
    [0.8 0.2 0. ] [0.8 0.4]
    >>> print(min_norm_weights(jnp.zeros((3, 3))))  # no gradient at all: uniform
    [0.3333 0.3333 0.3333]
  """
  m = P.as_float(gram)
  chex.assert_rank(m, 2)
  chex.assert_equal(m.shape[0], m.shape[1])
  k = m.shape[0]
  if k == 1:
    return jnp.ones((1,), m.dtype)
  if method == "auto":
    method = "two" if k == 2 else "exact" if k <= MAX_EXACT_K else "frank_wolfe"
  solvers = {"two": min_norm_two, "exact": _min_norm_exact,
             "frank_wolfe": min_norm_frank_wolfe}
  if method not in solvers:
    raise ValueError(f"unknown method {method!r}")
  alpha = solvers[method](m)
  zero = jnp.all(m == 0)
  alpha = jnp.where(zero, jnp.full((k,), 1.0 / k, m.dtype), alpha)
  return jnp.where(jnp.any(jnp.isnan(m)), jnp.nan, alpha)


# --------------------------------------------------------------------------
# Gradient helpers (pytrees)


def gram_matrix(flat_grads: jax.Array) -> jax.Array:
  """`M = G G^T` for flattened gradients `G [K, P]` -> `[K, K]` (float32+).

  Example:
    >>> print(gram_matrix(jnp.array([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]])))
    [[5. 2.]
     [2. 2.]]
  """
  g = P.as_float(flat_grads)
  chex.assert_rank(g, 2)
  return g @ g.T


def _as_float(tree):
  """Leaves upcast to float32+, so sums over bf16 gradients stay accurate."""
  return jax.tree.map(P.as_float, tree)


def gram_from_grads(grads_list: Sequence) -> jax.Array:
  """Gram matrix of K gradient pytrees without concatenating them: `[K, K]`.

  `M_ij = sum over leaves <g_i, g_j>`.

  Example:
    >>> grads = [{"w": jnp.array([1.0, 0.0]), "b": jnp.array(2.0)},
    ...          {"w": jnp.array([0.0, 1.0]), "b": jnp.array(1.0)}]
    >>> print(gram_from_grads(grads))  # the same as gram_matrix of the flattened gradients
    [[5. 2.]
     [2. 2.]]
  """
  k = len(grads_list)
  grads = [_as_float(g) for g in grads_list]
  rows = [[None] * k for _ in range(k)]
  for i in range(k):
    for j in range(i, k):
      rows[i][j] = rows[j][i] = optax.tree.vdot(grads[i], grads[j])
  return jnp.stack([jnp.stack(r) for r in rows])


def normalize_gradients(grads_list: Sequence, losses: jax.Array,
                        kind: str = "none") -> list:
  """Gradient normalisation options of the Sener & Koltun reference (§9.2).

  "none": `g`; "l2": `g / |g|`; "loss": `g / L`; "loss+": `g / (L |g|)`.

  Args:
    grads_list: K gradient pytrees.
    losses: `[K]` loss values.
    kind: one of the above.

  Returns:
    List of K pytrees.

  Example:
    >>> grads = [{"w": jnp.array([3.0, 4.0])}, {"w": jnp.array([0.0, 2.0])}]
    >>> out = normalize_gradients(grads, jnp.array([2.0, 4.0]), kind="l2")
    >>> print(out[0]["w"], out[1]["w"])
    [0.6 0.8] [0. 1.]
    >>> out = normalize_gradients(grads, jnp.array([2.0, 4.0]), kind="loss")
    >>> print(out[0]["w"], out[1]["w"])
    [1.5 2. ] [0.  0.5]
  """
  losses = P.as_float(losses)
  chex.assert_shape(losses, (len(grads_list),))
  out = []
  for i, g in enumerate(grads_list):
    norm = optax.tree.norm(_as_float(g))
    scale = {"none": 1.0,
             "l2": P.safe_divide(1.0, norm),
             "loss": P.safe_divide(1.0, losses[i]),
             "loss+": P.safe_divide(1.0, losses[i] * norm)}
    if kind not in scale:
      raise ValueError(f"unknown normalisation {kind!r}")
    out.append(jax.tree.map(lambda x, s=scale[kind]: x * s, g))
  return out


def mgda_combine(grads_list: Sequence, weights: jax.Array):
  """`sum_i w_i g_i` over K gradient pytrees; weights are constants.

  Example:
    >>> grads = [{"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([0.0, 2.0])}]
    >>> print(mgda_combine(grads, jnp.array([0.8, 0.2]))["w"])
    [0.8 0.4]
  """
  w = jax.lax.stop_gradient(P.as_float(weights))
  chex.assert_shape(w, (len(grads_list),))

  def combine(*leaves):
    return sum(w[i].astype(leaves[i].dtype) * leaves[i]
               for i in range(len(leaves)))

  return jax.tree.map(combine, *grads_list)
