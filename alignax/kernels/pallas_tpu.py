"""TPU-style block-sparse attention kernels (Pallas, Mosaic lowering).

Follows splash attention: the key loop is the last ("arbitrary") grid axis
and the block fetched at step `t` is chosen by an index_map reading
scalar-prefetched tables. Our lists are splash's shrunk form directly: per
(batch, mask head, query block) one merged list `idx[t]`, partial blocks
first, then full blocks, entries past the live count repeating the last live
id so that the pipeline issues no copy for skipped steps (`has_changed` in
`mosaic/pipeline.py`). Skipped steps cost only grid overhead.

Layout is head-major `[B, H, T, D]` (Mosaic tiles the last two dims); the
wrapper transposes. `m`, `l` and the `lse` output are lane-replicated
`(bq, 128)` f32 as in splash.

Backward: a dQ kernel on the forward grid, and a dK/dV kernel on grid
`(B, Hq, nK, Lq)` over the transposed lists writing f32 per-query-head
dK/dV that the wrapper sums over each KV group.

All prefetched tables are flattened to 1-D int32 (SMEM pads the minor dims
of multi-dimensional arrays).
"""
from __future__ import annotations

import functools

import jax
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
import jax.numpy as jnp

from alignax.kernels import _common
from alignax.kernels.block_mask import BlockMask

_LANES = 128
_NT = (((1,), (1,)), ((), ()))
_NN = (((1,), (0,)), ((), ()))
_TN = (((0,), (0,)), ((), ()))


def _merged_tables(mask: BlockMask, transposed: bool):
  """Flattened prefetch tables.

  Returns:
    idx int32 `[Bm*Hm*n*L]`: merged list per row, partial first.
    cnt int32 `[Bm*Hm*n*2]`: (n_partial, n_all) per row.
    tid int32 `[Bm*Hm*n*L]`: tile id per step (0 when unused).
    (Bm, Hm, n, L).
  """
  if transposed:
    n_p, ids_p, n_f, ids_f, tid = (mask.q_num_blocks, mask.q_indices,
                                   mask.full_q_num_blocks, mask.full_q_indices,
                                   mask.q_tile_ids)
  else:
    n_p, ids_p, n_f, ids_f, tid = (mask.kv_num_blocks, mask.kv_indices,
                                   mask.full_kv_num_blocks,
                                   mask.full_kv_indices, mask.partial_tile_ids)
  n_p, ids_p, n_f, ids_f = (jnp.asarray(x) for x in (n_p, ids_p, n_f, ids_f))
  kp, kf = ids_p.shape[-1], ids_f.shape[-1]
  width = kp + kf
  t = jnp.arange(width)
  n_all = n_p + n_f
  tp = jnp.clip(t, 0, kp - 1)
  tf = jnp.clip(t - n_p[..., None], 0, kf - 1)
  merged = jnp.where(t < n_p[..., None], jnp.take(ids_p, tp, axis=-1),
                     jnp.take_along_axis(ids_f, tf, axis=-1))
  last = jnp.take_along_axis(merged, jnp.clip(n_all - 1, 0)[..., None], -1)
  last = jnp.where(n_all[..., None] > 0, last, 0)
  merged = jnp.where(t < n_all[..., None], merged, last)
  if tid is not None:
    tids = jnp.where(t < n_p[..., None],
                     jnp.take(jnp.asarray(tid), tp, axis=-1), 0)
  else:
    tids = jnp.zeros_like(merged)
  bm, hm, n = n_p.shape
  cnt = jnp.stack([n_p, n_all], -1)
  return (merged.astype(jnp.int32).reshape(-1), cnt.astype(jnp.int32).reshape(
      -1), tids.astype(jnp.int32).reshape(-1), (bm, hm, n, width))


def _offsets(mask):
  z = jnp.zeros_like(jnp.asarray(mask.q_pos0))
  return jnp.stack([jnp.asarray(mask.q_pos0), jnp.asarray(mask.kv_start),
                    jnp.asarray(mask.kv_len), z], -1).astype(jnp.int32).reshape(
                        -1)


