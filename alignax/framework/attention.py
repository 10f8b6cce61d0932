"""The one attention entry point of the decoder, with pluggable implementations.

Every implementation has the signature

    impl(q, k, v, *, mask, scale) -> out
      q    [B, Tq, Hq, D]
      k, v [B, Hkv, Tk, D]    head-major, the KV-cache layout (Hq % Hkv == 0: GQA)
      mask bool [B, Tq, Tk]   True = the query may attend to the key
      out  [B, Tq, Hq, D]     a query row that sees no key gets zeros

and is registered by name in `ATTENTION_IMPLS`; `ModelConfig.attention_impl`
picks one. The block-sparse kernels of `alignax.kernels` register here too
(`"block_sparse"`, in `alignax.framework.sparse_attention`).

Optional context. `mask` is the whole truth about visibility, but a
structured implementation (window, sinks, block selection) needs to know
where the rows sit. The decoder therefore calls `attend(...)`, which also
passes any of these keywords that the implementation declares (or all of
them when it takes `**kwargs`); implementations with the plain signature
above keep working unchanged:

      config      the `ModelConfig` (hyper-parameters such as sparse_window)
      query_slot0 int32 scalar: slot index of query row 0 (the cache index;
                  0 without a cache). Query row i sits at slot
                  `query_slot0 + i` and `mask[b, i, j]` implies
                  `j <= query_slot0 + i`.
      key_valid   bool [B, Tk]: True where key slot j holds a real token
                  (False for padding and for empty cache slots).
"""
from __future__ import annotations

import functools
import importlib
import inspect
from typing import Callable

import jax
import jax.numpy as jnp

from alignax.registry import Registry

AttentionFn = Callable[..., jax.Array]
ATTENTION_IMPLS = Registry("attention implementation")


def register_attention(name: str) -> Callable[[AttentionFn], AttentionFn]:
  return ATTENTION_IMPLS.register(name)


# Implementations that live in their own module and register on import; the
# import is deferred so that this module stays importable on its own (the
# sparse module imports this one).
_LAZY_IMPLS = {"block_sparse": "alignax.framework.sparse_attention"}

CONTEXT_KWARGS = ("config", "query_slot0", "key_valid")


def get_attention(name: str) -> AttentionFn:
  if name not in ATTENTION_IMPLS and name in _LAZY_IMPLS:
    importlib.import_module(_LAZY_IMPLS[name])
  return ATTENTION_IMPLS[name]


@functools.lru_cache(maxsize=None)
def _accepted_context(fn: AttentionFn) -> tuple[str, ...]:
  """The context keywords `fn` declares (all of them for `**kwargs`)."""
  params = inspect.signature(fn).parameters.values()
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
    return CONTEXT_KWARGS
  names = {p.name for p in params}
  return tuple(n for n in CONTEXT_KWARGS if n in names)


def reads_only_mask(name: str) -> bool:
  """Whether implementation `name` takes visibility from `mask` alone: it
  declares neither `query_slot0` nor `key_valid`, so any mask is exact for it
  (packed segments included). Structured ones (block-sparse windows, counted
  in slots) declare them."""
  return not {"query_slot0", "key_valid"} & set(_accepted_context(get_attention(name)))


def attend(name: str, q, k, v, *, mask, scale, **context) -> jax.Array:
  """Runs implementation `name`, passing only the context it accepts.

  Args:
    name: a registered implementation.
    q: [B, Tq, Hq, D]; k, v: [B, Hkv, Tk, D].
    mask: bool [B, Tq, Tk].
    scale: score scale.
    **context: any of `CONTEXT_KWARGS` (see the module docstring).

  Returns:
    [B, Tq, Hq, D].
  """
  unknown = set(context) - set(CONTEXT_KWARGS)
  if unknown:
    raise ValueError(f"Unknown attention context {sorted(unknown)}; expected"
                     f" a subset of {CONTEXT_KWARGS}.")
  fn = get_attention(name)
  extra = {n: context[n] for n in _accepted_context(fn) if n in context}
  return fn(q, k, v, mask=mask, scale=scale, **extra)


def grouped_softmax_attention(q, k, v, mask, scale):
  """Softmax attention under a mask that may differ per head.

  q [B, Tq, Hq, D]; k, v [B, Hkv, Tk, D]; mask bool, broadcastable to
  [B, Hkv, G, Tq, Tk] with G = Hq // Hkv (query head h = kv * G + g).
  Scores and softmax in float32; a row that sees no key gets zeros.
  """
  out_dtype = q.dtype
  if jax.default_backend() == "cpu":
    # XLA:CPU has no bf16 x bf16 -> f32 dot for these layouts; compute in f32.
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
  b, tq, hq, d = q.shape
  hkv = k.shape[1]
  # GQA without repeating K/V: fold the query heads that share a KV head.
  qg = q.reshape(b, tq, hkv, hq // hkv, d)
  scores = jnp.einsum("bqhgd,bhkd->bhgqk", qg, k,
                      preferred_element_type=jnp.float32) * scale
  scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1)
  probs = jnp.where(jnp.any(mask, axis=-1, keepdims=True), probs, 0.0)
  out = jnp.einsum("bhgqk,bhkd->bqhgd", probs.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  return out.reshape(b, tq, hq, d).astype(out_dtype)


@register_attention("dense")
def dense_attention(q, k, v, *, mask, scale):
  """Softmax attention in XLA; one mask [B, Tq, Tk] for every head."""
  return grouped_softmax_attention(q, k, v, mask[:, None, None], scale)


def _cudnn_supported(q) -> bool:
  """cuDNN flash attention: a GPU, 16-bit inputs, head dim a multiple of 8
  up to 128 (what `jax.nn.dot_product_attention(implementation="cudnn")`
  accepts). Decided at trace time: cuDNN cannot be lowered without a GPU."""
  d = q.shape[-1]
  return (jax.default_backend() == "gpu"
          and q.dtype in (jnp.bfloat16, jnp.float16) and d % 8 == 0 and d <= 128)


@register_attention("dot_product")
def dot_product_attention(q, k, v, *, mask, scale):
  """`jax.nn.dot_product_attention`: cuDNN flash attention on a GPU (16-bit
  inputs), its XLA implementation elsewhere; same values as "dense".

  A row that sees no key (left padding) is given every key inside the call
  and zeroed after it, so cuDNN never sees an empty row (NaN) and the row
  still gets zeros and a zero gradient, as "dense" does.
  """
  visible = jnp.any(mask, axis=-1)                     # [B, Tq]
  safe = mask | ~visible[..., None]
  out = jax.nn.dot_product_attention(
      q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), mask=safe[:, None],
      scale=scale, implementation="cudnn" if _cudnn_supported(q) else "xla")
  return jnp.where(visible[:, :, None, None], out, 0).astype(q.dtype)


@register_attention("auto")
def auto_attention(q, k, v, *, mask, scale):
  """"dot_product" (cuDNN) where cuDNN supports the call, "dense" otherwise
  (CPU, TPU, float32): identical values on CPU to "dense"."""
  impl = dot_product_attention if _cudnn_supported(q) else dense_attention
  return impl(q, k, v, mask=mask, scale=scale)
