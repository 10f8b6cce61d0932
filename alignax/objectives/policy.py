"""Clipped policy-gradient losses, GRPO family (docs/algorithms.md §2.2–2.4).

`policy_loss` equals TRL 1.16 `GRPOTrainer._compute_loss` (one process, no
gradient accumulation, `num_items_in_batch = mask.sum()`) in value and
gradient. Each loss type is a registered pair (per-token loss, aggregation);
see `registries.POLICY_LOSSES`. Adding a loss = one decorated function.

Gradient accumulation: `policy_loss_terms` returns `(numerator, normaliser,
metrics)` with additive normalisers, so over micro-batches `i`

  sum_i grad(numerator_i) / max(sum_i normaliser_i, 1)

is exactly the gradient of the full-batch loss (any split, unequal sizes).
"""
import dataclasses
import math
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

from alignax.objectives import primitives as P
from alignax.objectives.registries import (POLICY_LOSSES, get_aggregation,
                                         get_policy_loss, register_aggregation,
                                         register_policy_loss)


# --------------------------------------------------------------------------
# §2.2 importance ratio


def importance_weights(logp: jax.Array, old_logp: jax.Array, mask: jax.Array,
                       *, level: str = "token") -> jax.Array:
  """Log importance weights (docs/algorithms.md §2.2).

  token:    `log_w = logp - old_logp`                            `[N, T]`
  sequence: `log_w = sum_t (logp - old_logp) m / max(sum_t m, 1)`   `[N, 1]`
  (GSPO, Zheng et al. 2025, arXiv:2507.18071: the geometric-mean ratio).

  Example:
    >>> logp, old = jnp.array([[-1.0, -2.0]]), jnp.array([[-1.5, -2.0]])
    >>> print(importance_weights(logp, old, jnp.ones((1, 2))))
    [[0.5 0. ]]
    >>> print(importance_weights(logp, old, jnp.ones((1, 2)), level="sequence"))
    [[0.25]]
  """
  log_ratio = logp - old_logp
  if level == "token":
    return log_ratio
  if level == "sequence":
    return P.masked_mean(log_ratio, mask, axis=-1)[:, None]
  raise ValueError(f"unknown importance_sampling_level {level!r}")


# --------------------------------------------------------------------------
# §2.3 per-token losses (pure building blocks)


def clipped_surrogate(coef_1: jax.Array, adv: jax.Array, eps_low: float,
                      eps_high: float, delta: Optional[float] = None):
  """PPO clipped surrogate, TRL form (docs/algorithms.md §2.3).

  ```
  coef_2   = clip(coef_1, 1 - eps_low, 1 + eps_high)
  coef_1_d = min(coef_1, delta) if delta else coef_1   (INTELLECT-2 two-sided)
  loss     = -min(coef_1_d * A, coef_2 * A)
  ```
  Papers: Schulman et al. 2017 (PPO); DAPO clip-higher (arXiv:2503.14476).

  Args:
    coef_1: `[N, T]` or `[N, 1]` ratios.
    adv: `[N, 1]` or `[N, T]` advantages.
    eps_low, eps_high: clip range.
    delta: optional upper bound on the unclipped ratio.

  Returns:
    `(loss, coef_1_d)`, both broadcast of the inputs.

  Example:
    >>> loss, _ = clipped_surrogate(jnp.array([[0.5, 1.0, 1.5]]), jnp.array([[1.0]]), 0.2, 0.2)
    >>> print(loss)  # ratio 1.5 is clipped to 1.2 for a positive advantage
    [[-0.5 -1.  -1.2]]
  """
  coef_2 = jnp.clip(coef_1, 1.0 - eps_low, 1.0 + eps_high)
  coef_1_d = coef_1 if delta is None else jnp.minimum(coef_1, delta)
  return -jnp.minimum(coef_1_d * adv, coef_2 * adv), coef_1_d


def cispo_per_token(coef_1: jax.Array, adv: jax.Array, logp: jax.Array,
                    eps_high: float) -> jax.Array:
  """CISPO: `-sg(min(coef_1, eps_high)) * A * logp` (MiniMax-M1,
  arXiv:2506.13585); `eps_high` is an absolute cap (recommended 5.0).

  Example:
    >>> coef_1, logp = jnp.array([[0.5, 6.0]]), jnp.array([[-1.0, -2.0]])
    >>> print(cispo_per_token(coef_1, jnp.array([[1.0]]), logp, eps_high=5.0))
    [[ 0.5 10. ]]
  """
  return -jax.lax.stop_gradient(jnp.minimum(coef_1, eps_high)) * adv * logp


def sapo_per_token(coef_1: jax.Array, adv: jax.Array, tau_pos: float = 1.0,
                   tau_neg: float = 1.05) -> jax.Array:
  """SAPO soft gate: `-(sigmoid(tau (coef_1 - 1)) 4 / tau) A`, `tau = tau_pos`
  if `A > 0` else `tau_neg` (arXiv:2511.20347).

  Example:
    >>> print(sapo_per_token(jnp.array([[1.0, 1.5]]), jnp.array([[1.0]])))
    [[-2.     -2.4898]]
  """
  tau = jnp.where(adv > 0, tau_pos, tau_neg)
  return -(jax.nn.sigmoid(tau * (coef_1 - 1.0)) * 4.0 / tau) * adv


