"""Fused, chunked per-token log-probs and entropy (docs/sparse_attention.md §6).

RL losses need `logp[n, t] = log softmax(h W / tau)[tokens[n, t]]` (and the
entropy), but the `[N, T, V]` logits behind them dominate training memory.
Here the LM-head matmul, log-softmax, gather and entropy run chunk by chunk
over rows (and optionally vocabulary slices), under a `jax.custom_vjp` whose
residuals are only `hidden, W, tokens, lse, ent`: backward recomputes each
chunk's logits. Peak memory is `O(token_chunk * V)` (or
`O(token_chunk * vocab_chunk)`) instead of `O(N T V)`; `remat=False`
trades that back for speed (the logits are kept, one matmul fewer). A
cotangent that is a symbolic zero (entropy only logged under
`stop_gradient`) skips its backward term. Same idea as Liger's
fused linear cross-entropy and MaxText's vocab tiling; unlike them the outputs
are per-token, so gradients are finished only in backward (one extra LM-head
pass of compute).

Temperature follows TRL: `z = logits / temperature`, temperature > 0.
"""
import functools
from typing import Optional, Tuple

import jax
import jax.numpy as jnp

_F32 = jnp.float32


def _check_args(temperature, token_chunk, vocab_chunk):
  if not isinstance(temperature, (int, float)):
    raise TypeError("temperature must be a Python float (static)")
  if temperature <= 0:
    raise ValueError(
        f"temperature must be > 0 (got {temperature}); greedy sampling"
        " (temperature 0) cannot be trained on with z = logits / tau")
  if token_chunk < 1 or (vocab_chunk is not None and vocab_chunk < 1):
    raise ValueError("chunk sizes must be >= 1")


def _logits(h, w, tau):
  return jnp.dot(h, w, preferred_element_type=_F32) / tau


