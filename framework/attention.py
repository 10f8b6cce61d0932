"""The one attention entry point of the decoder, with pluggable implementations.

Every implementation has the signature

    impl(q, k, v, *, mask, scale) -> out
      q    [B, Tq, Hq, D]
      k, v [B, Tk, Hkv, D]    (Hq % Hkv == 0: grouped-query attention)
      mask bool [B, Tq, Tk]   True = the query may attend to the key
      out  [B, Tq, Hq, D]     a query row that sees no key gets zeros

and is registered by name in `ATTENTION_IMPLS`; `ModelConfig.attention_impl`
picks one. The block-sparse kernels of `alignax.kernels` register here too.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

AttentionFn = Callable[..., jax.Array]
ATTENTION_IMPLS: dict[str, AttentionFn] = {}


def register_attention(name: str) -> Callable[[AttentionFn], AttentionFn]:
  def wrap(fn: AttentionFn) -> AttentionFn:
    ATTENTION_IMPLS[name] = fn
    return fn
  return wrap


def get_attention(name: str) -> AttentionFn:
  try:
    return ATTENTION_IMPLS[name]
  except KeyError:
    raise ValueError(
        f"Unknown attention implementation {name!r}; registered:"
        f" {sorted(ATTENTION_IMPLS)}.") from None


@register_attention("dense")
def dense_attention(q, k, v, *, mask, scale):
  """Softmax attention in XLA; scores and softmax in float32."""
  b, tq, hq, d = q.shape
  hkv = k.shape[2]
  # GQA without repeating K/V: fold the query heads that share a KV head.
  qg = q.reshape(b, tq, hkv, hq // hkv, d)
  scores = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k,
                      preferred_element_type=jnp.float32) * scale
  m = mask[:, None, None, :, :]
  scores = jnp.where(m, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1)
  probs = jnp.where(jnp.any(m, axis=-1, keepdims=True), probs, 0.0)
  out = jnp.einsum("bhgqk,bkhd->bqhgd", probs.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  return out.reshape(b, tq, hq, d).astype(q.dtype)