def vespo_weights(log_ratio: jax.Array, mask: jax.Array, adv: jax.Array,
                  k_pos: float = 2.0, lam_pos: float = 3.0, k_neg: float = 3.0,
                  lam_neg: float = 2.0) -> jax.Array:
  """VESPO gamma weights `phi = exp(lam + k s - lam e^s)` (no gradient), §2.3.

  `s = clip(sum_t clip(log_ratio, -20, 20) m, log 1e-8, 20)`, `(k, lam)` by the
  sign of `A` (`A >= 0` -> pos), lam floored at 1e-4, NaN/inf -> 0.
  Source: TRL `GRPOTrainer.get_gamma_weights` (without vLLM IS ratios).

  Returns:
    `[N, 1]` weights.

  Example:
    >>> log_ratio = jnp.array([[0.0, 0.0], [0.1, 0.0]])
    >>> print(vespo_weights(log_ratio, jnp.ones((2, 2)), jnp.array([[1.0], [-1.0]])))
    [[1.    ]
     [1.0938]]
  """
  lower = math.log(1e-8)
  s = jnp.sum(jnp.clip(log_ratio, -20.0, 20.0) * mask, axis=-1, keepdims=True)
  s = jnp.clip(s, lower, 20.0)
  pos = adv >= 0
  k = jnp.where(pos, k_pos, k_neg)
  lam = jnp.maximum(jnp.where(pos, lam_pos, lam_neg), 1e-4)
  phi = jnp.exp(lam + k * s - lam * jnp.exp(s))
  phi = jnp.nan_to_num(phi, nan=0.0, posinf=0.0, neginf=0.0)
  return jax.lax.stop_gradient(phi)


def off_policy_sequence_mask(adv: jax.Array, logp: jax.Array,
                             sampling_logp: jax.Array, mask: jax.Array,
                             threshold: float) -> jax.Array:
  """DeepSeek-V3.2 off-policy sequence mask (TRL `get_off_policy_mask`).

  Keep a sequence if `A >= 0` or its mean `sampling_logp - sg(logp)` (NaN -> 0)
  is `<= threshold`.

  Returns:
    `[N, 1]` float mask.

  Example:
    >>> sampling_logp = jnp.array([[0.5, 0.5], [0.5, 0.5], [0.0, 0.0]])
    >>> adv = jnp.array([[1.0], [-1.0], [-1.0]])
    >>> print(off_policy_sequence_mask(adv, jnp.zeros((3, 2)), sampling_logp,
    ...                                jnp.ones((3, 2)), threshold=0.1))
    [[1.]
     [0.]
     [1.]]
  """
  kl = jnp.nan_to_num(sampling_logp - jax.lax.stop_gradient(logp), nan=0.0)
  avg = P.masked_mean(kl, mask, axis=-1)[:, None]
  return ((adv >= 0) | (avg <= threshold)).astype(logp.dtype)