class _Ctx:
  """Static shape facts; `row()` is the flat table row of a grid point."""

  def __init__(self, mask, dims, hq, hkv):
    self.bm, self.hm, self.n, self.width = dims
    self.bo = mask.q_pos0.shape[0]
    self.hq = hq
    self.g = hq // hkv

  def row(self, b, h, i):
    mb = b if self.bm > 1 else 0
    mh = (h * self.hm) // self.hq
    return (mb * self.hm + mh) * self.n + i

  def ob(self, b):
    return b if self.bo > 1 else 0


def _pad_to(x, axis, size):
  if x.shape[axis] == size:
    return x
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad)


def _vis(c, rule, has_tiles, tiles_ref, offs_ref, b, qb, kb, bq, bk):
  if has_tiles:
    return tiles_ref[...] != 0
  o = 4 * c.ob(b)
  pos = offs_ref[o] + qb * bq + lax.broadcasted_iota(jnp.int32, (bq, 1), 0)
  j = kb * bk + lax.broadcasted_iota(jnp.int32, (1, bk), 1)
  return _common.rule_vis(rule, pos, j, offs_ref[o + 1], offs_ref[o + 2])


def _fwd_kernel(idx_ref, cnt_ref, tid_ref, offs_ref, q_ref, k_ref, v_ref,
                *rest, c, scale, bq, bk, rule, has_tiles, prec):
  del tid_ref  # Used by the index maps only.
  if has_tiles:
    tiles_ref, o_ref, lse_ref, m_scr, l_scr, acc_scr = rest
  else:
    tiles_ref = None
    o_ref, lse_ref, m_scr, l_scr, acc_scr = rest
  b, h, i, t = (pl.program_id(a) for a in range(4))
  row = c.row(b, h, i)
  n_p, n_all = cnt_ref[2 * row], cnt_ref[2 * row + 1]

  @pl.when(t == 0)
  def _init():
    m_scr[...] = jnp.full(m_scr.shape, -jnp.inf, jnp.float32)
    l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
    acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

  def step(masked):
    q = q_ref[...]
    k = k_ref[...]
    v = v_ref[...]
    s = lax.dot_general(q, k, _NT, precision=prec,
                        preferred_element_type=jnp.float32) * scale
    if masked:
      kb = idx_ref[row * c.width + t]
      s = jnp.where(_vis(c, rule, has_tiles, tiles_ref, offs_ref, b, i, kb,
                         bq, bk), s, -jnp.inf)
    m_prev = m_scr[:, :1]
    m_new = jnp.maximum(m_prev, s.max(-1, keepdims=True))
    m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new)
    p = jnp.exp(s - m_use)
    alpha = jnp.exp(m_prev - m_use)
    l_scr[...] = jnp.broadcast_to(alpha * l_scr[:, :1] + p.sum(-1, keepdims=True),
                                  l_scr.shape)
    m_scr[...] = jnp.broadcast_to(m_new, m_scr.shape)
    acc_scr[...] = alpha * acc_scr[...] + lax.dot_general(
        p.astype(v.dtype), v, _NN, precision=prec,
        preferred_element_type=jnp.float32)

  pl.when(t < n_p)(lambda: step(True))
  pl.when((t >= n_p) & (t < n_all))(lambda: step(False))

  @pl.when(t == pl.num_programs(3) - 1)
  def _finish():
    l = l_scr[:, :1]
    live = l > 0
    l_safe = jnp.where(live, l, 1.0)
    o_ref[...] = jnp.where(live, acc_scr[...] / l_safe, 0.0).astype(o_ref.dtype)
    lse = jnp.where(live, m_scr[:, :1] + jnp.log(l_safe), -jnp.inf)
    lse_ref[...] = jnp.broadcast_to(lse, lse_ref.shape)


def _prep(q, k, v, mask):
  b, tq, hq, tk, hkv, d = _common.check_inputs(q, k, v, mask)
  nq, nk = mask.num_q_blocks, mask.num_kv_blocks
  qh = _pad_to(q, 1, nq * mask.block_q).transpose(0, 2, 1, 3)
  kh = _pad_to(k, 1, nk * mask.block_k).transpose(0, 2, 1, 3)
  vh = _pad_to(v, 1, nk * mask.block_k).transpose(0, 2, 1, 3)
  return (b, tq, hq, tk, hkv, d), qh, kh, vh


