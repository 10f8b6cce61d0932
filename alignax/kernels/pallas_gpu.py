"""GPU-style block-sparse attention kernels (Pallas, Triton lowering).

Follows upstream `jax/experimental/pallas/ops/gpu/attention.py`: grid
`(nQ, B, Hq)`, the whole key/value sequence of one KV head stays in global
memory and the kernel slices tiles out of it. Unlike upstream, the key loop
is driven by the BlockMask lists (FlexAttention's scheme): loop 1 over the
partial blocks (element mask from the rule or a tile), loop 2 over the full
blocks (no mask). Empty blocks are never touched. Online softmax in f32 with
the `-inf` guard so that rows seeing no key give exactly 0 and `lse = -inf`.

Backward (`custom_vjp` in `attention.py`): a dQ kernel on the forward grid
and lists, and a dK/dV kernel on grid `(nK, B, Hq)` over the transposed
lists; it writes f32 per-query-head dK/dV which the wrapper sums over the G
heads of a KV group (the "write per q head then sum" scheme of
docs/sparse_attention.md §3.3; costs a `[B, Tk, Hq, D]` f32 temporary when G>1).

All block shapes given to Triton are powers of two: the wrapper pads D and
the table widths; Tq/Tk are padded to block multiples.
"""
from __future__ import annotations

import functools

import jax
from jax import lax
from jax.experimental import pallas as pl
import jax.numpy as jnp
import numpy as np

from alignax.kernels import _common
from alignax.kernels.block_mask import BlockMask

_NT = (((1,), (1,)), ((), ()))   # a @ b.T
_NN = (((1,), (0,)), ((), ()))   # a @ b
_TN = (((0,), (0,)), ((), ()))   # a.T @ b


def _pow2(n: int) -> int:
  return 1 if n <= 1 else int(pl.next_power_of_2(int(n)))


def _pad_axis(x, axis, size):
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad) if size != x.shape[axis] else x


def _compiler_params(d, interpret, num_warps=None, num_stages=2):
  if interpret:
    return None
  from jax.experimental.pallas import triton as plgpu  # pylint: disable=g-import-not-at-top
  return plgpu.CompilerParams(
      num_warps=num_warps or (4 if d <= 64 else 8), num_stages=num_stages)


def _tables(mask: BlockMask, transposed: bool):
  """Packs lists for the kernels: counts `[Bm,Hm,n,2]`, ids, tile ids.

  ids `[Bm, Hm, n, W]`: partial ids in `[0, Kp)`, full ids in `[Kp, Kp+Kf)`,
  W the next power of two.
  """
  if transposed:
    n_p, ids_p, n_f, ids_f, tid = (mask.q_num_blocks, mask.q_indices,
                                   mask.full_q_num_blocks, mask.full_q_indices,
                                   mask.q_tile_ids)
  else:
    n_p, ids_p, n_f, ids_f, tid = (mask.kv_num_blocks, mask.kv_indices,
                                   mask.full_kv_num_blocks,
                                   mask.full_kv_indices, mask.partial_tile_ids)
  kp = ids_p.shape[-1]
  cnt = jnp.stack([jnp.asarray(n_p), jnp.asarray(n_f)], -1).astype(jnp.int32)
  ids = jnp.concatenate([jnp.asarray(ids_p), jnp.asarray(ids_f)], -1)
  ids = _pad_axis(ids, 3, _pow2(ids.shape[-1])).astype(jnp.int32)
  if tid is not None:
    tid = _pad_axis(jnp.asarray(tid), 3, _pow2(kp)).astype(jnp.int32)
  return cnt, ids, tid, kp


def _offsets(mask: BlockMask):
  z = jnp.zeros_like(jnp.asarray(mask.q_pos0))
  return jnp.stack([jnp.asarray(mask.q_pos0), jnp.asarray(mask.kv_start),
                    jnp.asarray(mask.kv_len), z], -1).astype(jnp.int32)