SAMPLING_IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def sampling_importance_weights(old_logprobs: jax.Array, sampling_logprobs: jax.Array,
                                mask: jax.Array, *, mode: str = "token_truncate",
                                clip_max: Optional[float] = 3.0,
                                clip_min: Optional[float] = None):
  """Importance weights from the sampler's policy to the trainer's (§2.3).

  When the completions were sampled by another policy than the one the
  trainer holds (a serving engine, or the previous parameters in one-step
  off-policy training), each token's loss is weighted by the ratio of the
  trainer's log-prob before the update (`old_logprobs`) to the sampler's:

  ```
  d     = nan_to_num((old - sampling) m, nan=0)      [N, T]
  token modes:    log_w = d                          [N, T]
  sequence modes: log_w = sum_t d                    [N, 1]
  w = exp(log_w)
  *_truncate: w = clip(w, clip_min, clip_max)        (truncated IS, TIS)
  *_mask:     w = 0 where w < clip_min or w > clip_max  (masked IS)
  ```
  (a None bound is no bound). Source: TRL 1.16 `GRPOTrainer.
  _generate_and_score_completions` (`vllm_importance_sampling_correction`,
  `vllm_importance_sampling_mode`, `vllm_importance_sampling_clip_max`
  (formerly `_cap`), `_clip_min`); verl's rollout IS (`rollout_is_level`
  token, `rollout_is_mode` truncate) is the token_truncate mode. Without
  gradient: the weights scale each token's loss.

  Returns:
    `(weights, metrics)`: weights `[N, T]` (token) or `[N, 1]` (sequence);
    metrics as TRL logs them, `sampling/importance_sampling_ratio/{mean,min,max}`
    of the weights (after the clip or mask; over masked tokens, or rows for
    the sequence modes, 0 when there are none),
    `sampling/sampling_logp_difference/{mean,max}` of `|old - sampling|`
    over masked tokens, and `sampling/importance_sampling_ratio/clipped_fraction`,
    the share of weights whose raw ratio lay outside `[clip_min, clip_max]`.

  Example:
    >>> old = jnp.array([[-1.0, -1.0, -1.0]])
    >>> sampling = jnp.array([[-1.0, -3.0, -0.5]])   # raw ratios 1, e^2 = 7.39, e^-0.5
    >>> w, m = sampling_importance_weights(old, sampling, jnp.ones((1, 3)))
    >>> print(w)  # token_truncate at 3
    [[1.     3.     0.6065]]
    >>> round(float(m["sampling/importance_sampling_ratio/clipped_fraction"]), 4)
    0.3333
    >>> for mode in SAMPLING_IS_MODES[1:]:
    ...   print(mode, sampling_importance_weights(old, sampling, jnp.ones((1, 3)), mode=mode,
    ...                                           clip_max=5.0)[0])
    token_mask [[1.     0.     0.6065]]
    sequence_truncate [[4.4817]]
    sequence_mask [[4.4817]]
  """
  if mode not in SAMPLING_IS_MODES:
    raise ValueError(f"sampling importance-sampling mode {mode!r}; use one of"
                     f" {SAMPLING_IS_MODES}.")
  P.check_rank("old_logprobs", old_logprobs, 2)
  P.check_same_shape(old_logprobs=old_logprobs, sampling_logprobs=sampling_logprobs,
                     mask=mask)
  dtype = P.compute_dtype(old_logprobs)
  m = P.as_float(mask, dtype)
  old = jax.lax.stop_gradient(P.as_float(old_logprobs, dtype))
  sampling = jax.lax.stop_gradient(P.as_float(sampling_logprobs, dtype))
  diff = jnp.nan_to_num((old - sampling) * m, nan=0.0)
  sequence = mode.startswith("sequence")
  log_w = jnp.sum(diff, axis=-1, keepdims=True) if sequence else diff
  raw = jnp.exp(log_w)
  lo = -jnp.inf if clip_min is None else clip_min
  hi = jnp.inf if clip_max is None else clip_max
  outside = (raw < lo) | (raw > hi)
  if mode.endswith("truncate"):
    w = jnp.clip(raw, clip_min, clip_max)
  else:
    w = jnp.where(outside, 0.0, raw)
  # Over masked tokens (token modes) or every row (sequence modes), as TRL.
  where = (jnp.ones_like(w) if sequence else m) > 0
  def mean(x, keep):
    return jnp.sum(jnp.where(keep, x, 0.0)) / P.clamp_min1(jnp.sum(keep).astype(dtype))
  def extreme(fn, x, keep, fill):
    return jnp.where(jnp.sum(keep) > 0, fn(jnp.where(keep, x, fill)), 0.0)
  delta = jnp.abs(old - sampling)
  token = (m > 0) & ~jnp.isnan(delta)
  metrics = {
      "sampling/importance_sampling_ratio/mean": mean(w, where),
      "sampling/importance_sampling_ratio/min": extreme(jnp.min, w, where, jnp.inf),
      "sampling/importance_sampling_ratio/max": extreme(jnp.max, w, where, -jnp.inf),
      "sampling/importance_sampling_ratio/clipped_fraction": mean(
          outside.astype(dtype), where),
      "sampling/sampling_logp_difference/mean": mean(delta, token),
      "sampling/sampling_logp_difference/max": extreme(jnp.max, delta, token, -jnp.inf),
  }
  return w, jax.tree.map(jax.lax.stop_gradient, metrics)


# --------------------------------------------------------------------------
# Registered per-token losses: uniform signature fn(PolicyLossInputs).


class PolicyLossInputs(NamedTuple):
  """Everything a registered per-token loss may read.

  `coef_1` is the unclamped ratio, `[N, T]` (token) or `[N, 1]` (sequence).

  Example:
    >>> PolicyLossInputs._fields[:5]
    ('logprobs', 'log_ratio', 'coef_1', 'advantages', 'mask')
  """
  logprobs: jax.Array
  log_ratio: jax.Array
  coef_1: jax.Array
  advantages: jax.Array
  mask: jax.Array
  epsilon_low: float
  epsilon_high: float
  delta: Optional[float]
  sapo_temperature_pos: float
  sapo_temperature_neg: float
  vespo_params: Tuple[float, float, float, float]


def _clipped(x: PolicyLossInputs):
  loss, _ = clipped_surrogate(x.coef_1, x.advantages, x.epsilon_low,
                              x.epsilon_high, x.delta)
  return loss


for _name, _agg, _glob in (("grpo", "seq_mean_token_mean", False),
                           ("bnpo", "token_mean", False),
                           ("dr_grpo", "seq_sum_const", False),
                           ("dapo", "token_mean", True),
                           ("luspo", "seq_length_weighted", False)):
  register_policy_loss(_name, _agg, uses_global_token_count=_glob,
                       reads=("epsilon_low", "epsilon_high", "delta"))(_clipped)


