"""Decode path: a few query tokens over a KV cache (flash-decoding).

GPU-style kernel following upstream `ops/gpu/decode_attention.py`: the
`G * Tq` query rows of a KV group are folded into one tile (padded to >= 16
rows for the MMA), so each listed K/V block is loaded once per group; grid
`(B, Hkv, n_splits)`, split `s` walks its share of the merged list (partial
then full) and writes partial `(acc, m, l)`; a jnp epilogue merges the splits
with the log-sum-exp rule and applies the empty-row guard. Needs a rule mask
with `Hm in {1, Hkv}` and one query block. The TPU-style backend has no
separate decode kernel: it runs its prefill kernel (Tq padded to block_q).
Gradients (rarely wanted at decode) come from autodiff of the xla path.
"""
from __future__ import annotations

import functools

import jax
from jax import lax
from jax.experimental import pallas as pl
import jax.numpy as jnp

from alignax.kernels import _common
from alignax.kernels import pallas_gpu
from alignax.kernels import xla as xla_impl
from alignax.kernels.block_mask import BlockMask

_NT = (((1,), (1,)), ((), ()))
_NN = (((1,), (0,)), ((), ()))


def _decode_kernel(offs_ref, cnt_ref, ids_ref, q_ref, k_ref, v_ref, acc_ref,
                   m_ref, l_ref, *, scale, bk, kp, tq, chunk, rule, prec):
  s_id = pl.program_id(2)
  q = q_ref[...]                                  # [R, Dp]
  rows = q.shape[0]
  pos = offs_ref[0] + lax.broadcasted_iota(jnp.int32, (rows, 1), 0) % tq
  ks, kl = offs_ref[1], offs_ref[2]
  col = lax.broadcasted_iota(jnp.int32, (1, bk), 1)
  n_p, n_f = cnt_ref[0], cnt_ref[1]
  lo = s_id * chunk
  hi = jnp.minimum(lo + chunk, n_p + n_f)

  def block(u, carry, masked):
    kb = ids_ref[u] if masked else ids_ref[kp + u - n_p]
    k = k_ref[pl.ds(kb * bk, bk), :]
    v = v_ref[pl.ds(kb * bk, bk), :]
    s = lax.dot_general(q, k, _NT, precision=prec,
                        preferred_element_type=jnp.float32) * scale
    if masked:
      s = jnp.where(_common.rule_vis(rule, pos, kb * bk + col, ks, kl), s,
                    -jnp.inf)
    return pallas_gpu._online_step(carry, s, v, prec)  # pylint: disable=protected-access

  init = (jnp.full((rows,), -jnp.inf, jnp.float32),
          jnp.zeros((rows,), jnp.float32),
          jnp.zeros(q.shape, jnp.float32))
  carry = lax.fori_loop(lo, jnp.minimum(hi, n_p),
                        functools.partial(block, masked=True), init)
  m, l, acc = lax.fori_loop(jnp.maximum(lo, n_p), hi,
                            functools.partial(block, masked=False), carry)
  acc_ref[...] = acc
  m_ref[...] = m
  l_ref[...] = l


