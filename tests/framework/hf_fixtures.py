"""Tiny random transformers models written with save_pretrained, for parity tests."""
import numpy as np
import torch
import transformers

LLAMA_GQA = dict(
    model_type="llama", vocab_size=97, hidden_size=64, intermediate_size=96,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=128, rms_norm_eps=1e-5)
QWEN2_TIED = dict(
    model_type="qwen2", vocab_size=89, hidden_size=48, intermediate_size=80,
    num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
    max_position_embeddings=128, tie_word_embeddings=True, rope_theta=1e6)
LLAMA3_ROPE = dict(
    LLAMA_GQA, num_key_value_heads=1,
    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
LLAMA_LINEAR_ROPE = dict(
    LLAMA_GQA, attention_bias=True, rope_scaling={"rope_type": "linear", "factor": 4.0})

CONFIGS = {"llama_gqa": LLAMA_GQA, "qwen2_tied": QWEN2_TIED,
           "llama3_rope": LLAMA3_ROPE, "llama_linear_rope_bias": LLAMA_LINEAR_ROPE}


def make_hf_model(kind: str, path, seed: int = 0):
  """Creates, randomises (biases included) and saves a tiny HF causal LM."""
  kwargs = dict(CONFIGS[kind])
  model_type = kwargs.pop("model_type")
  config = transformers.AutoConfig.for_model(model_type, **kwargs)
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config).eval()
  with torch.no_grad():  # HF inits biases and norms to constants; make them random.
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(str(path))
  return model


def left_padded_batch(vocab: int, lengths, seed: int = 0):
  """ids int [B, T], mask int [B, T] with the given real lengths, left padded."""
  rng = np.random.RandomState(seed)
  t = max(lengths)
  ids = rng.randint(0, vocab, (len(lengths), t))
  mask = np.zeros((len(lengths), t), np.int64)
  for i, n in enumerate(lengths):
    mask[i, t - n:] = 1
  ids = np.where(mask == 1, ids, 0)
  return ids, mask


def hf_logits(model, ids, mask):
  """transformers logits with positions from the mask (as its generate does)."""
  pos = np.where(mask == 1, np.cumsum(mask, -1) - 1, 0)
  with torch.no_grad():
    out = model(torch.tensor(ids), attention_mask=torch.tensor(mask),
                position_ids=torch.tensor(pos))
  return out.logits.float().numpy()
