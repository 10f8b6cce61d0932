"""The model options every LLM binary's config holds, their defaults, rules
and what applies them: the LoRA block, precision and rematerialisation, the
built-in decoder's sizes and the device mesh."""
from __future__ import annotations

import dataclasses

import ml_collections

from alignax.experiments.runtime.config_schema import (POSITIVE, Rule, Section,
                                                        config_dict, directory_or_empty,
                                                        integer, many_of, number, one_of,
                                                        option, rules_of)

_DTYPE = one_of("alignax.framework.config:DTYPE_NAMES")


@dataclasses.dataclass(frozen=True)
class LoraConfig(Section):
  """The `lora` section every LLM binary's config holds (see `apply_lora`):
  rank 0 = full fine-tuning. With rank > 0 only the adapters train (base
  frozen), the sampler runs base + adapters unmerged, a KL / DPO reference is
  the base with the adapters disabled."""

  rank: int = option(0, integer(0), "adapter rank; 0: off (full fine-tuning)")
  alpha: float = option(16.0, number(0, lo_open=True), "LoRA scale numerator (alpha / rank)")
  dropout: float = option(0.0, number(0, 1, hi_open=True), "dropout on the adapter input")
  init_from: str = option("", directory_or_empty("adapter_config.json", "a PEFT adapter folder"),
                          "a PEFT adapter directory to continue training from")
  target_modules: tuple = option(
      ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
      many_of("alignax.framework.lora:TARGETS"), "the projections that get adapters")


@dataclasses.dataclass(frozen=True)
class Precision(Section):
  """Precision, the same keys in every LLM binary's `model` section (read by
  `model_options`): float32/float32, bfloat16 compute with float32 master
  weights (float32/bfloat16), or bfloat16 throughout."""

  param_dtype: str = option("float32", _DTYPE, "weights and Adam moments")
  dtype: str = option("float32", _DTYPE, "matmuls")


@dataclasses.dataclass(frozen=True)
class Remat(Section):
  """Rematerialisation, the same key in every LLM binary's `train` section."""

  remat: str = option("none", one_of("alignax.framework.config:REMAT_POLICIES"),
                      "decoder-layer rematerialisation in the updates: none | full |"
                      " dots_saveable | dots_with_no_batch_dims_saveable (the same"
                      " values, less activation memory)")


@dataclasses.dataclass(frozen=True)
class DecoderSizes(Section):
  """The built-in decoder's sizes (`new_decoder`)."""

  hidden_size: int = option(128, POSITIVE)
  intermediate_size: int = option(256, POSITIVE)
  num_layers: int = option(2, POSITIVE)
  num_heads: int = option(4, POSITIVE)
  num_kv_heads: int = option(2, POSITIVE)
  max_position_embeddings: int = option(256, POSITIVE)
  tie_word_embeddings: bool = option(True)


@dataclasses.dataclass(frozen=True)
class BuiltinModel(DecoderSizes, Precision):
  """A binary's `model` section: the built-in decoder's sizes (ignored when the
  binary starts from a checkpoint) and the precision (applies to any model)."""


@dataclasses.dataclass(frozen=True)
class MeshConfig(Section):
  """The device mesh (`setup_mesh`); every axis 1: unsharded."""

  data: int = option(1, POSITIVE, "data-parallel axis")
  fsdp: int = option(1, POSITIVE, "fully sharded data-parallel axis")
  tensor: int = option(1, POSITIVE, "tensor-parallel axis")


# Deprecated views of the sections above (the old SCHEMA-era helpers, still
# re-exported by `alignax.experiments.common`).
PRECISION = Precision().to_dict()
REMAT = Remat().to_dict()


def lora_config() -> ml_collections.ConfigDict:
  """Deprecated: `config_dict(LoraConfig())`."""
  return config_dict(LoraConfig())


def lora_schema(prefix: str = "lora") -> dict[str, Rule]:
  """Deprecated: `rules_of(LoraConfig, prefix + ".")`."""
  return rules_of(LoraConfig, prefix + ".")


def builtin_model_rules(prefix: str = "model") -> dict:
  """Deprecated: `rules_of(DecoderSizes, prefix + ".")`."""
  return rules_of(DecoderSizes, prefix + ".")


def precision_schema() -> dict:
  """Deprecated: the rules of `Precision` (under `model`) and `Remat` (under `train`)."""
  return {**rules_of(Precision, "model."), **rules_of(Remat, "train.")}


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
  `Precision`, `Remat`), each optional (float32 / float32 / none when a
  config has no such key)."""
  model = config.get("model", {}) or {}
  train = config.get("train", {}) or {}
  return dict(dtype=model.get("param_dtype", "float32"),
              compute_dtype=model.get("dtype", "float32"),
              remat=train.get("remat", "none"))


def new_decoder(tokenizer, sizes, seed: int):
  """A freshly initialised built-in `Decoder` for `tokenizer` (its vocabulary
  size and pad / bos / eos ids), of `sizes` (a config's `model` block: the
  `DecoderSizes` and `Precision` keys)."""
  from alignax.framework.config import ModelConfig  # pylint: disable=g-import-not-at-top
  from alignax.framework.model import Decoder  # pylint: disable=g-import-not-at-top
  sizes = sizes.to_dict() if hasattr(sizes, "to_dict") else dict(sizes)
  return Decoder(ModelConfig(
      vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **sizes),
      seed=seed)
