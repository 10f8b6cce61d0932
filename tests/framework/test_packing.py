"""Packed update (several prompt + completion sequences per row) against the unpacked one.

The packer is checked on its own (nothing lost, nothing overlapping, rows not
overfull, errors that name the argument); then the packed forward's per-token
log-probs, and the loss and gradient of every registered policy loss (with and
without the KL term), against the unpacked batch; then one whole update.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from alignax import objectives
from alignax.framework import model as model_lib
from alignax.framework import packing, train
from alignax.framework.config import ModelConfig
from alignax.framework.model import Decoder

CONFIG = ModelConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_layers=2,
                     num_heads=4, num_kv_heads=2)
P, C = 6, 10
TEMPERATURE = 0.9


def _batch(n=8, seed=0):
  """An unpacked GRPO batch: prompts of 1..P real tokens (left-padded),
  completions of 1..C tokens (right-padded), off-policy old log-probs."""
  rng = np.random.RandomState(seed)
  seq = rng.randint(0, CONFIG.vocab_size, (n, P + C)).astype(np.int32)
  prompt_len = rng.randint(1, P + 1, n)
  comp_len = rng.randint(1, C + 1, n)
  comp_len[0], comp_len[1] = 1, C  # the extremes
  att = np.zeros((n, P + C), bool)
  cmask = np.zeros((n, C), bool)
  for i in range(n):
    att[i, P - prompt_len[i]:P] = True
    cmask[i, :comp_len[i]] = True
  att[:, P:] = cmask
  seq[~att] = 0
  return dict(sequences=seq, attention_mask=att, completion_tokens=seq[:, P:],
              completion_mask=cmask,
              old_logprobs=(-3.0 + 0.3 * rng.randn(n, C)).astype(np.float32),
              advantages=rng.randn(n).astype(np.float32),
              ref_logprobs=(-3.0 + 0.3 * rng.randn(n, C)).astype(np.float32))


# ---------------------------------------------------------------- the packer
def test_first_fit_decreasing_loses_nothing_and_respects_row_length():
  rng = np.random.RandomState(0)
  lengths = rng.randint(0, 40, 200)
  plan = packing.first_fit_decreasing(lengths, 64)
  assert plan.row.shape == plan.offset.shape == lengths.shape
  used = np.zeros((plan.num_rows, 64), np.int32)
  for r, o, n in zip(plan.row, plan.offset, lengths):
    assert 0 <= o and o + n <= 64
    used[r, o:o + n] += 1
  assert used.max() == 1                       # segments never overlap
  assert used.sum() == lengths.sum()           # and every token is placed
  np.testing.assert_array_equal(plan.row_fill(lengths), used.sum(1))
  # First-fit decreasing is near optimal: within 11/9 of the volume bound + 1.
  assert plan.num_rows <= 11 / 9 * np.ceil(lengths.sum() / 64) + 1


def test_first_fit_decreasing_order_and_padding_to_num_rows():
  plan = packing.first_fit_decreasing([3, 5, 2, 4], 8)
  # Longest first: 5 -> row 0, 4 -> row 1, 3 -> row 0 (fits after 5), 2 -> row 1.
  np.testing.assert_array_equal(plan.row, [0, 0, 1, 1])
  np.testing.assert_array_equal(plan.offset, [5, 0, 4, 0])
  assert plan.num_rows == 2
  assert packing.first_fit_decreasing([3, 5, 2, 4], 8, num_rows=5).num_rows == 5


@pytest.mark.parametrize("args,kwargs,match", [
    (([3, 9, 2], 8), {}, r"lengths\[1\] = 9 is longer than row_length = 8"),
    (([3, -1], 8), {}, r"lengths\[1\] = -1"),
    (([3, 4], 0), {}, "row_length"),
    (([[3, 4]], 8), {}, "lengths must be a 1-D"),
    (([6, 6, 6], 8), dict(num_rows=2), "num_rows=2"),
])
def test_packer_errors_name_the_argument(args, kwargs, match):
  with pytest.raises(ValueError, match=match):
    packing.first_fit_decreasing(*args, **kwargs)


def test_pack_grpo_batch_layout():
  batch = _batch()
  packed = packing.pack_grpo_batch(batch, P + C, micro_batches=2)
  ids, segs, pos = packed["input_ids"], packed["segment_ids"], packed["positions"]
  assert ids.shape[1] == P + C and ids.shape[0] % 2 == 0
  rows = ids.shape[0] // 2
  n = batch["sequences"].shape[0]
  # Every row's real tokens are one segment, in order, positions from 0; in
  # its own micro-batch's rows.
  found = 0
  for m in range(2):
    for r in range(m * rows, (m + 1) * rows):
      for s in np.unique(segs[r][segs[r] > 0]):
        where = np.flatnonzero(segs[r] == s)
        assert np.all(np.diff(where) == 1)
        np.testing.assert_array_equal(pos[r, where], np.arange(where.size))
        tokens = ids[r, where]
        matches = [i for i in range(m * n // 2, (m + 1) * n // 2)
                   if np.array_equal(batch["sequences"][i][batch["attention_mask"][i]], tokens)]
        assert matches
        found += 1
  assert found == n
  assert (segs > 0).sum() == batch["attention_mask"].sum()
  # The targets put back at [n, t] are the completion tokens.
  k = packed["target_tokens"].size // 2
  for i in range(n):
    m = i // (n // 2)
    got = packed["target_tokens"][m * k + packed["target_index"][i]]
    cm = batch["completion_mask"][i]
    np.testing.assert_array_equal(got[cm], batch["completion_tokens"][i][cm])
  stats = packing.packing_stats(packed, n, P + C)
  assert stats["packed_slots"] < stats["unpacked_slots"]


def test_pack_grpo_batch_errors_name_the_argument():
  batch = _batch()
  with pytest.raises(ValueError, match=r"lengths\[\d+\] = \d+ is longer than row_length = 4"):
    packing.pack_grpo_batch(batch, 4)
  with pytest.raises(ValueError, match="micro_batches=3"):
    packing.pack_grpo_batch(batch, P + C, micro_batches=3)
  with pytest.raises(ValueError, match="targets_per_micro_batch=2"):
    packing.pack_grpo_batch(batch, P + C, targets_per_micro_batch=2)
  holey = dict(batch, attention_mask=batch["attention_mask"].copy())
  holey["attention_mask"][1, P + 3] = False
  with pytest.raises(ValueError, match=r"completion_mask\[1, 3\]"):
    packing.pack_grpo_batch(holey, P + C)


def test_segment_ids_refused_for_slot_structured_attention():
  model = Decoder(dataclasses.replace(CONFIG, attention_impl="block_sparse"), seed=0)
  ids = jnp.zeros((1, 8), jnp.int32)
  with pytest.raises(ValueError, match="segment_ids"):
    model.forward(ids, segment_ids=jnp.ones((1, 8), jnp.int32))


def test_default_positions_restart_at_each_segment():
  segs = jnp.asarray([[1, 1, 1, 2, 2, 3, 0, 0]])
  np.testing.assert_array_equal(model_lib.positions_from_segments(segs),
                                [[0, 1, 2, 0, 1, 0, 0, 1]])
  model = Decoder(CONFIG, seed=0)
  ids = jnp.asarray(np.random.RandomState(0).randint(0, CONFIG.vocab_size, (1, 8)))
  kw = dict(attention_mask=segs > 0, segment_ids=segs)
  default, _ = model.forward(ids, **kw)
  explicit, _ = model.forward(ids, positions=model_lib.positions_from_segments(segs), **kw)
  np.testing.assert_array_equal(np.asarray(default), np.asarray(explicit))
  # Segment 2 alone, unpacked, gives the same hidden states.
  alone, _ = model.forward(ids[:, 3:5])
  np.testing.assert_allclose(np.asarray(default[:, 3:5]), np.asarray(alone), atol=1e-6)


# ------------------------------------------------- packed == unpacked (model)
@pytest.fixture(scope="module")
def setup():
  graphdef, params = nnx.split(Decoder(CONFIG, seed=0))
  batch = _batch()
  # Rows of 2 (P + C) slots: several sequences per row.
  packed = packing.pack_grpo_batch(batch, 2 * (P + C), target_multiple=16)
  assert packed["input_ids"].shape[0] < batch["sequences"].shape[0] // 2 + 2

  def unpacked_logp(p):
    return train.completion_logprobs(
        graphdef, p, batch["sequences"], batch["attention_mask"],
        batch["completion_tokens"], temperature=TEMPERATURE, with_entropy=True)

  def packed_logp(p):
    return packing.packed_completion_logprobs(graphdef, p, packed, temperature=TEMPERATURE,
                                              with_entropy=True)

  forward = jax.jit(lambda p: (unpacked_logp(p), packed_logp(p)))

  @jax.jit
  def pullback(p, ct_unpacked, ct_packed):
    """Parameter gradients of <ct, logp> through each forward."""
    g_u = jax.vjp(lambda q: unpacked_logp(q)[0], p)[1](ct_unpacked)[0]
    g_p = jax.vjp(lambda q: packed_logp(q)[0], p)[1](ct_packed)[0]
    return g_u, g_p

  return batch, params, forward, pullback


def test_packed_logprobs_and_entropy_equal_unpacked(setup):
  batch, params, forward, _ = setup
  (lu, eu), (lp, ep) = forward(params)
  m = batch["completion_mask"]
  np.testing.assert_allclose(np.asarray(lp)[m], np.asarray(lu)[m], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ep)[m], np.asarray(eu)[m], rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(lp)[~m] == 0)


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_every_registered_loss_has_the_same_value_and_gradient_packed(setup, beta):
  """For each loss of the registry, the loss from the packed log-probs and its
  gradient (the loss's gradient in the log-probs, pulled back through the
  packed forward) equal the unpacked ones."""
  batch, params, forward, pullback = setup
  (lu, _), (lp, _) = forward(params)
  arrays = {k: jnp.asarray(batch[k]) for k in ("old_logprobs", "advantages",
                                                "completion_mask", "ref_logprobs")}
  names = sorted(objectives.POLICY_LOSSES)
  assert len(names) >= 8
  for name in names:
    config = objectives.PolicyLossConfig(loss_type=name, beta=beta, max_completion_length=C)

    def loss(logp):
      num, den, _ = objectives.policy_loss_terms(
          logp, arrays["old_logprobs"], arrays["advantages"], arrays["completion_mask"],
          ref_logprobs=arrays["ref_logprobs"], **config.kwargs())
      return num / jnp.maximum(den, 1.0)

    value_u, ct_u = jax.value_and_grad(loss)(lu)
    value_p, ct_p = jax.value_and_grad(loss)(lp)
    np.testing.assert_allclose(float(value_p), float(value_u), rtol=1e-5, atol=1e-6,
                               err_msg=name)
    g_u, g_p = pullback(params, ct_u, ct_p)
    flat_u, flat_p = jax.tree.leaves(g_u), jax.tree.leaves(g_p)
    scale = max(float(jnp.max(jnp.abs(g))) for g in flat_u)
    assert scale > 0, name
    for a, b in zip(flat_u, flat_p):
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5 * scale, rtol=1e-4,
                                 err_msg=name)


def test_packed_update_equals_unpacked_update():
  """One whole jitted update (two micro-batches, KL term): same loss, metrics
  and parameters after an SGD step (which is the gradient itself)."""
  optimizer = optax.sgd(1.0)
  loss = objectives.PolicyLossConfig(loss_type="dapo", beta=0.04, epsilon_high=0.28)
  batch = _batch(seed=1)
  packed = packing.pack_grpo_batch(batch, 2 * (P + C), micro_batches=2, target_multiple=16)
  graphdef, state = train.init_train_state(Decoder(CONFIG, seed=0), optimizer)
  before = jax.tree.map(np.asarray, state.params)
  copy = lambda s: jax.tree.map(jnp.copy, s)  # noqa: E731  (updates donate the state)
  plain = train.make_grpo_update(graphdef, optimizer, loss=loss, temperature=TEMPERATURE,
                                 micro_batches=2)
  packed_update = packing.make_packed_grpo_update(graphdef, optimizer, loss=loss,
                                                  temperature=TEMPERATURE, micro_batches=2)
  s_u, m_u = plain(copy(state), batch)
  s_p, m_p = packed_update(copy(state), packed)
  assert set(m_u) == set(m_p)
  for k in m_u:
    np.testing.assert_allclose(float(m_p[k]), float(m_u[k]), rtol=1e-5, atol=1e-6, err_msg=k)
  grads_u = jax.tree.map(lambda a, b: a - np.asarray(b), before, s_u.params)
  grads_p = jax.tree.map(lambda a, b: a - np.asarray(b), before, s_p.params)
  scale = max(np.abs(g).max() for g in jax.tree.leaves(grads_u))
  for a, b in zip(jax.tree.leaves(grads_u), jax.tree.leaves(grads_p)):
    np.testing.assert_allclose(b, a, atol=1e-5 * scale)


def test_bucket_size():
  assert [packing.bucket_size(n, 64, 4) for n in (1, 16, 17, 40, 64)] == [16, 16, 32, 48, 64]
  assert packing.bucket_size(70, 64, 4) == 70  # beyond the largest: n itself
  assert packing.bucket_size(100, 640, 4, multiple=64) == 192  # 160 rounded up to 64
  with pytest.raises(ValueError, match="buckets=0"):
    packing.bucket_size(1, 8, 0)


def test_packed_group_update_equals_unpacked_with_bounded_shapes():
  """`PackedGroupUpdate` on GroupBatches of varying lengths (off-policy ones,
  with the sampler correction, included): the same metrics and parameters as
  the unpacked update, and at most buckets**2 packed shapes."""
  from alignax import rl
  optimizer = optax.sgd(0.5)
  loss = objectives.PolicyLossConfig(loss_type="dapo", epsilon_high=0.28,
                                     sampling_is_mode="token_truncate")
  graphdef, state = train.init_train_state(Decoder(CONFIG, seed=0), optimizer)
  plain = train.make_grpo_update(graphdef, optimizer, loss=loss, temperature=TEMPERATURE,
                                 micro_batches=2)
  packed = packing.PackedGroupUpdate(graphdef, optimizer, loss=loss, row_length=P + C,
                                     temperature=TEMPERATURE, micro_batches=2, buckets=2,
                                     target_multiple=8)
  s_u = s_p = state
  for seed in range(5):
    b = _batch(n=8, seed=seed + 10)
    sampling = b["old_logprobs"] + 0.3 * np.random.RandomState(seed).randn(8, C)
    batch = rl.GroupBatch(b["sequences"], b["attention_mask"], b["completion_tokens"],
                          b["completion_mask"], None, b["advantages"],
                          sampling_logprobs=sampling.astype(np.float32))
    s_u, m_u = plain(jax.tree.map(jnp.copy, s_u), batch)
    s_p, m_p = packed(jax.tree.map(jnp.copy, s_p), batch)
    assert "sampling/importance_sampling_ratio/mean" in m_p
    for k in m_u:
      np.testing.assert_allclose(float(m_p[k]), float(m_u[k]), rtol=2e-5, atol=1e-6,
                                 err_msg=f"batch {seed}: {k}")
  for a, b in zip(jax.tree.leaves(s_u.params), jax.tree.leaves(s_p.params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-5, rtol=1e-4)
  assert 1 <= len(packed.shapes) <= 4
  assert all(r <= 4 for r, _ in packed.shapes)  # rows per micro-batch: 2 or 4 of 4
  assert 0 < packed.last_stats["fill"] <= 1
