"""GGUF (llama.cpp) checkpoints as Hugging Face `save_pretrained` folders.

A GGUF file holds the weights (F32 or block-quantised), the model's
hyper-parameters and its tokenizer (vocabulary, merges, special ids, chat
template) as metadata. `gguf_to_hf` dequantises every tensor to float32 under
transformers' names and writes a folder `alignax.framework.hf.from_pretrained`
and `hf.load_tokenizer` read like any other:

  config.json              LlamaConfig / Qwen2Config fields, no quantization_config
  model.safetensors        float32 (safetensors' NumPy API; shards past 4 GiB)
  tokenizer.json, tokenizer_config.json, chat_template.jinja
  generation_config.json   bos / eos / pad ids of the GGUF
  alignax_gguf.json        where it came from (a complete conversion has it)

The float32 weights are exactly the values the quantised blocks encode
(`gguf.quants.dequantize`, as transformers' GGUF loader uses), so the converted
model matches `AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` to
float rounding. llama.cpp's permutation of the q_proj / k_proj rows is undone.

Needs the `gguf` package (`pip install 'alignax[real]'`), not torch.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from typing import Any, Iterator

import numpy as np
from safetensors.numpy import save_file

from alignax.framework import hf

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
# Written last into a converted folder; its presence means the folder is complete.
MARKER = "alignax_gguf.json"
_FORMAT_VERSION = 1
_MAGIC = b"GGUF"
_CACHE_ENV = "ALIGNAX_GGUF_CACHE"
_SHARD_BYTES = 4 << 30  # model.safetensors is sharded past this many bytes
# hf.py's file names, so both sides agree.
_SINGLE, _INDEX = hf._SINGLE, hf._INDEX  # pylint: disable=protected-access
_GENERATION_CONFIG = hf._GENERATION_CONFIG  # pylint: disable=protected-access

# GGUF tensor name (within `blk.N.`) -> transformers name (within `model.layers.N.`).
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")
_GLOBAL_RE = re.compile(r"^(\w+)\.(weight|bias)$")
# tokenizer.ggml.* special-token keys -> transformers tokenizer attribute.
_SPECIAL_TOKENS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id",
                   "unk_token": "unknown_token_id", "pad_token": "padding_token_id"}


def _gguf_module():
  try:
    import gguf  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError("Reading GGUF files needs the `gguf` package: pip install"
                      " 'gguf>=0.10,<1' (or alignax[real]).") from None
  return gguf


def _open(path: str):
  """`gguf.GGUFReader` for `path`, with one error naming the file for each way
  it can be unusable (missing, not GGUF, truncated)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"GGUF file {path!r} does not exist.")
  with open(path, "rb") as f:
    head = f.read(4)
  if head != _MAGIC:
    raise ValueError(f"{path} is not a GGUF file: it starts with {head!r}, not"
                     f" {_MAGIC!r} (a llama.cpp .gguf model file).")
  gguf = _gguf_module()
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # gguf raises ValueError, IndexError, KeyError, ...
    raise ValueError(f"{path} ({os.path.getsize(path)} bytes) is not a readable GGUF"
                     f" file ({type(e).__name__}: {e}); it may be truncated or damaged."
                     " Re-download it.") from None


def _field_value(field) -> Any:
  """One metadata value as Python data: str, int, float, bool or a list."""
  gguf = _gguf_module()
  vtype = gguf.GGUFValueType

  def scalar(part, kind):
    if kind == vtype.STRING:
      return bytes(part).decode("utf-8")
    value = part[0].item()
    return bool(value) if kind == vtype.BOOL else value

  kind = field.types[0]
  if kind == vtype.ARRAY:
    return [scalar(field.parts[i], field.types[-1]) for i in field.data]
  return scalar(field.parts[field.data[0]], kind)


def read_metadata(reader) -> dict[str, Any]:
  """Every metadata key of an open `gguf.GGUFReader` as Python values."""
  return {key: _field_value(field) for key, field in reader.fields.items()
          if not key.startswith("GGUF.")}