def _tile_spec(mask, c, bq, bk, block_rows_first):
  """BlockSpec of `tiles`, indexed by the prefetched tile id of the step."""
  if block_rows_first:   # forward / dq: tiles are (bq, bk) as stored
    return pl.BlockSpec(
        (None, bq, bk),
        lambda b, h, i, t, idx, cnt, tid, offs:
        (tid[c.row(b, h, i) * c.width + t], 0, 0))
  raise NotImplementedError


def _compiler_params(interpret):
  if interpret:
    return None
  return pltpu.CompilerParams(
      dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))


def forward(q, k, v, mask: BlockMask, *, scale, interpret):
  """Returns (out `[B, Tq, Hq, D]`, lse f32 `[B, Hq, Tq]`)."""
  (b, tq, hq, tk, hkv, d), qh, kh, vh = _prep(q, k, v, mask)
  bq, bk, nq = mask.block_q, mask.block_k, mask.num_q_blocks
  idx, cnt, tid, dims = _merged_tables(mask, False)
  c = _Ctx(mask, dims, hq, hkv)
  has_tiles = mask.rule is None
  kv_map = lambda b_, h, i, t, idx, cnt, tid, offs: (  # noqa: E731
      b_, h // c.g, idx[c.row(b_, h, i) * c.width + t], 0)
  in_specs = [
      pl.BlockSpec((None, None, bq, d), lambda b_, h, i, t, *_: (b_, h, i, 0)),
      pl.BlockSpec((None, None, bk, d), kv_map),
      pl.BlockSpec((None, None, bk, d), kv_map),
  ]
  args = [qh, kh, vh]
  if has_tiles:
    in_specs.append(_tile_spec(mask, c, bq, bk, True))
    args.append(jnp.asarray(mask.tiles).astype(jnp.int8))
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=4,
      grid=(b, hq, nq, c.width),
      in_specs=in_specs,
      out_specs=[
          pl.BlockSpec((None, None, bq, d), lambda b_, h, i, t, *_: (b_, h, i, 0)),
          pl.BlockSpec((None, None, bq, _LANES),
                       lambda b_, h, i, t, *_: (b_, h, i, 0)),
      ],
      scratch_shapes=[pltpu.VMEM((bq, _LANES), jnp.float32),
                      pltpu.VMEM((bq, _LANES), jnp.float32),
                      pltpu.VMEM((bq, d), jnp.float32)])
  kernel = functools.partial(
      _fwd_kernel, c=c, scale=scale, bq=bq, bk=bk, rule=mask.rule,
      has_tiles=has_tiles, prec=_common.precision_for(q.dtype))
  out, lse = pl.pallas_call(
      kernel, grid_spec=grid_spec,
      out_shape=[jax.ShapeDtypeStruct(qh.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, hq, nq * bq, _LANES), jnp.float32)],
      compiler_params=_compiler_params(interpret), interpret=interpret,
      name="block_sparse_attention_fwd_tpu",
  )(idx, cnt, tid, _offsets(mask), *args)
  return out.transpose(0, 2, 1, 3)[:, :tq], lse[:, :, :tq, 0]


def _dq_kernel(idx_ref, cnt_ref, tid_ref, offs_ref, q_ref, k_ref, v_ref,
               do_ref, lse_ref, delta_ref, *rest, c, scale, bq, bk, rule,
               has_tiles, prec):
  del tid_ref
  if has_tiles:
    tiles_ref, dq_ref, acc_scr = rest
  else:
    tiles_ref = None
    dq_ref, acc_scr = rest
  b, h, i, t = (pl.program_id(a) for a in range(4))
  row = c.row(b, h, i)
  n_p, n_all = cnt_ref[2 * row], cnt_ref[2 * row + 1]

  @pl.when(t == 0)
  def _init():
    acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

  def step(masked):
    q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
    lse = lse_ref[:, :1]
    lse = jnp.where(lse == -jnp.inf, jnp.inf, lse)
    s = lax.dot_general(q, k, _NT, precision=prec,
                        preferred_element_type=jnp.float32) * scale
    p = jnp.exp(s - lse)
    if masked:
      kb = idx_ref[row * c.width + t]
      p = jnp.where(_vis(c, rule, has_tiles, tiles_ref, offs_ref, b, i, kb,
                         bq, bk), p, 0.0)
    dpv = lax.dot_general(do, v, _NT, precision=prec,
                          preferred_element_type=jnp.float32)
    ds = p * (dpv - delta_ref[:, :1])
    acc_scr[...] += lax.dot_general(ds.astype(k.dtype), k, _NN, precision=prec,
                                    preferred_element_type=jnp.float32)

  pl.when(t < n_p)(lambda: step(True))
  pl.when((t >= n_p) & (t < n_all))(lambda: step(False))

  @pl.when(t == pl.num_programs(3) - 1)
  def _finish():
    dq_ref[...] = (acc_scr[...] * scale).astype(dq_ref.dtype)