class _Ctx:
  """Static facts shared by the wrapper and the index maps."""

  def __init__(self, mask, b, hq, hkv):
    self.bm = mask.batch_size
    self.bo = mask.q_pos0.shape[0]
    self.hm = mask.num_heads
    self.hq = hq
    self.g = hq // hkv

  def mb(self, b):       # batch row of the tables
    return b if self.bm > 1 else 0

  def ob(self, b):       # batch row of the offsets
    return b if self.bo > 1 else 0

  def mh(self, h):       # mask row of query head h
    return (h * self.hm) // self.hq


def _online_step(carry, s, v, prec):
  m_prev, l_prev, acc = carry
  m_new = jnp.maximum(m_prev, s.max(-1))
  # Rows with nothing visible yet keep m = -inf; exponentiate against 0 so
  # that p and alpha are exact zeros instead of NaN.
  m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new)
  p = jnp.exp(s - m_use[:, None])
  alpha = jnp.exp(m_prev - m_use)
  l_new = alpha * l_prev + p.sum(-1)
  pv = lax.dot_general(p.astype(v.dtype), v, _NN, precision=prec,
                       preferred_element_type=jnp.float32)
  return m_new, l_new, alpha[:, None] * acc + pv


def _fwd_kernel(*refs, scale, bq, bk, kp, rule, has_tiles, prec):
  if has_tiles:
    (offs_ref, cnt_ref, ids_ref, tid_ref, tiles_ref, q_ref, k_ref, v_ref,
     o_ref, lse_ref) = refs
  else:
    offs_ref, cnt_ref, ids_ref, q_ref, k_ref, v_ref, o_ref, lse_ref = refs
  i = pl.program_id(0)
  q = q_ref[...]
  dp = q.shape[-1]
  pos = offs_ref[0] + i * bq + lax.broadcasted_iota(jnp.int32, (bq, 1), 0)
  ks, kl = offs_ref[1], offs_ref[2]
  col = lax.broadcasted_iota(jnp.int32, (1, bk), 1)

  def block(t, carry, masked):
    kb = ids_ref[t] if masked else ids_ref[kp + t]
    k = k_ref[pl.ds(kb * bk, bk), :]
    v = v_ref[pl.ds(kb * bk, bk), :]
    s = lax.dot_general(q, k, _NT, precision=prec,
                        preferred_element_type=jnp.float32) * scale
    if masked:
      if has_tiles:
        vis = tiles_ref[tid_ref[t]] != 0
      else:
        vis = _common.rule_vis(rule, pos, kb * bk + col, ks, kl)
      s = jnp.where(vis, s, -jnp.inf)
    return _online_step(carry, s, v, prec)

  init = (jnp.full((bq,), -jnp.inf, jnp.float32), jnp.zeros((bq,), jnp.float32),
          jnp.zeros((bq, dp), jnp.float32))
  carry = lax.fori_loop(0, cnt_ref[0], functools.partial(block, masked=True),
                        init)
  m, l, acc = lax.fori_loop(0, cnt_ref[1],
                            functools.partial(block, masked=False), carry)
  live = l > 0
  l_safe = jnp.where(live, l, 1.0)
  o_ref[...] = jnp.where(live[:, None], acc / l_safe[:, None], 0.0).astype(
      o_ref.dtype)
  lse_ref[...] = jnp.where(live, m + jnp.log(l_safe), -jnp.inf)


def _prep(q, k, v, mask):
  b, tq, hq, tk, hkv, d = _common.check_inputs(q, k, v, mask)
  nq, nk = mask.num_q_blocks, mask.num_kv_blocks
  dp = _pow2(d)
  qp = _pad_axis(_pad_axis(q, 1, nq * mask.block_q), 3, dp)
  kp = _pad_axis(_pad_axis(k, 1, nk * mask.block_k), 3, dp)
  vp = _pad_axis(_pad_axis(v, 1, nk * mask.block_k), 3, dp)
  return (b, tq, hq, tk, hkv, d, dp), qp, kp, vp


