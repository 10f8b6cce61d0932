"""The "xla" implementation: gather live key blocks, then dense math.

Memory is proportional to live blocks: per query block its `Kp + Kf` listed
key/value blocks are gathered (`[B, Hq, nQ, (Kp+Kf)*bk, D]`), their element
mask rebuilt (rule or tile, unlisted slots invisible) and the reference's
guarded softmax applied. Differentiable by autodiff; the CPU default and the
backward oracle of the kernels.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from alignax.kernels import _common
from alignax.kernels.block_mask import BlockMask


def slot_tables(mask: BlockMask, b: int, hq: int):
  """Per (batch, query head) merged lists, partial slots first.

  Returns:
    dict of int32 arrays: `idx [B, Hq, nQ, Kp+Kf]` block ids, `cls` (0
    unused slot, 1 partial, 2 full) same shape, `tile [B, Hq, nQ, Kp+Kf]`
    tile ids (0 where unused), and offsets `q_pos0, kv_start, kv_len [B]`.
  """
  bi = _common.batch_index(mask.batch_size, b)[:, None]
  hi = _common.mask_rows(mask.num_heads, hq)[None, :]
  kp = mask.kv_indices.shape[-1]
  kf = mask.full_kv_indices.shape[-1]
  ids_p = jnp.asarray(mask.kv_indices)[bi, hi]
  ids_f = jnp.asarray(mask.full_kv_indices)[bi, hi]
  n_p = jnp.asarray(mask.kv_num_blocks)[bi, hi][..., None]
  n_f = jnp.asarray(mask.full_kv_num_blocks)[bi, hi][..., None]
  cls = jnp.concatenate([
      jnp.where(jnp.arange(kp) < n_p, 1, 0),
      jnp.where(jnp.arange(kf) < n_f, 2, 0)], axis=-1)
  idx = jnp.concatenate([ids_p, ids_f], axis=-1)
  if mask.partial_tile_ids is not None:
    tile = jnp.asarray(mask.partial_tile_ids)[bi, hi]
    tile = jnp.concatenate([tile, jnp.zeros_like(ids_f)], axis=-1)
  else:
    tile = jnp.zeros_like(idx)
  bo = _common.batch_index(mask.q_pos0.shape[0], b)
  return dict(idx=idx, cls=cls, tile=tile,
              q_pos0=jnp.asarray(mask.q_pos0)[bo],
              kv_start=jnp.asarray(mask.kv_start)[bo],
              kv_len=jnp.asarray(mask.kv_len)[bo])


def block_sparse_attention_xla(q, k, v, block_mask: BlockMask, *,
                               sm_scale=None, return_lse=False):
  """Gathered block-sparse attention; same contract as the reference."""
  b, tq, hq, tk, hkv, d = _common.check_inputs(q, k, v, block_mask)
  m = block_mask
  scale = _common.scale_of(sm_scale, d)
  g = hq // hkv
  bq, bk, nq, nk = m.block_q, m.block_k, m.num_q_blocks, m.num_kv_blocks
  t = slot_tables(m, b, hq)
  idx, cls = t["idx"], t["cls"]
  nl = idx.shape[-1]
  qp = jnp.pad(q, ((0, 0), (0, nq * bq - tq), (0, 0), (0, 0)))
  kp = jnp.pad(k, ((0, 0), (0, nk * bk - tk), (0, 0), (0, 0)))
  vp = jnp.pad(v, ((0, 0), (0, nk * bk - tk), (0, 0), (0, 0)))
  qb = qp.reshape(b, nq, bq, hq, d).transpose(0, 3, 1, 2, 4)  # [B,Hq,nQ,bq,D]
  kb = kp.reshape(b, nk, bk, hkv, d).transpose(0, 3, 1, 2, 4)  # [B,Hkv,nK,bk,D]
  vb = vp.reshape(b, nk, bk, hkv, d).transpose(0, 3, 1, 2, 4)
  bi = jnp.arange(b)[:, None, None, None]
  hk = (jnp.arange(hq) // g)[None, :, None, None]
  kg = kb[bi, hk, idx].reshape(b, hq, nq, nl * bk, d)        # gathered keys
  vg = vb[bi, hk, idx].reshape(b, hq, nq, nl * bk, d)
  s = jnp.einsum("bhqrd,bhqkd->bhqrk", qb, kg,
                 preferred_element_type=jnp.float32,
                 precision=_common.precision_for(q.dtype)) * scale
  # Element mask of the gathered slots: [B, Hq, nQ, bq, L, bk].
  pos = (t["q_pos0"][:, None, None] + jnp.arange(nq)[:, None] * bq
         + jnp.arange(bq))[:, None, :, :, None, None]
  j = (idx[..., None] * bk + jnp.arange(bk))[:, :, :, None]
  clsx = cls[:, :, :, None, :, None]
  if m.rule is not None:
    ks = t["kv_start"][:, None, None, None, None, None]
    pred = (j >= ks) & (j < t["kv_len"][:, None, None, None, None, None])
    if m.rule.causal:
      pred = pred & (j <= pos)
    if m.rule.window is not None:
      pred = pred & ((pos - j < m.rule.window) | (j - ks < m.rule.sinks))
  else:
    tiles = jnp.asarray(m.tiles)[t["tile"]]          # [B,Hq,nQ,L,bq,bk]
    pred = tiles.transpose(0, 1, 2, 4, 3, 5)
  vis = (clsx == 2) | ((clsx == 1) & pred)
  vis = jnp.broadcast_to(vis, (b, hq, nq, bq, nl, bk)).reshape(
      b, hq, nq, bq, nl * bk)
  out, lse = _common.guarded_softmax_out(s, vis, vg, q.dtype)
  out = out.reshape(b, hq, nq * bq, d)[:, :, :tq].transpose(0, 2, 1, 3)
  lse = lse.reshape(b, hq, nq * bq)[:, :, :tq]
  return (out, lse) if return_lse else out
