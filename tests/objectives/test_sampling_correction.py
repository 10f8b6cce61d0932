"""The sampler importance-sampling correction (off-policy rollouts).

`sampling_importance_weights` against a NumPy re-derivation written from the
definition (docs/algorithms.md §2.3; TRL's vllm_importance_sampling_* options):

  token_truncate:    w[n, t] = min(exp(old[n, t] - sampling[n, t]), cap)
  token_mask:        w[n, t] = exp(...) if exp(...) <= cap else 0
  sequence_truncate: w[n]    = min(exp(sum_t (old - sampling) m), cap)
  sequence_mask:     w[n]    = exp(sum_t ...) if <= cap else 0
  (and the lower bound alike when given)

then the policy loss with the correction (the per-token loss times w), its
gradient, and TRL 1.16's own code: the ratio block of
`_generate_and_score_completions` executed verbatim and `_compute_loss` with
`use_vllm=True`.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignax import objectives as O

MODES = O.SAMPLING_IS_MODES


def _inputs(seed=0, n=6, t=5, spread=0.8):
  rng = np.random.RandomState(seed)
  mask = (rng.rand(n, t) < 0.8).astype(np.float32)
  mask[:, 0] = 1.0
  mask[-1] = 0.0  # an empty row
  old = (-1.5 + 0.5 * rng.randn(n, t)).astype(np.float32)
  sampling = (old + spread * rng.randn(n, t)).astype(np.float32)
  return old, sampling, mask


def _numpy_weights(old, sampling, mask, mode, cap, floor):
  """From the definition, one entry at a time (float64)."""
  old, sampling, mask = (np.asarray(x, np.float64) for x in (old, sampling, mask))
  n, t = old.shape
  lo = -math.inf if floor is None else floor
  hi = math.inf if cap is None else cap

  def bound(r):
    if mode.endswith("truncate"):
      return min(max(r, lo), hi)
    return r if lo <= r <= hi else 0.0

  if mode.startswith("token"):
    w = np.ones((n, t))
    for i in range(n):
      for j in range(t):
        d = (old[i, j] - sampling[i, j]) if mask[i, j] else 0.0
        w[i, j] = bound(math.exp(d))
    return w
  w = np.ones((n, 1))
  for i in range(n):
    s = sum(old[i, j] - sampling[i, j] for j in range(t) if mask[i, j])
    w[i, 0] = bound(math.exp(s))
  return w


@pytest.mark.parametrize("floor", [None, 0.5])
@pytest.mark.parametrize("cap", [3.0, 1.2, None])
@pytest.mark.parametrize("mode", MODES)
def test_weights_match_the_definition(mode, cap, floor):
  old, sampling, mask = _inputs()
  w, metrics = O.sampling_importance_weights(old, sampling, mask, mode=mode, clip_max=cap,
                                             clip_min=floor)
  expected = _numpy_weights(old, sampling, mask, mode, cap, floor)
  np.testing.assert_allclose(np.asarray(w), expected, rtol=2e-5)
  # Metrics: over masked tokens (token modes) or rows (sequence modes).
  sel = mask > 0 if mode.startswith("token") else np.ones(expected.shape, bool)
  raw = _numpy_weights(old, sampling, mask, mode, None, None)
  outside = ((raw > (cap or math.inf)) | (raw < (floor or -math.inf)))[sel]
  np.testing.assert_allclose(metrics["sampling/importance_sampling_ratio/mean"],
                             expected[sel].mean(), rtol=2e-5)
  np.testing.assert_allclose(metrics["sampling/importance_sampling_ratio/min"],
                             expected[sel].min(), rtol=2e-5)
  np.testing.assert_allclose(metrics["sampling/importance_sampling_ratio/max"],
                             expected[sel].max(), rtol=2e-5)
  np.testing.assert_allclose(metrics["sampling/importance_sampling_ratio/clipped_fraction"],
                             outside.mean(), rtol=1e-6)
  delta = np.abs(old - sampling)[mask > 0]
  np.testing.assert_allclose(metrics["sampling/sampling_logp_difference/mean"], delta.mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(metrics["sampling/sampling_logp_difference/max"], delta.max(),
                             rtol=1e-6)


def test_truncation_is_active_and_nan_sampler_logprobs_count_as_no_correction():
  old, sampling, mask = _inputs(spread=2.0)
  w, m = O.sampling_importance_weights(old, sampling, mask)
  assert 0 < float(m["sampling/importance_sampling_ratio/clipped_fraction"]) < 1
  assert float(jnp.max(w)) == 3.0
  sampling = sampling.copy()
  sampling[0, 0] = np.nan  # a token the sampler could not score: ratio 1 (TRL)
  w, _ = O.sampling_importance_weights(old, sampling, mask)
  assert float(w[0, 0]) == 1.0 and np.isfinite(np.asarray(w)).all()


def _numpy_clipped_loss(logp, old, adv, mask, w, eps_low, eps_high, loss_type):
  """The clipped surrogate times the sampler weights, aggregated (float64)."""
  ratio = np.exp(logp - old)
  a = adv[:, None]
  per_token = -np.minimum(ratio * a, np.clip(ratio, 1 - eps_low, 1 + eps_high) * a) * w
  if loss_type == "grpo":
    rows = (per_token * mask).sum(1) / np.maximum(mask.sum(1), 1)
    return rows.mean()
  return (per_token * mask).sum() / max(mask.sum(), 1)  # dapo / bnpo


@pytest.mark.parametrize("mode", ["token_truncate", "sequence_truncate", "token_mask"])
@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_policy_loss_with_the_correction_matches_numpy(loss_type, mode):
  old, sampling, mask = _inputs(seed=1, spread=0.6)
  rng = np.random.RandomState(2)
  logp = (old + 0.15 * rng.randn(*old.shape)).astype(np.float32)
  adv = rng.randn(old.shape[0]).astype(np.float32)
  loss, metrics = O.policy_loss(logp, old, adv, mask, loss_type=loss_type, epsilon_low=0.2,
                                epsilon_high=0.28, sampling_logprobs=sampling,
                                sampling_is_mode=mode, sampling_is_clip_max=2.0)
  w = _numpy_weights(old, sampling, mask, mode, 2.0, None)
  expected = _numpy_clipped_loss(*(np.float64(x) for x in (logp, old, adv, mask)), w,
                                 0.2, 0.28, loss_type)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  assert "sampling/importance_sampling_ratio/mean" in metrics
  plain, _ = O.policy_loss(logp, old, adv, mask, loss_type=loss_type, epsilon_low=0.2,
                           epsilon_high=0.28)
  assert abs(float(plain) - float(loss)) > 1e-4  # the weights changed the loss


def test_the_weights_scale_the_gradient_and_carry_none_of_their_own():
  """One update per batch (old = the trainer's own, stop_gradient): the loss
  gradient is -A w m / tokens (dapo, ratio 1), w from the trainer's current
  log-probs and the sampler's; w itself is not differentiated."""
  old, sampling, mask = _inputs(seed=3, spread=0.7)
  adv = np.random.RandomState(4).randn(old.shape[0]).astype(np.float32)

  def loss(logp):
    return O.policy_loss(logp, None, adv, mask, sampling_logprobs=sampling,
                         sampling_is_mode="token_truncate")[0]

  grad = jax.grad(loss)(jnp.asarray(old))
  w = _numpy_weights(old, sampling, mask, "token_truncate", 3.0, None)
  expected = -adv[:, None] * w * mask / mask.sum()
  np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-5, atol=1e-7)