def _mask_inputs(mask, c, transposed, axis_of):
  """Table inputs and BlockSpecs; `axis_of(i, b, h)` -> (b, h, row)."""
  cnt, ids, tid, kp = _tables(mask, transposed)
  offs = _offsets(mask)
  w = ids.shape[-1]
  args = [offs, cnt, ids]
  specs = [
      pl.BlockSpec((None, 4), lambda *g: (c.ob(axis_of(*g)[0]), 0)),
      pl.BlockSpec((None, None, None, 2),
                   lambda *g: (c.mb(axis_of(*g)[0]), c.mh(axis_of(*g)[1]),
                               axis_of(*g)[2], 0)),
      pl.BlockSpec((None, None, None, w),
                   lambda *g: (c.mb(axis_of(*g)[0]), c.mh(axis_of(*g)[1]),
                               axis_of(*g)[2], 0)),
  ]
  has_tiles = mask.rule is None
  if has_tiles:
    tiles = jnp.asarray(mask.tiles).astype(jnp.int8)
    args += [tid, tiles]
    specs += [
        pl.BlockSpec((None, None, None, tid.shape[-1]),
                     lambda *g: (c.mb(axis_of(*g)[0]), c.mh(axis_of(*g)[1]),
                                 axis_of(*g)[2], 0)),
        pl.BlockSpec(tiles.shape, lambda *g: (0, 0, 0)),
    ]
  return args, specs, kp, has_tiles


