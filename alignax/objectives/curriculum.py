"""Curriculum samplers, easy to hard (CAU, docs/algorithms.md §9.4).

Pure jax.numpy. `U` = number of unlearning samples, `B` = batch size. Index
batches are padded with -1 where fewer than `B` samples are left; callers mask
rows with `indices >= 0`. `CURRICULA` holds the schedules a config chooses by name:

>>> d = jnp.array([0.9, 0.1, 0.5, 0.3, 0.7])
>>> CURRICULA["hard"](None, d, 2, 1.0).tolist()
[[1, 3], [2, 4], [0, -1]]
>>> CURRICULA["soft"](jax.random.key(0), d, 2, 1e-4).tolist()  # tau -> 0: the hard order
[[1, 3], [2, 4], [0, -1]]
>>> sorted(CURRICULA["none"](jax.random.key(0), d, 2, 1.0).ravel().tolist())  # random order
[-1, 0, 1, 2, 3, 4]
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from alignax.registry import Registry


def hard_curriculum_batches(difficulty: jax.Array, batch_size: int) -> jax.Array:
  """Hard sampling: sort by ascending difficulty, cut into consecutive batches.

  Args:
    difficulty: [U] difficulty scores.
    batch_size: B (static).

  Returns:
    [ceil(U / B), B] int32 sample indices, easiest batch first; the last batch
    is padded with -1. Ties keep the original order (stable sort).

  Example:
    >>> print(hard_curriculum_batches(jnp.array([0.9, 0.1, 0.5, 0.3, 0.7]), 2))
    [[ 1  3]
     [ 2  4]
     [ 0 -1]]
  """
  chex.assert_rank(difficulty, 1)
  u = difficulty.shape[0]
  num_batches = -(-u // batch_size)
  order = jnp.argsort(difficulty, stable=True).astype(jnp.int32)
  pad = num_batches * batch_size - u
  order = jnp.concatenate([order, jnp.full((pad,), -1, jnp.int32)])
  return order.reshape(num_batches, batch_size)


def soft_curriculum_sample(key: jax.Array, difficulty: jax.Array,
                           remaining: jax.Array, batch_size: int,
                           tau: float = 1.0) -> jax.Array:
  """Soft sampling: B draws without replacement, p(u) ∝ exp(-d(u)/tau).

  Uses the Gumbel-top-k trick, which is exactly sequential sampling without
  replacement from the softmax over the remaining samples (Plackett-Luce).

  Args:
    key: PRNG key.
    difficulty: [U] difficulty scores (normalised to [0, 1] for tau = 1).
    remaining: [U] bool, samples not yet unlearned.
    batch_size: B (static).
    tau: temperature; small tau approaches the hard (sorted) curriculum.

  Returns:
    [B] int32 indices, -1 for slots beyond the number of remaining samples.

  Example:
    >>> d = jnp.array([0.9, 0.1, 0.5, 0.3, 0.7])
    >>> remaining = jnp.array([True, False, True, True, False])
    >>> idx = soft_curriculum_sample(jax.random.key(0), d, remaining, batch_size=4)
    >>> sorted(idx.tolist())  # the 3 remaining samples, in a random order, then padding
    [-1, 0, 2, 3]
    >>> print(soft_curriculum_sample(jax.random.key(0), d, remaining, 4, tau=1e-4))  # easy first
    [ 3  2  0 -1]
  """
  chex.assert_rank([difficulty, remaining], 1)
  chex.assert_equal_shape([difficulty, remaining])
  logits = -difficulty.astype(jnp.float32) / tau
  gumbel = jax.random.gumbel(key, logits.shape)
  keys = jnp.where(remaining, logits + gumbel, -jnp.inf)
  k = min(batch_size, difficulty.shape[0])
  top, idx = jax.lax.top_k(keys, k)
  idx = jnp.where(jnp.isfinite(top), idx, -1).astype(jnp.int32)
  if k < batch_size:
    idx = jnp.concatenate([idx, jnp.full((batch_size - k,), -1, jnp.int32)])
  return idx


def soft_curriculum_batches(key: jax.Array, difficulty: jax.Array,
                            batch_size: int, tau: float = 1.0) -> jax.Array:
  """A whole soft-sampling schedule: successive draws until nothing is left.

  Args:
    key: PRNG key.
    difficulty: [U] difficulty scores.
    batch_size: B (static).
    tau: temperature.

  Returns:
    [ceil(U / B), B] int32 indices (every sample exactly once, -1 padding).

  Example:
    >>> batches = soft_curriculum_batches(jax.random.key(0), jnp.linspace(0.0, 1.0, 5), 2)
    >>> batches.shape, sorted(batches.ravel().tolist())  # each sample once, then -1
    ((3, 2), [-1, 0, 1, 2, 3, 4])
  """
  chex.assert_rank(difficulty, 1)
  u = difficulty.shape[0]
  num_batches = -(-u // batch_size)

  def step(remaining, k):
    idx = soft_curriculum_sample(k, difficulty, remaining, batch_size, tau)
    # Scatter into a padded copy so that -1 slots touch a dummy entry.
    remaining = jnp.concatenate([remaining, jnp.zeros((1,), bool)])
    remaining = remaining.at[jnp.where(idx >= 0, idx, u)].set(False)[:u]
    return remaining, idx

  _, batches = jax.lax.scan(step, jnp.ones((u,), bool),
                            jax.random.split(key, num_batches))
  return batches


def random_batches(key: jax.Array, num_samples: int,
                   batch_size: int) -> jax.Array:
  """No curriculum: a uniformly random order, [ceil(U / B), B] with -1 padding.

  Example:
    >>> batches = random_batches(jax.random.key(0), 5, 2)
    >>> batches.shape, sorted(batches.ravel().tolist())
    ((3, 2), [-1, 0, 1, 2, 3, 4])
  """
  return hard_curriculum_batches(
      jax.random.uniform(key, (num_samples,)), batch_size)


# Schedules a config chooses by name (no if-chains in binaries), each
# `(key, difficulty [U], batch_size, tau) -> [nb, B]` indices.
CURRICULA = Registry("curriculum")
CURRICULA.add("hard", lambda key, d, b, tau: hard_curriculum_batches(d, b))
CURRICULA.add("soft", soft_curriculum_batches)
CURRICULA.add("none", lambda key, d, b, tau: random_batches(key, d.shape[0], b))