def _vocab_blocks(w, vocab_chunk):
  """`[D, V] -> ([nv, D, vc], offsets [nv])`, zero-padded on the vocab axis."""
  d, v = w.shape
  nv = -(-v // vocab_chunk)
  w = jnp.pad(w, ((0, 0), (0, nv * vocab_chunk - v)))
  blocks = w.reshape(d, nv, vocab_chunk).transpose(1, 0, 2)
  return blocks, jnp.arange(nv) * vocab_chunk


def _chunk_forward(h, w, tok, tau, vocab_chunk, with_entropy):
  """One row chunk: `(lse, target logit, entropy, logits)`; the first three
  `[C]` f32, the logits `[C, V]` (None with `vocab_chunk`)."""
  if vocab_chunk is None:
    z = _logits(h, w, tau)
    lse = jax.nn.logsumexp(z, axis=-1)
    tgt = jnp.take_along_axis(z, tok[:, None], axis=-1)[:, 0]
    ent = (lse - jnp.sum(jnp.exp(z - lse[:, None]) * z, axis=-1)
           if with_entropy else jnp.zeros_like(lse))
    return lse, tgt, ent, z

  v = w.shape[1]
  blocks, offsets = _vocab_blocks(w, vocab_chunk)
  cols = jnp.arange(vocab_chunk)

  def body(carry, xs):
    # Online softmax statistics: m = running max, s = sum e^{z-m},
    # t = sum e^{z-m} z (for the entropy), and the target logit.
    m, s, t, tgt = carry
    wb, off = xs
    idx = off + cols
    valid = idx < v
    z = jnp.where(valid, _logits(h, wb, tau), -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(z, axis=-1))
    scale = jnp.exp(m - m_new)
    e = jnp.exp(z - m_new[:, None])
    s = s * scale + jnp.sum(e, axis=-1)
    t = t * scale + jnp.sum(jnp.where(valid, e * z, 0.0), axis=-1)
    tgt = tgt + jnp.sum(jnp.where(idx[None] == tok[:, None], z, 0.0), axis=-1)
    return (m_new, s, t, tgt), None

  c = h.shape[0]
  init = (jnp.full((c,), -jnp.inf, _F32), jnp.zeros((c,), _F32),
          jnp.zeros((c,), _F32), jnp.zeros((c,), _F32))
  (m, s, t, tgt), _ = jax.lax.scan(body, init, (blocks, offsets))
  lse = m + jnp.log(s)
  ent = lse - t / s if with_entropy else jnp.zeros_like(lse)
  return lse, tgt, ent, None


def _dlogits(z, tok, col_ids, lse, ent, g_lp, g_ent, with_entropy):
  """Cotangent of `z` from those of `logp = z[tok] - lse` and the entropy.

  `dlogp/dz = onehot - p`; `dH/dz = -p (z - lse + H)` since `log p = z - lse`.
  """
  p = jnp.exp(z - lse[:, None])
  onehot = (col_ids[None] == tok[:, None]).astype(_F32)
  dz = g_lp[:, None] * (onehot - p)
  if with_entropy:
    dz = dz - g_ent[:, None] * p * (z - lse[:, None] + ent[:, None])
  return dz


def _chunk_backward(h, w, tok, lse, ent, g_lp, g_ent, tau, vocab_chunk,
                    with_entropy, z=None):
  """One row chunk: `(dh [C, D] f32, dW contribution)`; `z`: saved logits."""
  if vocab_chunk is None:
    z = _logits(h, w, tau) if z is None else z
    dz = _dlogits(z, tok, jnp.arange(w.shape[1]), lse, ent, g_lp, g_ent,
                  with_entropy) / tau
    dh = jnp.dot(dz, w.T.astype(_F32))
    dw = jnp.dot(h.T.astype(_F32), dz)
    return dh, dw

  v = w.shape[1]
  blocks, offsets = _vocab_blocks(w, vocab_chunk)
  cols = jnp.arange(vocab_chunk)

  def body(dh, xs):
    wb, off = xs
    idx = off + cols
    valid = idx < v
    z = jnp.where(valid, _logits(h, wb, tau), -jnp.inf)
    dz = _dlogits(z, tok, idx, lse, ent, g_lp, g_ent, False)
    if with_entropy:  # (z - lse) is -inf on padding: mask before multiplying
      p = jnp.exp(z - lse[:, None])
      zz = jnp.where(valid, z, 0.0)
      dz = dz - g_ent[:, None] * p * (zz - lse[:, None] + ent[:, None])
    dz = jnp.where(valid, dz, 0.0) / tau
    dh = dh + jnp.dot(dz, wb.T.astype(_F32))
    return dh, jnp.dot(h.T.astype(_F32), dz)

  dh, dw_blocks = jax.lax.scan(
      body, jnp.zeros((h.shape[0], w.shape[0]), _F32), (blocks, offsets))
  dw = dw_blocks.transpose(1, 0, 2).reshape(w.shape[0], -1)[:, :v]
  return dh, dw


def _split_rows(x, chunk):
  return x.reshape((x.shape[0] // chunk, chunk) + x.shape[1:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def _fused(h, w, tok, tau, chunk, vocab_chunk, with_entropy, remat):
  return _forward(h, w, tok, tau, chunk, vocab_chunk, with_entropy)[0]


def _forward(h, w, tok, tau, chunk, vocab_chunk, with_entropy):
  """`((logp, entropy), lse, logits [n_chunks, chunk, V] or None)`."""
  lse, tgt, ent, z = jax.lax.map(
      lambda xs: _chunk_forward(xs[0], w, xs[1], tau, vocab_chunk,
                                with_entropy),
      (_split_rows(h, chunk), _split_rows(tok, chunk)))
  lse, tgt, ent = (x.reshape(-1) for x in (lse, tgt, ent))
  return (tgt - lse, ent), lse, z


def _fused_fwd(h, w, tok, tau, chunk, vocab_chunk, with_entropy, remat):
  h, w, tok = (x.value for x in (h, w, tok))  # symbolic_zeros: primals are wrapped
  out, lse, z = _forward(h, w, tok, tau, chunk, vocab_chunk, with_entropy)
  return out, (h, w, tok, lse, out[1], None if remat else z)


def _fused_bwd(tau, chunk, vocab_chunk, with_entropy, remat, res, cts):
  h, w, tok, lse, ent, saved_z = res
  g_lp, g_ent = cts
  # A loss that only logs the entropy (stop_gradient) sends a symbolic zero:
  # skip its [rows, V] term.
  entropy_grad = with_entropy and not isinstance(g_ent, jax.custom_derivatives.SymbolicZero)
  zeros = jnp.zeros(lse.shape, _F32)
  g_lp = zeros if isinstance(g_lp, jax.custom_derivatives.SymbolicZero) else g_lp
  g_ent = g_ent if entropy_grad else zeros

  def body(dw, xs):
    h_c, tok_c, lse_c, ent_c, glp_c, gent_c, z_c = xs
    dh_c, dw_c = _chunk_backward(h_c, w, tok_c, lse_c, ent_c, glp_c, gent_c,
                                 tau, vocab_chunk, entropy_grad, z_c)
    return dw + dw_c, dh_c.astype(h.dtype)

  xs = tuple(_split_rows(x, chunk) for x in (h, tok, lse, ent,
                                              g_lp.astype(_F32),
                                              g_ent.astype(_F32))) + (saved_z,)
  dw, dh = jax.lax.scan(body, jnp.zeros(w.shape, _F32), xs)
  return dh.reshape(h.shape), dw.astype(w.dtype), None


_fused.defvjp(_fused_fwd, _fused_bwd, symbolic_zeros=True)


def fused_logprobs_and_entropy(hidden: jax.Array, w_out: jax.Array,
                               tokens: jax.Array, *, temperature: float = 1.0,
                               token_chunk: int = 1024,
                               vocab_chunk: Optional[int] = None,
                               entropy: bool = True,
                               remat: bool = True
                               ) -> Tuple[jax.Array, jax.Array]:
  """Per-token log-probs and entropies of `softmax(hidden @ w_out / tau)`.

  Never materialises `[N, T, V]`: rows are processed `token_chunk` at a time
  (and the vocabulary `vocab_chunk` columns at a time with an online
  log-sum-exp when given); backward recomputes each chunk's logits.

  Args:
    hidden: `[N, T, D]` final-norm'ed hidden states predicting `tokens`.
    w_out: `[D, V]` output projection (tied models: embedding transposed).
    tokens: `[N, T]` int target ids.
    temperature: TRL sampling temperature, `z = logits / tau`, > 0 (static).
    token_chunk: rows per chunk (R = N*T is zero-padded to a multiple).
    vocab_chunk: optional vocabulary slice size (need not divide V).
    entropy: also compute the entropy (else zeros, and cheaper backward).
    remat: backward recomputes each chunk's logits (memory O(chunk x V)).
      False keeps the forward's logits instead (memory O(rows x V), as
      unfused code; saves one LM-head matmul); needs `vocab_chunk=None`.

  Returns:
    `(logp [N, T] f32, entropy [N, T] f32)`; differentiable w.r.t. `hidden`
    and `w_out`.
  """
  _check_args(temperature, token_chunk, vocab_chunk)
  n, t, d = hidden.shape
  if w_out.shape[0] != d or tokens.shape != (n, t):
    raise ValueError(f"shapes: hidden {hidden.shape}, w_out {w_out.shape},"
                     f" tokens {tokens.shape}")
  rows = n * t
  chunk = max(1, min(token_chunk, rows))
  pad = -rows % chunk
  h = jnp.pad(hidden.reshape(rows, d), ((0, pad), (0, 0)))
  tok = jnp.pad(tokens.reshape(rows).astype(jnp.int32), (0, pad))
  vc = None if vocab_chunk is None or vocab_chunk >= w_out.shape[1] else (
      vocab_chunk)
  if not remat and vc is not None:
    raise ValueError("remat=False keeps whole-vocabulary logits; it cannot be"
                     " combined with vocab_chunk (use one or the other).")
  logp, ent = _fused(h, w_out, tok, float(temperature), chunk, vc,
                     bool(entropy), bool(remat))
  return logp[:rows].reshape(n, t), ent[:rows].reshape(n, t)


def chunked_token_logprobs(hidden: jax.Array, w_out: jax.Array,
                           tokens: jax.Array, *, temperature: float = 1.0,
                           chunk: int = 1024) -> jax.Array:
  """`log softmax(hidden @ w_out / tau)[tokens]`, `[N, T]`, chunked over rows.

  Checklist #2 (docs/algorithms.md §1.1); see `fused_logprobs_and_entropy`.
  """
  return fused_logprobs_and_entropy(hidden, w_out, tokens,
                                    temperature=temperature, token_chunk=chunk,
                                    entropy=False)[0]
