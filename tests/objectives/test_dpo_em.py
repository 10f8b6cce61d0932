"""DPO vs TRL 1.16 DPOTrainer._compute_loss; EM weights; MOAT pairs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import alignax.objectives as O
from tests.objectives import trl_harness


def _pairs(seed=0, b=4, l=6):
  rng = np.random.default_rng(seed)
  per_token = -rng.uniform(0.1, 2.0, (2 * b, l - 1))
  lengths = rng.integers(1, l, 2 * b)
  lengths[0] = 0  # an empty chosen completion
  # TRL's completion_mask is [2B, L] and is shifted by one inside; the fused
  # LM head returns log-prob 0 on ignored labels, so we zero them here too.
  mask_full = np.zeros((2 * b, l))
  for i, n in enumerate(lengths):
    mask_full[i, l - n:] = 1
  shift_mask = mask_full[:, 1:]
  ref = rng.normal(-5, 1, 2 * b)
  return per_token * shift_mask, mask_full, shift_mask, ref


@pytest.mark.parametrize("loss_type,beta,eps", [
    ("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.0), ("robust", 0.2, 0.1),
    ("hinge", 0.3, 0.0), ("ipo", 0.1, 0.0)])
def test_dpo_matches_trl(loss_type, beta, eps):
  per_token, mask_full, shift_mask, ref = _pairs()
  b = per_token.shape[0] // 2
  t_loss, t_grad, t_metrics = trl_harness.trl_dpo_loss(
      per_token, mask_full, ref[:b], ref[b:], beta=beta, loss_type=loss_type,
      label_smoothing=eps)
  lengths = mask_full.sum(1)

  def ours(pt):
    seq = O.sequence_logprobs(pt, jnp.asarray(shift_mask))
    return O.dpo_loss(seq[:b], seq[b:], ref[:b], ref[b:], beta=beta,
                      label_smoothing=eps, loss_type=loss_type,
                      chosen_lengths=lengths[:b], rejected_lengths=lengths[b:])

  with jax.enable_x64(True):
    (loss, metrics), grad = jax.value_and_grad(ours, has_aux=True)(
        jnp.asarray(per_token))
  np.testing.assert_allclose(float(loss), t_loss, rtol=1e-6)
  # TRL sums all positions (its LM head zeroes ignored labels, so their
  # gradient is discarded by the model); compare on completion tokens.
  on = shift_mask > 0
  np.testing.assert_allclose(np.asarray(grad)[on], t_grad[on], rtol=1e-6,
                             atol=1e-9)
  assert np.all(np.asarray(grad)[~on] == 0)
  assert np.abs(t_grad).max() > 1e-4
  for k in ("rewards/chosen", "rewards/rejected", "rewards/accuracies",
            "rewards/margins"):
    np.testing.assert_allclose(float(metrics[k]), t_metrics[k], rtol=1e-6,
                               atol=1e-12, err_msg=k)


def test_dpo_label_smoothing_is_cdpo():
  """TRL's "sigmoid" ignores label_smoothing; ours is the cDPO form (§5)."""
  c, r = jnp.array([-1.0, -2.0]), jnp.array([-3.0, -1.0])
  rc, rr = jnp.array([-1.5, -2.5]), jnp.array([-2.0, -2.0])
  d = np.array([(-1 + 1.5) - (-3 + 2), (-2 + 2.5) - (-1 + 2)])
  ls = lambda x: -np.log1p(np.exp(-x))
  expected = np.mean(-(0.9) * ls(0.1 * d) - 0.1 * ls(-0.1 * d))
  loss, _ = O.dpo_loss(c, r, rc, rr, beta=0.1, label_smoothing=0.1)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  assert set(["sigmoid", "ipo", "hinge", "robust"]) <= set(O.DPO_LOSSES)


def test_dpo_jit_grad_and_stable_for_large_margins():
  f = jax.jit(lambda c: O.dpo_loss(c, jnp.array([-500.0]), jnp.array([0.0]),
                                   jnp.array([0.0]), beta=1.0)[0])
  g = jax.grad(f)(jnp.array([500.0]))
  assert np.isfinite(f(jnp.array([-500.0]))) and np.isfinite(g).all()


