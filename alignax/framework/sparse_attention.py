"""DeltaLLM-style hybrid block-sparse attention for the decoder.

Registers `"block_sparse"` in `alignax.framework.attention.ATTENTION_IMPLS`
(select it with `ModelConfig(attention_impl="block_sparse", sparse_window=...,
sparse_sinks=..., sparse_top_k=..., sparse_block_q=..., sparse_block_k=...)`).
The kernels live in `alignax.kernels`; this module only maps the decoder's
slots and padding onto a `BlockMask` (docs/sparse_attention.md §1, §7;
docs/algorithms.md §10.1).

Visibility of key slot j for query row i (slot `p = query_slot0 + i`) of
batch row b, with `[s_b, e_b)` the run of real key slots of the row:

    s_b <= j < e_b and j <= p                      (real and not in the future)
    and ( p - j < sparse_window                    (exact local window)
          or j - s_b < sparse_sinks                (attention sinks)
          or block(j) in Sel[b, g, block(i)] )     (top-k earlier blocks)

Choices, and why:
- **Sinks are the first real tokens of each row.** With left padding the
  first `sinks` slots of a row are padding; StreamingLLM/DeltaLLM sinks are
  the first *tokens* of the text (BOS and friends), so the sink run starts at
  the row's first real slot `s_b` (the kernels' `kv_start`).
- **Window and sinks are counted in cache slots.** Real tokens of a row are
  contiguous in slot order (left-padded prompts, then generated tokens), so
  slot distance equals position distance.
- **Top-k selection** (per query block of `sparse_block_q` rows and KV head)
  scores whole earlier blocks by `mean(q block) . mean(k block)` after RoPE
  and takes the `sparse_top_k` best ones not already live (blocks entirely
  inside `[s_b, e_b)` and at or before the block's first query slot, hence
  fully visible). In decode the query block is the new token, so selection
  is per step, as in DeltaLLM; a prefill with `sparse_block_q=1` selects per
  token and then matches decode exactly.
- **Exactness guard.** The rule above assumes the decoder's dense mask is
  `key_valid & causal` with `key_valid` one contiguous run per row. If the
  mask passed in is anything else (holes from a multi-turn cache whose rows
  stopped early, or a custom mask), the call falls back to dense attention
  under `hybrid & mask`, so a padding or future key is never visible. Under
  `jit` the choice is a `lax.cond` (both branches are compiled; only one
  runs). The check costs O(B·Tq·Tk) boolean ops, as building the mask does.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from alignax import kernels
from alignax.framework import attention as attention_lib
from alignax.framework.config import ModelConfig


def key_extents(key_valid: jax.Array):
  """The run of real key slots of each row.

  Args:
    key_valid: bool [B, Tk].

  Returns:
    (start int32 [B], end int32 [B]): first real slot and one past the last
    (`start = Tk, end = 0` for a row with no real key).
  """
  tk = key_valid.shape[-1]
  slot = jnp.arange(tk, dtype=jnp.int32)
  start = jnp.min(jnp.where(key_valid, slot, tk), axis=-1).astype(jnp.int32)
  end = jnp.max(jnp.where(key_valid, slot + 1, 0), axis=-1).astype(jnp.int32)
  return start, end


def _query_block(config: ModelConfig, tq: int) -> int:
  """`sparse_block_q`, shrunk for short query chunks (decode).

  When `tq < sparse_block_q` the queries form one block either way; a smaller
  block (a power of two >= 16, what the Pallas GPU kernel lowers) only saves
  padding and leaves the mask and the selection unchanged.
  """
  short = max(16, 1 << max(tq - 1, 0).bit_length())
  return min(config.sparse_block_q, short)


def build_block_mask(q, k, *, config: ModelConfig, query_slot0, key_valid):
  """The hybrid `BlockMask` of one attention call.

  Args:
    q: [B, Tq, Hq, D] queries after RoPE (block scores only; no gradient).
    k: [B, Tk, Hkv, D] keys after RoPE.
    config: reads `sparse_window, sparse_sinks, sparse_top_k, sparse_block_q,
      sparse_block_k`.
    query_slot0: int32 scalar, slot of query row 0.
    key_valid: bool [B, Tk] real key slots.

  Returns:
    (BlockMask with `Bm = B` and `Hm = 1` (top_k = 0) or `Hkv`,
     canonical bool [B, Tq, Tk]: the causal mask over each row's run of real
     keys, which the mask is exact for.)
  """
  b, tq = q.shape[:2]
  tk = k.shape[1]
  start, end = key_extents(key_valid)
  q_pos0 = jnp.broadcast_to(jnp.asarray(query_slot0, jnp.int32), (b,))
  bm = kernels.hybrid_block_mask(
      q, k, window=config.sparse_window, sinks=config.sparse_sinks,
      top_k=config.sparse_top_k, block_q=_query_block(config, tq),
      block_k=config.sparse_block_k, q_pos0=q_pos0, kv_start=start,
      kv_len=end)
  slot = jnp.arange(tk, dtype=jnp.int32)[None, None, :]
  pos = q_pos0[:, None, None] + jnp.arange(tq, dtype=jnp.int32)[None, :, None]
  canonical = ((slot >= start[:, None, None]) & (slot < end[:, None, None])
               & (slot <= pos))
  return bm, canonical


def masked_dense_attention(q, k, v, mask, scale):
  """Dense attention under a per-head mask (the guard's fallback).

  Args:
    q: [B, Tq, Hq, D]; k, v: [B, Tk, Hkv, D].
    mask: bool [B|1, Hm, Tq, Tk], query head h uses row `h * Hm // Hq`.
    scale: score scale.

  Returns:
    [B, Tq, Hq, D]; rows that see no key are zeros.
  """
  b, tq, hq, _ = q.shape
  tk, hkv = k.shape[1], k.shape[2]
  rows = (np.arange(hq) * mask.shape[1]) // hq
  m = jnp.broadcast_to(mask, (b,) + mask.shape[1:])[:, rows]
  m = m.reshape(b, hkv, hq // hkv, tq, tk)
  return attention_lib.grouped_softmax_attention(
      q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), m, scale)


@attention_lib.register_attention("block_sparse")
def block_sparse_attention(q, k, v, *, mask, scale,
                           config: Optional[ModelConfig] = None,
                           query_slot0=0, key_valid=None):
  """DeltaLLM-style hybrid attention (window + sinks + top-k blocks).

  Args:
    q: [B, Tq, Hq, D]; k, v: [B, Hkv, Tk, D] (the decoder's head-major layout;
      transposed here to the kernels' [B, Tk, Hkv, D]).
    mask: bool [B, Tq, Tk], the decoder's causal/padding mask; nothing
      outside it is ever visible.
    scale: score scale.
    config: sparse hyper-parameters (`ModelConfig()`'s defaults if None).
    query_slot0: int32 scalar, slot of query row 0 (the cache index).
    key_valid: bool [B, Tk] real key slots; default `mask[:, -1]` (exact for
      the decoder's masks: later slots are in every query's future).

  Returns:
    [B, Tq, Hq, D] in q's dtype; rows that see no key are zeros.
  """
  config = config or ModelConfig()
  k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
  if key_valid is None:
    key_valid = mask[:, -1, :]
  bm, canonical = build_block_mask(q, k, config=config,
                                   query_slot0=query_slot0,
                                   key_valid=key_valid)

  def sparse(q, k, v):
    return kernels.block_sparse_attention(
        q, k, v, bm, sm_scale=scale,
        implementation=config.sparse_implementation)

  def fallback(q, k, v):
    hybrid = jnp.asarray(bm.to_dense())                # [B, Hm, Tq, Tk]
    return masked_dense_attention(q, k, v, hybrid & mask[:, None], scale)

  exact = jnp.all(mask == canonical)
  if not isinstance(exact, jax.core.Tracer):
    return sparse(q, k, v) if bool(exact) else fallback(q, k, v)
  return jax.lax.cond(exact, sparse, fallback, q, k, v)