@register_policy_loss("cispo", "token_mean", uses_global_token_count=True,
                      clip_metrics="cispo", reads=("epsilon_high",))
def _cispo(x: PolicyLossInputs):
  return cispo_per_token(x.coef_1, x.advantages, x.logprobs, x.epsilon_high)


@register_policy_loss("sapo", "seq_mean_token_mean", clip_metrics=None,
                      reads=("sapo_temperature_pos", "sapo_temperature_neg"))
def _sapo(x: PolicyLossInputs):
  return sapo_per_token(x.coef_1, x.advantages, x.sapo_temperature_pos,
                        x.sapo_temperature_neg)


@register_policy_loss("vespo", "token_mean", uses_global_token_count=True,
                      clip_metrics=None, reads=("vespo_params",))
def _vespo(x: PolicyLossInputs):
  phi = vespo_weights(x.log_ratio, x.mask, x.advantages, *x.vespo_params)
  return -phi * x.advantages * x.logprobs


# --------------------------------------------------------------------------
# §1.3 / §2.4 aggregations: (per_token, mask) -> (numerator, normaliser)


@register_aggregation("seq_mean_token_mean")
def _seq_mean_token_mean(per_token, mask, *, max_len=None):
  """grpo/sapo: `mean_n(sum_t l m / max(sum_t m, 1))`; normaliser N rows."""
  del max_len
  row = P.masked_sum(per_token, mask, -1) / P.clamp_min1(jnp.sum(mask, -1))
  return jnp.sum(row), jnp.asarray(mask.shape[0], row.dtype)


@register_aggregation("token_mean")
def _token_mean(per_token, mask, *, max_len=None):
  """bnpo/dapo: `sum l m / max(sum m, 1)`; normaliser = active tokens."""
  del max_len
  num = P.masked_sum(per_token, mask)
  return num, jnp.sum(mask).astype(num.dtype)


@register_aggregation("seq_sum_const")
def _seq_sum_const(per_token, mask, *, max_len=None):
  """dr_grpo: `sum l m / (N * L_max)`; `L_max` = max_completion_length."""
  if max_len is None:
    raise ValueError("loss_type 'dr_grpo' needs max_completion_length")
  num = P.masked_sum(per_token, mask)
  return num, jnp.asarray(mask.shape[0] * max_len, num.dtype)


@register_aggregation("seq_length_weighted")
def _seq_length_weighted(per_token, mask, *, max_len=None):
  """luspo: `mean_n(sum_t l m)`; normaliser N rows."""
  del max_len
  num = P.masked_sum(per_token, mask)
  return num, jnp.asarray(mask.shape[0], num.dtype)


def aggregate_loss_terms(per_token: jax.Array, mask: jax.Array, mode: str, *,
                         max_len: Optional[int] = None):
  """`(numerator, normaliser)` of an aggregation mode (docs/algorithms.md §1.3).

  `mode` is an aggregation name ("seq_mean_token_mean", "token_mean",
  "seq_sum_const", "seq_length_weighted") or a loss type ("grpo", "dapo", ...).

  Example:
    >>> per_token = jnp.array([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    >>> mask = jnp.array([[1, 1, 1], [1, 0, 0]])
    >>> for mode in ("seq_mean_token_mean", "token_mean", "seq_length_weighted"):
    ...   num, den = aggregate_loss_terms(per_token, mask, mode)
    ...   print(mode, float(num), float(den))
    seq_mean_token_mean 6.0 2.0
    token_mean 10.0 4.0
    seq_length_weighted 10.0 2.0
    >>> num, den = aggregate_loss_terms(per_token, mask, "seq_sum_const", max_len=4)
    >>> print("seq_sum_const", float(num), float(den))
    seq_sum_const 10.0 8.0
  """
  if mode in POLICY_LOSSES:
    mode = get_policy_loss(mode).aggregation
  m = P.as_float(mask, P.compute_dtype(per_token))
  per_token = jnp.broadcast_to(P.as_float(per_token), m.shape)
  return get_aggregation(mode)(per_token, m, max_len=max_len)


def aggregate_loss(per_token: jax.Array, mask: jax.Array, mode: str, *,
                   max_len: Optional[int] = None,
                   num_items: Optional[jax.Array] = None):
  """Scalar loss and its normaliser (docs/algorithms.md §1.3, checklist #6).

  Returns `(numerator / max(normaliser, 1), normaliser)`; `num_items` (a
  global token count, "dapo") replaces the normaliser when given.

  Example:
    >>> per_token = jnp.array([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    >>> mask = jnp.array([[1, 1, 1], [1, 0, 0]])
    >>> loss, den = aggregate_loss(per_token, mask, "grpo")  # mean of row means (2 and 4)
    >>> print(float(loss), float(den))
    3.0 2.0
    >>> loss, den = aggregate_loss(per_token, mask, "dapo", num_items=8)  # a global count
    >>> print(float(loss), float(den))
    1.25 8.0
  """
  num, den = aggregate_loss_terms(per_token, mask, mode, max_len=max_len)
  if num_items is not None:
    den = jnp.asarray(num_items, num.dtype)
  return num / P.clamp_min1(den), den