def test_em_weights_softmax_per_group():
  ll = jnp.array([-1.0, -2.0, -3.0, 0.0, 0.0, jnp.nan, jnp.nan, jnp.nan, -7.0])
  w = O.em_weights(ll, 3, temperature=2.0)
  e = np.exp(np.array([-1.0, -2.0, -3.0]) / 2)
  np.testing.assert_allclose(w[:3], e / e.sum(), rtol=1e-6)
  np.testing.assert_allclose(w[3:6], [0.5, 0.5, 0.0])
  np.testing.assert_allclose(w[6:], [0.0, 0.0, 1.0])
  big = O.em_weights(jnp.array([1000.0, 999.0]), 2)  # no overflow
  np.testing.assert_allclose(big, [1 / (1 + np.exp(-1)), 1 / (1 + np.e)],
                             rtol=1e-6)
  np.testing.assert_allclose(O.em_weights(jnp.array([-3.0, 4.0]), 1), [1, 1])
  with pytest.raises(ValueError):
    O.em_weights(ll, 3, temperature=0.0)


def test_segment_em_weights_matches_dense_and_handles_empty():
  ll = jnp.array([-1.0, -2.0, -0.5, -4.0, jnp.nan])
  ids = jnp.array([0, 0, 2, 2, 3])
  w = O.segment_em_weights(ll, ids, 5)
  np.testing.assert_allclose(w[:2], O.em_weights(ll[:2], 2), rtol=1e-6)
  np.testing.assert_allclose(w[2:4], O.em_weights(ll[2:4], 2), rtol=1e-6)
  assert float(w[4]) == 0.0


def test_answer_loglik_and_weighted_nll():
  logp = jnp.array([[-1.0, -3.0, -9.0], [-2.0, -9.0, -9.0], [-9.0, -9, -9]])
  mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
  np.testing.assert_allclose(O.answer_loglik(logp, mask), [-2.0, -2.0, 0.0])
  w = jnp.array([0.25, 0.75, 0.5])
  value, norm = O.weighted_sequence_nll(logp, mask, w)
  np.testing.assert_allclose(norm, 1.5)
  np.testing.assert_allclose(value, (0.25 * 2 + 0.75 * 2) / 1.5)
  # accumulation: value * normaliser adds up across micro-batches
  v1, n1 = O.weighted_sequence_nll(logp[:1], mask[:1], w[:1])
  v2, n2 = O.weighted_sequence_nll(logp[1:], mask[1:], w[1:])
  np.testing.assert_allclose((v1 * n1 + v2 * n2) / (n1 + n2), value, rtol=1e-6)
  g = jax.grad(lambda lp: O.weighted_sequence_nll(lp, mask, w)[0])(logp)
  assert np.all(np.asarray(g)[mask == 0] == 0)
  np.testing.assert_allclose(O.weighted_sequence_nll(logp, mask, 0 * w)[0], 0)


def test_perplexity_scores_and_dpo_pairs():
  logp = jnp.array([[-1.0, -3.0], [-1e-12, -2.0], [-0.5, -0.5], [-0.1, 0.0]])
  mask = jnp.array([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
  np.testing.assert_allclose(O.perplexity_scores(logp, mask), [2, 1, 0.5, 0.1])
  # MOAT counts only tokens with CE >= 1e-9
  np.testing.assert_allclose(
      O.perplexity_scores(logp, mask, count_threshold=1e-9)[1], 2.0)
  scores = jnp.array([2.0, 1.0, 1.0, 3.0, 0.5, 0.55, 0.52, 0.5])
  chosen, rejected, valid = O.build_dpo_pairs(scores, 4, min_gap=0.1)
  np.testing.assert_array_equal(chosen, [1, 4])  # ties: first index
  np.testing.assert_array_equal(rejected, [3, 5])
  np.testing.assert_array_equal(valid, [True, False])


def test_em_weightings_registry_matches_numpy():
  from alignax.objectives import em
  ll = np.asarray([-1.0, -2.0, -0.5, -3.0, -1.0, -1.0], np.float32)
  ok = np.asarray([1, 0, 1, 0, 0, 1], np.float32)
  z = (ll / 0.5).reshape(2, 3)
  soft = (np.exp(z - z.max(1, keepdims=True))
          / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)).reshape(-1)
  want = {"exsearch": soft, "uniform": np.full(6, 1 / 3), "rejection_sft": ok}
  assert sorted(em.EM_WEIGHTINGS) == sorted(want)
  for name, w in want.items():
    np.testing.assert_allclose(em.EM_WEIGHTINGS[name](ll, ok, 3, temperature=0.5), w,
                               rtol=1e-6, err_msg=name)