def _float32_literal(x: float) -> float:
  """The shortest decimal of a float32 (GGUF stores 1e-5 as 9.9999997e-06)."""
  return float(str(np.float32(x)))


def hf_config(metadata: dict[str, Any], shapes: dict[str, tuple[int, ...]],
              path: str) -> dict[str, Any]:
  """transformers config fields (LlamaConfig / Qwen2Config) from GGUF metadata.

  Args:
    metadata: `read_metadata` of the file.
    shapes: {GGUF tensor name: NumPy shape} (tied embeddings = no
      `output.weight`; the vocabulary is `token_embd.weight`'s rows).
    path: the file, for error messages.
  Returns:
    A dict with `model_type` and the config fields; no `quantization_config`
    (the weights are written dequantised).
  """
  arch = metadata.get("general.architecture")
  if arch not in SUPPORTED_ARCHITECTURES:
    raise ValueError(f"{path} holds a {arch!r} model; alignax converts GGUF"
                     f" architectures {SUPPORTED_ARCHITECTURES}.")
  if "rope_freqs.weight" in shapes:
    raise ValueError(f"{path} has per-frequency RoPE factors (rope_freqs.weight, Llama"
                     " 3.1 style); converting them to rope_scaling is not supported.")

  def get(key, default=None, required=False):
    full = f"{arch}.{key}"
    if required and full not in metadata:
      raise ValueError(f"{path} has no {full!r} metadata; it is not a complete {arch}"
                       " GGUF file.")
    return metadata.get(full, default)

  heads = get("attention.head_count", required=True)
  hidden = get("embedding_length", required=True)
  if "token_embd.weight" not in shapes:
    raise ValueError(f"{path} has no token_embd.weight tensor; it is not a complete"
                     f" {arch} GGUF file.")
  vocab = shapes["token_embd.weight"][0]
  config = dict(
      model_type=arch,
      architectures=["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"],
      vocab_size=int(vocab),
      hidden_size=int(hidden),
      intermediate_size=int(get("feed_forward_length", required=True)),
      num_hidden_layers=int(get("block_count", required=True)),
      num_attention_heads=int(heads),
      num_key_value_heads=int(get("attention.head_count_kv", heads)),
      max_position_embeddings=int(get("context_length", 2048)),
      rms_norm_eps=_float32_literal(get("attention.layer_norm_rms_epsilon", 1e-6)),
      rope_theta=_float32_literal(get("rope.freq_base", 10000.0)),
      tie_word_embeddings="output.weight" not in shapes,
      hidden_act="silu",
      dtype="float32",
  )
  head_dim = get("attention.key_length") or (
      get("rope.dimension_count") if arch == "llama" else None)
  if head_dim and head_dim != hidden // heads:
    config["head_dim"] = int(head_dim)
  if arch == "llama":
    config.update(attention_bias="blk.0.attn_q.bias" in shapes,
                  mlp_bias="blk.0.ffn_up.bias" in shapes)
  else:
    config.update(use_sliding_window=False)
  scaling = get("rope.scaling.type")
  if scaling not in (None, "none"):
    if scaling != "linear":
      raise ValueError(f"{path} uses RoPE scaling {scaling!r}; only 'linear' is"
                       " supported.")
    config["rope_scaling"] = {"rope_type": "linear",
                              "factor": _float32_literal(get("rope.scaling.factor", 1.0))}
  for key, name in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                    ("pad_token_id", "padding_token_id")):
    if f"tokenizer.ggml.{name}" in metadata:
      config[key] = int(metadata[f"tokenizer.ggml.{name}"])
  return config


def _hf_tensor_name(gguf_name: str) -> str | None:
  """transformers' name for a GGUF tensor name (None if it has none)."""
  m = _LAYER_RE.match(gguf_name)
  if m and m.group(2) in _LAYER_NAMES:
    return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{m.group(3)}"
  m = _GLOBAL_RE.match(gguf_name)
  if m and m.group(1) in _GLOBAL_NAMES:
    return f"{_GLOBAL_NAMES[m.group(1)]}.{m.group(2)}"
  return None


