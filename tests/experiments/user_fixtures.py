"""Tiny random Qwen2.5- and Llama-3.2-shaped model directories with real
tokenizers (built offline with `tokenizers`, saved via
`transformers.PreTrainedTokenizerFast`), and prompt files in the real layouts."""
import json
import os

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

# The ChatML template Qwen2.5 ships (minus tool calls).
CHATML = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
# Llama 3's header format.
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")

_CORPUS = ["You are a helpful assistant.", "What is 12+7? Answer: 19", "#### 42",
           "<think>add</think> \\boxed{19}", "question answer user system"] * 20


def _bytelevel_tokenizer(specials, **token_kwargs):
  """A byte-level BPE (the kind Qwen2.5 and Llama 3 use), trained on a tiny corpus."""
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=list(specials),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(_CORPUS, trainer=trainer)
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok,
                                              additional_special_tokens=list(specials),
                                              **token_kwargs)


def _random_model(config_kwargs, path, seed):
  model_type = config_kwargs.pop("model_type")
  config = transformers.AutoConfig.for_model(model_type, **config_kwargs)
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config).eval()
  with torch.no_grad():  # random biases and norms, and logits large enough to matter
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(str(path))
  return model


def make_qwen25_dir(path, seed=0):
  """Qwen2.5-shaped: tied embeddings, qkv bias, rope_theta 1e6, no BOS, ChatML."""
  specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
  tok = _bytelevel_tokenizer(specials, pad_token="<|endoftext|>", eos_token="<|im_end|>")
  tok.chat_template = CHATML
  assert tok.bos_token_id is None
  _random_model(dict(
      model_type="qwen2", vocab_size=320, hidden_size=32, intermediate_size=64,
      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
      max_position_embeddings=256, tie_word_embeddings=True, rope_theta=1e6,
      max_window_layers=1, use_sliding_window=False, bos_token_id=None,
      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id), path, seed)
  tok.save_pretrained(str(path))
  transformers.GenerationConfig(eos_token_id=[tok.eos_token_id, tok.pad_token_id],
                                pad_token_id=tok.pad_token_id).save_pretrained(str(path))
  return str(path)


def make_llama32_dir(path, seed=0):
  """Llama-3.2-shaped: llama3 rope scaling, BOS, no pad token, three EOS ids in
  generation_config.json."""
  specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
              "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>"]
  tok = _bytelevel_tokenizer(specials, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
  tok.chat_template = LLAMA3_TEMPLATE
  assert tok.pad_token_id is None
  ids = tok.convert_tokens_to_ids
  eos = [ids("<|end_of_text|>"), ids("<|eom_id|>"), ids("<|eot_id|>")]
  _random_model(dict(
      model_type="llama", vocab_size=320, hidden_size=32, intermediate_size=64,
      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
      max_position_embeddings=256, tie_word_embeddings=True, rope_theta=5e5,
      rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
      bos_token_id=tok.bos_token_id, eos_token_id=eos), path, seed)
  tok.save_pretrained(str(path))
  transformers.GenerationConfig(bos_token_id=tok.bos_token_id,
                                eos_token_id=eos).save_pretrained(str(path))
  return str(path)


def arithmetic_rows(n, seed=0):
  rng = np.random.RandomState(seed)
  out = []
  for _ in range(n):
    a, b = (int(x) for x in rng.randint(0, 50, 2))
    out.append({"question": f"{a}+{b}=?", "value": str(a + b), "level": int(a > 25)})
  return out


def write_jsonl(path, rows):
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  return str(path)


CUSTOM_REWARD = '''
def short_and_numeric(prompts, completions, completion_ids, ground_truth, level, **kwargs):
  """A user reward: numeric completions score, shorter is better; None on level 1."""
  out = []
  for c, ids, lvl in zip(completions, completion_ids, level):
    text = c if isinstance(c, str) else c[0]["content"]
    out.append(None if lvl == 1 else float(any(ch.isdigit() for ch in text)) - 0.01 * len(ids))
  return out
'''


def write_reward_file(folder):
  path = os.path.join(str(folder), "my_rewards.py")
  with open(path, "w") as f:
    f.write(CUSTOM_REWARD)
  return path