# --------------------------------------------------------------------------
# §2.4 metrics


def _global_masked_mean(x, mask):
  """TRL `global_masked_mean` on one process: [N,1] values count once per row."""
  if x.shape[-1] == 1 and mask.shape[-1] != 1:
    return jnp.sum(x) / P.clamp_min1(jnp.asarray(x.shape[0], x.dtype))
  return P.masked_mean(x, mask)


def clip_fraction_metrics(coef_1: jax.Array, adv: jax.Array, mask: jax.Array,
                          eps_low: float, eps_high: float) -> Dict[str, jax.Array]:
  """Clip fractions as TRL logs them (masked token means), §2.4.

  low: `(coef_1 < 1 - eps_low) & (A < 0)`; high: `(coef_1 > 1 + eps_high) &
  (A > 0)`; region: either. Pass the ratio after the `delta` clamp (TRL).

  Example:
    >>> coef_1 = jnp.array([[0.5, 1.0, 1.5], [0.5, 1.0, 1.5]])
    >>> adv = jnp.array([[-1.0], [1.0]])
    >>> m = clip_fraction_metrics(coef_1, adv, jnp.ones((2, 3)), 0.2, 0.2)
    >>> {k: round(float(v), 4) for k, v in m.items()}
    {'clip_ratio/low_mean': 0.1667, 'clip_ratio/high_mean': 0.1667, 'clip_ratio/region_mean': 0.3333}
  """
  dtype = P.compute_dtype(coef_1)
  low = ((coef_1 < 1 - eps_low) & (adv < 0)).astype(dtype)
  high = ((coef_1 > 1 + eps_high) & (adv > 0)).astype(dtype)
  region = jnp.maximum(low, high)
  return {"clip_ratio/low_mean": _global_masked_mean(low, mask),
          "clip_ratio/high_mean": _global_masked_mean(high, mask),
          "clip_ratio/region_mean": _global_masked_mean(region, mask)}


# --------------------------------------------------------------------------
# policy_loss


