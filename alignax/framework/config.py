"""One configuration dataclass for the Llama / Qwen2 decoder family."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax.numpy as jnp

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")

# Rematerialisation of the decoder layers in training (`jax.checkpoint`
# policies): what the backward pass keeps from the forward pass.
#   none           keep every activation (fastest, most memory)
#   full           keep only each layer's input; recompute the layer
#   dots_saveable  keep matmul outputs, recompute the element-wise ops
#   dots_with_no_batch_dims_saveable  keep the weight matmuls' outputs only
#                  (recompute attention scores)
REMAT_POLICIES = ("none", "full", "dots_saveable",
                  "dots_with_no_batch_dims_saveable")

_DTYPES = {
    "float32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
}


DTYPE_NAMES = tuple(_DTYPES)

# config.json keys that `to_hf_dict` writes in its own spelling (or that
# transformers writes itself), so a source config's copy is not carried over.
_REWRITTEN_HF_KEYS = frozenset({
    "rope_scaling", "rope_parameters", "rope_theta", "torch_dtype", "dtype",
    "transformers_version", "_name_or_path", "architectures", "model_type"})


def as_dtype(dtype: Any) -> jnp.dtype:
  """Accepts a dtype or its name ('bfloat16') and returns the jnp dtype."""
  if isinstance(dtype, str):
    if dtype not in _DTYPES:
      raise ValueError(f"Unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}.")
    return jnp.dtype(_DTYPES[dtype])
  return jnp.dtype(dtype)


_POSITIVE_INT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                        "num_heads", "num_kv_heads", "max_position_embeddings")
# config.json fields without which a decoder is not defined (transformers would
# silently fill in its defaults, e.g. hidden_size=4096).
REQUIRED_HF_FIELDS = ("vocab_size", "hidden_size", "intermediate_size",
                      "num_hidden_layers", "num_attention_heads")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of a decoder-only LM (Llama and Qwen2 are both this).

  Field names follow alignax; `from_hf_dict` / `to_hf_dict` translate the
  transformers `config.json` spelling.

  Dtype policy: `param_dtype` is what parameters are stored in, `dtype` is what
  matmuls run in. Norms, softmax and rotary tables are always float32.
  """

  vocab_size: int = 256
  hidden_size: int = 64
  intermediate_size: int = 128
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int | None = None
  max_position_embeddings: int = 2048
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  # transformers' `rope_scaling` / `rope_parameters` minus rope_theta, e.g.
  # {"rope_type": "llama3", "factor": 8.0, ...}; None means default RoPE.
  rope_scaling: tuple[tuple[str, Any], ...] | None = None
  tie_word_embeddings: bool = False
  qkv_bias: bool = False  # Qwen2: True.
  o_bias: bool = False
  mlp_bias: bool = False
  model_type: str = "llama"
  param_dtype: str = "float32"
  dtype: str = "float32"
  # Attention implementation, a name in `framework.attention.ATTENTION_IMPLS`:
  # "auto" (default: "dot_product", i.e. cuDNN flash attention, on a GPU with
  # bf16/fp16 compute, "dense" otherwise), "dense" (softmax attention in XLA),
  # "dot_product" (`jax.nn.dot_product_attention`), or "block_sparse"
  # (DeltaLLM-style hybrid, see
  # `alignax/framework/sparse_attention.py`). The `sparse_*` fields are read only by
  # "block_sparse"; they are alignax-only and never written to config.json.
  attention_impl: str = "auto"
  sparse_window: int = 1024      # exact causal window, in keys incl. self
  sparse_sinks: int = 4          # first real tokens of each row, always seen
  sparse_top_k: int = 8          # earlier whole key blocks picked per q block
  sparse_block_q: int = 128
  sparse_block_k: int = 128
  # `alignax.kernels.block_sparse_attention` implementation: "auto" picks the
  # Pallas kernel on GPU/TPU and the gathered XLA path on CPU.
  sparse_implementation: str = "auto"
  # Rematerialisation of each decoder layer when no KV cache is used (the
  # training forward): one of `REMAT_POLICIES`. alignax-only, not in
  # config.json; it changes memory and speed, never values.
  remat: str = "none"
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None
  pad_token_id: int | None = None
  # The config.json this was read from (if any): `to_hf_dict` writes its fields
  # that alignax does not use back unchanged (e.g. Qwen2's max_window_layers).
  # Not part of equality or the hash, so it never causes a recompilation.
  hf_source: Mapping[str, Any] | None = dataclasses.field(
      default=None, compare=False, repr=False)

  def __post_init__(self):
    for name in _POSITIVE_INT_FIELDS:
      value = getattr(self, name)
      if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    if self.head_dim is not None and not (isinstance(self.head_dim, int)
                                          and self.head_dim >= 1):
      raise ValueError(f"head_dim must be None or an integer >= 1, got {self.head_dim!r}.")
    if not self.rms_norm_eps > 0 or not self.rope_theta > 0:
      raise ValueError(f"rms_norm_eps ({self.rms_norm_eps}) and rope_theta"
                       f" ({self.rope_theta}) must be > 0.")
    if self.model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(
          f"Unsupported model_type {self.model_type!r}; alignax supports"
          f" {SUPPORTED_MODEL_TYPES}.")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads"
          f" ({self.num_kv_heads}) for grouped-query attention.")
    if self.head_dim is None and self.hidden_size % self.num_heads:
      raise ValueError(
          f"hidden_size ({self.hidden_size}) is not divisible by num_heads"
          f" ({self.num_heads}); set head_dim explicitly.")
    rope_type = self.rope_dict.get("rope_type", "default")
    if rope_type not in SUPPORTED_ROPE_TYPES:
      raise ValueError(
          f"Unsupported rope_type {rope_type!r}; alignax supports"
          f" {SUPPORTED_ROPE_TYPES}.")
    as_dtype(self.param_dtype)
    as_dtype(self.dtype)
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"remat={self.remat!r}; choose one of {REMAT_POLICIES}.")
    if self.attention_impl == "block_sparse":
      if self.sparse_window < 1:
        raise ValueError(f"sparse_window must be >= 1, got {self.sparse_window}.")
      if self.sparse_sinks < 0 or self.sparse_top_k < 0:
        raise ValueError(
            f"sparse_sinks ({self.sparse_sinks}) and sparse_top_k"
            f" ({self.sparse_top_k}) must be >= 0.")
      if self.sparse_block_q < 1 or self.sparse_block_k < 1:
        raise ValueError(
            f"sparse_block_q ({self.sparse_block_q}) and sparse_block_k"
            f" ({self.sparse_block_k}) must be >= 1.")

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.hidden_size // self.num_heads

  @property
  def rope_dict(self) -> dict[str, Any]:
    return dict(self.rope_scaling or ())

  def replace(self, **kwargs) -> "ModelConfig":
    return dataclasses.replace(self, **kwargs)

  # --- transformers config.json translation -------------------------------

  @classmethod
  def from_hf_dict(cls, hf: Mapping[str, Any], **overrides) -> "ModelConfig":
    """Builds a config from a transformers config (dict or PretrainedConfig)."""
    hf = dict(hf.to_dict() if hasattr(hf, "to_dict") else hf)
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(
          f"config.json has model_type={model_type!r}; alignax supports"
          f" {SUPPORTED_MODEL_TYPES} (Llama and Qwen2 causal LMs).")
    if hf.get("use_sliding_window"):
      raise ValueError(
          "config.json sets use_sliding_window=True; sliding-window Qwen2 is"
          " not supported (set it to false if the window exceeds the context).")
    if model_type == "llama" and hf.get("hidden_act", "silu") != "silu":
      raise ValueError(f"config.json hidden_act={hf['hidden_act']!r}; only 'silu'.")
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    rope_theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
    if "type" in rope and "rope_type" not in rope:
      rope["rope_type"] = rope.pop("type")
    rope = {k: v for k, v in rope.items() if v is not None}
    if rope.get("rope_type", "default") == "default":
      rope = {}
    is_qwen2 = model_type == "qwen2"
    eos = hf.get("eos_token_id")
    kwargs = dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim"),
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope_theta),
        rope_scaling=tuple(sorted(rope.items())) or None,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=True if is_qwen2 else bool(hf.get("attention_bias", False)),
        o_bias=False if is_qwen2 else bool(hf.get("attention_bias", False)),
        mlp_bias=False if is_qwen2 else bool(hf.get("mlp_bias", False)),
        model_type=model_type,
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
        pad_token_id=hf.get("pad_token_id"),
        hf_source=hf,
    )
    kwargs.update(overrides)
    return cls(**kwargs)

  @classmethod
  def from_pretrained(cls, path: str, **overrides) -> "ModelConfig":
    """Reads `path/config.json` through `transformers.AutoConfig`.

    Raises one error naming the file for each way it can be wrong: absent, not
    JSON, an unsupported model_type, a required field missing, a field of the
    wrong type or out of range.
    """
    import transformers  # pylint: disable=g-import-not-at-top
    from huggingface_hub import errors as hub_errors  # pylint: disable=g-import-not-at-top

    strict_error = getattr(hub_errors, "StrictDataclassError", ValueError)

    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
      raise FileNotFoundError(
          f"No config.json in {path!r}; expected a directory written by"
          " save_pretrained (config.json, *.safetensors, tokenizer files).")
    try:
      with open(file, encoding="utf-8") as f:
        raw = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
      raise ValueError(f"{file} is not valid JSON ({e}); re-save the model or fix"
                       " the file.") from None
    if not isinstance(raw, dict):
      raise ValueError(f"{file} holds a JSON {type(raw).__name__}, not an object of"
                       " config fields.")
    if raw.get("model_type") not in SUPPORTED_MODEL_TYPES:
      raise ValueError(
          f"{file} has model_type={raw.get('model_type')!r}; alignax supports"
          f" {SUPPORTED_MODEL_TYPES} (Llama and Qwen2 causal LMs).")
    missing = [k for k in REQUIRED_HF_FIELDS if raw.get(k) is None]
    if missing:
      raise ValueError(f"{file} lacks the required field(s) {missing}; a"
                       f" {raw['model_type']} config needs all of {list(REQUIRED_HF_FIELDS)}.")
    try:
      hf = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
      return cls.from_hf_dict(hf, **overrides)
    except (TypeError, ValueError, strict_error) as e:
      # transformers' strict fields and our range checks name the field.
      detail = " ".join(str(e).split())
      raise ValueError(f"{file}: {detail}. Fix the field or re-save the model.") from None

  def to_hf_dict(self) -> dict[str, Any]:
    """The transformers config.json fields for this model.

    Fields of the config.json it was read from that alignax does not model
    (`hf_source`) are kept; the ones it does are written from this config.
    """
    rope = {"rope_type": "default", **self.rope_dict, "rope_theta": self.rope_theta}
    out = {
        "model_type": self.model_type,
        "architectures": [
            "LlamaForCausalLM" if self.model_type == "llama" else "Qwen2ForCausalLM"
        ],
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads,
        "num_key_value_heads": self.num_kv_heads,
        "head_dim": self.dim_per_head,
        "max_position_embeddings": self.max_position_embeddings,
        "rms_norm_eps": self.rms_norm_eps,
        "rope_theta": self.rope_theta,
        "rope_parameters": rope,
        "tie_word_embeddings": self.tie_word_embeddings,
        "hidden_act": "silu",
        "torch_dtype": self.param_dtype,
        "bos_token_id": self.bos_token_id,
        "eos_token_id": (
            list(self.eos_token_id) if isinstance(self.eos_token_id, tuple)
            else self.eos_token_id),
        "pad_token_id": self.pad_token_id,
    }
    if self.model_type == "llama":
      if self.qkv_bias != self.o_bias:
        raise ValueError("Llama's attention_bias covers q/k/v and o together.")
      out["attention_bias"] = self.qkv_bias
      out["mlp_bias"] = self.mlp_bias
    elif self.o_bias or self.mlp_bias or not self.qkv_bias:
      raise ValueError("Qwen2 has q/k/v biases only (qkv_bias=True).")
    kept = {k: v for k, v in (self.hf_source or {}).items() if k not in _REWRITTEN_HF_KEYS}
    return {**kept, **out}