def unpermute_rotary(weight: np.ndarray, num_heads: int) -> np.ndarray:
  """Undoes llama.cpp's q_proj / k_proj row permutation.

  llama.cpp's converter (`LlamaModel.permute`) reorders each head's rows from
  transformers' rotate-half layout [x_0..x_{d/2-1}, y_0..y_{d/2-1}] to
  interleaved pairs [x_0, y_0, x_1, y_1, ...]; this is its inverse, as
  transformers' `LlamaTensorProcessor._reverse_permute_weights`.

  Args:
    weight: [num_heads * head_dim, in] weight or [num_heads * head_dim] bias.
    num_heads: query heads for q_proj, key/value heads for k_proj.
  Returns:
    The array in transformers' layout, same shape.
  """
  half = weight.shape[0] // num_heads // 2
  w = weight.reshape(num_heads, half, 2, *weight.shape[1:])
  return w.swapaxes(1, 2).reshape(weight.shape)


def hf_tensors(reader, config: dict[str, Any], path: str) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (transformers name, float32 array) for every tensor of the file.

  Shapes are transformers': `model.embed_tokens.weight` [vocab, hidden],
  projections [out, in] (q_proj [heads * head_dim, hidden], ...), norms
  [hidden]. llama q_proj / k_proj rows are un-permuted (`unpermute_rotary`).
  """
  _check_tensors(reader, config, path)
  quants = _gguf_module().quants
  for tensor in reader.tensors:
    name = _hf_tensor_name(tensor.name)
    array = quants.dequantize(tensor.data, tensor.tensor_type)
    # A copy (F32 tensors are views of the memory-mapped file), in NumPy shape.
    array = np.array(array, np.float32).reshape(_shape(tensor))
    if config["model_type"] == "llama" and ".attn_q." in tensor.name:
      array = unpermute_rotary(array, config["num_attention_heads"])
    elif config["model_type"] == "llama" and ".attn_k." in tensor.name:
      array = unpermute_rotary(array, config["num_key_value_heads"])
    yield name, np.ascontiguousarray(array)


def _check_tensors(reader, config: dict[str, Any], path: str) -> None:
  """Fails before any work if a tensor has no transformers name or a storage
  type `gguf` cannot dequantise (tried on one row)."""
  quants = _gguf_module().quants
  for tensor in reader.tensors:
    if _hf_tensor_name(tensor.name) is None:
      raise ValueError(f"{path} holds tensor {tensor.name!r}, which a"
                       f" {config['model_type']} decoder does not have (unsupported"
                       " layout, e.g. mixture-of-experts).")
    try:
      quants.dequantize(tensor.data[:1], tensor.tensor_type)
    except NotImplementedError:
      kind = tensor.tensor_type
      raise ValueError(f"{path}: tensor {tensor.name!r} is stored as {kind.name}, a type"
                       " the installed `gguf` package cannot dequantise; convert the"
                       " model with another quantisation (F16, Q8_0, Q4_K, ...).") from None


def _shape(tensor) -> tuple[int, ...]:
  """A GGUF tensor's NumPy shape (ggml lists dimensions fastest first)."""
  return tuple(int(d) for d in reversed(tensor.shape))


def read_gguf(gguf_path: str) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:
  """Reads a llama / qwen2 GGUF file into transformers-named float32 arrays
  (all in memory: 4 bytes per parameter; `gguf_to_hf` streams instead).

  Args:
    gguf_path: the .gguf file.
  Returns:
    (config, tensors, metadata): the transformers config dict (`hf_config`),
    {transformers name: float32 array} (`hf_tensors`; `lm_head.weight` only if
    the embeddings are untied) and the raw GGUF metadata.
  """
  gguf_path = os.fspath(gguf_path)
  reader = _open(gguf_path)
  metadata = read_metadata(reader)
  config = hf_config(metadata, {t.name: _shape(t) for t in reader.tensors}, gguf_path)
  tensors = dict(hf_tensors(reader, config, gguf_path))
  return config, tensors, metadata