def _decode_gpu(q, k, v, mask: BlockMask, scale, interpret, n_splits=None):
  b, tq, hq, tk, hkv, d = _common.check_inputs(q, k, v, mask)
  g = hq // hkv
  bk, nk = mask.block_k, mask.num_kv_blocks
  dp = pallas_gpu._pow2(d)  # pylint: disable=protected-access
  rows = max(16, pallas_gpu._pow2(g * tq))  # pylint: disable=protected-access
  # Fold: row r = g_idx * Tq + i of KV head hk holds query head hk*G + g_idx.
  qf = q.reshape(b, tq, hkv, g, d).transpose(0, 2, 3, 1, 4).reshape(
      b, hkv, g * tq, d)
  qf = pallas_gpu._pad_axis(pallas_gpu._pad_axis(qf, 2, rows), 3, dp)  # pylint: disable=protected-access
  kp_ = pallas_gpu._pad_axis(pallas_gpu._pad_axis(k, 1, nk * bk), 3, dp)  # pylint: disable=protected-access
  vp = pallas_gpu._pad_axis(pallas_gpu._pad_axis(v, 1, nk * bk), 3, dp)  # pylint: disable=protected-access
  cnt, ids, _, kp = pallas_gpu._tables(mask, False)  # pylint: disable=protected-access
  offs = pallas_gpu._offsets(mask)  # pylint: disable=protected-access
  width = mask.kv_indices.shape[-1] + mask.full_kv_indices.shape[-1]
  if n_splits is None:
    n_splits = max(1, min(8, width // 4))
  chunk = -(-width // n_splits)
  bm, bo, hm = mask.batch_size, mask.q_pos0.shape[0], mask.num_heads
  mb = lambda x: x if bm > 1 else 0  # noqa: E731
  mh = lambda h: h if hm > 1 else 0  # noqa: E731
  tkp = kp_.shape[1]
  kernel = functools.partial(_decode_kernel, scale=scale, bk=bk, kp=kp, tq=tq,
                             chunk=chunk, rule=mask.rule,
                             prec=_common.precision_for(q.dtype))
  acc, m, l = pl.pallas_call(
      kernel,
      grid=(b, hkv, n_splits),
      in_specs=[
          pl.BlockSpec((None, 4), lambda bb, h, s: (bb if bo > 1 else 0, 0)),
          pl.BlockSpec((None, None, None, 2),
                       lambda bb, h, s: (mb(bb), mh(h), 0, 0)),
          pl.BlockSpec((None, None, None, ids.shape[-1]),
                       lambda bb, h, s: (mb(bb), mh(h), 0, 0)),
          pl.BlockSpec((None, None, rows, dp), lambda bb, h, s: (bb, h, 0, 0)),
          pl.BlockSpec((None, tkp, None, dp), lambda bb, h, s: (bb, 0, h, 0)),
          pl.BlockSpec((None, tkp, None, dp), lambda bb, h, s: (bb, 0, h, 0)),
      ],
      out_specs=[
          pl.BlockSpec((None, None, None, rows, dp),
                       lambda bb, h, s: (bb, h, s, 0, 0)),
          pl.BlockSpec((None, None, None, rows), lambda bb, h, s: (bb, h, s, 0)),
          pl.BlockSpec((None, None, None, rows), lambda bb, h, s: (bb, h, s, 0)),
      ],
      out_shape=[
          jax.ShapeDtypeStruct((b, hkv, n_splits, rows, dp), jnp.float32),
          jax.ShapeDtypeStruct((b, hkv, n_splits, rows), jnp.float32),
          jax.ShapeDtypeStruct((b, hkv, n_splits, rows), jnp.float32),
      ],
      compiler_params=pallas_gpu._compiler_params(d, interpret),  # pylint: disable=protected-access
      interpret=interpret,
      name="block_sparse_decode",
  )(offs, cnt, ids, qf, kp_, vp)
  # Merge the splits (log-sum-exp rule); empty rows stay exact zeros.
  mx = m.max(2, keepdims=True)
  mx_use = jnp.where(mx == -jnp.inf, 0.0, mx)
  w = jnp.exp(m - mx_use)
  l_tot = (w * l).sum(2)
  acc_tot = (w[..., None] * acc).sum(2)
  live = l_tot > 0
  l_safe = jnp.where(live, l_tot, 1.0)
  out = jnp.where(live[..., None], acc_tot / l_safe[..., None], 0.0)
  lse = jnp.where(live, mx_use[:, :, 0] + jnp.log(l_safe), -jnp.inf)
  out = out[:, :, :g * tq, :d].reshape(b, hkv, g, tq, d).transpose(
      0, 3, 1, 2, 4).reshape(b, tq, hq, d).astype(q.dtype)
  lse = lse[:, :, :g * tq].reshape(b, hkv, g, tq).reshape(b, hq, tq)
  return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _decode(q, k, v, mask, scale, interpret, n_splits):
  return _common.by_platform(
      lambda interp, q_, k_, v_: _decode_gpu(q_, k_, v_, mask, scale, interp,
                                             n_splits), interpret, q, k, v)


def _decode_fwd(q, k, v, mask, scale, interpret, n_splits):
  return _decode(q, k, v, mask, scale, interpret, n_splits), (q, k, v, mask)


def _decode_bwd(scale, interpret, n_splits, res, cts):
  q, k, v, mask = res
  _, vjp = jax.vjp(lambda a, b_, c: xla_impl.block_sparse_attention_xla(
      a, b_, c, mask, sm_scale=scale, return_lse=True), q, k, v)
  zeros = jax.tree.map(
      lambda x: jnp.zeros(jnp.shape(x), jax.dtypes.float0), mask)
  return (*vjp(cts), zeros)


_decode.defvjp(_decode_fwd, _decode_bwd)


def decode_supported(mask: BlockMask, tq: int, hkv: int) -> bool:
  return (tq <= 16 and mask.rule is not None and mask.num_q_blocks == 1
          and mask.num_heads in (1, hkv))


def decode_attention(q, k, v, block_mask: BlockMask, *, sm_scale=None,
                     interpret=False, n_splits=None):
  """Folded-GQA split-K decode attention.

  Args:
    q: `[B, Tq, Hq, D]` with `Tq <= 16` (new tokens); k, v: `[B, Tk, Hkv, D]`
      the whole cache (slots past `kv_len` are ignored via the mask).
    block_mask: rule mask with one query block and `Hm in {1, Hkv}`, e.g.
      `BlockMask.decode(kv_len, cache_len=Tk, block_k=...)`, optionally with
      `topk_blocks` selections.
    sm_scale: default `1/sqrt(D)`.
    interpret: run the kernel through the Pallas interpreter (True), compiled
      (False), or `_common.BY_PLATFORM` (decided when lowering).
    n_splits: key-range splits (flash-decoding); default from the list width.

  Returns:
    (out `[B, Tq, Hq, D]`, lse f32 `[B, Hq, Tq]`).
  """
  _, tq, _, _, hkv, d = _common.check_inputs(q, k, v, block_mask)
  if not decode_supported(block_mask, tq, hkv):
    raise ValueError("decode path needs Tq <= 16, a rule mask, one query "
                     "block and Hm in {1, Hkv}")
  return _decode(q, k, v, block_mask, _common.scale_of(sm_scale, d),
                 interpret if interpret == _common.BY_PLATFORM
                 else bool(interpret), n_splits)
