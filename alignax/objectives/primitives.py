"""Shared primitives: masked reductions, per-token log-probs, KL, group stats.

Definitions: docs/algorithms.md §1. Shapes: `N` completions (contiguous groups
of `group_size`), `T` padded completion length, `V` vocabulary size.

Every reduction runs in at least float32 (bf16/f16 inputs are upcast; float64
stays float64 so parity tests can run in x64).
"""
import operator
from typing import Optional, Tuple

import jax
import jax.numpy as jnp


def compute_dtype(*xs) -> jnp.dtype:
  """At least float32: bf16 inputs upcast, float64 kept (x64 parity tests)."""
  return jnp.result_type(jnp.float32, *[jnp.asarray(x).dtype for x in xs])


def as_float(x, dtype=None) -> jax.Array:
  x = jnp.asarray(x)
  return x.astype(dtype or compute_dtype(x))


def clamp_min1(x: jax.Array) -> jax.Array:
  """`max(x, 1)`: the divisor TRL uses so an empty mask divides by 1, not 0."""
  return jnp.maximum(x, 1.0)


def safe_divide(num: jax.Array, den: jax.Array) -> jax.Array:
  """`num / den` where `den != 0`, else 0, without a NaN gradient."""
  ok = den != 0
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def check_temperature(temperature) -> None:
  """Rejects temperature <= 0 (greedy sampling) for training: z = logits / tau."""
  if isinstance(temperature, (int, float)) and temperature <= 0:
    raise ValueError(
        f"temperature must be > 0 for log-probs (got {temperature}); greedy"
        " sampling (temperature 0) cannot be trained on with z = logits / tau.")


# --------------------------------------------------------------------------
# Argument checks that name the argument (shapes are static, so these run at
# trace time, before compilation).


def _shape(x) -> tuple:
  return tuple(jnp.shape(x))


def check_same_shape(**arrays) -> None:
  """Raises ValueError naming every argument if their shapes differ."""
  shapes = {name: _shape(x) for name, x in arrays.items() if x is not None}
  if len(set(shapes.values())) > 1:
    listed = ", ".join(f"{n} {s}" for n, s in shapes.items())
    raise ValueError(f"Shapes must match: {listed}.")


def check_rank(name: str, x, rank: int) -> None:
  if jnp.ndim(x) != rank:
    raise ValueError(f"{name} must have rank {rank}, got shape {_shape(x)}.")


def check_shape(name: str, x, shape: tuple, what: str = "") -> None:
  """`shape` may hold None for any size; `what` says where it comes from."""
  got = _shape(x)
  if len(got) != len(shape) or any(w is not None and g != w for g, w in zip(got, shape)):
    want = "(" + ", ".join("_" if w is None else str(w) for w in shape) + ")"
    raise ValueError(f"{name} has shape {got}; expected {want}{what}.")


def infinite_groups(rewards: jax.Array, group_size: int, name: str = "rewards") -> jax.Array:
  """`[N]` bool: rows whose group holds a +-inf reward (`rewards` `[N]` or `[N, F]`).

  NaN means "could not be scored" (TRL: left out, advantage 0); an infinite
  reward is a bug in a reward function, and turning it into a finite advantage
  would hide it. Outside jit this raises, naming the entry; under jit the
  caller makes those groups' advantages NaN, so the loss is NaN and the
  training loop's non-finite guard stops the run (nothing is silently zeroed).
  """
  inf = jnp.isinf(as_float(rewards))
  if not isinstance(inf, jax.core.Tracer) and bool(jnp.any(inf)):
    where = tuple(int(i) for i in jnp.argwhere(inf)[0])
    value = float(jnp.asarray(rewards)[where])
    raise ValueError(
        f"{name}[{', '.join(map(str, where))}] = {value}: rewards must be finite (NaN"
        " marks a row that could not be scored and gets advantage 0). Check the"
        " reward function.")
  rows = inf if inf.ndim == 1 else jnp.any(inf, axis=tuple(range(1, inf.ndim)))
  return _broadcast_back(jnp.any(group_view(rows, group_size, name), axis=1), group_size)


def zero_masked(x: jax.Array, mask: jax.Array) -> jax.Array:
  """`x` with masked-out entries set to 0 by `where`, not `x * mask`.

  0 * NaN is NaN: a NaN (or inf) at a padded position would otherwise poison
  the loss and, through the backward pass, every gradient. `where` passes a
  zero cotangent to masked entries, so their values never matter.
  """
  return jnp.where(jnp.broadcast_to(jnp.asarray(mask) != 0, jnp.shape(x)), x, 0)


# --------------------------------------------------------------------------
# §1.3 masked reductions