def _dkv_kernel(idx_ref, cnt_ref, tid_ref, offs_ref, q_ref, k_ref, v_ref,
                do_ref, lse_ref, delta_ref, *rest, c, scale, bq, bk, rule,
                has_tiles, prec):
  del tid_ref
  if has_tiles:
    tiles_ref, dk_ref, dv_ref, dk_scr, dv_scr = rest
  else:
    tiles_ref = None
    dk_ref, dv_ref, dk_scr, dv_scr = rest
  b, h, j, t = (pl.program_id(a) for a in range(4))
  row = c.row(b, h, j)
  n_p, n_all = cnt_ref[2 * row], cnt_ref[2 * row + 1]

  @pl.when(t == 0)
  def _init():
    dk_scr[...] = jnp.zeros(dk_scr.shape, jnp.float32)
    dv_scr[...] = jnp.zeros(dv_scr.shape, jnp.float32)

  def step(masked):
    q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
    lse = lse_ref[:, :1]
    lse = jnp.where(lse == -jnp.inf, jnp.inf, lse)
    s = lax.dot_general(q, k, _NT, precision=prec,
                        preferred_element_type=jnp.float32) * scale
    p = jnp.exp(s - lse)
    if masked:
      qb = idx_ref[row * c.width + t]
      p = jnp.where(_vis(c, rule, has_tiles, tiles_ref, offs_ref, b, qb, j,
                         bq, bk), p, 0.0)
    dv_scr[...] += lax.dot_general(p.astype(do.dtype), do, _TN, precision=prec,
                                   preferred_element_type=jnp.float32)
    dpv = lax.dot_general(do, v, _NT, precision=prec,
                          preferred_element_type=jnp.float32)
    ds = p * (dpv - delta_ref[:, :1])
    dk_scr[...] += lax.dot_general(ds.astype(q.dtype), q, _TN, precision=prec,
                                   preferred_element_type=jnp.float32)

  pl.when(t < n_p)(lambda: step(True))
  pl.when((t >= n_p) & (t < n_all))(lambda: step(False))

  @pl.when(t == pl.num_programs(3) - 1)
  def _finish():
    dk_ref[...] = dk_scr[...] * scale
    dv_ref[...] = dv_scr[...]


