"""CAU objectives (§9): losses, difficulty, curricula, MGDA step, HR/NDCG.

Values are checked against NumPy re-derivations and hand-computed rankings.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignax.objectives import curriculum
from alignax.objectives import mgda
from alignax.objectives import unlearning


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture
def batch():
  rng = np.random.default_rng(0)
  return (rng.normal(size=(6, 11)).astype(np.float32),
          rng.normal(size=(6, 11)).astype(np.float32),
          rng.integers(1, 11, 6), rng.integers(1, 11, 6),
          np.array([1, 1, 0, 1, 1, 0], bool))


def test_unlearn_loss_matches_numpy(batch):
  logits, _, targets, _, mask = batch
  lp = _log_softmax(logits.astype(np.float64))[np.arange(6), targets]
  np.testing.assert_allclose(unlearning.cau_unlearn_loss(logits, targets),
                             lp.mean(), rtol=1e-5)
  np.testing.assert_allclose(
      unlearning.cau_unlearn_loss(logits, targets, mask), lp[mask].mean(),
      rtol=1e-5)


def test_normal_loss_matches_numpy_and_masks(batch):
  logits, _, _, nxt, valid = batch
  lp = _log_softmax(logits.astype(np.float64))[np.arange(6), nxt]
  np.testing.assert_allclose(unlearning.cau_normal_loss(logits, nxt, valid),
                             -lp[valid].mean(), rtol=1e-5)
  # Nothing valid (every t = n): 0, not NaN, and a zero gradient.
  none = np.zeros(6, bool)
  assert float(unlearning.cau_normal_loss(logits, nxt, none)) == 0.0
  g = jax.grad(unlearning.cau_normal_loss)(jnp.asarray(logits), nxt, none)
  assert np.all(np.isfinite(g)) and np.all(g == 0)


def test_kl_to_original_matches_numpy(batch):
  logits, orig, _, _, mask = batch
  lp, lp0 = _log_softmax(logits.astype(np.float64)), _log_softmax(
      orig.astype(np.float64))
  kl = (np.exp(lp0) * (lp0 - lp)).sum(-1)
  np.testing.assert_allclose(unlearning.kl_to_original(logits, orig),
                             kl.mean(), rtol=1e-5)
  np.testing.assert_allclose(unlearning.kl_to_original(logits, orig, mask),
                             kl[mask].mean(), rtol=1e-5)
  assert abs(float(unlearning.kl_to_original(orig, orig))) < 1e-6
  # A -inf logit (padding item) in both: finite, no NaN.
  pad = orig.copy()
  pad[:, 0] = -np.inf
  assert np.isfinite(float(unlearning.kl_to_original(pad, pad)))
  # No gradient flows into the frozen original.
  g = jax.grad(unlearning.kl_to_original, argnums=1)(logits, jnp.asarray(orig))
  assert np.all(g == 0)


def test_gradient_difficulty_matches_numpy():
  g = np.random.default_rng(1).normal(size=(5, 7))
  n = np.linalg.norm(g, axis=-1)
  np.testing.assert_allclose(
      unlearning.gradient_difficulty(g, normalize=False), n, rtol=1e-5)
  np.testing.assert_allclose(unlearning.gradient_difficulty(g),
                             (n - n.min()) / (n.max() - n.min()), atol=1e-6)
  np.testing.assert_array_equal(unlearning.gradient_difficulty(np.ones((3, 2))),
                                np.zeros(3))  # constant -> zeros, not NaN


def test_embedding_difficulty_matches_numpy():
  rng = np.random.default_rng(2)
  h, e = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
  cos = (h * e).sum(-1) / np.linalg.norm(h, axis=-1) / np.linalg.norm(e, axis=-1)
  np.testing.assert_allclose(
      unlearning.embedding_difficulty(h, e, normalize=False), cos, rtol=1e-5)
  d = unlearning.embedding_difficulty(h, e)
  np.testing.assert_allclose(d, (cos - cos.min()) / (cos.max() - cos.min()),
                             atol=1e-5)


def test_hr_ndcg_hand_computed():
  scores = np.array([[0.1, 0.9, 0.5, 0.3, 0.7],    # target 2: rank 3
                     [0.0, 0.2, 0.2, 0.9, 0.1],    # target 2: tie with 1 -> rank 2
                     [0.5, 0.1, 0.2, 0.3, 0.4]])   # target 1: rank 5
  targets = np.array([2, 2, 1])
  np.testing.assert_array_equal(unlearning.target_rank(scores, targets),
                                [3, 2, 5])
  assert float(unlearning.hit_rate_at_k(scores, targets, 1)) == 0.0
  np.testing.assert_allclose(unlearning.hit_rate_at_k(scores, targets, 2), 1 / 3)
  np.testing.assert_allclose(unlearning.hit_rate_at_k(scores, targets, 3), 2 / 3)
  np.testing.assert_allclose(unlearning.hit_rate_at_k(scores, targets, 5), 1.0)
  np.testing.assert_allclose(unlearning.ndcg_at_k(scores, targets, 3),
                             (1 / np.log2(4) + 1 / np.log2(3)) / 3, rtol=1e-6)
  np.testing.assert_allclose(
      unlearning.ndcg_at_k(scores, targets, 5),
      (1 / np.log2(4) + 1 / np.log2(3) + 1 / np.log2(6)) / 3, rtol=1e-6)
  np.testing.assert_allclose(
      unlearning.ndcg_at_k(scores, targets, 3, np.array([0, 1, 0], bool)),
      1 / np.log2(3), rtol=1e-6)


def test_hard_curriculum_orders_easy_to_hard():
  d = np.array([0.9, 0.1, 0.5, 0.3, 0.7])
  b = np.asarray(curriculum.hard_curriculum_batches(d, 2))
  np.testing.assert_array_equal(b, [[1, 3], [2, 4], [0, -1]])


def test_soft_curriculum_sample_distribution():
  d = np.array([0.0, 0.5, 1.0, 0.2])
  remaining = np.array([True, True, True, False])
  keys = jax.random.split(jax.random.key(0), 20000)
  draws = np.asarray(jax.jit(jax.vmap(lambda k: curriculum.soft_curriculum_sample(
      k, d, remaining, 1, 1.0)))(keys))[:, 0]
  assert not np.any(draws == 3)  # never a removed sample
  p = np.exp(-d[:3]) / np.exp(-d[:3]).sum()
  freq = np.bincount(draws, minlength=4)[:3] / len(draws)
  np.testing.assert_allclose(freq, p, atol=0.015)
  # Without replacement, padded with -1 beyond what is left.
  idx = np.asarray(curriculum.soft_curriculum_sample(
      jax.random.key(1), d, remaining, 5, 1.0))
  assert sorted(idx[:3].tolist()) == [0, 1, 2] and idx[3:].tolist() == [-1, -1]


def test_soft_curriculum_batches_cover_all_and_prefer_easy():
  d = np.linspace(0, 1, 9)
  b = np.asarray(curriculum.soft_curriculum_batches(jax.random.key(0), d, 4))
  assert b.shape == (3, 4)
  assert sorted(b[b >= 0].tolist()) == list(range(9)) and (b < 0).sum() == 3
  # Low temperature recovers the hard (sorted) order.
  cold = np.asarray(curriculum.soft_curriculum_batches(
      jax.random.key(0), d, 4, tau=1e-3))
  np.testing.assert_array_equal(cold, curriculum.hard_curriculum_batches(d, 4))
  # Mean position of easy samples is earlier than of hard ones, over seeds.
  orders = np.asarray(jax.jit(jax.vmap(
      lambda k: curriculum.soft_curriculum_batches(k, d, 3, tau=0.3)))(
          jax.random.split(jax.random.key(1), 300))).reshape(300, 9)
  pos = np.zeros(9)
  for order in orders:
    pos[order] += np.arange(9)
  assert np.all(np.diff(pos) > 0)


def test_mgda_step_reduces_every_objective_on_convex_toy():
  """Three convex quadratics; the MGDA direction decreases all of them."""
  centres = jnp.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [-1.0, 0.0, 1.0]])
  scales = jnp.array([1.0, 3.0, 0.5])

  def losses(x):
    return scales * jnp.sum((x[None] - centres) ** 2, axis=-1)

  x = jnp.array([2.0, -1.0, 3.0])
  for _ in range(5):
    jac = jax.jacrev(losses)(x)                      # [3, P]
    grads = [jac[i] for i in range(3)]
    w = mgda.min_norm_weights(mgda.gram_matrix(jac))
    assert np.all(np.asarray(w) >= -1e-6) and abs(float(w.sum()) - 1) < 1e-5
    d = mgda.mgda_combine(grads, w)
    # Common descent: <d, g_i> >= |d|^2 > 0 for every objective (KKT of §9.2).
    assert np.all(np.asarray(jac @ d) >= float(d @ d) - 1e-4)
    x_new = x - 1e-2 * d
    assert np.all(np.asarray(losses(x_new)) < np.asarray(losses(x)))
    x = x_new
