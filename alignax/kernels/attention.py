"""`block_sparse_attention`: dispatch and the custom VJP of the kernels."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from alignax.kernels import _common
from alignax.kernels import xla as xla_impl
from alignax.kernels.block_mask import BlockMask
from alignax.kernels.reference import block_sparse_attention_reference

IMPLEMENTATIONS = ("auto", "xla", "reference", "pallas", "pallas_gpu",
                   "pallas_tpu")


def _resolve(implementation: str) -> str:
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got "
                     f"{implementation!r}")
  backend = jax.default_backend()
  if implementation == "auto":
    return {"tpu": "pallas_tpu", "gpu": "pallas_gpu"}.get(backend, "xla")
  if implementation == "pallas":
    return "pallas_tpu" if backend == "tpu" else "pallas_gpu"
  return implementation


def _kernel_module(name):
  if name == "pallas_gpu":
    from alignax.kernels import pallas_gpu  # pylint: disable=g-import-not-at-top
    return pallas_gpu
  from alignax.kernels import pallas_tpu  # pylint: disable=g-import-not-at-top
  return pallas_tpu


def _check_lowerable(impl, mask, d, dtype):
  """Block-size constraints of real (non-interpreted) lowering."""
  bq, bk = mask.block_q, mask.block_k
  if impl == "pallas_gpu":
    for name, x in (("block_q", bq), ("block_k", bk)):
      if x < 16 or x & (x - 1):
        raise ValueError(f"pallas_gpu needs {name} a power of two >= 16, "
                         f"got {x}")
  else:
    min_q = 16 if jnp.dtype(dtype).itemsize == 2 else 8
    if bk % 128 or bq % min_q:
      raise ValueError(f"pallas_tpu needs block_k % 128 == 0 and block_q % "
                       f"{min_q} == 0, got ({bq}, {bk})")


def _is_lowerable(impl, mask, d, dtype) -> bool:
  try:
    _check_lowerable(impl, mask, d, dtype)
  except ValueError:
    return False
  return True


def _zero_cotangent(tree):
  """float0 zeros for integer/bool leaves of the mask."""
  def z(x):
    return np.zeros(np.shape(x), dtype=jax.dtypes.float0)
  return jax.tree.map(z, tree)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _kernel_attention(q, k, v, mask, scale, impl, interpret, backward):
  fwd = _kernel_module(impl).forward
  return _common.by_platform(
      lambda interp, q_, k_, v_: fwd(q_, k_, v_, mask, scale=scale,
                                     interpret=interp), interpret, q, k, v)


def _kernel_fwd(q, k, v, mask, scale, impl, interpret, backward):
  out, lse = _kernel_attention(q, k, v, mask, scale, impl, interpret,
                               backward)
  return (out, lse), (q, k, v, mask, out, lse)


def _kernel_bwd(scale, impl, interpret, backward, res, cts):
  q, k, v, mask, out, lse = res
  do, dlse = cts
  # lse is an output too; d lse / d s = p, so its cotangent enters the
  # kernels as `delta - dlse` (ds = p * (dp - delta + dlse)).
  if backward == "xla" or not hasattr(_kernel_module(impl), "backward"):
    _, vjp = jax.vjp(
        lambda q_, k_, v_: xla_impl.block_sparse_attention_xla(
            q_, k_, v_, mask, sm_scale=scale, return_lse=True), q, k, v)
    dq, dk, dv = vjp((do, dlse))
    return dq, dk, dv, _zero_cotangent(mask)
  mod = _kernel_module(impl)
  # Rows with lse = -inf received no probability mass; their lse cotangent
  # has nothing to flow into.
  dlse = jnp.where(jnp.isfinite(lse), dlse.astype(jnp.float32), 0.0)
  dq, dk, dv = _common.by_platform(
      lambda interp, q_, k_, v_, o_, lse_, do_, dlse_: mod.backward(
          q_, k_, v_, mask, o_, lse_, do_, scale=scale, interpret=interp,
          dlse=dlse_),
      interpret, q, k, v, out, lse, do, dlse)
  return dq, dk, dv, _zero_cotangent(mask)


_kernel_attention.defvjp(_kernel_fwd, _kernel_bwd)


def block_sparse_attention(q, k, v, block_mask: BlockMask, *, sm_scale=None,
                           implementation: str = "auto", interpret=None,
                           return_lse: bool = False, backward: str = "kernel"):
  """Block-sparse softmax attention (see docs/sparse_attention.md §2.2).

  Args:
    q: `[B, Tq, Hq, D]`; k, v: `[B, Tk, Hkv, D]` with `Hq % Hkv == 0` (query
      head h reads KV head `h // (Hq // Hkv)`; K/V are never repeated).
    block_mask: a `BlockMask` for `(Tq, Tk)`.
    sm_scale: score scale; None means `1/sqrt(D)`.
    implementation: "auto" (TPU -> pallas_tpu, GPU -> pallas_gpu, else xla),
      "xla", "reference", "pallas" (the kernel of the current backend; on CPU
      the GPU-style kernel in interpret mode), "pallas_gpu", "pallas_tpu".
    interpret: None: decided when lowering (`lax.platform_dependent`): the
      interpreter when lowered for CPU, the compiled kernel otherwise, so
      `jax.export` on a CPU host can emit the real kernel. Block shapes the
      compiled kernel rejects fall back to `jax.default_backend() == "cpu"`
      (and raise on an accelerator). True / False force it.
    return_lse: also return f32 `[B, Hq, Tq]` natural-log LSE (-inf for rows
      that see no key).
    backward: "kernel" (dq/dkv kernels) or "xla" (autodiff of the xla path;
      the oracle in tests).

  Returns:
    out `[B, Tq, Hq, D]` in q's dtype (zeros for rows that see no key), and
    lse when `return_lse`.
  """
  _, tq, hq, _, hkv, d = _common.check_inputs(q, k, v, block_mask)
  impl = _resolve(implementation)
  scale = _common.scale_of(sm_scale, d)
  if impl == "reference":
    return block_sparse_attention_reference(q, k, v, block_mask,
                                            sm_scale=scale,
                                            return_lse=return_lse)
  if impl == "xla":
    return xla_impl.block_sparse_attention_xla(q, k, v, block_mask,
                                               sm_scale=scale,
                                               return_lse=return_lse)
  if backward not in ("kernel", "xla"):
    raise ValueError(f"backward must be 'kernel' or 'xla', got {backward!r}")
  on_cpu = jax.default_backend() == "cpu"
  if interpret is None:
    lowerable = _is_lowerable(impl, block_mask, d, q.dtype)
    interpret = _common.BY_PLATFORM if lowerable else on_cpu
  if interpret and on_cpu and jax.config.jax_enable_x64:
    raise ValueError("Pallas interpret mode on CPU needs jax_enable_x64 off")
  if not interpret:
    _check_lowerable(impl, block_mask, d, q.dtype)
  from alignax.kernels import decode  # pylint: disable=g-import-not-at-top
  if impl == "pallas_gpu" and decode.decode_supported(block_mask, tq, hkv):
    out, lse = decode.decode_attention(q, k, v, block_mask, sm_scale=scale,
                                       interpret=interpret)
  else:
    out, lse = _kernel_attention(q, k, v, block_mask, scale, impl,
                                 interpret, backward)
  return (out, lse) if return_lse else out
