"""Reference vs float64 NumPy, and the xla path vs the reference (fast)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignax import kernels as K
from alignax.kernels.xla import block_sparse_attention_xla
from tests.kernels import helpers as H

TOL = 2e-5


@pytest.mark.parametrize("name", ["causal", "window48", "blocks32",
                                  "elem10_per_head"])
def test_reference_vs_numpy(name):
  dense = H.bar_masks()[name]
  q, k, v = H.inputs(0, 2, 128, 128, 4, 2, 32)
  m = K.BlockMask.from_dense(dense, 32, 32)
  out, lse = jax.jit(lambda a, b, c: K.block_sparse_attention_reference(
      a, b, c, m, sm_scale=0.3, return_lse=True))(q, k, v)
  want, want_lse = H.np_attention(q, k, v, dense, 0.3)
  assert H.max_err(out, want) < TOL
  assert H.finite_lse_err(lse, want_lse) < TOL


def _case_masks():
  """(label, BlockMask, dense) over the bar masks and broadcast forms."""
  out = []
  bm = H.bar_masks()
  for (name, blocks) in [("causal", (32, 32)), ("window48", (64, 32)),
                         ("blocks32", (16, 64)), ("elem10_per_head", (32, 32))]:
    out.append((name, K.BlockMask.from_dense(bm[name], *blocks), bm[name]))
  # Rule masks with per-batch offsets (decode-like q_pos0, left padding).
  rm = K.BlockMask.local(128, 48, sinks=4, block_q=32, block_k=32,
                         kv_start=np.array([0, 9]))
  out.append(("rule_window_sinks_kvstart", rm, np.asarray(rm.to_dense())))
  # Per-KV-head mask (Hm = Hkv) from top-k selection.
  rng = np.random.default_rng(1)
  q = rng.standard_normal((2, 128, 4, 32)).astype(np.float32)
  k = rng.standard_normal((2, 128, 2, 32)).astype(np.float32)
  hm = jax.jit(lambda a, b: K.hybrid_block_mask(
      a, b, window=40, sinks=8, top_k=1, block_q=32, block_k=32))(q, k)
  out.append(("hybrid_topk", hm, np.asarray(hm.to_dense())))
  return out


@pytest.mark.parametrize("g", [2, 4])
def test_xla_vs_reference(g):
  for name, m, dense in _case_masks():
    hq = 4
    q, k, v = H.inputs(g, 2, 128, 128, hq, hq // g, 32)
    if m.num_heads not in (1, hq // g, hq):
      continue
    f = jax.jit(lambda a, b, c, m=m: (
        block_sparse_attention_xla(a, b, c, m, return_lse=True),
        K.block_sparse_attention_reference(a, b, c, m, return_lse=True)))
    (o1, l1), (o2, l2) = f(q, k, v)
    assert H.max_err(o1, o2) < TOL, name
    assert H.finite_lse_err(l1, l2) < TOL, name
    want, _ = H.np_attention(q, k, v, dense, 1 / np.sqrt(32))
    assert H.max_err(o1, want) < TOL, name


@pytest.mark.parametrize("tq,tk", [(1, 100), (17, 17), (100, 255), (255, 1)])
def test_xla_odd_lengths(tq, tk):
  q, k, v = H.inputs(3, 2, tq, tk, 2, 1, 16)
  m = K.BlockMask.causal(tq, tk, block_q=16, block_k=32,
                         kv_start=np.array([0, min(3, tk - 1)]))
  o1 = jax.jit(lambda a, b, c: block_sparse_attention_xla(a, b, c, m))(q, k, v)
  want, _ = H.np_attention(q, k, v, np.asarray(m.to_dense()), 0.25)
  assert H.max_err(o1, want) < TOL


def test_xla_gradients_and_empty_rows():
  dense = H.bar_masks()["elem10_per_head"]
  m = K.BlockMask.from_dense(dense, 32, 32)
  q, k, v = H.inputs(5, 1, 128, 128, 4, 2, 16)
  w = np.random.default_rng(0).standard_normal(q.shape).astype(np.float32)

  def loss(fn):
    return lambda a, b, c: (fn(a, b, c, m) * w).sum()

  g1 = jax.jit(jax.grad(loss(block_sparse_attention_xla), (0, 1, 2)))(q, k, v)
  g2 = jax.jit(jax.grad(loss(K.block_sparse_attention_reference),
                        (0, 1, 2)))(q, k, v)
  for a, b in zip(g1, g2):
    assert np.isfinite(np.asarray(a)).all()
    assert H.max_err(a, b) < 1e-4
  out, lse = block_sparse_attention_xla(q, k, v, m, return_lse=True)
  assert (np.asarray(out)[:, 3] == 0).all()
  assert np.isneginf(np.asarray(lse)[:, :, 3]).all()
  assert (np.asarray(g1[0])[:, 3] == 0).all()


def test_errors():
  q, k, v = H.inputs(0, 1, 32, 32, 4, 2, 16)
  m = K.BlockMask.causal(32, block_q=16, block_k=16)
  with pytest.raises(ValueError, match="implementation"):
    K.block_sparse_attention(q, k, v, m, implementation="cuda")
  with pytest.raises(ValueError, match="multiple"):
    K.block_sparse_attention(q, k[:, :, :1].repeat(3, 2), v[:, :, :1].repeat(
        3, 2), m)
  with pytest.raises(ValueError, match="Tq, Tk"):
    K.block_sparse_attention(q[:, :16], k, v, m)
  with pytest.raises(ValueError, match="rank|\\[B, T, H, D\\]"):
    K.block_sparse_attention(q[0], k, v, m)
  with pytest.raises(ValueError, match="boolean"):
    K.BlockMask.from_dense(np.zeros((1, 1, 4, 4), np.int32), 2, 2)
  with pytest.raises(ValueError, match="power of two"):
    K.block_sparse_attention(q, k, v, K.BlockMask.causal(32, block_q=8,
                                                         block_k=16),
                             implementation="pallas_gpu", interpret=False)
