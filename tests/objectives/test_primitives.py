"""Primitives vs TRL's own utils (selective_log_softmax, entropy_from_logits)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from trl.trainer.utils import entropy_from_logits, selective_log_softmax

import alignax.objectives as O


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_and_entropy_match_trl(temperature):
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (3, 5, 11))
  tokens = rng.integers(0, 11, (3, 5))
  z = torch.tensor(logits) / temperature  # TRL: logits.div_(self.temperature)
  ref_lp = selective_log_softmax(z, torch.tensor(tokens)).numpy()
  ref_h = entropy_from_logits(z).numpy()
  with jax.enable_x64(True):
    lp = O.token_logprobs(jnp.asarray(logits), jnp.asarray(tokens),
                          temperature=temperature)
    h = O.token_entropy(jnp.asarray(logits), temperature=temperature)
  np.testing.assert_allclose(lp, ref_lp, rtol=1e-10)
  np.testing.assert_allclose(h, ref_h, rtol=1e-10)


def test_temperature_zero_rejected():
  with pytest.raises(ValueError, match="temperature"):
    O.token_logprobs(jnp.zeros((1, 2, 3)), jnp.zeros((1, 2), jnp.int32),
                     temperature=0.0)
  with pytest.raises(ValueError, match="temperature"):
    O.token_entropy(jnp.zeros((1, 3)), temperature=0.0)


def test_masked_reductions_empty_mask_is_zero_not_nan():
  x = jnp.array([[1.0, 2.0], [3.0, 4.0]])
  m = jnp.array([[1.0, 0.0], [0.0, 0.0]])
  np.testing.assert_allclose(O.masked_sum(x, m, axis=1), [1.0, 0.0])
  np.testing.assert_allclose(O.masked_mean(x, m, axis=1), [1.0, 0.0])
  np.testing.assert_allclose(O.masked_mean(x, 0 * m), 0.0)
  g = jax.grad(lambda v: O.masked_mean(v, 0 * m))(x)
  assert np.all(np.asarray(g) == 0)


def test_kl_estimators():
  lp = jnp.array([[-1.0, -2.0]])
  ref = jnp.array([[-1.5, -1.0]])
  d = np.array([[0.5, -1.0]])
  np.testing.assert_allclose(O.kl_estimator(lp, ref, "k1"), d)
  np.testing.assert_allclose(O.kl_estimator(lp, ref, "k2"), 0.5 * d ** 2)
  np.testing.assert_allclose(O.kl_estimator(lp, ref, "k3"),
                             np.exp(-d) + d - 1, rtol=1e-6)
  assert np.all(np.asarray(O.kl_estimator(lp, ref, "k3")) >= 0)
  big = O.kl_estimator(jnp.array([[-50.0]]), jnp.array([[0.0]]), "k3",
                       clamp=(20.0, 10.0))
  np.testing.assert_allclose(big, 10.0)  # verl clamp
  with pytest.raises(ValueError):
    O.kl_estimator(lp, ref, "k9")


def test_aggregate_loss_modes():
  per = jnp.array([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
  m = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
  v, n = O.aggregate_loss(per, m, "seq_mean_token_mean")
  np.testing.assert_allclose([v, n], [(1.5 + 4.0) / 2, 2])
  v, n = O.aggregate_loss(per, m, "token_mean")
  np.testing.assert_allclose([v, n], [7.0 / 3, 3])
  v, n = O.aggregate_loss(per, m, "dr_grpo", max_len=5)
  np.testing.assert_allclose([v, n], [7.0 / 10, 10])
  v, _ = O.aggregate_loss(per, m, "dapo", num_items=14)
  np.testing.assert_allclose(v, 0.5)
  v, _ = O.aggregate_loss(per, m, "seq_length_weighted")
  np.testing.assert_allclose(v, 3.5)


def test_nan_group_stats_like_torch():
  x = np.array([1.0, np.nan, 3.0, 2.0, np.nan, np.nan])
  t = torch.tensor(x).view(-1, 3)
  np.testing.assert_allclose(
      O.nan_group_mean(jnp.asarray(x), 3),
      torch.nanmean(t, 1).repeat_interleave(3).numpy())
  from trl.trainer.utils import nanstd  # pylint: disable=g-import-not-at-top
  np.testing.assert_allclose(
      O.nan_group_std(jnp.asarray(x), 3),
      nanstd(t, dim=1).repeat_interleave(3).numpy(), equal_nan=True)
