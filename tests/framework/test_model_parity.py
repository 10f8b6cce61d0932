"""alignax's decoder against transformers on tiny random models."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from alignax.framework import hf
from alignax.framework.model import Decoder, KVCache
from alignax.framework.config import ModelConfig
from tests.framework import hf_fixtures

LENGTHS = (9, 5, 1, 7)


def _max_err(ours, ref, mask):
  return float(np.abs(np.asarray(ours) - ref)[mask.astype(bool)].max())


@pytest.mark.parametrize("kind", sorted(hf_fixtures.CONFIGS))
def test_logits_match_transformers_with_left_padding(kind, tmp_path):
  torch_model = hf_fixtures.make_hf_model(kind, tmp_path)
  model = hf.from_pretrained(str(tmp_path))
  ids, mask = hf_fixtures.left_padded_batch(model.config.vocab_size, LENGTHS)
  ref = hf_fixtures.hf_logits(torch_model, ids, mask)
  ours = model(jnp.asarray(ids), attention_mask=jnp.asarray(mask))
  assert ours.shape == ref.shape
  assert _max_err(ours, ref, mask) < 1e-4


@pytest.mark.parametrize("kind", ["llama_gqa", "qwen2_tied"])
def test_round_trip_through_transformers(kind, tmp_path):
  hf_fixtures.make_hf_model(kind, tmp_path / "src")
  model = hf.from_pretrained(str(tmp_path / "src"))
  hf.save_pretrained(model, str(tmp_path / "out"))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
  ids, mask = hf_fixtures.left_padded_batch(model.config.vocab_size, LENGTHS, seed=1)
  ref = hf_fixtures.hf_logits(reloaded, ids, mask)
  ours = model(jnp.asarray(ids), attention_mask=jnp.asarray(mask))
  assert _max_err(ours, ref, mask) < 1e-4
  again = hf.from_pretrained(str(tmp_path / "out"))
  np.testing.assert_array_equal(np.asarray(again(jnp.asarray(ids))),
                                np.asarray(model(jnp.asarray(ids))))


def test_kv_cache_prefill_then_decode_equals_full_forward():
  config = ModelConfig(vocab_size=61, hidden_size=32, intermediate_size=48,
                       num_layers=2, num_heads=4, num_kv_heads=2)
  model = Decoder(config, seed=3)
  ids, mask = hf_fixtures.left_padded_batch(61, (6, 3, 8), seed=2)
  ids, mask = jnp.asarray(ids), jnp.asarray(mask)
  full = model(ids, attention_mask=mask)
  cache = KVCache.zeros(config, batch=3, slots=12)
  hidden, cache = model.forward(ids[:, :5], attention_mask=mask[:, :5], cache=cache,
                                cache_index=0)
  steps = [model.logits(hidden)]
  positions = jnp.cumsum(mask, -1) - 1
  for t in range(5, 8):
    hidden, cache = model.forward(ids[:, t:t + 1], attention_mask=mask[:, t:t + 1],
                                  positions=positions[:, t:t + 1], cache=cache,
                                  cache_index=t)
    steps.append(model.logits(hidden))
  incremental = jnp.concatenate(steps, axis=1)
  valid = np.asarray(mask).astype(bool)
  assert float(jnp.abs(incremental - full)[valid].max()) < 1e-5


def test_bfloat16_params_and_compute_stay_close(tmp_path):
  torch_model = hf_fixtures.make_hf_model("llama_gqa", tmp_path)
  model = hf.from_pretrained(str(tmp_path), dtype=jnp.bfloat16)
  assert model.embed_tokens[...].dtype == jnp.bfloat16
  ids, mask = hf_fixtures.left_padded_batch(model.config.vocab_size, LENGTHS)
  ref = hf_fixtures.hf_logits(torch_model, ids, mask)
  ours = model(jnp.asarray(ids), attention_mask=jnp.asarray(mask))
  assert ours.dtype == jnp.float32
  # bf16 has 8 mantissa bits; logits here are O(0.1).
  assert _max_err(ours, ref, mask) < 3e-2


def test_forward_is_jittable_and_deterministic():
  model = Decoder(ModelConfig(), seed=0)
  ids = jnp.arange(12, dtype=jnp.int32).reshape(2, 6)
  out = jax.jit(lambda m, x: m(x))(model, ids)
  np.testing.assert_allclose(np.asarray(out), np.asarray(model(ids)), atol=1e-5)
