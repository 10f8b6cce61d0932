"""LoRA adapters against PEFT (same tiny random models and adapter weights),
PEFT-format round trips, merging, and the adapter-only train step."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import peft
import pytest
import torch
import transformers
from flax import nnx

from alignax.framework import hf, lora, train
from alignax.framework.config import ModelConfig
from alignax.framework.model import Decoder
from tests.framework import hf_fixtures

KINDS = ["llama_gqa", "qwen2_tied"]
LENGTHS = (9, 5, 1, 7)
TOL = 1e-5


def _err(ours, ref, mask):
  return float(np.abs(np.asarray(ours) - ref)[mask.astype(bool)].max())


def _peft_model(kind, tmp_path, **lora_kwargs):
  """(base dir, PEFT model with random A and B, its saved adapter dir)."""
  base_dir, adapter_dir = tmp_path / "base", tmp_path / "peft"
  hf_fixtures.make_hf_model(kind, base_dir)
  base = transformers.AutoModelForCausalLM.from_pretrained(str(base_dir)).eval()
  config = peft.LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": list(lora.TARGETS),
                              "init_lora_weights": False, **lora_kwargs})
  torch.manual_seed(1)
  model = peft.get_peft_model(base, config).eval()
  model.save_pretrained(str(adapter_dir))
  return str(base_dir), model, str(adapter_dir)


def _randomise(model, seed=0):
  """Random B (it starts at zero) so that the adapters change the output."""
  rng = np.random.RandomState(seed)
  for _, dense in lora.adapted(model):
    dense.lora.b[...] = jnp.asarray(0.1 * rng.randn(*dense.lora.b.shape), jnp.float32)
  return model


def _logits(model, ids, mask):
  return model(jnp.asarray(ids), attention_mask=jnp.asarray(mask))


@pytest.mark.parametrize("kind", KINDS)
def test_loaded_peft_adapter_gives_peft_logits(kind, tmp_path):
  base_dir, peft_model, adapter_dir = _peft_model(kind, tmp_path)
  model = lora.load_peft(hf.from_pretrained(base_dir), adapter_dir)
  assert lora.config_of(model) == lora.LoraConfig(rank=4, alpha=8.0)
  ids, mask = hf_fixtures.left_padded_batch(model.config.vocab_size, LENGTHS)
  ref = hf_fixtures.hf_logits(peft_model, ids, mask)
  with peft_model.disable_adapter():
    base_ref = hf_fixtures.hf_logits(peft_model, ids, mask)
  assert _err(ref, base_ref, mask) > 0.1  # the adapters matter
  assert _err(_logits(model, ids, mask), ref, mask) < TOL
  # The adapters disabled: the base model, as PEFT's disable_adapter().
  graphdef, params = lora.disable(*nnx.split(model))
  assert _err(_logits(nnx.merge(graphdef, params), ids, mask), base_ref, mask) < TOL


@pytest.mark.parametrize("kind", KINDS)
def test_saved_adapter_loads_in_peft_and_back(kind, tmp_path):
  hf_fixtures.make_hf_model(kind, tmp_path / "base")
  model = lora.apply(hf.from_pretrained(str(tmp_path / "base")),
                     lora.LoraConfig(rank=3, alpha=5.0, target_modules=("q_proj", "v_proj",
                                                                          "down_proj")))
  _randomise(model)
  lora.save_peft(model, str(tmp_path / "ours"), base_model_name_or_path="base")
  base = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base")).eval()
  peft_model = peft.PeftModel.from_pretrained(base, str(tmp_path / "ours")).eval()
  ids, mask = hf_fixtures.left_padded_batch(model.config.vocab_size, LENGTHS, seed=1)
  assert _err(_logits(model, ids, mask), hf_fixtures.hf_logits(peft_model, ids, mask),
              mask) < TOL
  again = lora.load_peft(hf.from_pretrained(str(tmp_path / "base")), str(tmp_path / "ours"))
  assert lora.config_of(again) == lora.config_of(model)
  for a, b in zip(jax.tree.leaves(nnx.state(again)), jax.tree.leaves(nnx.state(model))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("kind", KINDS)
def test_merged_model_saved_for_transformers_equals_peft_merge(kind, tmp_path):
  base_dir, peft_model, adapter_dir = _peft_model(kind, tmp_path, lora_alpha=16)
  model = lora.load_peft(hf.from_pretrained(base_dir), adapter_dir)
  merged = lora.merge(model)
  assert not list(lora.adapted(merged)) and list(lora.adapted(model))
  hf.save_pretrained(merged, str(tmp_path / "merged"))
  ours = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
  ids, mask = hf_fixtures.left_padded_batch(model.config.vocab_size, LENGTHS, seed=2)
  ref = hf_fixtures.hf_logits(peft_model.merge_and_unload().eval(), ids, mask)
  assert _err(hf_fixtures.hf_logits(ours, ids, mask), ref, mask) < TOL
  assert _err(_logits(model, ids, mask), ref, mask) < TOL
  with pytest.raises(ValueError, match="lora.merge"):
    hf.save_pretrained(model, str(tmp_path / "refused"))


def test_unsupported_peft_settings_are_refused(tmp_path):
  base_dir, _, adapter_dir = _peft_model("llama_gqa", tmp_path)
  path = f"{adapter_dir}/adapter_config.json"
  config = json.load(open(path))
  json.dump(dict(config, use_dora=True), open(path, "w"))
  with pytest.raises(ValueError, match="use_dora=True is not supported"):
    lora.load_peft(hf.from_pretrained(base_dir), adapter_dir)
  with pytest.raises(ValueError, match="rank must be an integer >= 1"):
    lora.LoraConfig(rank=0)
  with pytest.raises(ValueError, match="target_modules"):
    lora.LoraConfig(rank=2, target_modules=("lm_head",))


def _batch(n=8, p=5, c=4, vocab=32, seed=0):
  rng = np.random.RandomState(seed)
  seq = rng.randint(0, vocab, (n, p + c)).astype(np.int32)
  mask = np.ones((n, p + c), bool)
  return dict(sequences=seq, attention_mask=mask, completion_tokens=seq[:, p:],
              completion_mask=mask[:, p:])


TINY = ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=2,
                   num_heads=2, num_kv_heads=1)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_only_adapters_change_and_hold_optimiser_state(dropout):
  model = lora.apply(Decoder(TINY, seed=0), lora.LoraConfig(rank=4, dropout=dropout))
  optimizer = train.make_optimizer(1e-2)
  graphdef, state = train.init_train_state(model, optimizer)
  before = {p: np.asarray(v) for p, v in nnx.to_flat_state(state.params)}
  adapter_shapes = sorted(v.shape for _, v in nnx.to_flat_state(
      nnx.filter_state(state.params, nnx.LoRAParam)))
  assert len(adapter_shapes) == 2 * 7 * TINY.num_layers
  mu = state.opt_state[1][0].mu  # clip -> adamw(scale_by_adam, ...)
  assert sorted(x.shape for x in jax.tree.leaves(mu)) == adapter_shapes
  update = train.make_sft_update(lora.training(graphdef, state.params), optimizer,
                                 micro_batches=2)
  for step in range(2):
    state, metrics = update(state, _batch(seed=step))
    assert np.isfinite(float(metrics["loss"]))
  for p, v in nnx.to_flat_state(state.params):
    changed = not np.array_equal(np.asarray(v), before[p])
    assert changed == isinstance(v, nnx.LoRAParam), p


def test_lora_micro_batches_give_the_full_batch_update():
  optimizer = optax.sgd(1.0)
  out = []
  for micro in (1, 4):
    model = _randomise(lora.apply(Decoder(TINY, seed=0), lora.LoraConfig(rank=4)))
    graphdef, state = train.init_train_state(model, optimizer)
    update = train.make_sft_update(graphdef, optimizer, micro_batches=micro)
    state, _ = update(state, _batch())
    out.append(jax.tree.leaves(state.params))
  for a, b in zip(*out):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_bfloat16_base_with_float32_adapters():
  config = TINY.replace(param_dtype="bfloat16", dtype="bfloat16")
  model = _randomise(lora.apply(Decoder(config, seed=0), lora.LoraConfig(rank=4)))
  ids = jnp.asarray(_batch()["sequences"])
  for _, dense in lora.adapted(model):
    assert dense.kernel.dtype == jnp.bfloat16 and dense.lora.a.dtype == jnp.float32
  hidden, _ = model.forward(ids)
  assert hidden.dtype == jnp.bfloat16  # the adapters do not promote the activations
  # The merged (bfloat16) model agrees up to bfloat16 rounding.
  merged = lora.merge(model)
  assert jax.tree.leaves(nnx.state(merged))[0].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(model(ids)), np.asarray(merged(ids)), atol=5e-2)
