"""BlockMask: a block-level description of a sparse attention mask.

A mask over `[Tq, Tk]` is cut into `block_q x block_k` tiles. Every tile is
empty (skipped by the kernels), *full* (every element visible: no element mask
is computed) or *partial* (an element predicate is applied). Per batch row,
mask head and query block the visible key blocks are stored as two ascending
lists, partial and full, FlexAttention-style (see `docs/sparse_attention.md`
§2.1). Partial blocks take their element predicate either from a `MaskRule`
(causal / window / sinks evaluated from positions inside the kernel) or from
de-duplicated boolean `tiles`.

Shapes: `Bm in {1, B}` (batch broadcast), `Hm in {1, Hkv, Hq}`; query head `h`
uses mask row `h * Hm // Hq`. `nQ = ceil(Tq / block_q)`, `nK = ceil(Tk /
block_k)`.

Constructors work in NumPy when every input is concrete (then the list widths
shrink to the real maxima) and in jnp when something is traced (then widths
are analytic bounds, so shapes stay static inside `jit`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class MaskRule:
  """Element predicate of partial blocks, evaluated from positions.

  visible(i, j) = kv_start <= j < kv_len
                  and (not causal or j <= pos(i))
                  and (window is None or pos(i) - j < window
                       or j - kv_start < sinks)
  with pos(i) = q_pos0 + i. `window` counts keys including the query itself.
  """
  causal: bool = True
  window: Optional[int] = None
  sinks: int = 0


def _is_traced(*xs) -> bool:
  return any(isinstance(x, jax.core.Tracer) for x in xs)


def _xp(*xs):
  return jnp if _is_traced(*xs) else np


def _to_xp(x, xp, dtype=np.int32):
  if xp is np:
    return np.asarray(x, dtype=dtype)
  return jnp.asarray(x, dtype=dtype)


def _stable_argsort(xp, x, axis=-1):
  if xp is np:
    return np.argsort(x, axis=axis, kind="stable")
  return jnp.argsort(x, axis=axis, stable=True)


def _lists_from_status(status, value, width, xp):
  """Ascending ids of blocks with `status == value`, padded to `width`.

  Args:
    status: int `[..., n]` block classes (0 empty, 1 partial, 2 full).
    value: which class to list.
    width: table width (static); must be >= the max count.
    xp: np or jnp.

  Returns:
    (count int32 `[...]`, ids int32 `[..., width]`); entries past the count
    repeat the last valid id (0 when there is none) so that a pipelined
    fetch of a repeated id issues no new copy.
  """
  n = status.shape[-1]
  sel = status == value
  ar = xp.arange(n, dtype=np.int32)
  key = xp.where(sel, ar, n + ar)
  order = _stable_argsort(xp, key, axis=-1).astype(np.int32)
  count = sel.sum(-1).astype(np.int32)
  if width > n:
    pad = xp.broadcast_to(order[..., -1:], order.shape[:-1] + (width - n,))
    order = xp.concatenate([order, pad], axis=-1)
  ids = order[..., :width]
  last = xp.take_along_axis(
      ids, xp.clip(count - 1, 0, width - 1)[..., None], axis=-1)
  last = xp.where(count[..., None] > 0, last, 0)
  t = xp.arange(width, dtype=np.int32)
  ids = xp.where(t < count[..., None], ids, last).astype(np.int32)
  return count, ids


def _status_from_lists(num, ids, n, xp):
  """Boolean `[..., n]`: which blocks the first `num` entries of `ids` name."""
  t = xp.arange(ids.shape[-1], dtype=np.int32)
  valid = t < num[..., None]
  hit = (ids[..., :, None] == xp.arange(n, dtype=np.int32)) & valid[..., None]
  return hit.any(-2)


def _map_from_lists(num, ids, vals, n, xp, fill=0):
  """Scatters `vals[..., t]` to block `ids[..., t]` for t < num (else fill)."""
  t = xp.arange(ids.shape[-1], dtype=np.int32)
  valid = t < num[..., None]
  hit = (ids[..., :, None] == xp.arange(n, dtype=np.int32)) & valid[..., None]
  return xp.where(hit.any(-2), (hit * vals[..., :, None]).sum(-2), fill).astype(
      np.int32)


def rule_dense(rule: MaskRule, q_pos0, kv_start, kv_len, tq: int, tk: int,
               xp=jnp):
  """Dense element predicate of a rule: bool `[Bm, Tq, Tk]`."""
  pos = q_pos0[:, None, None] + xp.arange(tq, dtype=np.int32)[None, :, None]
  j = xp.arange(tk, dtype=np.int32)[None, None, :]
  ks = kv_start[:, None, None]
  vis = (j >= ks) & (j < kv_len[:, None, None])
  if rule.causal:
    vis = vis & (j <= pos)
  if rule.window is not None:
    vis = vis & ((pos - j < rule.window) | (j - ks < rule.sinks))
  return vis


def _rule_status(rule, q_pos0, kv_start, kv_len, q_len, nq, nk, bq, bk, xp):
  """Exact block classes of a rule mask: int8 `[Bm, 1, nQ, nK]`.

  Each query row sees at most two key intervals (the sink prefix and the
  window band, both clipped to [kv_start, kv_len) and causality), so 'any
  visible' and 'all visible' per block follow from interval arithmetic on
  `bq` rows per block: O(Tq * nK) work instead of O(Tq * Tk).
  """
  r = xp.arange(nq * bq, dtype=np.int32).reshape(nq, bq)
  real = r < q_len                                    # [nQ, bq]
  pos = q_pos0[:, None, None] + r[None]               # [Bm, nQ, bq]
  ks = kv_start[:, None, None]
  kl = kv_len[:, None, None]
  e = xp.minimum(kl, pos + 1) if rule.causal else xp.broadcast_to(kl, pos.shape)
  if rule.window is None:
    a1, b1 = ks + 0 * pos, e
    a2, b2 = a1, b1
  else:
    a1, b1 = ks + 0 * pos, xp.minimum(ks + rule.sinks, e)
    a2, b2 = xp.maximum(ks, pos - rule.window + 1), e
  a1, b1, a2, b2 = (x[..., None] for x in (a1, b1, a2, b2))  # [Bm,nQ,bq,1]
  jlo = (xp.arange(nk, dtype=np.int32) * bk)[None, None, None]
  jhi = jlo + bk - 1

  def meets(a, b):
    return (a < b) & (a <= jhi) & (b > jlo)

  def covers(a, b):
    return (a <= jlo) & (b > jhi)

  any_row = meets(a1, b1) | meets(a2, b2)
  joined = (a2 <= b1) & (a1 < b1) & (a2 < b2)
  all_row = (covers(a1, b1) | covers(a2, b2)
             | (joined & covers(a1, xp.maximum(b1, b2))))
  realx = real[None, :, :, None]
  any_blk = (any_row & realx).any(2)
  all_blk = (all_row | ~realx).all(2)
  status = xp.where(all_blk, 2, xp.where(any_blk, 1, 0)).astype(np.int8)
  return status[:, None]


def _rule_width_bounds(rule, nk, bq, bk):
  """Static upper bounds on (partial, full) blocks per query block."""
  diag = -(-bq // bk) + 1
  if rule.window is None:
    return min(nk, diag + 3), nk
  part = 2 * diag + 3
  full = -(-rule.window // bk) + 1 + -(-rule.sinks // bk) + 1
  return min(nk, part), min(nk, full)


def _check_block(b, name):
  if not isinstance(b, (int, np.integer)) or b <= 0:
    raise ValueError(f"{name} must be a positive int, got {b!r}")


_LEAVES = ("q_pos0", "kv_start", "kv_len", "kv_num_blocks", "kv_indices",
           "full_kv_num_blocks", "full_kv_indices", "partial_tile_ids",
           "tiles", "q_num_blocks", "q_indices", "full_q_num_blocks",
           "full_q_indices", "q_tile_ids")
_STATIC = ("q_len", "kv_len_static", "block_q", "block_k", "rule")


# eq=False: masks compare (and hash) by identity, as arrays do not compare to a bool.
@functools.partial(jax.tree_util.register_dataclass, data_fields=list(_LEAVES),
                   meta_fields=list(_STATIC))
@dataclasses.dataclass(kw_only=True, eq=False)
class BlockMask:
  """Block-sparse attention mask (a pytree: the arrays are leaves, the rest static).

  Attributes:
    q_len, kv_len_static: logical Tq, Tk (static).
    block_q, block_k: tile sizes (static).
    rule: `MaskRule` or None (then partial blocks use `tiles`).
    q_pos0, kv_start, kv_len: int32 `[Bm]` per-batch offsets.
    kv_num_blocks, kv_indices: int32 `[Bm, Hm, nQ]`, `[Bm, Hm, nQ, Kp]`
      partial key blocks per query block.
    full_kv_num_blocks, full_kv_indices: same for full blocks, width Kf.
    partial_tile_ids: int32 `[Bm, Hm, nQ, Kp]` index into `tiles` (or None).
    tiles: bool `[P, block_q, block_k]` element masks of partial blocks.
    q_num_blocks, q_indices, full_q_num_blocks, full_q_indices, q_tile_ids:
      transposed lists `[Bm, Hm, nK, ...]` (None until `transpose()`).
  """

  q_len: int
  kv_len_static: int
  block_q: int
  block_k: int
  rule: Optional[MaskRule]
  q_pos0: Any
  kv_start: Any
  kv_len: Any
  kv_num_blocks: Any
  kv_indices: Any
  full_kv_num_blocks: Any
  full_kv_indices: Any
  partial_tile_ids: Any = None
  tiles: Any = None
  q_num_blocks: Any = None
  q_indices: Any = None
  full_q_num_blocks: Any = None
  full_q_indices: Any = None
  q_tile_ids: Any = None

  def __post_init__(self):
    for name in ("q_len", "kv_len_static", "block_q", "block_k"):
      setattr(self, name, int(getattr(self, name)))

  def replace(self, **kw):
    return dataclasses.replace(self, **kw)

  # -- shape helpers ----------------------------------------------------------
  @property
  def num_q_blocks(self) -> int:
    return -(-self.q_len // self.block_q)

  @property
  def num_kv_blocks(self) -> int:
    return -(-self.kv_len_static // self.block_k)

  @property
  def batch_size(self) -> int:
    return self.kv_num_blocks.shape[0]

  @property
  def num_heads(self) -> int:
    return self.kv_num_blocks.shape[1]

  @property
  def is_traced(self) -> bool:
    return _is_traced(*[x for x in jax.tree.leaves(self)])

  def __repr__(self):
    return (f"BlockMask(q_len={self.q_len}, kv_len={self.kv_len_static}, "
            f"blocks=({self.block_q}, {self.block_k}), rule={self.rule}, "
            f"Bm={self.batch_size}, Hm={self.num_heads}, "
            f"Kp={self.kv_indices.shape[-1]}, "
            f"Kf={self.full_kv_indices.shape[-1]}, "
            f"tiles={None if self.tiles is None else self.tiles.shape})")

  # -- internal builders ------------------------------------------------------
  @staticmethod
  def _from_status(status, *, q_len, kv_len_static, block_q, block_k, rule,
                   q_pos0, kv_start, kv_len, tile_map=None, tiles=None,
                   widths=None):
    """Builds the lists from block classes `[Bm, Hm, nQ, nK]`."""
    xp = _xp(status, q_pos0, kv_start, kv_len, tile_map)
    nk = status.shape[-1]
    if xp is np:
      kp = max(1, int((status == 1).sum(-1).max(initial=0)))
      kf = max(1, int((status == 2).sum(-1).max(initial=0)))
    elif widths is not None:
      kp, kf = widths
    else:
      kp = kf = nk
    n_p, ids_p = _lists_from_status(status, 1, kp, xp)
    n_f, ids_f = _lists_from_status(status, 2, kf, xp)
    tile_ids = None
    if tile_map is not None:
      tile_ids = xp.take_along_axis(tile_map, ids_p, axis=-1).astype(np.int32)
    return BlockMask(
        q_len=q_len, kv_len_static=kv_len_static, block_q=block_q,
        block_k=block_k, rule=rule, q_pos0=q_pos0, kv_start=kv_start,
        kv_len=kv_len, kv_num_blocks=n_p, kv_indices=ids_p,
        full_kv_num_blocks=n_f, full_kv_indices=ids_f,
        partial_tile_ids=tile_ids, tiles=tiles)

  @staticmethod
  def _offsets(q_pos0, kv_start, kv_len, default_kv_len):
    """Normalises the three offsets to int32 `[Bm]` with one common Bm."""
    vals = [0 if q_pos0 is None else q_pos0,
            0 if kv_start is None else kv_start,
            default_kv_len if kv_len is None else kv_len]
    xp = _xp(*vals)
    vals = [xp.atleast_1d(_to_xp(v, xp)) for v in vals]
    bm = max(v.shape[0] for v in vals)
    for v in vals:
      if v.ndim != 1 or v.shape[0] not in (1, bm):
        raise ValueError(f"offsets must be scalars or [B] vectors, got {v.shape}")
    return tuple(xp.broadcast_to(v, (bm,)).astype(np.int32) for v in vals), xp

  @classmethod
  def from_rule(cls, rule: MaskRule, q_len: int, kv_len: Optional[int] = None,
                *, block_q: int = 128, block_k: int = 128, q_pos0=None,
                kv_start=None, kv_valid_len=None, max_blocks=None):
    """Mask defined by a `MaskRule` with optional per-batch offsets.

    Args:
      rule: the element predicate.
      q_len, kv_len: static Tq, Tk (kv_len defaults to q_len).
      block_q, block_k: tile sizes.
      q_pos0: int or int32 `[B]` position of query row 0 (default
        `Tk - Tq`, i.e. the queries are the last Tq positions).
      kv_start: int or `[B]` first real key (left padding); default 0.
      kv_valid_len: int or `[B]` end of real keys; default Tk.
      max_blocks: optional static width of the full list when traced.

    Returns:
      A BlockMask with `Hm = 1`.
    """
    _check_block(block_q, "block_q")
    _check_block(block_k, "block_k")
    kv_len = q_len if kv_len is None else kv_len
    if q_pos0 is None:
      q_pos0 = kv_len - q_len
    (q_pos0, kv_start, kv_valid_len), xp = cls._offsets(
        q_pos0, kv_start, kv_valid_len, kv_len)
    nq, nk = -(-q_len // block_q), -(-kv_len // block_k)
    status = _rule_status(rule, q_pos0, kv_start, kv_valid_len, q_len, nq, nk,
                          block_q, block_k, xp)
    kp, kf = _rule_width_bounds(rule, nk, block_q, block_k)
    if max_blocks is not None:
      kf = min(nk, int(max_blocks))
    return cls._from_status(
        status, q_len=q_len, kv_len_static=kv_len, block_q=block_q,
        block_k=block_k, rule=rule, q_pos0=q_pos0, kv_start=kv_start,
        kv_len=kv_valid_len, widths=(kp, kf))

  @classmethod
  def causal(cls, q_len: int, kv_len: Optional[int] = None, *,
             block_q: int = 128, block_k: int = 128, **offsets):
    """Causal mask; queries are the last `q_len` of `kv_len` positions."""
    return cls.from_rule(MaskRule(causal=True), q_len, kv_len,
                         block_q=block_q, block_k=block_k, **offsets)

  @classmethod
  def full(cls, q_len: int, kv_len: Optional[int] = None, *,
           block_q: int = 128, block_k: int = 128, **offsets):
    """Every real key visible to every query (non-causal)."""
    return cls.from_rule(MaskRule(causal=False), q_len, kv_len,
                         block_q=block_q, block_k=block_k, **offsets)

  @classmethod
  def local(cls, q_len: int, window: int, *, sinks: int = 0,
            block_q: int = 128, block_k: int = 128,
            kv_len: Optional[int] = None, **offsets):
    """Causal sliding window of `window` keys (incl. self) plus `sinks`."""
    if window is None or window <= 0:
      raise ValueError(f"window must be a positive int, got {window!r}")
    return cls.from_rule(MaskRule(causal=True, window=int(window),
                                  sinks=int(sinks)),
                         q_len, kv_len, block_q=block_q, block_k=block_k,
                         **offsets)

  @classmethod
  def decode(cls, kv_len, *, cache_len: int, block_k: int, window=None,
             sinks: int = 0, kv_start=None, q_len: int = 1, block_q=None,
             max_blocks=None):
    """Per-step mask of `q_len` new tokens at the end of a KV cache.

    Args:
      kv_len: int32 `[B]` (traced is fine) number of filled cache slots,
        including the new tokens; query row i sits at `kv_len - q_len + i`.
      cache_len: static cache size Tk.
      block_k: key block size.
      window, sinks: optional sliding window and sink tokens.
      kv_start: optional `[B]` left-padding offsets.
      q_len: number of query tokens (1 for plain decode).
      block_q: defaults to q_len rounded up to a multiple of 8.
      max_blocks: optional static width of the full list (traced case).

    Returns:
      BlockMask with shapes fixed by `(cache_len, block_k, q_len)` only, so
      the same compiled step serves every `kv_len`.
    """
    xp = _xp(kv_len)
    kv_len = xp.atleast_1d(_to_xp(kv_len, xp))
    block_q = block_q or 8 * -(-q_len // 8)
    rule = MaskRule(causal=True, window=window, sinks=sinks)
    return cls.from_rule(rule, q_len, cache_len, block_q=block_q,
                         block_k=block_k, q_pos0=kv_len - q_len,
                         kv_start=kv_start, kv_valid_len=kv_len,
                         max_blocks=max_blocks)

  @classmethod
  def from_dense(cls, mask, block_q: int, block_k: int):
    """Builds a BlockMask from a boolean element mask.

    Args:
      mask: bool `[Bm, Hm, Tq, Tk]` (Bm, Hm may be 1). A concrete mask is
        processed on the host with de-duplicated tiles; a traced one in jnp
        with one tile per block (test-sized only).
      block_q, block_k: tile sizes; lengths need not be multiples.

    Returns:
      BlockMask with `rule=None`.
    """
    _check_block(block_q, "block_q")
    _check_block(block_k, "block_k")
    if getattr(mask, "ndim", None) != 4:
      raise ValueError(f"mask must be [B, H, Tq, Tk], got shape "
                       f"{getattr(mask, 'shape', None)}")
    if mask.dtype != bool:
      raise ValueError(f"mask must be boolean, got {mask.dtype}")
    xp = _xp(mask)
    mask = mask if xp is jnp else np.asarray(mask)
    bm, hm, tq, tk = mask.shape
    nq, nk = -(-tq // block_q), -(-tk // block_k)
    pq, pk = nq * block_q - tq, nk * block_k - tk
    padded = xp.pad(mask, ((0, 0), (0, 0), (0, pq), (0, pk)))
    blocks = padded.reshape(bm, hm, nq, block_q, nk, block_k)
    blocks = blocks.transpose(0, 1, 2, 4, 3, 5)   # [Bm,Hm,nQ,nK,bq,bk]
    real_rows = (xp.arange(nq * block_q) < tq).reshape(nq, 1, block_q, 1)
    any_blk = blocks.any((-1, -2))
    all_blk = (blocks | ~real_rows).all((-1, -2))
    status = xp.where(all_blk, 2, xp.where(any_blk, 1, 0)).astype(np.int8)
    flat = blocks.reshape(-1, block_q, block_k)
    if xp is np:
      part = (status == 1).reshape(-1)
      tile_map = np.zeros(part.shape, np.int32)
      if part.any():
        # De-duplicate partial tiles (as splash does): band masks repeat.
        uniq, inv = np.unique(flat[part].reshape(int(part.sum()), -1), axis=0,
                              return_inverse=True)
        tiles = uniq.reshape(-1, block_q, block_k).astype(bool)
        tile_map[part] = np.asarray(inv).reshape(-1)
      else:
        tiles = np.zeros((1, block_q, block_k), bool)
      tile_map = tile_map.reshape(status.shape)
    else:
      tiles = flat
      tile_map = jnp.arange(flat.shape[0], dtype=jnp.int32).reshape(
          status.shape)
    z = xp.zeros((bm,), np.int32)
    return cls._from_status(
        status, q_len=tq, kv_len_static=tk, block_q=block_q, block_k=block_k,
        rule=None, q_pos0=z, kv_start=z, kv_len=z + tk, tile_map=tile_map,
        tiles=tiles)

  # -- views ------------------------------------------------------------------
  def _xpm(self):
    return jnp if self.is_traced else np

  def block_status(self):
    """int8 `[Bm, Hm, nQ, nK]`: 0 empty, 1 partial, 2 full."""
    xp = self._xpm()
    nk = self.num_kv_blocks
    a = xp.asarray   # concrete jax leaves -> NumPy (also inside a jit trace)
    part = _status_from_lists(a(self.kv_num_blocks), a(self.kv_indices), nk,
                              xp)
    full = _status_from_lists(a(self.full_kv_num_blocks),
                              a(self.full_kv_indices), nk, xp)
    return xp.where(full, 2, xp.where(part, 1, 0)).astype(np.int8)

  def tile_map(self):
    """int32 `[Bm, Hm, nQ, nK]` tile id of each partial block (else 0)."""
    xp = self._xpm()
    a = xp.asarray
    return _map_from_lists(a(self.kv_num_blocks), a(self.kv_indices),
                           a(self.partial_tile_ids), self.num_kv_blocks, xp)

  def to_dense(self):
    """bool `[Bm, Hm, Tq, Tk]` element mask."""
    xp = self._xpm()
    bq, bk, nq, nk = self.block_q, self.block_k, self.num_q_blocks, \
        self.num_kv_blocks
    tq, tk = self.q_len, self.kv_len_static
    status = self.block_status()
    bm, hm = status.shape[:2]
    full_el = xp.repeat(xp.repeat(status == 2, bq, 2), bk, 3)
    part_el = xp.repeat(xp.repeat(status == 1, bq, 2), bk, 3)
    if self.rule is not None:
      pred = rule_dense(self.rule, xp.asarray(self.q_pos0),
                        xp.asarray(self.kv_start), xp.asarray(self.kv_len),
                        nq * bq, nk * bk, xp)[:, None]
    else:
      tm = self.tile_map()
      t = xp.asarray(self.tiles)[tm]            # [Bm,Hm,nQ,nK,bq,bk]
      pred = t.transpose(0, 1, 2, 4, 3, 5).reshape(bm, hm, nq * bq, nk * bk)
    dense = full_el | (part_el & pred)
    return dense[:, :, :tq, :tk]

  def density(self):
    """Fraction of visible (query, key) pairs, averaged over batch and heads."""
    return self.to_dense().mean()

  def stats(self):
    """Sparsity figures (host floats) that every run reports.

    Returns:
      dict with `density` (visible pairs / Tq*Tk), `sparsity_vs_causal`
      (1 - visible / causal pairs), `block_density` (live blocks / all) and
      `block_sparsity_vs_causal` (1 - live blocks / causally live blocks).
    """
    dense = np.asarray(self.to_dense())
    causal = np.asarray(rule_dense(MaskRule(True), np.asarray(self.q_pos0),
                                   np.asarray(self.kv_start),
                                   np.asarray(self.kv_len), self.q_len,
                                   self.kv_len_static, np))[:, None]
    status = np.asarray(self.block_status())
    cmask = BlockMask.from_rule(
        MaskRule(True), self.q_len, self.kv_len_static, block_q=self.block_q,
        block_k=self.block_k, q_pos0=np.asarray(self.q_pos0),
        kv_start=np.asarray(self.kv_start),
        kv_valid_len=np.asarray(self.kv_len))
    c_live = (np.asarray(cmask.block_status()) > 0).sum()
    live = (status > 0).sum() / status.shape[1]
    return {
        "density": float(dense.mean()),
        "sparsity_vs_causal": float(1 - dense.sum() / max(
            1, causal.sum() * dense.shape[1])),
        "block_density": float((status > 0).mean()),
        "block_sparsity_vs_causal": float(1 - live / max(1, c_live)),
    }

  def transpose(self):
    """Returns a copy with the `q_*` lists (key block -> query blocks) set."""
    xp = self._xpm()
    st = xp.swapaxes(self.block_status(), -1, -2)   # [Bm,Hm,nK,nQ]
    nq = st.shape[-1]
    if xp is np:
      qp = max(1, int((st == 1).sum(-1).max(initial=0)))
      qf = max(1, int((st == 2).sum(-1).max(initial=0)))
    else:
      qp = qf = nq
    n_p, ids_p = _lists_from_status(st, 1, qp, xp)
    n_f, ids_f = _lists_from_status(st, 2, qf, xp)
    q_tile_ids = None
    if self.tiles is not None:
      tm = xp.swapaxes(self.tile_map(), -1, -2)
      q_tile_ids = xp.take_along_axis(tm, ids_p, axis=-1).astype(np.int32)
    return self.replace(q_num_blocks=n_p, q_indices=ids_p,
                        full_q_num_blocks=n_f, full_q_indices=ids_f,
                        q_tile_ids=q_tile_ids)

  def validate(self):
    """Checks the invariants on a concrete mask (tests); raises on failure."""
    dense = np.asarray(self.to_dense())
    bq, bk = self.block_q, self.block_k
    nq, nk = self.num_q_blocks, self.num_kv_blocks
    bm, hm = dense.shape[:2]
    pad = np.zeros((bm, hm, nq * bq, nk * bk), bool)
    pad[:, :, :self.q_len, :self.kv_len_static] = dense
    blocks = pad.reshape(bm, hm, nq, bq, nk, bk)
    real = (np.arange(nq * bq) < self.q_len).reshape(1, 1, nq, bq, 1, 1)
    any_b = blocks.any((3, 5))
    all_b = (blocks | ~real).all((3, 5))
    part = _status_from_lists(np.asarray(self.kv_num_blocks),
                              np.asarray(self.kv_indices), nk, np)
    full = _status_from_lists(np.asarray(self.full_kv_num_blocks),
                              np.asarray(self.full_kv_indices), nk, np)
    if (part & full).any():
      raise AssertionError("a block is listed both partial and full")
    if not ((part | full) == any_b).all():
      raise AssertionError("listed blocks differ from non-empty blocks")
    if not (full == (all_b & any_b)).all():
      raise AssertionError("full blocks differ from all-visible blocks")
    for num, ids in ((self.kv_num_blocks, self.kv_indices),
                     (self.full_kv_num_blocks, self.full_kv_indices)):
      num, ids = np.asarray(num), np.asarray(ids)
      for idx in np.ndindex(num.shape):
        row = ids[idx][:num[idx]]
        if (np.diff(row) <= 0).any():
          raise AssertionError(f"list not strictly ascending at {idx}: {row}")
    return True

  # -- set operations ---------------------------------------------------------
  def _combine(self, other, op):
    if (self.q_len, self.kv_len_static, self.block_q, self.block_k) != (
        other.q_len, other.kv_len_static, other.block_q, other.block_k):
      raise ValueError("masks differ in lengths or block sizes")
    if self.rule is not None and self.rule == other.rule:
      # Same element predicate: only the block classes combine. A block that
      # is partial in either operand keeps the (shared) rule predicate.
      xp = jnp if (self.is_traced or other.is_traced) else np
      a, b = self.block_status(), other.block_status()
      a, b = xp.broadcast_arrays(a, b)
      if op == "or":
        st = xp.where((a == 2) | (b == 2), 2, xp.where((a > 0) | (b > 0), 1, 0))
      else:
        st = xp.where((a == 2) & (b == 2), 2, xp.where((a > 0) & (b > 0), 1, 0))
      widths = (max(self.kv_indices.shape[-1], other.kv_indices.shape[-1]) * 2,
                self.full_kv_indices.shape[-1] + other.full_kv_indices.shape[-1])
      nk = self.num_kv_blocks
      return BlockMask._from_status(
          st.astype(np.int8), q_len=self.q_len,
          kv_len_static=self.kv_len_static, block_q=self.block_q,
          block_k=self.block_k, rule=self.rule, q_pos0=self.q_pos0,
          kv_start=self.kv_start, kv_len=self.kv_len,
          widths=(min(nk, widths[0]), min(nk, widths[1])))
    # Different predicates: materialise the element masks (O(Tq*Tk)).
    a, b = self.to_dense(), other.to_dense()
    xp = jnp if (self.is_traced or other.is_traced) else np
    a, b = xp.broadcast_arrays(a, b)
    return BlockMask.from_dense((a | b) if op == "or" else (a & b),
                                self.block_q, self.block_k)

  def __or__(self, other):
    return self._combine(other, "or")

  def __and__(self, other):
    return self._combine(other, "and")


def local_window_block_mask(seq_len: int, window: int, block: int,
                            sink: int = 0) -> BlockMask:
  """Causal window of `window` keys + `sink` first tokens (docs/algorithms.md #60)."""
  return BlockMask.local(seq_len, window, sinks=sink, block_q=block,
                         block_k=block)


def prefix_group_block_mask(prefix_len: int, suffix_lens: Sequence[int],
                            block: int) -> BlockMask:
  """Prefix Grouper mask over a packed `[prefix, s_1, ..., s_G]` sequence.

  The prefix is causal; suffix i sees the whole prefix and itself causally,
  never another suffix (docs/algorithms.md §4.5, #34). Built on the host.
  """
  lens = [int(prefix_len)] + [int(s) for s in suffix_lens]
  t = sum(lens)
  seg = np.repeat(np.arange(len(lens)), lens)
  i = np.arange(t)
  causal = i[None, :] <= i[:, None]
  same = seg[:, None] == seg[None, :]
  to_prefix = seg[None, :] == 0
  dense = causal & (same | to_prefix)
  return BlockMask.from_dense(dense[None, None], block, block)