@dataclasses.dataclass(frozen=True)
class PolicyLossConfig:
  """The static options of a GRPO-family loss: the keyword arguments of
  `policy_loss_terms` / `policy_loss` that are not arrays (see `policy_loss`).

  Frozen and hashable, so a jitted update closes over it; the options are
  checked here, before anything compiles.

  Example:
    >>> config = PolicyLossConfig.from_mapping({"loss_type": "grpo", "lr": 1e-6}, beta=0.04)
    >>> config.loss_type, config.beta, config.epsilon_high
    ('grpo', 0.04, 0.2)
    >>> PolicyLossConfig(loss_type="dr_grpo")
    Traceback (most recent call last):
    ...
    ValueError: PolicyLossConfig(loss_type='dr_grpo') needs max_completion_length.
  """
  loss_type: str = "dapo"
  epsilon_low: float = 0.2
  epsilon_high: float = 0.2
  delta: Optional[float] = None
  importance_sampling_level: str = "token"
  beta: float = 0.0
  use_bias_correction_kl: bool = True
  max_completion_length: Optional[int] = None
  sapo_temperature_pos: float = 1.0
  sapo_temperature_neg: float = 1.05
  vespo_params: Tuple[float, float, float, float] = (2.0, 3.0, 3.0, 2.0)
  off_policy_mask_threshold: Optional[float] = None
  sampling_is_mode: Optional[str] = None
  sampling_is_clip_max: Optional[float] = 3.0
  sampling_is_clip_min: Optional[float] = None

  def __post_init__(self):
    get_policy_loss(self.loss_type)  # raises, listing the registered names
    if self.importance_sampling_level not in ("token", "sequence"):
      raise ValueError("PolicyLossConfig.importance_sampling_level must be 'token' or"
                       f" 'sequence', got {self.importance_sampling_level!r}.")
    if self.loss_type == "dr_grpo" and not self.max_completion_length:
      raise ValueError("PolicyLossConfig(loss_type='dr_grpo') needs max_completion_length.")
    if self.beta < 0:
      raise ValueError(f"PolicyLossConfig.beta must be >= 0, got {self.beta}.")
    if self.sampling_is_mode == "none":
      object.__setattr__(self, "sampling_is_mode", None)
    if self.sampling_is_mode is not None:
      if self.sampling_is_mode not in SAMPLING_IS_MODES:
        raise ValueError(f"PolicyLossConfig.sampling_is_mode={self.sampling_is_mode!r}; use"
                         f" one of {SAMPLING_IS_MODES} or None.")
      if self.loss_type == "vespo":
        raise ValueError("PolicyLossConfig(loss_type='vespo') with sampling_is_mode: the"
                         " sampler correction of VESPO (inside its gamma weights) is not"
                         " implemented; set sampling_is_mode=None or another loss_type.")
    object.__setattr__(self, "vespo_params", tuple(self.vespo_params))

  @classmethod
  def from_mapping(cls, options: Mapping[str, Any], **overrides) -> "PolicyLossConfig":
    """From a mapping (e.g. a config's `loss` section) holding these fields among
    others (its other keys are ignored), with `overrides` on top (they win
    over the mapping's values)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{**{k: v for k, v in options.items() if k in names}, **overrides})

  def kwargs(self) -> dict:
    """The options as `policy_loss_terms` keyword arguments."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def policy_loss_terms(logprobs: jax.Array, old_logprobs: Optional[jax.Array],
                      advantages: jax.Array, mask: jax.Array, *,
                      loss_type: str = "dapo", epsilon_low: float = 0.2,
                      epsilon_high: float = 0.2, delta: Optional[float] = None,
                      importance_sampling_level: str = "token",
                      beta: float = 0.0, ref_logprobs: Optional[jax.Array] = None,
                      use_bias_correction_kl: bool = True,
                      max_completion_length: Optional[int] = None,
                      sapo_temperature_pos: float = 1.0,
                      sapo_temperature_neg: float = 1.05,
                      vespo_params=(2.0, 3.0, 3.0, 2.0),
                      off_policy_mask_threshold: Optional[float] = None,
                      sampling_logprobs: Optional[jax.Array] = None,
                      sampling_is_mode: Optional[str] = None,
                      sampling_is_clip_max: Optional[float] = 3.0,
                      sampling_is_clip_min: Optional[float] = None):
  """Numerator, additive normaliser and metrics of `policy_loss`.

  `policy_loss = numerator / max(normaliser, 1)` (or the global token count
  for dapo/cispo/vespo when `num_items_in_batch` is given). Arguments as
  `policy_loss`.

  Returns:
    `(numerator scalar, normaliser scalar, metrics dict)`.

  Example:
    >>> logp = jnp.array([[-1.0, -2.0, -3.0], [-0.5, -1.0, 0.0]])
    >>> mask = jnp.array([[1, 1, 1], [1, 1, 0]])
    >>> num, den, _ = policy_loss_terms(logp, logp - 0.1, jnp.array([1.0, -1.0]), mask)
    >>> print(round(float(num), 4), float(den))  # dapo: sum over tokens, 5 tokens
    -1.1052 5.0
  """
  spec = get_policy_loss(loss_type)
  if importance_sampling_level not in ("token", "sequence"):
    raise ValueError(f"importance_sampling_level={importance_sampling_level!r}; use"
                     " 'token' or 'sequence' (GSPO).")
  P.check_rank("logprobs", logprobs, 2)
  P.check_same_shape(logprobs=logprobs, mask=mask, old_logprobs=old_logprobs,
                     ref_logprobs=ref_logprobs, sampling_logprobs=sampling_logprobs)
  dtype = P.compute_dtype(logprobs)
  m = P.as_float(mask, dtype)
  # Masked-out entries are zeroed by `where` first: a NaN or inf at a padded
  # position must reach neither the loss nor (0 * NaN) the gradient.
  logp = P.zero_masked(P.as_float(logprobs, dtype), m)
  # TRL with num_iterations == 1: old = logp.detach(), ratio 1 with gradient.
  old = (jax.lax.stop_gradient(logp) if old_logprobs is None
         else P.zero_masked(P.as_float(old_logprobs, dtype), m))
  adv = P.as_float(advantages, dtype)
  if adv.ndim == 1:
    adv = adv[:, None]
  P.check_shape("advantages", adv, (logp.shape[0], None),
                f" ([N] or [N, 1] or [N, T] with N = logprobs.shape[0] = {logp.shape[0]})")
  if adv.shape[1] not in (1, logp.shape[1]):
    raise ValueError(f"advantages has shape {adv.shape}; per-token advantages must be"
                     f" [N, T] = {logp.shape} like logprobs.")
  # A row (or token) that is masked out contributes nothing, whatever its value.
  adv = P.zero_masked(adv, jnp.any(m != 0, axis=-1, keepdims=True) if adv.shape[1] == 1
                      else m)

  log_ratio = logp - old
  coef_1 = jnp.exp(importance_weights(logp, old, m,
                                      level=importance_sampling_level))
  inputs = PolicyLossInputs(logp, log_ratio, coef_1, adv, m, epsilon_low,
                            epsilon_high, delta, sapo_temperature_pos,
                            sapo_temperature_neg, tuple(vespo_params))
  per_token = spec.per_token(inputs)

  metrics = {}
  if off_policy_mask_threshold is not None:
    sampling = old if sampling_logprobs is None else P.zero_masked(P.as_float(
        sampling_logprobs, dtype), m)
    per_token = per_token * off_policy_sequence_mask(
        adv, logp, sampling, m, off_policy_mask_threshold)
  if sampling_is_mode is not None and sampling_is_mode != "none":
    # TRL's vLLM importance-sampling correction: the sampler was not the
    # trainer's policy; weights between the trainer's old log-probs and the
    # sampler's, after the masks, before the KL term.
    if sampling_logprobs is None:
      raise ValueError(f"sampling_is_mode={sampling_is_mode!r} needs sampling_logprobs.")
    if loss_type == "vespo":
      raise ValueError("sampling_is_mode is not implemented for loss_type='vespo'.")
    is_weights, is_metrics = sampling_importance_weights(
        old, sampling_logprobs, m, mode=sampling_is_mode, clip_max=sampling_is_clip_max,
        clip_min=sampling_is_clip_min)
    per_token = per_token * is_weights
    metrics.update(is_metrics)
  if beta != 0.0:
    if ref_logprobs is None:
      raise ValueError("beta != 0 needs ref_logprobs")
    kl = P.kl_estimator(logp, P.zero_masked(P.as_float(ref_logprobs, dtype), m), "k3")
    if use_bias_correction_kl:
      # The unclamped ratio, differentiable: changes the gradient even at 1.
      kl = kl * coef_1
    per_token = per_token + beta * kl
    metrics["kl"] = _global_masked_mean(kl, m)

  numerator, normaliser = get_aggregation(spec.aggregation)(
      jnp.broadcast_to(per_token, m.shape), m, max_len=max_completion_length)

  if spec.clip_metrics == "ppo":
    coef_1_d = coef_1 if delta is None else jnp.minimum(coef_1, delta)
    metrics.update(clip_fraction_metrics(coef_1_d, adv, m, epsilon_low,
                                         epsilon_high))
  elif spec.clip_metrics == "cispo":
    clipped = ((coef_1 > epsilon_high) & (adv > 0)).astype(dtype)
    metrics["cispo_clip_ratio"] = _global_masked_mean(clipped, m)
  metrics = jax.tree.map(jax.lax.stop_gradient, metrics)
  return numerator, normaliser, metrics


