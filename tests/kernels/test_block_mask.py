"""BlockMask constructors equal their NumPy definitions (exact)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignax import kernels as K
from alignax.kernels.block_mask import MaskRule


def np_rule(tq, tk, q_pos0, kv_start, kv_len, causal=True, window=None,
            sinks=0):
  pos = np.asarray(q_pos0)[:, None, None] + np.arange(tq)[None, :, None]
  j = np.arange(tk)[None, None, :]
  ks = np.asarray(kv_start)[:, None, None]
  vis = (j >= ks) & (j < np.asarray(kv_len)[:, None, None])
  if causal:
    vis = vis & (j <= pos)
  if window is not None:
    vis = vis & ((pos - j < window) | (j - ks < sinks))
  return np.broadcast_to(vis, (len(q_pos0), tq, tk))[:, None]


@pytest.mark.parametrize("seed", range(6))
def test_from_dense_roundtrip(seed):
  rng = np.random.default_rng(seed)
  bm, hm = rng.integers(1, 3), rng.integers(1, 4)
  tq, tk = rng.integers(1, 90), rng.integers(1, 90)
  bq, bk = rng.choice([8, 16, 32]), rng.choice([8, 16, 32])
  dense = rng.random((bm, hm, tq, tk)) < rng.choice([0.05, 0.3, 0.9])
  dense[..., :bq, :] |= rng.random((bm, hm, min(bq, tq), tk)) < 0.99
  m = K.BlockMask.from_dense(dense, int(bq), int(bk))
  assert (np.asarray(m.to_dense()) == dense).all()
  assert m.validate()
  mt = m.transpose()
  st = np.asarray(m.block_status())
  np.testing.assert_array_equal(
      np.asarray(mt.transpose().block_status()), st)
  # Traced construction gives the same element mask.
  traced = jax.jit(lambda x: K.BlockMask.from_dense(x, int(bq), int(bk)))(
      jnp.asarray(dense))
  assert (np.asarray(traced.to_dense()) == dense).all()


@pytest.mark.parametrize("tq,tk,bq,bk", [(100, 100, 16, 32), (17, 255, 16, 64),
                                         (1, 100, 8, 16), (255, 255, 64, 32)])
def test_rule_constructors(tq, tk, bq, bk):
  b = 2
  q0 = np.array([tk - tq, tk - tq - 0], np.int32)
  ks = np.array([0, 5], np.int32)
  kl = np.array([tk, tk - 3], np.int32)
  for rule in [dict(causal=True), dict(causal=False),
               dict(causal=True, window=20, sinks=0),
               dict(causal=True, window=48, sinks=5),
               dict(causal=True, window=1, sinks=40)]:
    m = K.BlockMask.from_rule(MaskRule(**rule), tq, tk, block_q=bq,
                              block_k=bk, q_pos0=q0, kv_start=ks,
                              kv_valid_len=kl)
    want = np_rule(tq, tk, q0, ks, kl, **rule)
    np.testing.assert_array_equal(np.asarray(m.to_dense()), want)
    m.validate()
  # Traced offsets: jnp path with static widths, same mask (last rule).
  mj = jax.jit(lambda a, c, e: K.BlockMask.from_rule(
      MaskRule(**rule), tq, tk, block_q=bq, block_k=bk, q_pos0=a, kv_start=c,
      kv_valid_len=e).to_dense())(q0, ks, kl)
  np.testing.assert_array_equal(np.asarray(mj), want)
  assert b == 2


def test_causal_local_aliases():
  m = K.BlockMask.causal(70, block_q=16, block_k=16)
  np.testing.assert_array_equal(np.asarray(m.to_dense())[0, 0],
                                np.tril(np.ones((70, 70), bool)))
  a = K.local_window_block_mask(70, 64, 16, sink=3)
  want = np_rule(70, 70, [0], [0], [70], window=64, sinks=3)
  np.testing.assert_array_equal(np.asarray(a.to_dense()), want)
  # Window and sink blocks are full where whole, partial only at edges.
  st = np.asarray(a.block_status())[0, 0]
  assert (st == 2).sum() > 0 and (st == 1).sum() > 0


def test_decode_mask_and_no_retrace():
  traces = []

  @jax.jit
  def f(kv_len):
    traces.append(1)
    m = K.BlockMask.decode(kv_len, cache_len=200, block_k=32, window=40,
                           sinks=4)
    return m.to_dense()

  for kl in ([150, 37], [1, 200], [64, 65]):
    got = np.asarray(f(jnp.asarray(kl, jnp.int32)))
    want = np_rule(1, 200, np.asarray(kl) - 1, [0, 0], kl, window=40, sinks=4)
    np.testing.assert_array_equal(got, want)
  assert len(traces) == 1


def test_prefix_group_mask():
  m = K.prefix_group_block_mask(10, [5, 7, 3], 8)
  d = np.asarray(m.to_dense())[0, 0]
  seg = np.repeat(np.arange(4), [10, 5, 7, 3])
  i = np.arange(25)
  want = (i[None] <= i[:, None]) & ((seg[:, None] == seg[None]) | (seg[None] == 0))
  np.testing.assert_array_equal(d, want)
  m.validate()


def test_union_intersection():
  a = K.BlockMask.local(80, 20, block_q=16, block_k=16)
  b = K.BlockMask.local(80, 20, sinks=0, block_q=16, block_k=16)
  c = K.BlockMask.causal(80, block_q=16, block_k=16)
  rng = np.random.default_rng(0)
  dr = rng.random((1, 2, 80, 80)) < 0.2
  r = K.BlockMask.from_dense(dr, 16, 16)
  da, dc = np.asarray(a.to_dense()), np.asarray(c.to_dense())
  for x, y, dx, dy in [(a, b, da, da), (a, c, da, dc), (a, r, da, dr),
                       (c, r, dc, dr)]:
    u, n = x | y, x & y
    np.testing.assert_array_equal(np.asarray(u.to_dense()),
                                  np.broadcast_to(dx | dy, u.to_dense().shape))
    np.testing.assert_array_equal(np.asarray(n.to_dense()),
                                  np.broadcast_to(dx & dy, n.to_dense().shape))
    u.validate()
    n.validate()


def test_topk_blocks_matches_numpy():
  rng = np.random.default_rng(3)
  b, t, hq, hkv, d, blk, top = 2, 128, 4, 2, 8, 16, 2
  q = rng.standard_normal((b, t, hq, d)).astype(np.float32)
  k = rng.standard_normal((b, t, hkv, d)).astype(np.float32)
  base = K.BlockMask.local(t, 20, sinks=4, block_q=blk, block_k=blk)
  topk = jax.jit(K.topk_blocks, static_argnums=3)
  m = topk(base, q, k, top)
  assert m.num_heads == hkv
  m.validate()
  n = t // blk
  qm = q.reshape(b, n, blk, hkv, hq // hkv, d).mean((2, 4))
  km = k.reshape(b, n, blk, hkv, d).mean(2)
  score = np.einsum("bqhd,bkhd->bhqk", qm, km)
  st0 = np.asarray(base.block_status())[0, 0]
  st = np.asarray(m.block_status())
  for bi in range(b):
    for h in range(hkv):
      for qb in range(n):
        elig = [kb for kb in range(n) if kb < qb and st0[qb, kb] == 0]
        want = sorted(sorted(elig, key=lambda kb: -score[bi, h, qb, kb])[:top])
        got = [kb for kb in range(n) if st[bi, h, qb, kb] == 2
               and st0[qb, kb] == 0]
        assert got == want, (bi, h, qb, got, want)
        # Selected blocks are earlier, full and disjoint from the base.
        assert all(kb < qb for kb in got)
  # Deterministic ties: equal scores pick the lower block ids.
  qz = np.ones((1, t, hq, d), np.float32)
  kz = np.ones((1, t, hkv, d), np.float32)
  mz = topk(base, qz, kz, 1)
  stz = np.asarray(mz.block_status())[0, 0]
  for qb in range(n):
    added = [kb for kb in range(n) if stz[qb, kb] == 2 and st0[qb, kb] == 0]
    elig = [kb for kb in range(n) if kb < qb and st0[qb, kb] == 0]
    assert added == elig[:1]


def test_hybrid_mask_and_stats():
  rng = np.random.default_rng(0)
  q = rng.standard_normal((1, 256, 4, 8)).astype(np.float32)
  k = rng.standard_normal((1, 256, 2, 8)).astype(np.float32)
  m = jax.jit(lambda a, b: K.hybrid_block_mask(
      a, b, window=48, sinks=4, top_k=2, block_q=32, block_k=32))(q, k)
  m.validate()
  s = m.stats()
  assert 0 < s["density"] < 0.5
  assert 0 < s["sparsity_vs_causal"] < 1
  assert 0 < s["block_sparsity_vs_causal"] < 1


def test_delta_threshold():
  q = jnp.array([[1., 2.], [1.05, 2.5], [1.2, 2.5]])
  d, sp = K.delta_threshold(q, 0.1)
  np.testing.assert_allclose(d, [[1, 2], [0, 0.5], [0.2, 0]], atol=1e-6)
  assert abs(float(sp) - 2 / 6) < 1e-6
  d0, sp0 = K.delta_threshold(q, 0.0)
  np.testing.assert_allclose(np.cumsum(d0, 0), q, atol=1e-6)
  assert float(sp0) == pytest.approx(1 / 6)
