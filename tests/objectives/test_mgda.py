"""MGDA min-norm weights vs scipy SLSQP on the simplex QP (§9.2)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

import alignax.objectives as O


def _scipy_min_norm(m):
  k = m.shape[0]
  res = optimize.minimize(
      lambda a: a @ m @ a, np.full(k, 1.0 / k), jac=lambda a: 2 * m @ a,
      method="SLSQP", bounds=[(0, 1)] * k,
      constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1}],
      options={"ftol": 1e-15, "maxiter": 1000})
  assert res.success, res.message
  return res.x, res.fun


def _grads(case, k, rng):
  g = rng.normal(size=(k, 6))
  if case == "colinear":
    g[1] = 2.5 * g[0]  # same direction
    if k > 2:
      g[2] = -0.5 * g[0]  # opposite direction -> min norm 0
  elif case == "dominated":
    g[1:] = g[0] * 3.0 + 0.01 * rng.normal(size=(k - 1, 6))  # g0 is min norm
  elif case == "parallel_same":
    g[:] = g[0] * np.arange(1, k + 1)[:, None]
  return g


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("case", ["random", "colinear", "dominated",
                                  "parallel_same"])
@pytest.mark.parametrize("seed", [0, 1])
def test_min_norm_matches_scipy(k, case, seed):
  rng = np.random.default_rng(seed + 10 * k)
  g = _grads(case, k, rng)
  m = g @ g.T
  _, f_ref = _scipy_min_norm(m)
  with jax.enable_x64(True):
    alpha = np.asarray(O.min_norm_weights(jnp.asarray(m)))
  assert np.all(alpha >= 0) and abs(alpha.sum() - 1) < 1e-9
  f = alpha @ m @ alpha
  assert f <= f_ref + 1e-6, (f, f_ref)
  assert f >= f_ref - 1e-6 * max(1.0, f_ref) - 1e-9  # scipy is a valid bound
  # KKT: (M alpha)_i >= alpha^T M alpha for all i
  assert np.all(m @ alpha >= f - 1e-6 * max(1.0, np.abs(m).max()))


@pytest.mark.parametrize("k", [3, 5])
def test_float32_and_frank_wolfe_agree(k):
  rng = np.random.default_rng(k)
  g = rng.normal(size=(k, 8))
  m = g @ g.T
  _, f_ref = _scipy_min_norm(m)
  exact = O.min_norm_weights(jnp.asarray(m, jnp.float32))
  fw = O.min_norm_weights(jnp.asarray(m, jnp.float32), method="frank_wolfe")
  f_exact = float(exact @ m @ exact)
  f_fw = float(fw @ m @ fw)
  np.testing.assert_allclose(f_exact, f_ref, atol=1e-5, rtol=1e-5)
  assert f_fw >= f_ref - 1e-5 and f_fw - f_ref < 1e-2 * np.abs(m).max()


def test_two_task_formula_and_reference_conventions():
  m = jnp.array([[1.0, 0.0], [0.0, 4.0]])
  np.testing.assert_allclose(O.min_norm_two(m), [0.8, 0.2], rtol=1e-6)
  dom = jnp.array([[1.0, 2.0], [2.0, 9.0]])  # M12 >= M11: all weight on g1
  np.testing.assert_allclose(O.min_norm_two(dom), [1.0, 0.0])
  np.testing.assert_allclose(O.min_norm_two(dom, reference_conventions=True),
                             [0.999, 0.001], atol=1e-7)
  same = jnp.ones((2, 2))
  np.testing.assert_allclose(O.min_norm_two(same), [0.5, 0.5])


def test_zero_gram_uniform_and_nan_propagates():
  np.testing.assert_allclose(O.min_norm_weights(jnp.zeros((3, 3))), [1 / 3] * 3)
  m = jnp.eye(3).at[0, 1].set(jnp.nan)
  assert np.isnan(O.min_norm_weights(m)).all()


def test_pytree_helpers_and_jit():
  rng = np.random.default_rng(0)
  grads = [{"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(2,)), jnp.float32)}
           for _ in range(3)]
  flat = jnp.stack([jnp.concatenate([g["b"], g["w"].ravel()]) for g in grads])
  m = O.gram_from_grads(grads)
  np.testing.assert_allclose(m, O.gram_matrix(flat), rtol=1e-5)
  alpha = jax.jit(O.min_norm_weights)(m)
  combined = O.mgda_combine(grads, alpha)
  flat_c = jnp.concatenate([combined["b"], combined["w"].ravel()])
  np.testing.assert_allclose(flat_c, alpha @ flat, rtol=1e-5, atol=1e-6)
  # min-norm direction: squared norm equals the QP objective
  np.testing.assert_allclose(flat_c @ flat_c, alpha @ m @ alpha, rtol=1e-4)
  l2 = O.normalize_gradients(grads, jnp.array([1.0, 2.0, 4.0]), "l2")
  np.testing.assert_allclose(np.diag(O.gram_from_grads(l2)), 1.0, rtol=1e-5)
  by_loss = O.normalize_gradients(grads, jnp.array([1.0, 2.0, 4.0]), "loss")
  np.testing.assert_allclose(by_loss[2]["b"], grads[2]["b"] / 4.0, rtol=1e-6)
  lp = O.normalize_gradients(grads, jnp.array([1.0, 2.0, 4.0]), "loss+")
  np.testing.assert_allclose(
      np.diag(O.gram_from_grads(lp)), [1.0, 1 / 4, 1 / 16], rtol=1e-5)
