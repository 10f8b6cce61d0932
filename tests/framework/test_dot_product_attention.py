"""`attention_impl="dot_product"` (jax.nn.dot_product_attention; cuDNN on a
GPU) and "auto" against the dense path on CPU: same values and gradients,
with left padding (rows that see no key), GQA and a KV cache."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignax.framework import attention
from alignax.framework.config import ModelConfig
from alignax.framework.model import Decoder


def _inputs(dtype, b=3, tq=7, tk=7, hq=4, hkv=2, d=16, seed=0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.standard_normal((b, tq, hq, d)), dtype)
  k = jnp.asarray(rng.standard_normal((b, hkv, tk, d)), dtype)
  v = jnp.asarray(rng.standard_normal((b, hkv, tk, d)), dtype)
  # Left padding of 0, 2 and 4 slots: the first rows of the padded batch
  # rows see no key at all; the query block sits at the end of the keys.
  key_valid = np.arange(tk)[None, :] >= np.array([0, 2, 4])[:, None]
  slot_q = np.arange(tk - tq, tk)
  mask = key_valid[:, None, :] & (np.arange(tk)[None, None, :] <= slot_q[None, :, None])
  mask &= key_valid[:, -tq:, None]       # padded query rows see nothing
  return q, k, v, jnp.asarray(mask)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-6), (jnp.bfloat16, 2e-2)])
@pytest.mark.parametrize("tq", [7, 1])
def test_dot_product_matches_dense(dtype, tol, tq):
  q, k, v, mask = _inputs(dtype, tq=tq)
  assert tq == 1 or not bool(mask.any(-1).all())   # some rows see nothing
  dense = attention.attend("dense", q, k, v, mask=mask, scale=0.25)
  dot = attention.attend("dot_product", q, k, v, mask=mask, scale=0.25)
  assert dot.dtype == dense.dtype == dtype
  np.testing.assert_allclose(np.asarray(dot, np.float32), np.asarray(dense, np.float32),
                             atol=tol, rtol=tol)
  assert np.all(np.asarray(dot)[~np.asarray(mask.any(-1))] == 0)

  def loss(impl):
    return lambda q, k, v: jnp.sum(jnp.sin(attention.attend(
        impl, q, k, v, mask=mask, scale=0.25).astype(jnp.float32)))
  g_dense = jax.grad(loss("dense"), argnums=(0, 1, 2))(q, k, v)
  g_dot = jax.grad(loss("dot_product"), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(g_dot, g_dense):
    assert np.all(np.isfinite(np.asarray(a, np.float32)))
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               atol=5 * tol, rtol=5 * tol)


def test_auto_is_dense_on_cpu_bit_for_bit():
  q, k, v, mask = _inputs(jnp.float32)
  np.testing.assert_array_equal(
      np.asarray(attention.attend("auto", q, k, v, mask=mask, scale=0.3)),
      np.asarray(attention.attend("dense", q, k, v, mask=mask, scale=0.3)))


def test_decoder_with_dot_product_attention_matches_dense():
  cfg = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
             num_heads=4, num_kv_heads=2)
  ids = jnp.asarray(np.random.default_rng(1).integers(0, 64, (2, 9)), jnp.int32)
  am = jnp.asarray(np.arange(9)[None, :] >= np.array([0, 3])[:, None])
  dense = Decoder(ModelConfig(**cfg, attention_impl="dense"), seed=0)(ids, attention_mask=am)
  dot = Decoder(ModelConfig(**cfg, attention_impl="dot_product"), seed=0)(
      ids, attention_mask=am)
  np.testing.assert_allclose(np.asarray(dot), np.asarray(dense), atol=1e-5)
