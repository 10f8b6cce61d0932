"""Fused chunked log-probs/entropy vs unfused autodiff (docs/sparse_attention.md §6)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignax.framework.logprobs import (chunked_token_logprobs,
                                        fused_logprobs_and_entropy)
from alignax.objectives import token_entropy, token_logprobs

N, T, D, V = 2, 5, 8, 37  # R = 10 rows; V prime so chunks rarely divide


def _inputs(seed=0, dtype=jnp.float32):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  h = jax.random.normal(k1, (N, T, D), dtype)
  w = jax.random.normal(k2, (D, V), dtype) * 0.7
  tok = jax.random.randint(k3, (N, T), 0, V)
  return h, w, tok


def _naive(h, w, tok, tau):
  logits = jnp.einsum("ntd,dv->ntv", h, w)
  return (token_logprobs(logits, tok, temperature=tau),
          token_entropy(logits, temperature=tau))


def _objective(fn):
  # An arbitrary downstream use of both outputs, so both cotangents are non-0.
  c1 = jnp.linspace(-1.0, 2.0, N * T).reshape(N, T)
  c2 = jnp.cos(jnp.arange(N * T, dtype=jnp.float32)).reshape(N, T)

  def f(h, w, tok):
    lp, ent = fn(h, w, tok)
    return jnp.sum(c1 * lp) + jnp.sum(c2 * ent)
  return f


@pytest.mark.parametrize("token_chunk,vocab_chunk,tau,remat", [
    (1024, None, 1.0, True), (4, None, 0.7, True), (3, None, 1.0, True),
    (10, 8, 0.7, True), (3, 37, 1.0, True), (7, 5, 0.7, True), (1, 36, 1.0, True),
    (1024, None, 0.7, False), (3, None, 1.0, False)])
def test_matches_unfused_value_and_grad(token_chunk, vocab_chunk, tau, remat):
  h, w, tok = _inputs()
  fused = lambda h, w, tok: fused_logprobs_and_entropy(
      h, w, tok, temperature=tau, token_chunk=token_chunk,
      vocab_chunk=vocab_chunk, remat=remat)
  lp, ent = jax.jit(fused)(h, w, tok)
  ref_lp, ref_ent = _naive(h, w, tok, tau)
  np.testing.assert_allclose(lp, ref_lp, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ent, ref_ent, rtol=1e-5, atol=1e-5)
  g = jax.jit(jax.grad(_objective(fused), argnums=(0, 1)))(h, w, tok)
  g_ref = jax.grad(_objective(lambda *a: _naive(*a, tau)), argnums=(0, 1))(
      h, w, tok)
  for a, b in zip(g, g_ref):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("vocab_chunk,remat", [(None, True), (8, True), (None, False)])
def test_logged_entropy_gradient_skipped_exactly(vocab_chunk, remat):
  """Entropy only logged (stop_gradient: a symbolic-zero cotangent, whose
  [rows, V] backward term is skipped) and entropy not computed at all give
  the log-prob-only gradient of the unfused reference."""
  h, w, tok = _inputs(2)
  c1 = jnp.linspace(-1.0, 2.0, N * T).reshape(N, T)

  def f(h, w, entropy, stop):
    lp, ent = fused_logprobs_and_entropy(h, w, tok, temperature=0.7, token_chunk=3,
                                         vocab_chunk=vocab_chunk, entropy=entropy,
                                         remat=remat)
    return jnp.sum(c1 * lp) + (0.0 * jnp.sum(jax.lax.stop_gradient(ent)) if stop else 0.0)

  ref = jax.grad(lambda h, w: jnp.sum(c1 * token_logprobs(
      jnp.einsum("ntd,dv->ntv", h, w), tok, temperature=0.7)), (0, 1))(h, w)
  for entropy, stop in ((True, True), (True, False), (False, False)):
    got = jax.jit(jax.grad(f, (0, 1)), static_argnums=(2, 3))(h, w, entropy, stop)
    for a, b in zip(got, ref):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_remat_false_rejects_vocab_chunk():
  h, w, tok = _inputs()
  with pytest.raises(ValueError, match="vocab_chunk"):
    fused_logprobs_and_entropy(h, w, tok, vocab_chunk=8, remat=False)


def test_chunked_token_logprobs_grad_and_chunk_independence():
  h, w, tok = _inputs(1)
  outs = [chunked_token_logprobs(h, w, tok, chunk=c) for c in (1, 3, 10, 64)]
  for o in outs[1:]:
    np.testing.assert_allclose(o, outs[0], rtol=1e-6, atol=1e-6)
  f = lambda h, w: jnp.sum(chunked_token_logprobs(h, w, tok, chunk=3) ** 2)
  f_ref = lambda h, w: jnp.sum(token_logprobs(h @ w, tok) ** 2)
  for a, b in zip(jax.grad(f, (0, 1))(h, w), jax.grad(f_ref, (0, 1))(h, w)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_temperature_zero_rejected():
  h, w, tok = _inputs()
  with pytest.raises(ValueError, match="temperature"):
    chunked_token_logprobs(h, w, tok, temperature=0.0)
  with pytest.raises(ValueError, match="temperature"):
    fused_logprobs_and_entropy(h, w, tok, temperature=-1.0)


def test_padding_rows_finite_and_bf16_inputs():
  h, w, tok = _inputs(2, jnp.bfloat16)
  h = h.at[1, 3:].set(0)  # padding rows: zero hidden, token 0
  tok = tok.at[1, 3:].set(0)
  lp, ent = fused_logprobs_and_entropy(h, w, tok, token_chunk=4, vocab_chunk=16)
  assert lp.dtype == jnp.float32
  assert np.isfinite(lp).all() and np.isfinite(ent).all()
  np.testing.assert_allclose(lp[1, 3:], -np.log(V), rtol=1e-5)
  ref = token_logprobs(jnp.dot(h, w, preferred_element_type=jnp.float32), tok)
  np.testing.assert_allclose(lp, ref, rtol=1e-4, atol=1e-4)
  gh, gw = jax.grad(lambda h, w: jnp.sum(fused_logprobs_and_entropy(
      h, w, tok, token_chunk=4)[0]), (0, 1))(h, w)
  assert gh.dtype == jnp.bfloat16 and gw.dtype == jnp.bfloat16


def test_does_not_materialise_full_logits():
  """The compiled loss+grad's temp memory stays well below one [R, V] tensor."""
  n, t, d, v = 4, 256, 16, 4096
  h = jax.ShapeDtypeStruct((n, t, d), jnp.float32)
  w = jax.ShapeDtypeStruct((d, v), jnp.float32)
  tok = jax.ShapeDtypeStruct((n, t), jnp.int32)
  loss = lambda h, w, tok: jnp.sum(fused_logprobs_and_entropy(
      h, w, tok, token_chunk=64)[0])
  comp = jax.jit(jax.grad(loss, (0, 1))).lower(h, w, tok).compile()
  temp = comp.memory_analysis().temp_size_in_bytes
  full = n * t * v * 4
  assert temp < full / 4, (temp, full)