def test_config_and_argument_errors():
  with pytest.raises(ValueError, match="sampling_is_mode='bogus'"):
    O.PolicyLossConfig(sampling_is_mode="bogus")
  with pytest.raises(ValueError, match="vespo"):
    O.PolicyLossConfig(loss_type="vespo", sampling_is_mode="token_truncate")
  assert O.PolicyLossConfig(sampling_is_mode="none").sampling_is_mode is None
  old, _, mask = _inputs()
  with pytest.raises(ValueError, match="needs sampling_logprobs"):
    O.policy_loss(old, old, np.zeros(len(old)), mask, sampling_is_mode="token_truncate")
  with pytest.raises(ValueError, match="use one of"):
    O.sampling_importance_weights(old, old, mask, mode="token")


# ------------------------------------------------- TRL 1.16's own code
trl_harness = pytest.importorskip("tests.objectives.trl_harness")


def _trl_ratio(old, sampling, mask, mode, cap, floor):
  """Executes TRL's ratio block of `_generate_and_score_completions` verbatim."""
  import inspect
  import textwrap
  import types

  import torch
  from trl.trainer import grpo_trainer as trl_grpo
  lines = textwrap.dedent(inspect.getsource(
      trl_grpo.GRPOTrainer._generate_and_score_completions)).splitlines()
  start = next(i for i, l in enumerate(lines)
               if "per_token_logps_diff = (old_per_token_logps - sampling_per_token_logps)" in l)
  end = next(i for i, l in enumerate(lines) if "Unknown vLLM importance sampling level" in l)
  code = compile(textwrap.dedent("\n".join(lines[start:end + 2])), "<trl IS ratio>", "exec")
  ns = {"self": types.SimpleNamespace(vllm_importance_sampling_mode=mode,
                                      vllm_importance_sampling_clip_max=cap,
                                      vllm_importance_sampling_clip_min=floor),
        "mask": torch.tensor(mask, dtype=torch.float64),
        "old_per_token_logps": torch.tensor(old, dtype=torch.float64),
        "sampling_per_token_logps": torch.tensor(sampling, dtype=torch.float64),
        "torch": torch, "math": math}
  exec(code, ns)  # pylint: disable=exec-used
  return ns["vllm_importance_sampling_ratio"]


