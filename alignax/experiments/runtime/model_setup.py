"""The model options every LLM binary's config holds, their defaults, rules
and what applies them: the LoRA block, precision and rematerialisation, the
built-in decoder's sizes and the device mesh."""
from __future__ import annotations

import ml_collections

from alignax.experiments.runtime.config_schema import (POSITIVE, Rule, boolean,
                                                        directory_or_empty, integer,
                                                        many_of, number, one_of)


def lora_config() -> ml_collections.ConfigDict:
  """The `lora` block every LLM binary's config holds (see `apply_lora`).

  rank 0 = full fine-tuning. With rank > 0 only the adapters train (base
  frozen), the sampler runs base + adapters unmerged, a KL / DPO reference is
  the base with the adapters disabled. init_from: a PEFT adapter directory to
  continue training from.
  """
  return ml_collections.ConfigDict(dict(
      rank=0, alpha=16.0, dropout=0.0, init_from="",
      target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                      "down_proj")))


def lora_schema(prefix: str = "lora") -> dict[str, "Rule"]:
  """SCHEMA rules of a `lora_config()` block at `prefix`."""
  return {f"{prefix}.rank": integer(0), f"{prefix}.alpha": number(0, lo_open=True),
          f"{prefix}.dropout": number(0, 1, hi_open=True),
          f"{prefix}.init_from": directory_or_empty("adapter_config.json",
                                                    "a PEFT adapter folder"),
          f"{prefix}.target_modules": many_of("alignax.framework.lora:TARGETS")}


def builtin_model_rules(prefix: str = "model") -> dict:
  """Rules of the built-in decoder's size keys under `prefix`."""
  rules = {f"{prefix}.{k}": POSITIVE for k in (
      "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
      "max_position_embeddings")}
  rules[f"{prefix}.tie_word_embeddings"] = boolean()
  return rules


# Precision and rematerialisation, the same keys in every LLM binary's
# config (read by `model_options`): `model.param_dtype` (weights and Adam
# moments) and `model.dtype` (matmuls): float32/float32, bfloat16 compute with
# float32 master weights (float32/bfloat16), or bfloat16 throughout; and
# `train.remat`, the decoder layers' rematerialisation in the updates: none |
# full | dots_saveable | dots_with_no_batch_dims_saveable (the same values,
# less activation memory).
PRECISION = dict(param_dtype="float32", dtype="float32")
REMAT = dict(remat="none")


def precision_schema() -> dict:
  """SCHEMA rules of the `PRECISION` keys (under `model`) and `REMAT` (under `train`)."""
  dtype = one_of("alignax.framework.config:DTYPE_NAMES")
  return {"model.param_dtype": dtype, "model.dtype": dtype,
          "train.remat": one_of("alignax.framework.config:REMAT_POLICIES")}


def apply_lora(model, lora_config, *, seed: int = 0):
  """Attaches LoRA adapters per a config's `lora` block and returns the model.

  `lora_config`: rank (0 = none: full fine-tuning), alpha, dropout,
  target_modules, init_from (a PEFT adapter directory to continue from; its
  adapter_config.json sets rank and alpha, and a rank > 0 here must agree).
  See `alignax.framework.lora`.
  """
  from alignax.framework import lora  # pylint: disable=g-import-not-at-top

  c = lora_config
  if c.init_from:
    lora.load_peft(model, c.init_from, seed=seed)
    loaded = lora.config_of(model)
    if c.rank and c.rank != loaded.rank:
      raise ValueError(f"config.lora.rank={c.rank} but the adapter in"
                       f" config.lora.init_from={c.init_from!r} has rank {loaded.rank};"
                       " set config.lora.rank=0 (take the adapter's) or the same rank.")
    return model
  if not c.rank:
    return model
  return lora.apply(model, lora.LoraConfig(
      rank=int(c.rank), alpha=float(c.alpha), dropout=float(c.dropout),
      target_modules=tuple(c.target_modules)), seed=seed)


def setup_mesh(config):
  """The one call each binary makes before any JAX work: joins the other
  processes when the environment asks for it (`sharding.
  maybe_initialize_distributed`: `JAX_COORDINATOR_ADDRESS` + `JAX_NUM_PROCESSES`
  + `JAX_PROCESS_ID`, or `ALIGNAX_DISTRIBUTED=1`), then returns the device mesh
  of `config.mesh` (data/fsdp/tensor sizes), or None when the config has no
  mesh or every axis is 1."""
  from alignax.framework import sharding  # pylint: disable=g-import-not-at-top
  sharding.maybe_initialize_distributed()
  sizes = config.get("mesh")
  sizes = sizes.to_dict() if hasattr(sizes, "to_dict") else dict(sizes or {})
  if all(v == 1 for v in sizes.values()):
    return None
  return sharding.make_mesh(**sizes)


def model_options(config) -> dict:
  """`hf.from_pretrained` keywords for precision and remat from a binary's
  config: `model.param_dtype` (weights, optimiser moments), `model.dtype`
  (matmuls) and `train.remat` (decoder-layer rematerialisation; see
  `PRECISION`, `REMAT`), each optional (float32 / float32 / none when a
  config has no such key)."""
  model = config.get("model", {}) or {}
  train = config.get("train", {}) or {}
  return dict(dtype=model.get("param_dtype", "float32"),
              compute_dtype=model.get("dtype", "float32"),
              remat=train.get("remat", "none"))


def new_decoder(tokenizer, sizes, seed: int):
  """A freshly initialised built-in `Decoder` for `tokenizer` (its vocabulary
  size and pad / bos / eos ids), of `sizes` (a config's `model` block: the
  `builtin_model_rules` keys and `PRECISION`)."""
  from alignax.framework.config import ModelConfig  # pylint: disable=g-import-not-at-top
  from alignax.framework.model import Decoder  # pylint: disable=g-import-not-at-top
  sizes = sizes.to_dict() if hasattr(sizes, "to_dict") else dict(sizes)
  return Decoder(ModelConfig(
      vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **sizes),
      seed=seed)
