"""Pallas kernels (GPU- and TPU-style bodies) in interpret mode on CPU.

Each case runs forward, lse and dq/dk/dv of both the kernel and the dense
reference inside one jitted function (interpret mode compiles slowly; eager
dispatch is slower still), so the whole file stays small.
"""
import functools

import jax
from jax.test_util import check_grads
import jax.numpy as jnp
import numpy as np
import pytest

from alignax import kernels as K
from tests.kernels import helpers as H

IMPLS = ["pallas_gpu", "pallas_tpu"]
TOL = 2e-5
GRAD_TOL = 1e-4


def _elem_case():
  """Per-head random element mask, empty rows/blocks, GQA 2, odd lengths."""
  rng = np.random.default_rng(7)
  b, tq, tk, hq, hkv, d = 2, 72, 100, 4, 2, 16
  dense = rng.random((1, hq, tq, tk)) < 0.15
  dense[:, :, 5] = False                 # fully masked query row
  dense[:, 0, 16:32, :] = False          # fully masked block row of head 0
  dense[:, :, 40:, 64:96] = True         # some full blocks
  m = K.BlockMask.from_dense(dense, 16, 32)
  return m, H.inputs(1, b, tq, tk, hq, hkv, d), dense


def _window_case():
  """Rule mask: window 24 + 5 sinks, Tq != Tk, left padding, Bm = 2, G = 1."""
  b, tq, tk, h, d = 2, 40, 100, 2, 16
  m = K.BlockMask.local(tq, 24, sinks=5, kv_len=tk, block_q=16, block_k=16,
                        kv_start=np.array([0, 7]))
  return m, H.inputs(2, b, tq, tk, h, h, d), np.asarray(m.to_dense())


def _hybrid_case():
  """DeltaLLM hybrid: window + sinks + top-k blocks per KV head (Hm = Hkv)."""
  b, t, hq, hkv, d = 1, 128, 4, 2, 16
  q, k, v = H.inputs(3, b, t, t, hq, hkv, d)
  m = jax.jit(lambda a, c: K.hybrid_block_mask(
      a, c, window=20, sinks=3, top_k=2, block_q=16, block_k=16))(q, k)
  return m, (q, k, v), np.asarray(m.to_dense())


CASES = {"elem": _elem_case, "window_sinks": _window_case,
         "hybrid": _hybrid_case}


def _run(impl, m, q, k, v, w):
  def attn(fn, a, b, c):
    return fn(a, b, c)

  kern = functools.partial(K.block_sparse_attention, block_mask=m,
                           implementation=impl, interpret=True,
                           return_lse=True)
  ref = functools.partial(K.block_sparse_attention_reference, block_mask=m,
                          return_lse=True)

  def both(a, b, c):
    res = []
    for fn in (kern, ref):
      (o, l) = attn(fn, a, b, c)
      g = jax.grad(lambda x, y, z, fn=fn: (fn(x, y, z)[0] * w).sum(),
                   (0, 1, 2))(a, b, c)
      res.append((o, l, g))
    return res

  return jax.jit(both)(q, k, v)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", IMPLS)
def test_forward_and_gradients(impl, case):
  m, (q, k, v), dense = CASES[case]()
  w = np.random.default_rng(0).standard_normal(q.shape).astype(np.float32)
  (o, l, g), (ro, rl, rg) = _run(impl, m, q, k, v, w)
  err = H.max_err(o, ro)
  assert err < TOL, (impl, case, err)
  want, want_lse = H.np_attention(q, k, v, dense, 1 / np.sqrt(q.shape[-1]))
  assert H.max_err(o, want) < TOL
  assert H.finite_lse_err(l, rl) < TOL
  assert H.finite_lse_err(l, want_lse) < TOL
  for name, a, b in zip("qkv", g, rg):
    assert np.isfinite(np.asarray(a)).all(), name
    assert H.max_err(a, b) < GRAD_TOL, (impl, case, name, H.max_err(a, b))
  if case == "elem":
    # Fully masked rows: exact zeros, lse -inf, zero gradient.
    assert (np.asarray(o)[:, 5] == 0).all()
    assert np.isneginf(np.asarray(l)[:, :, 5]).all()
    assert (np.asarray(g[0])[:, 5] == 0).all()
    assert (np.asarray(o)[:, 16:32, 0] == 0).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_bf16(impl):
  m, (q, k, v), _ = _elem_case()
  f32 = K.block_sparse_attention_reference(q, k, v, m)
  qb, kb, vb = (jnp.asarray(x, jnp.bfloat16) for x in (q, k, v))
  kern, ref = jax.jit(lambda a, b, c: (
      K.block_sparse_attention(a, b, c, m, implementation=impl,
                               interpret=True),
      K.block_sparse_attention_reference(a, b, c, m)))(qb, kb, vb)
  assert kern.dtype == jnp.bfloat16
  ref_err = H.max_err(ref, f32)
  err = H.max_err(kern, f32)
  # FlashAttention's rule: kernel error <= 2x the bf16 reference's + 1e-3.
  assert err <= 2 * ref_err + 1e-3, (err, ref_err)


@pytest.mark.parametrize("impl", IMPLS)
def test_finite_differences(impl):
  q, k, v = H.inputs(4, 1, 16, 16, 2, 1, 8)
  q, k, v = (x * 0.5 for x in (q, k, v))
  m = K.BlockMask.causal(16, block_q=8, block_k=8)
  f = jax.jit(lambda a, b, c: K.block_sparse_attention(
      a, b, c, m, implementation=impl, interpret=True))
  check_grads(f, (q, k, v), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("g", [1, 4])
def test_decode_kernel(g):
  """Decode kernel == reference == last row of the prefill reference."""
  b, tk, hkv, d = 2, 200, 1, 16
  hq = g * hkv
  q, k, v = H.inputs(10 + g, b, 1, tk, hq, hkv, d)
  kv_len = jnp.asarray([150, 37], jnp.int32)

  @jax.jit
  def run(q, k, v, kv_len):
    m = K.BlockMask.decode(kv_len, cache_len=tk, block_k=32, window=40,
                           sinks=4)
    mt = K.topk_blocks(m, q, k, 2)
    res = []
    for mask in (m, mt):
      res.append(K.block_sparse_attention(q, k, v, mask,
                                          implementation="pallas_gpu",
                                          interpret=True, return_lse=True))
      res.append(K.block_sparse_attention_reference(q, k, v, mask,
                                                    return_lse=True))
    return res, mt.to_dense()

  res, dense_t = run(q, k, v, kv_len)
  (o, l), (ro, rl), (ot, lt), (rot, rlt) = res
  assert H.max_err(o, ro) < TOL and H.finite_lse_err(l, rl) < TOL
  assert H.max_err(ot, rot) < TOL and H.finite_lse_err(lt, rlt) < TOL
  want, _ = H.np_attention(q, k, v, np.asarray(dense_t), 1 / np.sqrt(d))
  assert H.max_err(ot, want) < TOL
  # Same as the last real row of a full prefill with the same window/sinks.
  pre = K.BlockMask.local(tk, 40, sinks=4, block_q=40, block_k=40)
  dense = np.asarray(pre.to_dense())[0, 0]
  for bi, n in enumerate(np.asarray(kv_len)):
    qq = np.zeros((1, tk, hq, d), np.float32)
    qq[0, n - 1] = q[bi, 0]
    full, _ = H.np_attention(qq, k[bi:bi + 1], v[bi:bi + 1],
                             dense[None, None], 1 / np.sqrt(d))
    assert H.max_err(o[bi, 0], full[0, n - 1]) < TOL
