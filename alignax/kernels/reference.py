"""Pure-jnp ground truth for block-sparse attention (densifies the mask)."""
from __future__ import annotations

import jax.numpy as jnp

from alignax.kernels import _common
from alignax.kernels.block_mask import BlockMask


def block_sparse_attention_reference(q, k, v, block_mask: BlockMask, *,
                                     sm_scale=None, return_lse=False):
  """Dense masked softmax attention; the oracle of every kernel.

  Args:
    q: `[B, Tq, Hq, D]`; k, v: `[B, Tk, Hkv, D]`, `Hq % Hkv == 0`.
    block_mask: the mask (densified with `to_dense`).
    sm_scale: score scale, default `1/sqrt(D)`.
    return_lse: also return f32 `[B, Hq, Tq]` log-sum-exp.

  Returns:
    out `[B, Tq, Hq, D]` in q's dtype (zeros for rows that see no key), and
    optionally lse (-inf for those rows). Gradients by autodiff are NaN-free.
  """
  b, tq, hq, tk, hkv, d = _common.check_inputs(q, k, v, block_mask)
  scale = _common.scale_of(sm_scale, d)
  g = hq // hkv
  dense = jnp.asarray(block_mask.to_dense())               # [Bm,Hm,Tq,Tk]
  dense = dense[:, _common.mask_rows(dense.shape[1], hq)]  # [Bm,Hq,Tq,Tk]
  kk = jnp.repeat(k, g, axis=2)
  vv = jnp.repeat(v, g, axis=2).transpose(0, 2, 1, 3)      # [B,Hq,Tk,D]
  s = jnp.einsum("bqhd,bkhd->bhqk", q, kk, preferred_element_type=jnp.float32,
                 precision=_common.precision_for(q.dtype)) * scale
  out, lse = _common.guarded_softmax_out(s, dense, vv, q.dtype)
  out = out.transpose(0, 2, 1, 3)
  return (out, lse) if return_lse else out