def backward(q, k, v, mask: BlockMask, out, lse, do, *, scale, interpret,
             dlse=None):
  """Returns (dq, dk, dv) in the input dtypes."""
  if mask.q_indices is None:
    mask = mask.transpose()
  (b, tq, hq, tk, hkv, d), qh, kh, vh = _prep(q, k, v, mask)
  bq, bk, nq, nk = mask.block_q, mask.block_k, mask.num_q_blocks, \
      mask.num_kv_blocks
  prec = _common.precision_for(q.dtype)
  has_tiles = mask.rule is None
  delta = jnp.einsum("bqhd,bqhd->bhq", do.astype(jnp.float32),
                     out.astype(jnp.float32))
  if dlse is not None:
    delta = delta - dlse
  doh = _pad_to(do, 1, nq * bq).transpose(0, 2, 1, 3)
  lane = lambda x: jnp.broadcast_to(  # noqa: E731
      _pad_to(x, 2, nq * bq)[..., None], (b, hq, nq * bq, _LANES))
  lse_l, delta_l = lane(lse), lane(delta)
  offs = _offsets(mask)
  tiles = jnp.asarray(mask.tiles).astype(jnp.int8) if has_tiles else None
  row_spec = lambda shape: pl.BlockSpec(  # noqa: E731
      shape, lambda b_, h, i, t, *_: (b_, h, i, 0))

  # dQ: forward grid and lists.
  idx, cnt, tid, dims = _merged_tables(mask, False)
  c = _Ctx(mask, dims, hq, hkv)
  kv_map = lambda b_, h, i, t, idx, cnt, tid, offs: (  # noqa: E731
      b_, h // c.g, idx[c.row(b_, h, i) * c.width + t], 0)
  in_specs = [row_spec((None, None, bq, d)),
              pl.BlockSpec((None, None, bk, d), kv_map),
              pl.BlockSpec((None, None, bk, d), kv_map),
              row_spec((None, None, bq, d)),
              row_spec((None, None, bq, _LANES)),
              row_spec((None, None, bq, _LANES))]
  args = [qh, kh, vh, doh, lse_l, delta_l]
  if has_tiles:
    in_specs.append(_tile_spec(mask, c, bq, bk, True))
    args.append(tiles)
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, c=c, scale=scale, bq=bq, bk=bk,
                        rule=mask.rule, has_tiles=has_tiles, prec=prec),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=4, grid=(b, hq, nq, c.width), in_specs=in_specs,
          out_specs=row_spec((None, None, bq, d)),
          scratch_shapes=[pltpu.VMEM((bq, d), jnp.float32)]),
      out_shape=jax.ShapeDtypeStruct(qh.shape, q.dtype),
      compiler_params=_compiler_params(interpret), interpret=interpret,
      name="block_sparse_attention_dq_tpu",
  )(idx, cnt, tid, offs, *args)

  # dK/dV: grid over key blocks, transposed lists select query blocks.
  idx, cnt, tid, dims = _merged_tables(mask, True)
  ct = _Ctx(mask, dims, hq, hkv)

  def q_map(b_, h, j, t, idx, cnt, tid, offs):
    return (b_, h, idx[ct.row(b_, h, j) * ct.width + t], 0)

  def tile_map(b_, h, j, t, idx, cnt, tid, offs):
    return (tid[ct.row(b_, h, j) * ct.width + t], 0, 0)

  kv_spec = pl.BlockSpec((None, None, bk, d),
                         lambda b_, h, j, t, *_: (b_, h // ct.g, j, 0))
  in_specs = [pl.BlockSpec((None, None, bq, d), q_map), kv_spec, kv_spec,
              pl.BlockSpec((None, None, bq, d), q_map),
              pl.BlockSpec((None, None, bq, _LANES), q_map),
              pl.BlockSpec((None, None, bq, _LANES), q_map)]
  if has_tiles:
    in_specs.append(pl.BlockSpec((None, bq, bk), tile_map))
  out_spec = pl.BlockSpec((None, None, bk, d),
                          lambda b_, h, j, t, *_: (b_, h, j, 0))
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, c=ct, scale=scale, bq=bq, bk=bk,
                        rule=mask.rule, has_tiles=has_tiles, prec=prec),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=4, grid=(b, hq, nk, ct.width), in_specs=in_specs,
          out_specs=[out_spec, out_spec],
          scratch_shapes=[pltpu.VMEM((bk, d), jnp.float32),
                          pltpu.VMEM((bk, d), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct((b, hq, nk * bk, d), jnp.float32)] * 2,
      compiler_params=_compiler_params(interpret), interpret=interpret,
      name="block_sparse_attention_dkv_tpu",
  )(idx, cnt, tid, offs, *args)
  g = hq // hkv
  dk = dk.reshape(b, hkv, g, nk * bk, d).sum(2).transpose(0, 2, 1, 3)
  dv = dv.reshape(b, hkv, g, nk * bk, d).sum(2).transpose(0, 2, 1, 3)
  return (dq.transpose(0, 2, 1, 3)[:, :tq], dk[:, :tk].astype(k.dtype),
          dv[:, :tk].astype(v.dtype))
