"""Shared helpers of the kernel tests: inputs and a float64 NumPy oracle."""
import jax
import numpy as np


def inputs(seed, b, tq, tk, hq, hkv, d, dtype=np.float32):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((b, tq, hq, d)).astype(dtype)
  k = rng.standard_normal((b, tk, hkv, d)).astype(dtype)
  v = rng.standard_normal((b, tk, hkv, d)).astype(dtype)
  return q, k, v


def np_attention(q, k, v, dense, scale):
  """float64 masked attention; dense bool `[Bm, Hm, Tq, Tk]`; empty rows 0."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  b, tq, hq, d = q.shape
  hkv = k.shape[2]
  g = hq // hkv
  dense = np.broadcast_to(np.asarray(dense), (b,) + dense.shape[1:])
  hm = dense.shape[1]
  dense = dense[:, np.arange(hq) * hm // hq]
  kk = np.repeat(k, g, 2)
  vv = np.repeat(v, g, 2)
  s = np.einsum("bqhd,bkhd->bhqk", q, kk) * scale
  s = np.where(dense, s, -np.inf)
  m = s.max(-1, keepdims=True)
  m = np.where(np.isfinite(m), m, 0)
  p = np.where(dense, np.exp(s - m), 0)
  l = p.sum(-1, keepdims=True)
  out = np.einsum("bhqk,bkhd->bqhd", p / np.where(l > 0, l, 1), vv)
  lse = np.where(l[..., 0] > 0, m[..., 0] + np.log(np.where(l > 0, l, 1))[..., 0],
                 -np.inf)
  return out, lse


def max_err(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def finite_lse_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert (np.isinf(a) == np.isinf(b)).all(), "lse -inf pattern differs"
  fin = np.isfinite(a)
  return float(np.max(np.abs(np.where(fin, a - b, 0.0)), initial=0.0))


def bar_masks(tq=128, tk=128, seed=0):
  """The bar's element masks, bool `[Bm, Hm, Tq, Tk]` plus a label."""
  rng = np.random.default_rng(seed)
  i = np.arange(tq)[:, None] + (tk - tq)
  j = np.arange(tk)[None, :]
  causal = j <= i
  window = causal & (i - j < 48)
  # Random 32x32 block structure with empty block rows.
  nqb, nkb = -(-tq // 32), -(-tk // 32)
  blocks = rng.random((nqb, nkb)) < 0.4
  blocks[1] = False
  blockm = np.repeat(np.repeat(blocks, 32, 0), 32, 1)[:tq, :tk]
  # 10 % random per-head element mask with fully masked rows and blocks.
  elem = rng.random((1, 4, tq, tk)) < 0.1
  elem[:, :, 3] = False
  elem[:, 1, :32, :32] = False
  return {
      "causal": causal[None, None],
      "window48": window[None, None],
      "blocks32": blockm[None, None],
      "elem10_per_head": elem,
  }