@pytest.mark.parametrize("mode", MODES)
def test_weights_equal_trl(mode):
  old, sampling, mask = _inputs(seed=5, spread=1.0)
  ratio = _trl_ratio(old, sampling, mask, mode, 3.0, None)
  w, _ = O.sampling_importance_weights(np.float64(old), np.float64(sampling), mask,
                                       mode=mode, clip_max=3.0)
  np.testing.assert_allclose(np.asarray(w), ratio.numpy(), rtol=1e-5)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "cispo"])
def test_loss_and_gradient_equal_trl_compute_loss_with_vllm_correction(loss_type):
  import torch
  old, sampling, mask = _inputs(seed=6, spread=0.8)
  rng = np.random.RandomState(7)
  logp = old + 0.2 * rng.randn(*old.shape)
  adv = rng.randn(old.shape[0])
  eps_high = 5.0 if loss_type == "cispo" else 0.28
  ratio = _trl_ratio(old, sampling, mask, "token_truncate", 3.0, None)
  logps = torch.tensor(logp, dtype=torch.float64, requires_grad=True)
  trainer = trl_harness._grpo_trainer(
      loss_type, epsilon_low=0.2, epsilon_high=eps_high, delta=None,
      importance_sampling_level="token", beta=0.0, use_bias_correction_kl=True,
      max_completion_length=None, logps=logps, entropies=torch.zeros_like(logps))
  object.__setattr__(trainer, "use_vllm", True)
  object.__setattr__(trainer, "vllm_importance_sampling_correction", True)
  mask_t = torch.tensor(mask, dtype=torch.float64)
  n, t = old.shape
  inputs = {"prompt_ids": torch.zeros(n, 1, dtype=torch.long),
            "prompt_mask": torch.ones(n, 1, dtype=torch.long),
            "completion_ids": torch.zeros(n, t, dtype=torch.long),
            "completion_mask": mask_t, "advantages": torch.tensor(adv),
            "num_items_in_batch": mask_t.sum(),
            "old_per_token_logps": torch.tensor(old, dtype=torch.float64),
            "importance_sampling_ratio": ratio}
  expected = trainer._compute_loss(None, inputs)
  (expected_grad,) = torch.autograd.grad(expected, logps)

  jax.config.update("jax_enable_x64", True)
  try:
    def loss(lp):
      return O.policy_loss(lp, jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask),
                           loss_type=loss_type, epsilon_low=0.2, epsilon_high=eps_high,
                           sampling_logprobs=jnp.asarray(sampling),
                           sampling_is_mode="token_truncate", sampling_is_clip_max=3.0)[0]
    value, grad = jax.value_and_grad(loss)(jnp.asarray(logp))
  finally:
    jax.config.update("jax_enable_x64", False)
  np.testing.assert_allclose(float(value), expected.item(), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(grad), expected_grad.numpy(), rtol=1e-6, atol=1e-9)
