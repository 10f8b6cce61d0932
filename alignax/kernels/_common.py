"""Shared checks and small helpers of the attention implementations."""
from __future__ import annotations

import functools
import math

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from alignax.kernels.block_mask import BlockMask


def check_inputs(q, k, v, mask: BlockMask):
  """Validates shapes and returns `(B, Tq, Hq, Tk, Hkv, D)`."""
  for name, x in (("q", q), ("k", k), ("v", v)):
    if x.ndim != 4:
      raise ValueError(f"{name} must be [B, T, H, D], got shape {x.shape}")
  b, tq, hq, d = q.shape
  _, tk, hkv, dk = k.shape
  if k.shape != v.shape:
    raise ValueError(f"k and v shapes differ: {k.shape} vs {v.shape}")
  if k.shape[0] != b:
    raise ValueError(f"batch mismatch: q {b}, k {k.shape[0]}")
  if dk != d:
    raise ValueError(f"head_dim mismatch: q {d}, k {dk}")
  if hq % hkv:
    raise ValueError(f"Hq={hq} must be a multiple of Hkv={hkv}")
  if not isinstance(mask, BlockMask):
    raise ValueError(f"block_mask must be a BlockMask, got {type(mask)}")
  if (mask.q_len, mask.kv_len_static) != (tq, tk):
    raise ValueError(f"mask is for (Tq, Tk)=({mask.q_len}, "
                     f"{mask.kv_len_static}), inputs have ({tq}, {tk})")
  bm, hm = mask.batch_size, mask.num_heads
  if bm not in (1, b) or mask.q_pos0.shape[0] not in (1, b):
    raise ValueError(f"mask batch {bm} does not broadcast to {b}")
  if hm not in (1, hkv, hq):
    raise ValueError(f"mask heads {hm} not in (1, Hkv={hkv}, Hq={hq})")
  return b, tq, hq, tk, hkv, d


def scale_of(sm_scale, d):
  return 1.0 / math.sqrt(d) if sm_scale is None else float(sm_scale)


def precision_for(dtype):
  # f32 inputs use exact f32 dots: TF32 would miss the 2e-5 bar on GPU.
  return (lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32
          else lax.Precision.DEFAULT)


def mask_rows(hm: int, hq: int):
  """Mask row used by each query head: `h * Hm // Hq` (int32 `[Hq]`)."""
  return (np.arange(hq) * hm // hq).astype(np.int32)


def batch_index(n: int, b: int):
  """Row of a `[n]`-batched table used by each of `b` batch rows."""
  return np.zeros(b, np.int32) if n == 1 else np.arange(b, dtype=np.int32)


def guarded_softmax_out(s, vis, v, out_dtype):
  """Masked softmax attention with exact empty rows and NaN-free gradients.

  Args:
    s: f32 scores `[..., Tq, L]`.
    vis: bool, broadcastable to `s`.
    v: values `[..., L, D]`.
    out_dtype: dtype of the output.

  Returns:
    (out `[..., Tq, D]` in out_dtype, lse f32 `[..., Tq]`, -inf for empty rows).
  """
  s = jnp.where(vis, s, -jnp.inf)
  m = lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  # Double where: the gradient of exp never sees the -inf of invisible slots.
  p = jnp.where(vis, jnp.exp(jnp.where(vis, s, 0.0) - m), 0.0)
  l = p.sum(-1, keepdims=True)
  l_safe = jnp.where(l > 0, l, 1.0)
  pv = jnp.einsum("...qk,...kd->...qd", p.astype(v.dtype), v,
                  preferred_element_type=jnp.float32,
                  precision=precision_for(v.dtype))
  out = jnp.where(l > 0, pv / l_safe, 0.0)
  lse = jnp.where(l[..., 0] > 0, m[..., 0] + jnp.log(l_safe[..., 0]), -jnp.inf)
  return out.astype(out_dtype), lse


def rule_vis(rule, pos, j, ks, kl):
  """Element predicate of a partial block; pos `[r, 1]`, j `[1, c]`."""
  vis = (j >= ks) & (j < kl)
  if rule.causal:
    vis = vis & (j <= pos)
  if rule.window is not None:
    vis = vis & ((pos - j < rule.window) | (j - ks < rule.sinks))
  return vis


# `interpret` value meaning "decide when lowering": the Pallas interpreter
# when the computation is lowered for CPU, the compiled kernel (Triton /
# Mosaic) for any other platform. So `jax.export(..., platforms=["cuda"])`
# on a CPU host emits the real kernel while a plain CPU run interprets it.
BY_PLATFORM = "by_platform"


def by_platform(fn, interpret, *args):
  """`fn(interpret: bool, *args)`, with `interpret=BY_PLATFORM` resolved by
  `lax.platform_dependent` at lowering time (only the branch of the lowering
  platform is lowered; the other is traced but never compiled)."""
  if interpret != BY_PLATFORM:
    return fn(bool(interpret), *args)
  return lax.platform_dependent(
      *args, cpu=functools.partial(fn, True),
      default=functools.partial(fn, False))