def policy_loss(logprobs: jax.Array, old_logprobs: Optional[jax.Array],
                advantages: jax.Array, mask: jax.Array, *,
                loss_type: str = "dapo", epsilon_low: float = 0.2,
                epsilon_high: float = 0.2, delta: Optional[float] = None,
                importance_sampling_level: str = "token",
                beta: float = 0.0, ref_logprobs: Optional[jax.Array] = None,
                use_bias_correction_kl: bool = True,
                max_completion_length: Optional[int] = None,
                sapo_temperature_pos: float = 1.0,
                sapo_temperature_neg: float = 1.05,
                vespo_params=(2.0, 3.0, 3.0, 2.0),
                off_policy_mask_threshold: Optional[float] = None,
                sampling_logprobs: Optional[jax.Array] = None,
                sampling_is_mode: Optional[str] = None,
                sampling_is_clip_max: Optional[float] = 3.0,
                sampling_is_clip_min: Optional[float] = None,
                num_items_in_batch: Optional[jax.Array] = None):
  """GRPO-family clipped policy loss, identical to TRL 1.16 (§2.2–2.4).

  ```
  coef_1 = exp(log_w)          token: logp - old;  sequence (GSPO): masked mean
  l      = per-token loss of `loss_type` (clipped surrogate, cispo, sapo, vespo)
  l     += beta * k3(logp, ref) * (coef_1 if use_bias_correction_kl else 1)
  grpo, sapo : mean_n(sum_t l m / max(sum_t m, 1))
  bnpo       : sum l m / max(sum m, 1)
  dr_grpo    : sum l m / (N * max_completion_length)
  dapo, cispo, vespo : sum l m / max(num_items_in_batch, 1)  (default sum m)
  luspo      : mean_n(sum_t l m)
  ```
  Papers: GRPO (arXiv:2402.03300), DAPO (arXiv:2503.14476), Dr. GRPO
  (arXiv:2503.20783), GSPO (arXiv:2507.18071), CISPO (arXiv:2506.13585).
  Source: TRL 1.16 `GRPOTrainer._compute_loss`.

  Args:
    logprobs: `[N, T]` current-policy per-token log-probs (differentiated).
    old_logprobs: `[N, T]` behaviour-policy log-probs, or None
      (= `stop_gradient(logprobs)`, TRL with `num_iterations == 1`).
    advantages: `[N]` or `[N, T]`.
    mask: `[N, T]` 1 for completion tokens.
    loss_type: a key of `POLICY_LOSSES` (static).
    epsilon_low, epsilon_high: the ratio's clip range `[1 - low, 1 + high]`
      (cispo: `epsilon_high` caps the weight).
    delta: optional upper bound on the ratio (two-sided clip), or None.
    importance_sampling_level: "token", or "sequence" (GSPO).
    beta: weight of the k3 KL to `ref_logprobs` `[N, T]` (needed when > 0).
    use_bias_correction_kl: multiply the KL by the importance ratio (TRL >= 1.16).
    max_completion_length: the constant length of "dr_grpo" (required there).
    sapo_temperature_pos, sapo_temperature_neg: SAPO's gate temperatures.
    vespo_params: VESPO's `(k_pos, lambda_pos, k_neg, lambda_neg)`.
    off_policy_mask_threshold: drop negative-advantage sequences whose KL to
      the sampler exceeds it (None: off); `sampling_logprobs` `[N, T]` are the
      sampler's log-probs (default `old_logprobs`).
    sampling_is_mode: None (off), or a mode of `sampling_importance_weights`
      ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask"):
      each token's loss is weighted by the importance weight from the sampler
      (`sampling_logprobs`) to the trainer's old policy (`old_logprobs`, or
      the current log-probs when None), as TRL's
      `vllm_importance_sampling_correction` (applied after the off-policy
      mask, before the KL term). sampling_is_clip_max, sampling_is_clip_min:
      its bounds (TRL's `vllm_importance_sampling_clip_max` = 3.0, `_clip_min`).
    num_items_in_batch: global active-token count for dapo/cispo/vespo (TRL's
      `num_items_in_batch`); default = `mask.sum()`.

  Returns:
    `(loss scalar, metrics dict[str, scalar])`.

  Example:
    >>> logp = jnp.array([[-1.0, -2.0, -3.0], [-0.5, -1.0, 0.0]])
    >>> old = logp - jnp.array([[0.1, -0.3, 0.0], [0.2, 0.0, 0.0]])
    >>> mask = jnp.array([[1, 1, 1], [1, 1, 0]])
    >>> adv = jnp.array([1.0, -1.0])
    >>> for loss_type in POLICY_LOSSES:  # every registered loss on the same tokens
    ...   loss, _ = policy_loss(logp, old, adv, mask, loss_type=loss_type,
    ...                         max_completion_length=4)
    ...   print(f"{loss_type:8s} {float(loss):.4f}")
    grpo     0.0810
    bnpo     -0.1249
    dr_grpo  -0.0781
    dapo     -0.1249
    luspo    -0.3123
    cispo    0.1800
    sapo     0.0329
    vespo    1.0345
    >>> loss, metrics = policy_loss(logp, old, adv, mask, beta=0.04, ref_logprobs=logp - 0.5)
    >>> round(float(loss), 4), round(float(metrics["kl"]), 4)
    (-0.1206, 0.108)
  """
  numerator, normaliser, metrics = policy_loss_terms(
      logprobs, old_logprobs, advantages, mask, loss_type=loss_type,
      epsilon_low=epsilon_low, epsilon_high=epsilon_high, delta=delta,
      importance_sampling_level=importance_sampling_level, beta=beta,
      ref_logprobs=ref_logprobs, use_bias_correction_kl=use_bias_correction_kl,
      max_completion_length=max_completion_length,
      sapo_temperature_pos=sapo_temperature_pos,
      sapo_temperature_neg=sapo_temperature_neg, vespo_params=vespo_params,
      off_policy_mask_threshold=off_policy_mask_threshold,
      sampling_logprobs=sampling_logprobs, sampling_is_mode=sampling_is_mode,
      sampling_is_clip_max=sampling_is_clip_max, sampling_is_clip_min=sampling_is_clip_min)
  if num_items_in_batch is not None and get_policy_loss(
      loss_type).uses_global_token_count:
    normaliser = jnp.asarray(num_items_in_batch, numerator.dtype)
  loss = numerator / P.clamp_min1(normaliser)
  metrics = dict(metrics, normaliser=jax.lax.stop_gradient(normaliser))
  return loss, metrics


