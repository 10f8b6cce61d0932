"""Hugging Face interop: read and write `save_pretrained` directories.

No torch at run time: config.json goes through transformers' config classes,
weights through safetensors' NumPy API (single file or sharded with an index).

A path ending in `.gguf` (a llama.cpp file) is read too: `from_pretrained`,
`load_tokenizer`, `load_config` and `stop_token_ids` convert it once into a
cached `save_pretrained` folder (`_local_dir`) and read that.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from alignax.framework.config import ModelConfig, as_dtype
from alignax.framework.model import Decoder

_SINGLE = "model.safetensors"
_INDEX = "model.safetensors.index.json"
# Buffers some checkpoints carry that are recomputed from the config.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt",
                    "tokenizer_config.json")
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")


def hf_name(path: tuple) -> tuple[str, bool]:
  """Maps an alignax parameter path to (transformers tensor name, transposed)."""
  parts = [str(p) for p in path]
  if parts == ["embed_tokens"]:
    return "model.embed_tokens.weight", False
  if parts == ["lm_head", "kernel"]:
    return "lm_head.weight", True
  leaf = {"kernel": "weight", "bias": "bias", "scale": "weight"}[parts[-1]]
  prefix = "model." + ".".join(parts[:-1])
  return f"{prefix}.{leaf}", parts[-1] == "kernel"


def _params(model: Decoder) -> Iterator[tuple[tuple, nnx.Variable]]:
  yield from nnx.to_flat_state(nnx.state(model, nnx.Param))


def _safe_open(file: str):
  """`safe_open` with an error that names the file (a truncated or damaged
  file otherwise fails with a bare header error)."""
  if not os.path.isfile(file):
    raise FileNotFoundError(f"Weights file {file!r} is missing; re-download or re-save"
                            " the model.")
  try:
    return safe_open(file, framework="numpy")
  except Exception as e:  # safetensors raises its own SafetensorError
    raise ValueError(
        f"{file} ({os.path.getsize(file)} bytes) is not a readable safetensors file"
        f" ({type(e).__name__}: {e}); it may be truncated or damaged. Re-download or"
        " re-save the model.") from None


class _TensorReader:
  """Reads tensors by name from a single or sharded safetensors checkpoint."""

  def __init__(self, path: str):
    index_path = os.path.join(path, _INDEX)
    if os.path.exists(index_path):
      try:
        with open(index_path, encoding="utf-8") as f:
          weight_map = json.load(f)["weight_map"]
        if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) for v in weight_map.values()):
          raise TypeError("weight_map is not an object of tensor name -> file name")
      except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        detail = "no 'weight_map' key" if isinstance(e, KeyError) else str(e)
        raise ValueError(f"{index_path} is not a valid safetensors index ({detail});"
                         " re-save the model or fix the file.") from None
      self.files = {name: os.path.join(path, fn) for name, fn in weight_map.items()}
      for file in sorted(set(self.files.values())):
        if not os.path.isfile(file):
          raise FileNotFoundError(f"{index_path} lists {os.path.basename(file)!r}, which"
                                  f" is missing from {path!r}.")
    elif os.path.exists(os.path.join(path, _SINGLE)):
      file = os.path.join(path, _SINGLE)
      with _safe_open(file) as f:
        self.files = {name: file for name in f.keys()}
    else:
      raise FileNotFoundError(
          f"No {_SINGLE} or {_INDEX} in {path!r}: expected a directory written"
          " by transformers' save_pretrained (safetensors weights).")
    self._open = {}

  def names(self) -> set[str]:
    return set(self.files)

  def get(self, name: str) -> np.ndarray:
    """The tensor `name`; one error naming tensor and file if it is unreadable
    or holds NaN/inf (loading it would poison every forward pass silently)."""
    file = self.files[name]
    if file not in self._open:
      self._open[file] = _safe_open(file)
    try:
      array = self._open[file].get_tensor(name)
    except Exception as e:  # safetensors raises its own SafetensorError
      raise ValueError(f"Tensor {name!r} in {file} cannot be read ({type(e).__name__}:"
                       f" {e}); the file may be truncated. Re-download or re-save the"
                       " model.") from None
    if array.dtype.kind not in "iub":  # float16/32/64 and ml_dtypes' bfloat16
      bad = ~np.isfinite(array.astype(np.float32))
      if bad.any():
        raise ValueError(
            f"Tensor {name!r} in {file} holds {int(bad.sum())} non-finite value(s)"
            f" (NaN or inf, first at index {tuple(int(i) for i in np.unravel_index(bad.argmax(), bad.shape))});"
            " the checkpoint is damaged or was saved after a diverged update.")
    return array


def _local_dir(path):
  """`path`, or for a `.gguf` file the folder it is converted into: once, under
  `$ALIGNAX_GGUF_CACHE` (default `<tempdir>/alignax-gguf`), keyed by the file's
  path, size and mtime (`alignax.framework.gguf.converted`)."""
  if (isinstance(path, (str, os.PathLike)) and os.fspath(path).lower().endswith(".gguf")
      and not os.path.isdir(path)):
    from alignax.framework import gguf  # pylint: disable=g-import-not-at-top
    return gguf.converted(path)
  return path


def load_config(path: str, **overrides) -> ModelConfig:
  """Reads `path/config.json` into a `ModelConfig` through transformers'
  AutoConfig (one clear error naming the file if it is unusable). `path` may
  be a `.gguf` file."""
  return ModelConfig.from_pretrained(_local_dir(path), **overrides)


def from_pretrained(path: str, *, dtype=jnp.float32, compute_dtype=None,
                    **config_overrides) -> Decoder:
  """Loads a Llama or Qwen2 causal LM written by `save_pretrained`.

  Args:
    path: local directory with config.json and *.safetensors, or a llama /
      qwen2 `.gguf` file (dequantised to float32 once, then cached).
    dtype: parameter dtype.
    compute_dtype: matmul dtype (defaults to `dtype`).
    **config_overrides: other `ModelConfig` fields (e.g. attention_impl).
  """
  path = _local_dir(path)
  dtype = as_dtype(dtype)
  config = load_config(
      path, param_dtype=dtype.name, dtype=as_dtype(compute_dtype or dtype).name,
      **config_overrides)
  model = nnx.eval_shape(lambda: Decoder(config))
  reader = _TensorReader(path)
  used = set()
  for p, var in _params(model):
    name, transpose = hf_name(p)
    if name not in reader.files:
      raise KeyError(
          f"Tensor {name!r} is missing from the checkpoint in {path!r}"
          f" (needed for parameter {'/'.join(map(str, p))}).")
    array = reader.get(name)
    expected = tuple(var.shape[::-1] if transpose else var.shape)
    if tuple(array.shape) != expected:
      raise ValueError(
          f"Tensor {name!r} has shape {tuple(array.shape)} in {path!r}, but"
          f" config.json implies {expected}.")
    array = array.T if transpose else array
    var.set_value(jnp.asarray(array, dtype=dtype))
    used.add(name)
  extra = {n for n in reader.names() - used if not _IGNORED.match(n)}
  if config.tie_word_embeddings:
    extra.discard("lm_head.weight")  # the tied copy some writers keep
  if extra:
    raise ValueError(
        f"The checkpoint in {path!r} has tensors this {config.model_type} config"
        f" does not use: {sorted(extra)[:5]} (of {len(extra)}); check config.json.")
  return model


def save_pretrained(model: Decoder, path: str) -> None:
  """Writes config.json + model.safetensors that transformers loads."""
  import transformers  # transformers' config class writes a config it accepts.

  if jax.tree.leaves(nnx.state(model, nnx.LoRAParam)):
    raise ValueError(
        "save_pretrained got a model with LoRA adapters: save"
        " alignax.framework.lora.merge(model) (adapters folded in) or the adapters"
        " alone with lora.save_peft.")
  os.makedirs(path, exist_ok=True)
  hf = model.config.to_hf_dict()
  model_type = hf.pop("model_type")
  transformers.AutoConfig.for_model(model_type, **hf).save_pretrained(path)
  tensors = {}
  for p, var in _params(model):
    name, transpose = hf_name(p)
    array = np.asarray(jax.device_get(var[...]))
    tensors[name] = np.ascontiguousarray(array.T if transpose else array)
  tmp = os.path.join(path, _SINGLE + ".tmp")
  save_file(tensors, tmp, metadata={"format": "pt"})
  os.replace(tmp, os.path.join(path, _SINGLE))


def load_tokenizer(path: str, config: ModelConfig | None = None):
  """`transformers.AutoTokenizer` for `path` (a folder or a `.gguf` file),
  checked against the model's vocab."""
  import transformers

  path = _local_dir(path)
  present = [f for f in _TOKENIZER_FILES if os.path.isfile(os.path.join(path, f))]
  if not any(f in present for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
    raise FileNotFoundError(
        f"No tokenizer files in {path!r} (found none of tokenizer.json,"
        " tokenizer.model, vocab.json). Save the tokenizer next to the weights:"
        " tokenizer.save_pretrained(path).")
  try:
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
  except Exception as e:  # tokenizers/transformers raise many types here
    raise ValueError(f"The tokenizer in {path!r} (files {present}) cannot be loaded"
                     f" ({type(e).__name__}: {' '.join(str(e).split())[:300]}).") from None
  config = config or load_config(path)
  if len(tokenizer) > config.vocab_size:
    raise ValueError(
        f"The tokenizer in {path!r} has {len(tokenizer)} tokens but config.json"
        f" vocab_size is {config.vocab_size}: token ids would index past the"
        " embedding. Use the tokenizer the model was trained with.")
  return tokenizer


_GENERATION_CONFIG = "generation_config.json"


def stop_token_ids(path: str | None, tokenizer=None, config: ModelConfig | None = None
                  ) -> tuple[int, ...]:
  """Every id that ends a completion, as transformers' `generate` stops.

  The tokenizer's EOS, the model config's `eos_token_id` and every
  `eos_token_id` of `path/generation_config.json` (Llama 3 lists several, e.g.
  `<|end_of_text|>`, `<|eom_id|>`, `<|eot_id|>`). `path` may be a `.gguf` file.
  """
  path = _local_dir(path)
  ids = []
  if tokenizer is not None and tokenizer.eos_token_id is not None:
    ids.append(tokenizer.eos_token_id)
  sources = [config.eos_token_id if config is not None else None]
  if path and os.path.exists(os.path.join(path, _GENERATION_CONFIG)):
    with open(os.path.join(path, _GENERATION_CONFIG)) as f:
      sources.append(json.load(f).get("eos_token_id"))
  for eos in sources:
    if eos is not None:
      ids.extend(eos if isinstance(eos, (list, tuple)) else [eos])
  return tuple(sorted({int(i) for i in ids}))


def pad_token_id(tokenizer, stop_ids: Sequence[int] = ()) -> int:
  """The tokenizer's pad id, else its first stop id, else 0.

  Llama 3 and Qwen2.5 base tokenizers may have no pad token; padded positions
  are masked out everywhere, so any in-vocabulary id works.
  """
  if tokenizer.pad_token_id is not None:
    return int(tokenizer.pad_token_id)
  return int(stop_ids[0]) if stop_ids else 0


def export_pretrained(model: Decoder, path: str, *, tokenizer=None, source: str | None = None,
                      stop_ids: Sequence[int] = ()) -> str:
  """Writes a complete Hugging Face model directory: weights, config, tokenizer
  (with its chat template) and generation config.

  The generation config is `source`'s `generation_config.json` if it has one,
  else one with `stop_ids` as `eos_token_id`. The directory is written under a
  temporary name and renamed, so `path` is never half written.

  Args:
    model: the `Decoder` to save.
    path: output directory (replaced if it exists).
    tokenizer: saved with `save_pretrained` (optional).
    source: the model directory training started from (optional).
    stop_ids: ids that end a completion (see `stop_token_ids`).
  Returns:
    `path`.
  """
  import transformers

  tmp = path.rstrip(os.sep) + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  save_pretrained(model, tmp)
  if tokenizer is not None:
    tokenizer.save_pretrained(tmp)
  if source and os.path.exists(os.path.join(source, _GENERATION_CONFIG)):
    shutil.copy(os.path.join(source, _GENERATION_CONFIG), tmp)
  else:
    eos = list(stop_ids) or model.config.eos_token_id
    transformers.GenerationConfig(
        bos_token_id=model.config.bos_token_id,
        eos_token_id=eos[0] if isinstance(eos, list) and len(eos) == 1 else eos,
        pad_token_id=(tokenizer.pad_token_id if tokenizer is not None
                      else model.config.pad_token_id)).save_pretrained(tmp)
  shutil.rmtree(path, ignore_errors=True)
  os.replace(tmp, path)
  return path
