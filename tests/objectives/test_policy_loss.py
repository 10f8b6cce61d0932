"""policy_loss vs TRL 1.16 GRPOTrainer._compute_loss, called directly.

Values and gradients with respect to the log-probs, float64 on both sides,
relative error <= 1e-5 (observed ~1e-12).
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import alignax.objectives as O
from tests.objectives import trl_harness

RTOL = 1e-5
LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo",
              "vespo"]
CLIPPED = ["grpo", "bnpo", "dr_grpo", "dapo", "luspo"]
MAX_LEN = 9  # > padded length T = 6: dr_grpo must use it, not T.


def _batch(seed=0, n=6, t=6, drift=0.0):
  rng = np.random.default_rng(seed)
  logp = -rng.uniform(0.05, 3.0, (n, t))
  old = logp - drift + rng.normal(0, 0.3, (n, t))  # ratios well outside [0.8, 1.28]
  ref = logp + rng.normal(0, 0.2, (n, t))
  lengths = np.array([6, 3, 0, 5, 1, 4])  # ragged, one all-zero row
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float64)
  rewards = np.array([1.0, 0.0, 0.3, 0.3, 2.0, -1.0])
  return logp, old, ref, mask, rewards


def _ours(logp, old, adv, mask, ref, **kw):
  with jax.enable_x64(True):
    f = lambda lp: O.policy_loss(jnp.asarray(lp), old, adv, mask,
                                 ref_logprobs=ref, **kw)
    (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(
        jnp.asarray(logp))
    return float(loss), np.asarray(grad), {k: float(v) for k, v in
                                           metrics.items()}


def _compare(loss_type, old_given=True, drift=0.0, **kw):
  logp, old, ref, mask, rewards = _batch(drift=drift)
  adv = trl_harness.trl_grpo_advantages(rewards, 2).astype(np.float64)
  old = old if old_given else None
  kw.setdefault("max_completion_length", MAX_LEN)
  ref_arg = ref if kw.get("beta", 0.0) else None
  t_loss, t_grad, t_metrics = trl_harness.trl_grpo_loss(
      logp, old, adv, mask, loss_type=loss_type, ref_logprobs=ref_arg, **kw)
  o_loss, o_grad, o_metrics = _ours(
      logp, None if old is None else jnp.asarray(old), jnp.asarray(adv),
      jnp.asarray(mask), None if ref_arg is None else jnp.asarray(ref),
      loss_type=loss_type, **kw)
  np.testing.assert_allclose(o_loss, t_loss, rtol=RTOL, atol=1e-12)
  scale = np.max(np.abs(t_grad))
  assert scale > 0, "degenerate case: TRL gradient is zero"
  np.testing.assert_allclose(o_grad, t_grad, rtol=RTOL, atol=RTOL * scale)
  # masked positions (incl. the all-zero row) get no gradient in either
  assert np.all(o_grad[mask == 0] == 0)
  for key in ("kl", "clip_ratio/low_mean", "clip_ratio/high_mean",
              "clip_ratio/region_mean", "cispo_clip_ratio"):
    if key in t_metrics:
      np.testing.assert_allclose(o_metrics[key], t_metrics[key], rtol=1e-6,
                                 atol=1e-12, err_msg=key)
  return o_loss


KL_CASES = [dict(beta=0.0), dict(beta=0.04, use_bias_correction_kl=True),
            dict(beta=0.1, use_bias_correction_kl=False)]


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("kl", KL_CASES, ids=["beta0", "kl_bc", "kl_nobc"])
def test_matches_trl(loss_type, level, kl):
  # asymmetric clipping (DAPO clip-higher); cispo reads epsilon_high as a cap
  eps_high = 1.1 if loss_type == "cispo" else 0.28
  _compare(loss_type, importance_sampling_level=level, epsilon_low=0.2,
           epsilon_high=eps_high, **kl)


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", CLIPPED)
def test_matches_trl_with_delta(loss_type, level):
  # policy drift (ratios ~ e^0.4) so sequence-level ratios also exceed delta
  loss = _compare(loss_type, importance_sampling_level=level, delta=1.3,
                  beta=0.04, drift=0.4)
  no_delta = _compare(loss_type, importance_sampling_level=level, beta=0.04,
                      drift=0.4)
  assert loss != no_delta  # the delta clamp is active in this batch


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_matches_trl_with_off_policy_mask(loss_type):
  # threshold between the per-row mean KLs, so some negative rows are dropped
  loss = _compare(loss_type, off_policy_mask_threshold=0.05, drift=0.1)
  assert loss != _compare(loss_type, drift=0.1)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_matches_trl_without_old_logprobs(loss_type):
  # num_iterations == 1: old = logp.detach(); ratio 1 but gradient flows.
  _compare(loss_type, old_given=False, beta=0.04)


WORKED = dict(
    logp=[[-1.0, -0.5, -2.0], [-0.2, -1.5, 0.0], [-0.7, -0.9, -1.1],
          [-0.3, 0.0, 0.0]],
    old=[[-1.1, -0.5, -1.5], [-0.4, -1.2, 0.0], [-0.7, -1.0, -1.0],
         [-0.3, 0.0, 0.0]],
    ref=[[-1.0, -0.6, -1.8], [-0.3, -1.3, 0.0], [-0.8, -0.9, -1.2],
         [-0.2, 0.0, 0.0]],
    mask=[[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]])


@pytest.mark.parametrize("loss_type,beta,bc,kw,expected", [
    ("grpo", 0.0, True, {}, 0.01887723223105059),
    ("grpo", 0.04, True, {}, 0.019127872621146222),
    ("grpo", 0.04, False, {}, 0.019179859000347837),
    ("bnpo", 0.0, True, {}, -0.05422732847589592),
    ("dapo", 0.04, True, {}, -0.053987469950031404),
    ("dapo", 0.04, False, {}, -0.053928101335718924),
    ("dr_grpo", 0.0, True, {}, -0.04067049635692194),
    ("dr_grpo", 0.04, True, {}, -0.040490602462523555),
    ("dr_grpo", 0.04, False, {}, -0.04044607600178919),
    ("grpo", 0.0, True, {"importance_sampling_level": "sequence"},
     0.013443045846180945),
    ("dapo", 0.0, True, {"importance_sampling_level": "sequence"},
     -0.05680101298694709),
    ("dapo", 0.0, True, {"delta": 1.1}, -0.05550244194705294),
])
def test_spec_worked_example(loss_type, beta, bc, kw, expected):
  """docs/algorithms.md §2.6 (G=2, N=4, T=3), float64, rtol 1e-6."""
  with jax.enable_x64(True):
    adv = O.grpo_advantages(jnp.array([1.0, 0.0, 0.5, 0.5]), 2)
    np.testing.assert_allclose(adv, [0.7070068, -0.7070068, 0, 0], rtol=1e-6)
    w = {k: jnp.asarray(v, jnp.float64) for k, v in WORKED.items()}
    loss, _ = O.policy_loss(w["logp"], w["old"], adv, w["mask"],
                            loss_type=loss_type, beta=beta, ref_logprobs=w["ref"],
                            use_bias_correction_kl=bc, max_completion_length=3,
                            **kw)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)


def test_worked_example_row_hand_check():
  """§2.6 hand check: row losses -0.63906 and 0.71457."""
  with jax.enable_x64(True):
    w = {k: jnp.asarray(v, jnp.float64) for k, v in WORKED.items()}
    adv = jnp.array([0.7070068, -0.7070068, 0.0, 0.0])
    per_token = O.clipped_surrogate(jnp.exp(w["logp"] - w["old"]),
                                    adv[:, None], 0.2, 0.2)[0]
    np.testing.assert_allclose(per_token[0], [-0.78137, -0.70701, -0.42882],
                               atol=1e-5)
    rows = O.masked_mean(per_token, w["mask"], axis=-1)
    np.testing.assert_allclose(rows[:2], [-0.63906, 0.71457], atol=1e-5)


def test_dapo_global_token_count():
  logp, old, _, mask, rewards = _batch()
  adv = O.grpo_advantages(jnp.asarray(rewards, jnp.float32), 2)
  loss, m = O.policy_loss(logp.astype(np.float32), old.astype(np.float32), adv,
                          mask, loss_type="dapo", num_items_in_batch=100.0)
  num, den, _ = O.policy_loss_terms(logp.astype(np.float32),
                                    old.astype(np.float32), adv, mask,
                                    loss_type="dapo")
  np.testing.assert_allclose(loss, num / 100.0, rtol=1e-6)
  assert float(den) == mask.sum()


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_gradient_accumulation_matches_full_batch(loss_type, level):
  """Sum of micro-batch numerator grads / summed normalisers == full grad."""
  rng = np.random.default_rng(1)
  n, t = 16, 7
  logp = jnp.asarray(-rng.uniform(0.1, 2.0, (n, t)), jnp.float32)
  old = logp + jnp.asarray(rng.normal(0, 0.2, (n, t)), jnp.float32)
  ref = logp + jnp.asarray(rng.normal(0, 0.2, (n, t)), jnp.float32)
  lengths = rng.integers(0, t + 1, n)
  lengths[:4] = 0  # one micro-batch has no active token at all
  mask = jnp.asarray(np.arange(t)[None] < lengths[:, None], jnp.float32)
  adv = O.grpo_advantages(jnp.asarray(rng.normal(size=n), jnp.float32), 4)
  kw = dict(loss_type=loss_type, importance_sampling_level=level, beta=0.04,
            max_completion_length=10, epsilon_high=0.28)
  if loss_type == "cispo":
    kw["epsilon_high"] = 1.1

  def terms(lp, sl):
    return O.policy_loss_terms(lp, old[sl], adv[sl], mask[sl],
                               ref_logprobs=ref[sl], **kw)[:2]

  full_loss = lambda lp: O.policy_loss(lp, old, adv, mask, ref_logprobs=ref,
                                       **kw)[0]
  full_grad = jax.grad(full_loss)(logp)
  grads, dens = [], []
  for i in range(4):
    sl = slice(4 * i, 4 * i + 4)
    num_fn = lambda lp, sl=sl: terms(lp, sl)[0]
    grads.append(jax.grad(num_fn)(logp[sl]))
    dens.append(terms(logp[sl], sl)[1])
  acc = jnp.concatenate(grads) / jnp.maximum(sum(dens), 1.0)
  np.testing.assert_allclose(acc, full_grad, atol=1e-6, rtol=1e-6)
  assert float(jnp.abs(full_grad).max()) > 1e-3


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_jit_and_grad(loss_type):
  _, old, ref, mask, rewards = _batch(t=6)
  logp = jnp.asarray(_batch()[0], jnp.float32)
  adv = O.grpo_advantages(jnp.asarray(rewards, jnp.float32), 2)
  f = functools.partial(O.policy_loss, loss_type=loss_type, beta=0.04,
                        max_completion_length=MAX_LEN)
  g = jax.jit(jax.grad(lambda lp, o, a, m, r: f(lp, o, a, m,
                                                ref_logprobs=r)[0]))
  grad = g(logp, jnp.asarray(old, jnp.float32), adv,
           jnp.asarray(mask, jnp.float32), jnp.asarray(ref, jnp.float32))
  eager = jax.grad(lambda lp: f(lp, jnp.asarray(old, jnp.float32), adv,
                                jnp.asarray(mask, jnp.float32),
                                ref_logprobs=jnp.asarray(ref, jnp.float32))[0])(logp)
  assert np.all(np.isfinite(grad))
  np.testing.assert_allclose(grad, eager, rtol=1e-5, atol=1e-7)


def test_bf16_inputs_computed_in_float32():
  logp, old, _, mask, rewards = _batch()
  adv = O.grpo_advantages(jnp.asarray(rewards), 2)
  loss, _ = O.policy_loss(jnp.asarray(logp, jnp.bfloat16),
                          jnp.asarray(old, jnp.bfloat16), adv, mask,
                          loss_type="grpo")
  assert loss.dtype == jnp.float32


def test_registry_lookup_and_errors():
  assert set(LOSS_TYPES) <= set(O.POLICY_LOSSES)
  assert O.get_policy_loss("dapo").uses_global_token_count
  with pytest.raises(ValueError, match="unknown policy loss"):
    O.get_policy_loss("nope")
  with pytest.raises(ValueError, match="max_completion_length"):
    O.policy_loss(jnp.zeros((2, 3)), None, jnp.zeros(2), jnp.ones((2, 3)),
                  loss_type="dr_grpo")
  with pytest.raises(ValueError, match="ref_logprobs"):
    O.policy_loss(jnp.zeros((2, 3)), None, jnp.zeros(2), jnp.ones((2, 3)),
                  beta=0.1)


def test_rloo_sequence_loss_matches_clipped_surrogate():
  seq = jnp.array([-3.0, -2.0, -5.0])
  old = jnp.array([-3.5, -1.0, -5.0])
  adv = jnp.array([1.0, -1.0, 0.5])
  ratio = np.exp(np.array([0.5, -1.0, 0.0]))
  clipped = np.clip(ratio, 0.8, 1.2)
  expected = np.mean(-np.minimum(ratio * adv, clipped * adv))
  np.testing.assert_allclose(O.rloo_sequence_loss(seq, old, adv), expected,
                             rtol=1e-6)


def test_policy_loss_lists_its_keywords_as_policy_loss_terms_does():
  import inspect
  loss = inspect.signature(O.policy_loss).parameters
  terms = inspect.signature(O.policy_loss_terms).parameters
  assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in loss.values())
  assert set(terms) <= set(loss) and set(loss) - set(terms) == {"num_items_in_batch"}
  for name, p in terms.items():
    assert loss[name].default == p.default, name
  fields = {f.name for f in dataclasses.fields(O.PolicyLossConfig)}
  assert fields == set(terms) - {"logprobs", "old_logprobs", "advantages", "mask",
                                 "ref_logprobs", "sampling_logprobs"}
