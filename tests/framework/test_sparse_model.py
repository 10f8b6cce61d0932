"""The decoder with `attention_impl="block_sparse"` (DeltaLLM-style hybrid).

The reference is independent of `alignax.kernels`: the hybrid element mask is
built here in NumPy from the rule of docs/sparse_attention.md §1 and
`alignax/framework/sparse_attention.py` (window + first real tokens as sinks + top-k
earlier whole blocks by mean(q block) . mean(k block)), then plain float64
softmax attention runs under it.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignax.framework import attention as attention_lib
from alignax.framework.config import ModelConfig
from alignax.framework.model import Decoder, KVCache
from tests.framework import hf_fixtures

# One layer keeps the compiles cheap (2 CPU cores); the hook runs per layer,
# so more layers add nothing that the dense parity tests do not cover.
BASE = ModelConfig(vocab_size=61, hidden_size=32, intermediate_size=48,
                   num_layers=1, num_heads=4, num_kv_heads=2)
LENGTHS = (20, 9, 24)   # left-padded to T = 24
# Window 5 + 2 sinks + top-1 block of 4 keys per query block of 8 rows.
HYBRID = dict(attention_impl="block_sparse", sparse_window=5, sparse_sinks=2,
              sparse_top_k=1, sparse_block_q=8, sparse_block_k=4)
ALL_VISIBLE = dict(attention_impl="block_sparse", sparse_window=64,
                   sparse_sinks=1, sparse_top_k=2, sparse_block_q=8,
                   sparse_block_k=8)


def _batch(lengths=LENGTHS, seed=2):
  ids, mask = hf_fixtures.left_padded_batch(BASE.vocab_size, lengths, seed=seed)
  return jnp.asarray(ids), jnp.asarray(mask)


def _jit_logits(model):
  return jax.jit(lambda ids, mask: model(ids, attention_mask=mask))


def numpy_hybrid_mask(q, k, key_valid, query_slot0, *, window, sinks, top_k,
                      block_q, block_k):
  """Hybrid rule of docs/sparse_attention.md §1 per element: bool [B, Hkv, Tq, Tk].

  Args:
    q: [B, Tq, Hq, D]; k: [B, Tk, Hkv, D] (NumPy, after RoPE).
    key_valid: bool [B, Tk]; query row i sits at slot `query_slot0 + i`.
  The rule sees each row's real keys as the run `[s, e)` from its first to
  its last real slot; `key_valid` is applied on top (it only matters for
  rows with holes). Also returns the number of top-k blocks selected.
  """
  b, tq, hq, d = q.shape
  tk, hkv = k.shape[1], k.shape[2]
  g = hq // hkv
  out = np.zeros((b, hkv, tq, tk), bool)
  n_selected = 0
  for bi in range(b):
    real = np.flatnonzero(key_valid[bi])
    s, e = (real[0], real[-1] + 1) if len(real) else (tk, 0)
    base = np.zeros((tq, tk), bool)
    for i in range(tq):
      p = query_slot0 + i
      for j in range(tk):
        base[i, j] = (s <= j < e and j <= p
                      and (p - j < window or j - s < sinks))
    out[bi] = base
    for qb in range(-(-tq // block_q)):
      rows = slice(qb * block_q, min(tq, (qb + 1) * block_q))
      p_lo = query_slot0 + qb * block_q
      qm = q[bi, rows].reshape(-1, hkv, g, d).mean(axis=(0, 2))   # [Hkv, D]
      for h in range(hkv):
        cands = []
        for kb in range(-(-tk // block_k)):
          lo, hi = kb * block_k, kb * block_k + block_k - 1
          live = base[rows, lo:hi + 1].any()
          if hi <= p_lo and lo >= s and hi < e and not live:
            score = qm[h] @ k[bi, lo:hi + 1, h].mean(0)
            cands.append((-score, kb))      # ties: lower block id first
        for _, kb in sorted(cands)[:top_k]:
          out[bi, h, rows, kb * block_k:(kb + 1) * block_k] = True
          n_selected += 1
  return out & key_valid[:, None, None, :], n_selected


SELECTED = []   # top-k blocks selected by the reference (per call)


@attention_lib.register_attention("test_hybrid_numpy_reference")
def _reference_attention(q, k, v, *, mask, scale, config, query_slot0,
                         key_valid):
  """float64 softmax attention under the NumPy hybrid mask (eager only).

  k, v arrive head-major [B, Hkv, Tk, D] (the hook's contract).
  """
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  k, v = np.swapaxes(k, 1, 2), np.swapaxes(v, 1, 2)
  mask, key_valid = np.asarray(mask), np.asarray(key_valid)
  hyb, n = numpy_hybrid_mask(
      q, k, key_valid, int(query_slot0), window=config.sparse_window,
      sinks=config.sparse_sinks, top_k=config.sparse_top_k,
      block_q=config.sparse_block_q, block_k=config.sparse_block_k)
  SELECTED.append(n)
  # The hybrid rule never reaches outside the decoder's causal/padding mask.
  assert not (hyb & ~mask[:, None]).any()
  b, tq, hq, d = q.shape
  g = hq // k.shape[2]
  kk, vv = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
  m = np.repeat(hyb, g, axis=1)                              # [B, Hq, Tq, Tk]
  s = np.einsum("bqhd,bkhd->bhqk", q, kk) * scale
  s = np.where(m, s, -np.inf)
  mx = s.max(-1, keepdims=True)
  p = np.where(m, np.exp(s - np.where(np.isfinite(mx), mx, 0.0)), 0.0)
  den = p.sum(-1, keepdims=True)
  p = np.where(den > 0, p / np.where(den > 0, den, 1.0), 0.0)
  return jnp.asarray(np.einsum("bhqk,bkhd->bqhd", p, vv), jnp.float32)


def test_config_fields_default_auto_and_stay_out_of_config_json():
  assert BASE.attention_impl == "auto"   # dense on CPU, cuDNN on a GPU
  cfg = BASE.replace(**HYBRID)
  hf_dict = cfg.to_hf_dict()
  assert not any(key.startswith("sparse") for key in hf_dict)
  assert hf_dict == BASE.to_hf_dict()
  again = ModelConfig.from_hf_dict(hf_dict, **HYBRID)
  assert again == cfg.replace(head_dim=cfg.dim_per_head)
  with pytest.raises(ValueError, match="sparse_window"):
    BASE.replace(attention_impl="block_sparse", sparse_window=0)


def test_all_visible_block_mask_gives_dense_logits():
  ref, _ = _logits_and_grads("dense")
  ours, _ = _logits_and_grads("all_visible")
  err = np.abs(ours - ref).max()
  assert err < 1e-5, err


def test_hybrid_logits_equal_numpy_reference_model():
  ids, mask = _batch()
  cfg = BASE.replace(**HYBRID)
  ours, _ = _logits_and_grads("hybrid")
  SELECTED.clear()
  ref_model = Decoder(cfg.replace(attention_impl="test_hybrid_numpy_reference"),
                      seed=3)
  ref = np.asarray(ref_model(ids, attention_mask=mask))   # eager: NumPy mask
  assert sum(SELECTED) > 0            # top-k actually picked blocks
  err = np.abs(ours - ref).max()
  assert err < 2e-5, err
  # ...and the hybrid mask is really sparse: the dense model differs.
  dense, _ = _logits_and_grads("dense")
  assert np.abs(dense - ref).max() > 1e-2


@pytest.mark.parametrize("case", ["prefill", "chunk", "holes"])
def test_hook_equals_numpy_reference(case):
  """One attention call: prefill, a chunk in a cache, and a holed cache."""
  rng = np.random.default_rng(0)
  b, hq, hkv, d, tk = 2, 4, 2, 8, 24
  cfg = BASE.replace(**HYBRID)
  slot = np.arange(tk)
  key_valid = np.stack([slot >= 3, slot >= 0])
  if case == "prefill":
    tq, slot0 = tk, 0
  else:
    tq, slot0 = 3, 17
    key_valid &= slot[None] < slot0 + tq     # slots after the chunk: empty
  if case == "holes":
    key_valid[0, 14:16] = False   # stopped, then resumed: holes in the window
  pos = slot0 + np.arange(tq)
  mask = key_valid[:, None, :] & (slot[None, None, :] <= pos[None, :, None])
  q = rng.normal(size=(b, tq, hq, d)).astype(np.float32)
  # Head-major [B, Hkv, Tk, D], the hook's layout.
  k = rng.normal(size=(b, hkv, tk, d)).astype(np.float32)
  v = rng.normal(size=(b, hkv, tk, d)).astype(np.float32)
  kw = dict(mask=jnp.asarray(mask), scale=d ** -0.5, config=cfg,
            query_slot0=slot0, key_valid=jnp.asarray(mask[:, -1]))
  ref = np.asarray(_reference_attention(q, k, v, **kw))
  fn = attention_lib.get_attention("block_sparse")
  # Under jit the guard is a lax.cond: "holes" takes the dense fallback.
  jitted = np.asarray(jax.jit(lambda q, k, v, m, s0: fn(
      q, k, v, mask=m, scale=d ** -0.5, config=cfg, query_slot0=s0,
      key_valid=m[:, -1]))(q, k, v, kw["mask"], jnp.int32(slot0)))
  assert np.abs(jitted - ref).max() < 2e-6


def test_kv_cache_decode_equals_full_forward():
  # Window + sinks + top-k. Decode selects blocks per step (its query block
  # is the new token), so the full forward selects per token too
  # (sparse_block_q=1) and the two must then agree exactly.
  cfg = BASE.replace(**{**HYBRID, "sparse_block_q": 1})
  model = Decoder(cfg, seed=3)
  ids, mask = _batch((14, 6, 16), seed=4)
  full = np.asarray(_jit_logits(model)(ids, mask))

  @jax.jit
  def step(ids, mask, positions, cache, index):
    hidden, cache = model.forward(ids, attention_mask=mask, positions=positions,
                                  cache=cache, cache_index=index)
    return model.logits(hidden), cache

  positions = jnp.cumsum(mask, -1) - 1
  cache = KVCache.zeros(cfg, batch=3, slots=20)
  logits, cache = step(ids[:, :10], mask[:, :10], positions[:, :10], cache,
                       jnp.int32(0))
  steps = [logits]
  for t in range(10, 16):
    logits, cache = step(ids[:, t:t + 1], mask[:, t:t + 1],
                         positions[:, t:t + 1], cache, jnp.int32(t))
    steps.append(logits)
  ours = np.asarray(jnp.concatenate(steps, axis=1))
  real = np.asarray(mask)
  err = np.abs(ours - full)[real].max()
  assert err < 1e-5, err


@functools.lru_cache(maxsize=None)
def _logits_and_grads(kind):
  """(logits [B, T, V], gradient leaves of the mean NLL) on the test batch.

  Cached: the logits test and the gradient test share one compile per model.
  """
  cfg = {"dense": BASE, "all_visible": BASE.replace(**ALL_VISIBLE),
         "hybrid": BASE.replace(**HYBRID)}[kind]
  ids, mask = _batch()
  graphdef, state = nnx.split(Decoder(cfg, seed=3))

  def loss(state):
    logits = nnx.merge(graphdef, state)(ids, attention_mask=mask)
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    nll = -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    m = mask[:, 1:] & mask[:, :-1]
    return jnp.sum(nll * m) / jnp.sum(m), logits

  grads, logits = jax.jit(jax.grad(loss, has_aux=True))(state)
  return np.asarray(logits), [np.asarray(g) for g in jax.tree.leaves(grads)]


def test_gradients_flow_and_match_dense_when_all_visible():
  _, dense = _logits_and_grads("dense")
  _, visible = _logits_and_grads("all_visible")
  _, hybrid = _logits_and_grads("hybrid")
  for gd, gv, gh in zip(dense, visible, hybrid):
    assert np.isfinite(gh).all()
    np.testing.assert_allclose(gv, gd, atol=1e-5, rtol=0)
  # The hybrid mask changes the gradient (it is a different model).
  assert max(float(np.abs(a - b).max()) for a, b in zip(dense, hybrid)) > 1e-4
