"""Objectives: a NaN/inf at a masked-out position never reaches the loss or
the gradient; shape errors name the arguments; an infinite reward is an error."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignax import objectives
from alignax.objectives import dpo, em, primitives as P, unlearning

N, T = 4, 6


def _batch(seed=0):
  rng = np.random.RandomState(seed)
  logp = -rng.rand(N, T).astype(np.float32) - 0.1
  old = logp + 0.05 * rng.randn(N, T).astype(np.float32)
  mask = np.ones((N, T), np.float32)
  mask[:, 4:] = 0   # padding
  mask[1, 2:] = 0
  adv = rng.randn(N).astype(np.float32)
  return logp, old, adv, mask


def _poison(x, mask, value):
  return np.where(mask == 0, value, x).astype(np.float32)


LOSS_TYPES = ["grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo", "vespo", "luspo"]


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_at_masked_position_leaves_loss_and_grad_unchanged(loss_type, value):
  logp, old, adv, mask = _batch()
  kw = dict(loss_type=loss_type, max_completion_length=T, beta=0.04)

  def loss(lp, old, ref):
    return objectives.policy_loss(lp, old, adv, mask, ref_logprobs=ref, **kw)[0]

  clean_l, clean_g = jax.value_and_grad(loss)(logp, old, old - 0.1)
  bad = [_poison(x, mask, value) for x in (logp, old, old - 0.1)]
  l, g = jax.value_and_grad(loss)(*bad)
  assert np.isfinite(l) and np.all(np.isfinite(g))
  np.testing.assert_allclose(l, clean_l, rtol=1e-6)
  np.testing.assert_allclose(g, clean_g, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_nan_in_a_fully_masked_row(level):
  logp, old, adv, mask = _batch()
  mask[2] = 0
  logp, old = _poison(logp, mask, np.nan), _poison(old, mask, np.nan)
  adv[2] = np.nan
  f = lambda lp: objectives.policy_loss(lp, old, adv, mask, loss_type="grpo",
                                        importance_sampling_level=level)[0]
  l, g = jax.value_and_grad(f)(logp)
  assert np.isfinite(l) and np.all(np.isfinite(g))


MASKED_FNS = {
    "sequence_logprobs": lambda lp, m: dpo.sequence_logprobs(lp, m).sum(),
    "perplexity_scores": lambda lp, m: dpo.perplexity_scores(lp, m).sum(),
    "answer_loglik": lambda lp, m: em.answer_loglik(lp, m).sum(),
    "weighted_sequence_nll": lambda lp, m: em.weighted_sequence_nll(
        lp, m, jnp.ones(N))[0],
    "masked_mean": lambda lp, m: P.masked_mean(lp, m),
    "kl_penalized_rewards": lambda lp, m: objectives.kl_penalized_rewards(
        jnp.ones(N), lp, lp * 0.5, m, 0.1).sum(),
}


@pytest.mark.parametrize("name", sorted(MASKED_FNS))
def test_masked_reductions_ignore_nan_padding(name):
  logp, _, _, mask = _batch()
  f = MASKED_FNS[name]
  clean = jax.value_and_grad(f)(logp, mask)
  l, g = jax.value_and_grad(f)(_poison(logp, mask, np.nan), mask)
  assert np.isfinite(l) and np.all(np.isfinite(g)), (l, g)
  np.testing.assert_allclose(l, clean[0], rtol=1e-6)
  np.testing.assert_allclose(g, clean[1], rtol=1e-6)


def test_unlearning_loss_ignores_nan_rows():
  logits = np.random.RandomState(0).randn(4, 7).astype(np.float32)
  logits[3] = np.nan
  mask = np.array([True, True, True, False])
  f = lambda x: unlearning.cau_unlearn_loss(x, jnp.array([1, 2, 3, 4]), mask)
  l, g = jax.value_and_grad(f)(logits)
  assert np.isfinite(l) and np.all(np.isfinite(g))


SHAPES = [
    ("policy_loss mask", lambda: objectives.policy_loss(
        jnp.zeros((N, T)), None, jnp.zeros(N), jnp.ones((N, T - 1))),
     ["logprobs (4, 6)", "mask (4, 5)"]),
    ("policy_loss old", lambda: objectives.policy_loss(
        jnp.zeros((N, T)), jnp.zeros((N, T + 1)), jnp.zeros(N), jnp.ones((N, T))),
     ["old_logprobs (4, 7)"]),
    ("policy_loss advantages", lambda: objectives.policy_loss(
        jnp.zeros((N, T)), None, jnp.zeros(N + 1), jnp.ones((N, T))),
     ["advantages has shape (5, 1)", "N = logprobs.shape[0] = 4"]),
    ("policy_loss ref", lambda: objectives.policy_loss(
        jnp.zeros((N, T)), None, jnp.zeros(N), jnp.ones((N, T)), beta=0.1,
        ref_logprobs=jnp.zeros((N, 2))), ["ref_logprobs (4, 2)"]),
    ("policy_loss rank", lambda: objectives.policy_loss(
        jnp.zeros((T,)), None, jnp.zeros(1), jnp.ones((T,))), ["logprobs must have rank 2"]),
    ("policy_loss level", lambda: objectives.policy_loss(
        jnp.zeros((N, T)), None, jnp.zeros(N), jnp.ones((N, T)),
        importance_sampling_level="seq"), ["importance_sampling_level='seq'", "sequence"]),
    ("grpo_advantages group", lambda: objectives.grpo_advantages(jnp.zeros(6), 4),
     ["rewards has N=6", "group_size=4"]),
    ("grpo_advantages rank", lambda: objectives.grpo_advantages(jnp.zeros((2, 4)), 4),
     ["rewards must have rank 1"]),
    ("grpo_advantages group_size", lambda: objectives.grpo_advantages(jnp.zeros(4), 2.0),
     ["group_size must be an integer"]),
    ("dpo_loss", lambda: objectives.dpo_loss(jnp.zeros(3), jnp.zeros(3), jnp.zeros(2),
                                             jnp.zeros(3)), ["ref_chosen_logps (2,)"]),
    ("weighted_sequence_nll", lambda: em.weighted_sequence_nll(
        jnp.zeros((N, T)), jnp.ones((N, T)), jnp.ones(N + 2)), ["weights has shape (6,)"]),
    ("answer_loglik", lambda: em.answer_loglik(jnp.zeros((N, T)), jnp.ones((N, 3))),
     ["answer_mask (4, 3)"]),
    ("em_weights", lambda: em.em_weights(jnp.zeros(5), 2), ["log_likelihoods has N=5"]),
    ("grpo_advantages_multi weights", lambda: objectives.grpo_advantages_multi(
        jnp.zeros((4, 2)), jnp.ones(3), 2), ["weights has shape (3,)"]),
    ("cau_unlearn_loss", lambda: unlearning.cau_unlearn_loss(
        jnp.zeros((4, 7)), jnp.zeros(3, int)), ["target_items has shape (3,)"]),
    ("token_logprobs", lambda: P.token_logprobs(jnp.zeros((2, 5, 9)), jnp.zeros((2, 4), int)),
     ["logits (2, 5, 9)", "tokens' shape (2, 4)"]),
]


@pytest.mark.parametrize("name,call,words", SHAPES, ids=[s[0] for s in SHAPES])
def test_shape_errors_name_the_arguments(name, call, words):
  with pytest.raises(ValueError) as e:
    call()
  for w in words:
    assert w in str(e.value), str(e.value)


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo", "f_grpo"])
@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_infinite_reward_is_an_error(estimator, value):
  rewards = jnp.array([1.0, 0.0, value, 0.0])
  fn = objectives.ADVANTAGE_ESTIMATORS[estimator]
  with pytest.raises(ValueError, match=r"rewards\[2\] = -?inf: rewards must be finite"):
    fn(rewards, 2)
  # Under jit it cannot raise: its group's advantages are NaN (the loss guard
  # stops the run), the other group's are unchanged.
  adv = jax.jit(lambda r: fn(r, 2))(rewards)
  assert np.all(np.isnan(adv[2:])) and np.all(np.isfinite(adv[:2]))


def test_nan_reward_is_still_unscorable_with_advantage_zero():
  adv = objectives.grpo_advantages(jnp.array([1.0, 0.0, jnp.nan, 0.5, 0.25, 0.0]), 3)
  assert adv[2] == 0 and np.all(np.isfinite(adv))