def masked_sum(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  """`sum(x * mask, axis)` (docs/algorithms.md §1.3).

  Args:
    x: any shape.
    mask: broadcastable to `x`; 1 keeps an element, 0 drops it.
    axis: reduction axis (None = all).

  Returns:
    The masked sum, in at least float32.
  """
  dtype = compute_dtype(x)
  m = as_float(mask, dtype)
  return jnp.sum(zero_masked(as_float(x, dtype) * m, m), axis=axis)


def masked_mean(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  """`sum(x*m, axis) / max(sum(m, axis), 1)`: an empty mask gives 0, never NaN."""
  dtype = compute_dtype(x)
  m = jnp.broadcast_to(as_float(mask, dtype), jnp.shape(x))
  return masked_sum(x, m, axis) / clamp_min1(jnp.sum(m, axis=axis))


# --------------------------------------------------------------------------
# §1.1–1.2 log-probs and entropy from logits


def token_logprobs(logits: jax.Array, tokens: jax.Array, *,
                   temperature: float = 1.0) -> jax.Array:
  """Log-prob of each sampled token, TRL convention (docs/algorithms.md §1.1).

  `z = logits / temperature; logp[n, t] = z[n, t, tokens[n, t]] - logsumexp_v z`.
  Source: TRL `GRPOTrainer._get_per_token_logps_and_entropies`,
  `trl.trainer.utils.selective_log_softmax`.

  Args:
    logits: `[..., T, V]` logits already shifted to predict `tokens`.
    tokens: `[..., T]` integer token ids.
    temperature: sampling temperature, > 0.

  Returns:
    `[..., T]` log-probs in at least float32.
  """
  check_temperature(temperature)
  if _shape(logits)[:-1] != _shape(tokens):
    raise ValueError(f"logits {_shape(logits)} must be tokens' shape {_shape(tokens)}"
                     " plus a vocabulary axis.")
  z = as_float(logits) / temperature
  target = jnp.take_along_axis(z, tokens[..., None].astype(jnp.int32), axis=-1)
  return target[..., 0] - jax.nn.logsumexp(z, axis=-1)


def token_entropy(logits: jax.Array, *, temperature: float = 1.0) -> jax.Array:
  """Entropy (nats) of the temperature-scaled softmax (docs/algorithms.md §1.2).

  `H = logsumexp(z) - sum_v softmax(z)_v z_v` with `z = logits / temperature`,
  which equals `-sum p log p`. Source: `trl.trainer.utils.entropy_from_logits`.

  Args:
    logits: `[..., V]`.
    temperature: > 0.

  Returns:
    `[...]` entropies.
  """
  check_temperature(temperature)
  z = as_float(logits) / temperature
  lse = jax.nn.logsumexp(z, axis=-1)
  p = jax.nn.softmax(z, axis=-1)
  return lse - jnp.sum(p * z, axis=-1)


# --------------------------------------------------------------------------
# §1.4 KL estimators


def kl_estimator(logp: jax.Array, ref_logp: jax.Array, kind: str = "k3",
                 clamp: Optional[Tuple[float, float]] = None) -> jax.Array:
  """Per-token estimators of KL(pi || pi_ref) from samples of pi (§1.4).

  With `d = logp - ref_logp`:
    k1 ("kl"): `d`;  abs: `|d|`;  k2 ("mse"): `0.5 d^2`;
    k3 ("low_var_kl"): `exp(-d) + d - 1` (Schulman's unbiased, >= 0 estimator,
    the one TRL GRPO adds to the loss).

  Args:
    logp: `[N, T]` log-probs under the current policy.
    ref_logp: `[N, T]` log-probs under the reference policy.
    kind: "k1" | "kl" | "abs" | "k2" | "mse" | "k3" | "low_var_kl".
    clamp: optional `(log_ratio_bound, value_bound)`, verl's `(20, 10)` for k3:
      the log-ratio is clipped to +-log_ratio_bound and the estimate to
      +-value_bound. None (default) = TRL behaviour, no clamping.

  Returns:
    `[N, T]` per-token estimates.
  """
  check_same_shape(logp=logp, ref_logp=ref_logp)
  dtype = compute_dtype(logp, ref_logp)
  d = as_float(logp, dtype) - as_float(ref_logp, dtype)
  if clamp is not None:
    d = jnp.clip(d, -clamp[0], clamp[0])
  if kind in ("k1", "kl"):
    out = d
  elif kind == "abs":
    out = jnp.abs(d)
  elif kind in ("k2", "mse"):
    out = 0.5 * d * d
  elif kind in ("k3", "low_var_kl"):
    out = jnp.exp(-d) + d - 1.0
  else:
    raise ValueError(f"unknown KL estimator {kind!r}")
  if clamp is not None:
    out = jnp.clip(out, -clamp[1], clamp[1])
  return out


# --------------------------------------------------------------------------
# §1.5 contiguous group statistics


def group_view(x: jax.Array, group_size: int, name: str = "x") -> jax.Array:
  """`[N] -> [N / G, G]` (float), asserting `N % G == 0`; errors name `name`."""
  check_rank(name, x, 1)
  try:
    ok = not isinstance(group_size, bool) and operator.index(group_size) >= 1
  except TypeError:
    ok = False
  if not ok:
    raise ValueError(f"group_size must be an integer >= 1, got {group_size!r}.")
  if x.shape[0] % group_size:
    raise ValueError(
        f"{name} has N={x.shape[0]} rows, not a multiple of group_size={group_size}"
        " (groups are contiguous blocks of group_size rows).")
  return as_float(x).reshape(-1, group_size)


def _broadcast_back(stat: jax.Array, group_size: int) -> jax.Array:
  return jnp.repeat(stat, group_size, axis=0)


def group_mean(x: jax.Array, group_size: int) -> jax.Array:
  """Mean over each contiguous block of `group_size` rows, broadcast to `[N]`."""
  return _broadcast_back(group_view(x, group_size).mean(axis=1), group_size)


def group_std(x: jax.Array, group_size: int, ddof: int = 1) -> jax.Array:
  """Std (ddof=1 by default, as TRL) of each contiguous group, `[N]`.

  `group_size == 1` gives 0 (TRL special-cases `num_generations == 1`).
  """
  if group_size == 1:
    return jnp.zeros_like(as_float(x))
  g = group_view(x, group_size)
  return _broadcast_back(jnp.std(g, axis=1, ddof=ddof), group_size)


def nanmean(x: jax.Array, axis=None, keepdims: bool = False) -> jax.Array:
  """`torch.nanmean`: mean of non-NaN entries; all-NaN gives NaN."""
  valid = ~jnp.isnan(x)
  s = jnp.sum(jnp.where(valid, x, 0.0), axis=axis, keepdims=keepdims)
  c = jnp.sum(valid, axis=axis, keepdims=keepdims)
  return s / c  # 0/0 -> NaN exactly as torch.nanmean


def nanstd(x: jax.Array, axis=None, keepdims: bool = False) -> jax.Array:
  """`trl.trainer.utils.nanstd`: Bessel-corrected std of non-NaN entries.

  `var = nanmean((x - nanmean x)^2) * c/(c-1)`; `c <= 1` gives NaN as TRL.
  """
  valid = ~jnp.isnan(x)
  c = jnp.sum(valid, axis=axis, keepdims=True).astype(x.dtype)
  mu = nanmean(x, axis=axis, keepdims=True)
  sq = jnp.where(valid, (x - mu) ** 2, 0.0)
  var = jnp.sum(sq, axis=axis, keepdims=True) / c
  var = var * jnp.where(c > 1, c / jnp.where(c > 1, c - 1, 1.0), jnp.nan)
  std = jnp.sqrt(var)
  if not keepdims:
    std = jnp.squeeze(std, axis=axis) if axis is not None else std.reshape(())
  return std


def nan_group_mean(x: jax.Array, group_size: int) -> jax.Array:
  """NaN-ignoring group mean `[N]` (TRL `torch.nanmean(r.view(-1, G), 1)`)."""
  return _broadcast_back(nanmean(group_view(x, group_size), axis=1), group_size)


def nan_group_std(x: jax.Array, group_size: int) -> jax.Array:
  """NaN-ignoring ddof=1 group std `[N]`; zeros when `group_size == 1` (TRL)."""
  if group_size == 1:
    return jnp.zeros_like(as_float(x))
  return _broadcast_back(nanstd(group_view(x, group_size), axis=1), group_size)


def segment_mean_std(x: jax.Array, segment_ids: jax.Array, num_segments: int,
                     ddof: int = 1, weights: Optional[jax.Array] = None):
  """Statistics of ragged groups given by integer ids (§1.5).

  `mean_s = sum_{n: id=s} w x / sum w`, `var_s = sum w (x - mean_s)^2 /
  (count_s - ddof)` (ddof=1 Bessel). Empty segments give mean 0; segments with
  `count <= ddof` give std 0 (callers decide what a singleton means).

  Args:
    x: `[N]` values.
    segment_ids: `[N]` ints in `[0, num_segments)`.
    num_segments: static number of segments `S`.
    ddof: delta degrees of freedom.
    weights: optional `[N]` row weights (default 1); `count` is then the sum of
      weights, e.g. `1/len` per row for per-trajectory statistics.

  Returns:
    `(mean [S], std [S], count [S])`.
  """
  check_rank("x", x, 1)
  check_same_shape(x=x, segment_ids=segment_ids)
  x = as_float(x)
  w = jnp.ones_like(x) if weights is None else as_float(weights, x.dtype)
  seg = lambda v: jax.ops.segment_sum(v, segment_ids, num_segments)
  count = seg(w)
  mean = safe_divide(seg(w * x), count)
  dev = x - mean[segment_ids]
  dof = count - ddof
  var = safe_divide(seg(w * dev * dev), jnp.where(dof > 0, dof, 0.0))
  return mean, jnp.sqrt(var), count