def build_tokenizer(metadata: dict[str, Any], path: str):
  """The tokenizer a GGUF file describes, without torch.

  `AutoTokenizer.from_pretrained(dir, gguf_file=...)` builds the same tokenizer
  (same tokenizer.json) but, in transformers 5.25, imports torch to read the
  file; this feeds the metadata `read_metadata` already parsed to
  transformers' own torch-free GGUF tokenizer builder. A transformers without
  that builder falls back to `AutoTokenizer` (which may need torch).
  """
  import transformers  # pylint: disable=g-import-not-at-top
  try:
    # pylint: disable-next=g-import-not-at-top
    from transformers.integrations.gguf import gguf_tokenizer_mapping as mapping
  except ImportError:
    return transformers.AutoTokenizer.from_pretrained(
        os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path))

  grouped = {
      group: {name: metadata[f"tokenizer.{key}"] for key, name in renames.items()
              if f"tokenizer.{key}" in metadata}
      for group, renames in mapping.GGUF_TOKENIZER_MAPPING.items()}
  tokenizer_dict, tokenizer_config = grouped["tokenizer"], grouped["tokenizer_config"]
  if "tokens" not in tokenizer_dict:
    raise ValueError(f"{path} has no tokenizer (no tokenizer.ggml.tokens metadata).")
  if tokenizer_dict.get("tokenizer_type") == "llama":
    tokenizer_config.setdefault("add_bos_token", True)  # llama.cpp's default for SPM
  tokens = tokenizer_dict["tokens"]
  for attribute, key in _SPECIAL_TOKENS.items():
    token_id = metadata.get(f"tokenizer.ggml.{key}")
    tokenizer_config[attribute] = tokens[token_id] if token_id is not None else None
  try:
    backend, extra = mapping.convert_gguf_tokenizer(
        metadata["general.architecture"], tokenizer_dict)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None
  return transformers.TokenizersBackend(tokenizer_object=backend, **tokenizer_config,
                                        **extra)


def stop_ids(metadata: dict[str, Any], tokenizer) -> list[int]:
  """Ids that end a completion: the GGUF's eos / eot / eom ids, and the chat
  template's end-of-turn token (e.g. `<|im_end|>`) if the template writes it."""
  ids = [metadata[f"tokenizer.ggml.{k}"] for k in ("eos_token_id", "eot_token_id",
                                                   "eom_token_id")
         if f"tokenizer.ggml.{k}" in metadata]
  template = metadata.get("tokenizer.chat_template") or ""
  for token in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token in template and token_id is not None and token_id != tokenizer.unk_token_id:
      ids.append(token_id)
  return list(dict.fromkeys(int(i) for i in ids))