def forward(q, k, v, mask: BlockMask, *, scale, interpret, num_warps=None,
            num_stages=2):
  """Returns (out `[B, Tq, Hq, D]`, lse f32 `[B, Hq, Tq]`)."""
  (b, tq, hq, tk, hkv, d, dp), qp, kp_, vp = _prep(q, k, v, mask)
  bq, bk, nq = mask.block_q, mask.block_k, mask.num_q_blocks
  c = _Ctx(mask, b, hq, hkv)
  targs, tspecs, kp, has_tiles = _mask_inputs(
      mask, c, False, lambda i, bb, h: (bb, h, i))
  tkp = kp_.shape[1]
  kernel = functools.partial(
      _fwd_kernel, scale=scale, bq=bq, bk=bk, kp=kp, rule=mask.rule,
      has_tiles=has_tiles, prec=_common.precision_for(q.dtype))
  out, lse = pl.pallas_call(
      kernel,
      grid=(nq, b, hq),
      in_specs=tspecs + [
          pl.BlockSpec((None, bq, None, dp), lambda i, bb, h: (bb, i, h, 0)),
          pl.BlockSpec((None, tkp, None, dp),
                       lambda i, bb, h: (bb, 0, h // c.g, 0)),
          pl.BlockSpec((None, tkp, None, dp),
                       lambda i, bb, h: (bb, 0, h // c.g, 0)),
      ],
      out_specs=[
          pl.BlockSpec((None, bq, None, dp), lambda i, bb, h: (bb, i, h, 0)),
          pl.BlockSpec((None, None, bq), lambda i, bb, h: (bb, h, i)),
      ],
      out_shape=[jax.ShapeDtypeStruct(qp.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, hq, nq * bq), jnp.float32)],
      compiler_params=_compiler_params(d, interpret, num_warps, num_stages),
      interpret=interpret,
      name="block_sparse_attention_fwd",
  )(*targs, qp, kp_, vp)
  return out[:, :tq, :, :d], lse[:, :, :tq]


def _dq_kernel(*refs, scale, bq, bk, kp, rule, has_tiles, prec):
  if has_tiles:
    (offs_ref, cnt_ref, ids_ref, tid_ref, tiles_ref, q_ref, k_ref, v_ref,
     do_ref, lse_ref, delta_ref, dq_ref) = refs
  else:
    (offs_ref, cnt_ref, ids_ref, q_ref, k_ref, v_ref, do_ref, lse_ref,
     delta_ref, dq_ref) = refs
  i = pl.program_id(0)
  q = q_ref[...]
  do = do_ref[...]
  lse = lse_ref[...]
  # Empty rows: lse = -inf -> +inf so that exp(s - lse) is exactly 0.
  lse = jnp.where(lse == -jnp.inf, jnp.inf, lse)
  delta = delta_ref[...]
  pos = offs_ref[0] + i * bq + lax.broadcasted_iota(jnp.int32, (bq, 1), 0)
  ks, kl = offs_ref[1], offs_ref[2]
  col = lax.broadcasted_iota(jnp.int32, (1, bk), 1)

  def block(t, dq, masked):
    kb = ids_ref[t] if masked else ids_ref[kp + t]
    k = k_ref[pl.ds(kb * bk, bk), :]
    v = v_ref[pl.ds(kb * bk, bk), :]
    s = lax.dot_general(q, k, _NT, precision=prec,
                        preferred_element_type=jnp.float32) * scale
    p = jnp.exp(s - lse[:, None])
    if masked:
      if has_tiles:
        vis = tiles_ref[tid_ref[t]] != 0
      else:
        vis = _common.rule_vis(rule, pos, kb * bk + col, ks, kl)
      p = jnp.where(vis, p, 0.0)
    dpv = lax.dot_general(do, v, _NT, precision=prec,
                          preferred_element_type=jnp.float32)
    ds = p * (dpv - delta[:, None])
    return dq + lax.dot_general(ds.astype(k.dtype), k, _NN, precision=prec,
                                preferred_element_type=jnp.float32)

  dq = jnp.zeros(q.shape, jnp.float32)
  dq = lax.fori_loop(0, cnt_ref[0], functools.partial(block, masked=True), dq)
  dq = lax.fori_loop(0, cnt_ref[1], functools.partial(block, masked=False), dq)
  dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkv_kernel(*refs, scale, bq, bk, kp, rule, has_tiles, prec):
  if has_tiles:
    (offs_ref, cnt_ref, ids_ref, tid_ref, tiles_ref, q_ref, k_ref, v_ref,
     do_ref, lse_ref, delta_ref, dk_ref, dv_ref) = refs
  else:
    (offs_ref, cnt_ref, ids_ref, q_ref, k_ref, v_ref, do_ref, lse_ref,
     delta_ref, dk_ref, dv_ref) = refs
  j = pl.program_id(0)
  k = k_ref[...]
  v = v_ref[...]
  ks, kl = offs_ref[1], offs_ref[2]
  jj = j * bk + lax.broadcasted_iota(jnp.int32, (1, bk), 1)
  row = lax.broadcasted_iota(jnp.int32, (bq, 1), 0)

  def block(t, carry, masked):
    dk, dv = carry
    qb = ids_ref[t] if masked else ids_ref[kp + t]
    sl = pl.ds(qb * bq, bq)
    q = q_ref[sl, :]
    do = do_ref[sl, :]
    lse = lse_ref[sl]
    lse = jnp.where(lse == -jnp.inf, jnp.inf, lse)
    delta = delta_ref[sl]
    s = lax.dot_general(q, k, _NT, precision=prec,
                        preferred_element_type=jnp.float32) * scale
    p = jnp.exp(s - lse[:, None])
    if masked:
      if has_tiles:
        vis = tiles_ref[tid_ref[t]] != 0
      else:
        vis = _common.rule_vis(rule, offs_ref[0] + qb * bq + row, jj, ks, kl)
      p = jnp.where(vis, p, 0.0)
    dv = dv + lax.dot_general(p.astype(do.dtype), do, _TN, precision=prec,
                              preferred_element_type=jnp.float32)
    dpv = lax.dot_general(do, v, _NT, precision=prec,
                          preferred_element_type=jnp.float32)
    ds = p * (dpv - delta[:, None])
    dk = dk + lax.dot_general(ds.astype(q.dtype), q, _TN, precision=prec,
                              preferred_element_type=jnp.float32)
    return dk, dv

  z = jnp.zeros(k.shape, jnp.float32)
  carry = lax.fori_loop(0, cnt_ref[0], functools.partial(block, masked=True),
                        (z, z))
  dk, dv = lax.fori_loop(0, cnt_ref[1], functools.partial(block, masked=False),
                         carry)
  dk_ref[...] = dk * scale
  dv_ref[...] = dv


def backward(q, k, v, mask: BlockMask, out, lse, do, *, scale, interpret,
             dlse=None, num_warps=None, num_stages=2):
  """Returns (dq, dk, dv) in the input dtypes."""
  if mask.q_indices is None:
    mask = mask.transpose()
  (b, tq, hq, tk, hkv, d, dp), qp, kp_, vp = _prep(q, k, v, mask)
  bq, bk, nq, nk = mask.block_q, mask.block_k, mask.num_q_blocks, \
      mask.num_kv_blocks
  c = _Ctx(mask, b, hq, hkv)
  prec = _common.precision_for(q.dtype)
  # delta = rowsum(dO * O) in f32; plain jnp, XLA fuses it.
  delta = jnp.einsum("bqhd,bqhd->bhq", do.astype(jnp.float32),
                     out.astype(jnp.float32))
  if dlse is not None:
    delta = delta - dlse
  dop = _pad_axis(_pad_axis(do, 1, nq * bq), 3, dp)
  lsep = _pad_axis(lse, 2, nq * bq)
  deltap = _pad_axis(delta, 2, nq * bq)
  tqp, tkp = qp.shape[1], kp_.shape[1]
  cp = _compiler_params(d, interpret, num_warps, num_stages)

  targs, tspecs, kpw, has_tiles = _mask_inputs(
      mask, c, False, lambda i, bb, h: (bb, h, i))
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, scale=scale, bq=bq, bk=bk, kp=kpw,
                        rule=mask.rule, has_tiles=has_tiles, prec=prec),
      grid=(nq, b, hq),
      in_specs=tspecs + [
          pl.BlockSpec((None, bq, None, dp), lambda i, bb, h: (bb, i, h, 0)),
          pl.BlockSpec((None, tkp, None, dp),
                       lambda i, bb, h: (bb, 0, h // c.g, 0)),
          pl.BlockSpec((None, tkp, None, dp),
                       lambda i, bb, h: (bb, 0, h // c.g, 0)),
          pl.BlockSpec((None, bq, None, dp), lambda i, bb, h: (bb, i, h, 0)),
          pl.BlockSpec((None, None, bq), lambda i, bb, h: (bb, h, i)),
          pl.BlockSpec((None, None, bq), lambda i, bb, h: (bb, h, i)),
      ],
      out_specs=pl.BlockSpec((None, bq, None, dp),
                             lambda i, bb, h: (bb, i, h, 0)),
      out_shape=jax.ShapeDtypeStruct(qp.shape, q.dtype),
      compiler_params=cp, interpret=interpret,
      name="block_sparse_attention_dq",
  )(*targs, qp, kp_, vp, dop, lsep, deltap)

  targs, tspecs, kpw, has_tiles = _mask_inputs(
      mask, c, True, lambda j, bb, h: (bb, h, j))
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, scale=scale, bq=bq, bk=bk, kp=kpw,
                        rule=mask.rule, has_tiles=has_tiles, prec=prec),
      grid=(nk, b, hq),
      in_specs=tspecs + [
          pl.BlockSpec((None, tqp, None, dp), lambda j, bb, h: (bb, 0, h, 0)),
          pl.BlockSpec((None, bk, None, dp),
                       lambda j, bb, h: (bb, j, h // c.g, 0)),
          pl.BlockSpec((None, bk, None, dp),
                       lambda j, bb, h: (bb, j, h // c.g, 0)),
          pl.BlockSpec((None, tqp, None, dp), lambda j, bb, h: (bb, 0, h, 0)),
          pl.BlockSpec((None, None, tqp), lambda j, bb, h: (bb, h, 0)),
          pl.BlockSpec((None, None, tqp), lambda j, bb, h: (bb, h, 0)),
      ],
      out_specs=[
          pl.BlockSpec((None, bk, None, dp), lambda j, bb, h: (bb, j, h, 0)),
          pl.BlockSpec((None, bk, None, dp), lambda j, bb, h: (bb, j, h, 0)),
      ],
      out_shape=[jax.ShapeDtypeStruct((b, tkp, hq, dp), jnp.float32)] * 2,
      compiler_params=cp, interpret=interpret,
      name="block_sparse_attention_dkv",
  )(*targs, qp, kp_, vp, dop, lsep, deltap)
  # Sum the G query heads of each KV group (f32), then cast.
  dk = dk.reshape(b, tkp, hkv, c.g, dp).sum(3)
  dv = dv.reshape(b, tkp, hkv, c.g, dp).sum(3)
  return (dq[:, :tq, :, :d], dk[:, :tk, :, :d].astype(k.dtype),
          dv[:, :tk, :, :d].astype(v.dtype))
