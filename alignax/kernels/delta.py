"""DeltaLLM's delta rule (docs/algorithms.md §10.1, #61): temporal sparsity.

Reference (pure jnp) only: the kernels realise DeltaLLM's hybrid through the
window + sinks + top-k BlockMask (`hybrid_block_mask`); this function measures
the temporal sparsity the delta approximation would exploit.
"""
from __future__ import annotations

import jax
from jax import lax
import jax.numpy as jnp


def delta_threshold(q, theta):
  """Thresholded query deltas in time order.

  For t = 0..T-1: `d_t = q_t - q_hat`; entries with `|d_t| < theta` are
  zeroed; `q_hat += d_t` (q_hat starts at 0). Approximate scores then follow
  `s_t = s_{t-1} + d_t K^T`.

  Args:
    q: `[..., T, D]` queries (time on axis -2).
    theta: scalar threshold >= 0.

  Returns:
    (delta `[..., T, D]` in q's dtype, sparsity: scalar fraction of zero
    entries of delta).
  """
  x = jnp.moveaxis(q, -2, 0)

  def step(q_hat, q_t):
    d = q_t - q_hat
    d = jnp.where(jnp.abs(d) < theta, jnp.zeros_like(d), d)
    return q_hat + d, d

  _, d = lax.scan(step, jnp.zeros_like(x[0]), x)
  d = jnp.moveaxis(d, 0, -2)
  return d, jnp.mean((d == 0).astype(jnp.float32))