def _source_record(gguf_path: str) -> dict[str, Any]:
  stat = os.stat(gguf_path)
  return {"format": _FORMAT_VERSION, "source": os.path.abspath(gguf_path),
          "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def is_converted(out_dir: str) -> bool:
  """Whether `out_dir` holds a complete `gguf_to_hf` conversion (its marker is
  written last, and the folder appears whole by a rename)."""
  return all(os.path.isfile(os.path.join(out_dir, f)) for f in (
      MARKER, "config.json", "tokenizer.json", _GENERATION_CONFIG))


def _save_weights(tensors: Iterator[tuple[str, np.ndarray]], folder: str) -> None:
  """Writes float32 tensors as `save_pretrained` does: one model.safetensors,
  or shards of at most `_SHARD_BYTES` with model.safetensors.index.json. Holds
  one shard in memory at a time."""
  files, shard, size = [], {}, 0

  def flush():
    files.append((os.path.join(folder, f".shard-{len(files)}"), list(shard)))
    save_file(shard, files[-1][0], metadata={"format": "pt"})

  for name, array in tensors:
    if shard and size + array.nbytes > _SHARD_BYTES:
      flush()
      shard, size = {}, 0
    shard[name] = array
    size += array.nbytes
  flush()
  if len(files) == 1:
    os.replace(files[0][0], os.path.join(folder, _SINGLE))
    return
  weight_map, total = {}, 0
  for i, (tmp, names) in enumerate(files):
    final = f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
    total += os.path.getsize(tmp)
    os.replace(tmp, os.path.join(folder, final))
    weight_map.update({name: final for name in names})
  with open(os.path.join(folder, _INDEX), "w", encoding="utf-8") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def gguf_to_hf(gguf_path: str, out_dir: str) -> str:
  """Converts a llama / qwen2 GGUF file into a `save_pretrained` folder.

  Weights are dequantised to float32 (a Q4 135M model becomes ~0.5 GB),
  streamed into model.safetensors (shards past 4 GiB). The folder is written
  under a temporary name beside `out_dir` and renamed, so `out_dir` is never
  half written; an existing `out_dir` is replaced.

  Args:
    gguf_path: the .gguf file.
    out_dir: the folder to write.
  Returns:
    `out_dir`.
  Raises:
    FileNotFoundError: `gguf_path` does not exist.
    ValueError: not a (readable) GGUF file, an unsupported architecture,
      tensor layout or quantisation type; each message names the file.
  """
  import transformers  # pylint: disable=g-import-not-at-top

  gguf_path, out_dir = os.fspath(gguf_path), os.fspath(out_dir).rstrip(os.sep)
  reader = _open(gguf_path)
  metadata = read_metadata(reader)
  config = hf_config(metadata, {t.name: _shape(t) for t in reader.tensors}, gguf_path)
  _check_tensors(reader, config, gguf_path)
  tokenizer = build_tokenizer(metadata, gguf_path)
  if len(tokenizer) > config["vocab_size"]:
    raise ValueError(f"{gguf_path}: the tokenizer has {len(tokenizer)} tokens but the"
                     f" model's vocabulary is {config['vocab_size']}.")
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
  umask = os.umask(0)
  os.umask(umask)
  try:
    hf_fields = dict(config)
    model_type = hf_fields.pop("model_type")
    transformers.AutoConfig.for_model(model_type, **hf_fields).save_pretrained(tmp)
    _save_weights(hf_tensors(reader, config, gguf_path), tmp)
    tokenizer.save_pretrained(tmp)
    eos = stop_ids(metadata, tokenizer)
    transformers.GenerationConfig(
        bos_token_id=config.get("bos_token_id"),
        eos_token_id=eos[0] if len(eos) == 1 else eos or None,
        pad_token_id=config.get("pad_token_id")).save_pretrained(tmp)
    with open(os.path.join(tmp, MARKER), "w", encoding="utf-8") as f:
      json.dump(_source_record(gguf_path), f, indent=2)
    for name in os.listdir(tmp):  # mkdtemp / safetensors create them private
      os.chmod(os.path.join(tmp, name), 0o666 & ~umask)
    os.chmod(tmp, 0o777 & ~umask)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out_dir


def cache_dir(gguf_path: str) -> str:
  """Where `converted` keeps the conversion of `gguf_path`.

  `$ALIGNAX_GGUF_CACHE` (default: `<tempdir>/alignax-gguf`) / `<stem>-<key>`,
  the key hashing the file's absolute path, size and mtime: a changed or
  replaced file gets a fresh conversion.
  """
  record = _source_record(gguf_path)
  key = hashlib.sha1(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
  root = os.environ.get(_CACHE_ENV) or os.path.join(tempfile.gettempdir(), "alignax-gguf")
  stem = os.path.splitext(os.path.basename(gguf_path))[0]
  return os.path.join(root, f"{stem}-{key}")


def converted(gguf_path: str) -> str:
  """The `save_pretrained` folder of `gguf_path`, converting it on first use
  (see `cache_dir`); later calls reuse it."""
  gguf_path = os.fspath(gguf_path)
  if not os.path.isfile(gguf_path):
    raise FileNotFoundError(f"GGUF file {gguf_path!r} does not exist.")
  out_dir = cache_dir(gguf_path)
  if not is_converted(out_dir):
    try:
      gguf_to_hf(gguf_path, out_dir)
    except OSError:
      if not is_converted(out_dir):  # else another process renamed its copy first
        raise
  return out_dir
