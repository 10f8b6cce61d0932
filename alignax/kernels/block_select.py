"""Data-dependent block selection: block scores and top-k key blocks.

`block_scores` rates every (query block, key block) pair from block means of
the queries and keys; `topk_blocks` adds the best-scoring earlier blocks to a
base `BlockMask`; `hybrid_block_mask` (causal window + sinks + top-k, the
DeltaLLM-style mask) is the entry point of the model integration.
"""
from __future__ import annotations

from jax import lax
import jax.numpy as jnp

from alignax.kernels.block_mask import BlockMask


def block_scores(q, k, block_q: int, block_k: int, num_kv_heads=None):
  """Cheap block scores `mean_rows(q block) . mean_rows(k block)`.

  Args:
    q: `[B, Tq, Hq, D]`; k: `[B, Tk, Hkv, D]`.
    block_q, block_k: tile sizes.

  Returns:
    float32 `[B, Hkv, nQ, nK]`; the query mean also runs over the G query
    heads of each KV group so one K/V load serves the whole group.
  """
  b, tq, hq, d = q.shape
  tk, hkv = k.shape[1], k.shape[2]
  nq, nk = -(-tq // block_q), -(-tk // block_k)
  qf = jnp.pad(q.astype(jnp.float32), ((0, 0), (0, nq * block_q - tq),
                                       (0, 0), (0, 0)))
  kf = jnp.pad(k.astype(jnp.float32), ((0, 0), (0, nk * block_k - tk),
                                       (0, 0), (0, 0)))
  cq = jnp.clip(tq - jnp.arange(nq) * block_q, 1, block_q).astype(jnp.float32)
  ck = jnp.clip(tk - jnp.arange(nk) * block_k, 1, block_k).astype(jnp.float32)
  qm = qf.reshape(b, nq, block_q, hkv, hq // hkv, d).sum((2, 4))
  qm = qm / (cq[None, :, None, None] * (hq // hkv))
  km = kf.reshape(b, nk, block_k, hkv, d).sum(2) / ck[None, :, None, None]
  s = jnp.einsum("bqhd,bkhd->bhqk", qm, km, precision=lax.Precision.HIGHEST)
  return lax.stop_gradient(s)


def topk_blocks(base: BlockMask, q, k, top_k: int, *,
                exclude_base: bool = True) -> BlockMask:
  """Adds, per query block and KV head, the `top_k` best earlier full blocks.

  Eligible blocks lie entirely at or before the first (real) query row of
  the block, inside `[kv_start, kv_len)`, so they are fully visible under
  causality and go to the full list (the rule is unchanged). With
  `exclude_base` (default) blocks already live in `base` are not candidates;
  otherwise they compete but are not listed twice. Ties go to the lower
  block id (`lax.top_k` order). Scores come from `block_scores` and carry no
  gradient.

  Args:
    base: mask with `Hm in {1, Hkv}` (result `Hm = Hkv`) or `Hm = Hq`.
    q: `[B, Tq, Hq, D]`; k: `[B, Tk, Hkv, D]`.
    top_k: number of selected blocks (static).

  Returns:
    BlockMask with full-list width `Kf(base) + top_k`.
  """
  b, tq, hq, _ = q.shape
  hkv = k.shape[2]
  bq, bk, nq, nk = base.block_q, base.block_k, base.num_q_blocks, \
      base.num_kv_blocks
  if (tq, k.shape[1]) != (base.q_len, base.kv_len_static):
    raise ValueError("q/k lengths do not match the mask")
  if base.tiles is not None:
    raise ValueError("topk_blocks needs a rule-based base mask")
  hm_in = base.num_heads
  if hm_in not in (1, hkv, hq):
    raise ValueError(f"mask heads {hm_in} not in (1, {hkv}, {hq})")
  hm = hkv if hm_in in (1, hkv) else hq
  top_k = int(min(top_k, nk))
  s = block_scores(q, k, bq, bk)                          # [B,Hkv,nQ,nK]
  if hm == hq:
    s = jnp.repeat(s, hq // hkv, axis=1)
  status = jnp.asarray(base.block_status())               # [Bm,Hm_in,nQ,nK]
  bmask = max(b, status.shape[0])
  status = jnp.broadcast_to(
      status if hm_in == hm else jnp.repeat(status, hm // hm_in, 1),
      (bmask, hm, nq, nk))
  q_pos0 = jnp.broadcast_to(jnp.asarray(base.q_pos0), (bmask,))
  ks = jnp.broadcast_to(jnp.asarray(base.kv_start), (bmask,))
  kl = jnp.broadcast_to(jnp.asarray(base.kv_len), (bmask,))
  p_lo = q_pos0[:, None] + jnp.arange(nq) * bq            # [Bm, nQ]
  jlo = jnp.arange(nk) * bk
  jhi = jlo + bk - 1
  elig = ((jhi[None, None] <= p_lo[..., None]) & (jlo >= ks[:, None, None])
          & (jhi < kl[:, None, None]))                    # [Bm, nQ, nK]
  elig = elig[:, None]
  if exclude_base:
    elig = elig & (status == 0)
  sc = jnp.where(elig, jnp.broadcast_to(s, (bmask, hm, nq, nk)), -jnp.inf)
  vals, ids = lax.top_k(sc, top_k)                        # [Bm,Hm,nQ,k]
  chosen = (ids[..., :, None] == jnp.arange(nk)) & (vals > -jnp.inf)[..., None]
  chosen = chosen.any(-2) & (status == 0)
  new_status = jnp.where(chosen, 2, status).astype(jnp.int8)
  kp = base.kv_indices.shape[-1]
  kf = min(nk, base.full_kv_indices.shape[-1] + top_k)
  return BlockMask._from_status(
      new_status, q_len=base.q_len, kv_len_static=base.kv_len_static,
      block_q=bq, block_k=bk, rule=base.rule, q_pos0=q_pos0, kv_start=ks,
      kv_len=kl, widths=(kp, kf))


def hybrid_block_mask(q, k, *, window: int, sinks: int = 0, top_k: int = 0,
                      block_q: int = 128, block_k: int = 128, q_pos0=None,
                      kv_start=None, kv_len=None) -> BlockMask:
  """DeltaLLM-style hybrid mask: causal window + sinks + top-k earlier blocks.

  The entry point for model integration (`attention="block_sparse"`).

  Args:
    q: `[B, Tq, Hq, D]` queries (after RoPE), used only for block scores.
    k: `[B, Tk, Hkv, D]` keys (after RoPE).
    window: exact local window in keys, including the query itself.
    sinks: number of leading real keys always visible.
    top_k: selected earlier whole blocks per (query block, KV head); 0 gives
      the plain window + sinks mask (`Hm = 1`).
    block_q, block_k: tile sizes (the kernels use exactly these).
    q_pos0, kv_start, kv_len: optional per-batch offsets (see `from_rule`).

  Returns:
    BlockMask with `Hm = Hkv` when `top_k > 0`.
  """
  base = BlockMask.local(q.shape[1], window, sinks=sinks, block_q=block_q,
                         block_k=block_k, kv_len=k.shape[1], q_pos0=q_pos0,
                         kv_start=kv_start, kv_valid_len=kv_len)
  if top_k <= 0:
    return base
  return topk_blocks(base, q, k, top_k)