def rloo_sequence_loss(seq_logp: jax.Array, old_seq_logp: jax.Array,
                       adv: jax.Array, eps_low: float = 0.2,
                       eps_high: float = 0.2) -> jax.Array:
  """TRL RLOO sequence-level clipped loss (docs/algorithms.md §3.1).

  `ratio = exp(seq_logp - old_seq_logp)`; `mean_n -min(ratio A, clip(ratio) A)`.
  Source: TRL `RLOOTrainer._compute_loss`.

  Args:
    seq_logp: `[N]` `sum_t logp m`. old_seq_logp: `[N]`. adv: `[N]`.

  Returns:
    Scalar loss.

  Example:
    >>> seq_logp, old = jnp.array([-1.0, -2.0]), jnp.array([-1.2, -2.0])
    >>> print(round(float(rloo_sequence_loss(seq_logp, old, jnp.array([1.0, -1.0]))), 4))
    -0.1
  """
  P.check_same_shape(seq_logp=seq_logp, old_seq_logp=old_seq_logp, advantages=adv)
  coef_1 = jnp.exp(P.as_float(seq_logp) - P.as_float(old_seq_logp))
  loss, _ = clipped_surrogate(coef_1, P.as_float(adv), eps_low, eps_high)
  return jnp.mean(loss)
