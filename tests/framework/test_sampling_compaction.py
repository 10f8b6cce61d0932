"""Compacted decode (finished rows leave the batch) against the plain decode.

Compaction must not change a single token: each row keeps the random numbers it
draws in the whole batch. And it must really compute fewer rows: the row-steps
the sampler reports are re-derived here in NumPy from the completion lengths.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignax.framework import sampling, sharding
from alignax.framework.config import ModelConfig
from alignax.framework.model import Decoder

CONFIG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                     num_heads=4, num_kv_heads=2, max_position_embeddings=128)
N = 24  # max_new_tokens


@pytest.fixture(scope="module")
def model():
  return Decoder(CONFIG, seed=1)


def _prompts(lengths, seed=0):
  rng = np.random.RandomState(seed)
  return [list(rng.randint(0, CONFIG.vocab_size, n)) for n in lengths]


def expected_row_steps(lengths, buckets, n):
  """Rows computed by the staged decode, from the completion lengths [B].

  Before step i the live rows are those longer than i; the decode moves to the
  next bucket while they fit in it, and stops when none is live or at step n.
  """
  lengths = np.asarray(lengths)
  stage, total = 0, 0
  for i in range(n):
    live = int((lengths > i).sum())
    if live == 0:
      break
    while stage + 1 < len(buckets) and live <= buckets[stage + 1]:
      stage += 1
    total += buckets[stage]
  return total


def _assert_same(plain, compact):
  np.testing.assert_array_equal(np.asarray(compact.tokens), np.asarray(plain.tokens))
  np.testing.assert_array_equal(np.asarray(compact.mask), np.asarray(plain.mask))
  np.testing.assert_allclose(np.asarray(compact.logprobs), np.asarray(plain.logprobs),
                             atol=1e-6)


def test_buckets_halve_down_to_min_rows():
  assert sampling.compaction_buckets(64, 8) == (64, 32, 16, 8)
  assert sampling.compaction_buckets(12, 8) == (12, 8)
  assert sampling.compaction_buckets(5, 1) == (5, 3, 2, 1)
  assert sampling.compaction_buckets(8, 8) == (8,)
  assert sampling.compaction_buckets(24, 4) == (24, 12, 8, 4)


def test_greedy_is_token_exact_with_stops_at_very_different_steps(model):
  prompts = _prompts((3, 7, 2, 9, 5, 4, 6, 8))
  free = np.asarray(sampling.generate(model, prompts, max_new_tokens=N).tokens)
  # Stop ids taken from the free-running greedy rows at steps 1, 2, 6 and 10:
  # some rows stop at once, some late, some never (the budget ends them).
  stops = sorted({int(free[5, 1]), int(free[0, 2]), int(free[1, 6]), int(free[2, 10])})
  kwargs = dict(max_new_tokens=N, eos_token_id=stops)
  plain = sampling.generate(model, prompts, **kwargs)
  compact = sampling.generate(model, prompts, compact=True, compact_min_rows=1, **kwargs)
  lengths = np.asarray(plain.mask).sum(1)
  assert lengths.min() <= 3 and lengths.max() == N and len(set(lengths.tolist())) >= 4
  _assert_same(plain, compact)
  steps = lengths.max()
  assert int(plain.row_steps) == steps * len(prompts)
  buckets = sampling.compaction_buckets(len(prompts), 1)
  assert int(compact.row_steps) == expected_row_steps(lengths, buckets, N)
  assert int(compact.row_steps) < int(plain.row_steps)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, None, None), (0.8, 8, 0.9)])
def test_sampled_is_token_exact_and_computes_fewer_rows(model, temperature, top_k, top_p):
  prompts = _prompts((3, 7, 2, 9, 5, 4))
  # Six stop ids in 64: each step stops a row with some chance, so the
  # completions end anywhere from the first step to the budget.
  kwargs = dict(max_new_tokens=N, temperature=temperature, top_k=top_k, top_p=top_p,
                eos_token_id=[1, 2, 3, 4, 5, 6], seed=3, num_generations=4)
  plain = sampling.generate(model, prompts, **kwargs)
  compact = sampling.generate(model, prompts, compact=True, compact_min_rows=2, **kwargs)
  lengths = np.asarray(plain.mask).sum(1)
  assert lengths.min() <= 3 and lengths.max() >= 16
  _assert_same(plain, compact)
  buckets = sampling.compaction_buckets(24, 2)
  assert len(buckets) > 2
  assert int(compact.row_steps) == expected_row_steps(lengths, buckets, N)
  assert int(compact.row_steps) < 0.8 * int(plain.row_steps)


def test_no_repeat_ids_are_token_exact(model):
  prompts = _prompts((3, 5, 2, 6), seed=1)
  kwargs = dict(max_new_tokens=N, temperature=1.5, seed=4, num_generations=3,
                eos_token_id=[7, 8, 9], no_repeat_token_ids=list(range(10, 40)))
  plain = sampling.generate(model, prompts, **kwargs)
  compact = sampling.generate(model, prompts, compact=True, compact_min_rows=1, **kwargs)
  _assert_same(plain, compact)


def test_decode_loop_puts_the_cache_back_together(model):
  """Multi-turn rollouts reuse the cache after a turn: rows that left the batch
  early find their history where it was, and the same visible slots."""
  prompts = _prompts((3, 7, 2, 9, 5, 4, 6, 8), seed=2)
  graphdef, state = nnx.split(model)
  ids, mask = sampling.pad_prompts(prompts, 16, 0)
  positions = jnp.asarray(mask.sum(1), jnp.int32)
  budget = jnp.asarray([1, 2, 3, 5, 8, 13, 0, 20], jnp.int32)  # 0: a row already done
  done = jnp.asarray([False] * 7 + [True])

  @functools.partial(jax.jit, static_argnums=0)
  def run(compact):
    m = nnx.merge(graphdef, state)
    cache, logits = sampling.prefill(graphdef, state, jnp.asarray(ids), jnp.asarray(mask),
                                     slots=16 + N)
    params = sampling.SamplingParams(max_new_tokens=N, temperature=1.0, compact=compact,
                                     compact_min_rows=1)
    return sampling.decode_loop(m, cache, logits, positions, jnp.int32(16),
                                jax.random.key(0), done, budget, params)

  plain, compact = run(False), run(True)
  for a, b in zip(plain[:4], compact[:4]):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)
  np.testing.assert_array_equal(np.asarray(compact[1]).sum(1), [1, 2, 3, 5, 8, 13, 0, 0])
  cache_plain, cache_compact = plain[4], compact[4]
  visible = np.asarray(cache_plain.mask)
  np.testing.assert_array_equal(np.asarray(cache_compact.mask), visible)
  for kp, kc in zip(cache_plain.k + cache_plain.v, cache_compact.k + cache_compact.v):
    where = np.broadcast_to(visible[:, None, :, None], kp.shape)
    np.testing.assert_allclose(np.asarray(kc)[where], np.asarray(kp)[where], atol=1e-6)


def test_sharded_compacted_generation_equals_unsharded():
  model = Decoder(ModelConfig(vocab_size=64), seed=2)
  prompts = _prompts((3, 6, 2, 5))
  kwargs = dict(max_new_tokens=8, temperature=1.0, seed=1, num_generations=4,
                eos_token_id=[1, 2, 3, 4, 5, 6, 7, 8])
  ref = sampling.generate(model, prompts, **kwargs)
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  sharding.shard_model(model, mesh)
  out = sampling.generate(model, prompts, mesh=mesh, compact=True, compact_min_rows=1,
                          **kwargs)
  _assert_same(ref, out)
  assert int(out.row_steps) < int(ref.row_steps)


def test_bad_compact_min_rows_is_explained(model):
  with pytest.raises(ValueError, match="compact_min_rows"):
    sampling.generate(model, [[1, 2]], max_new_tokens=4, compact=True, compact_min_rows=0)
