"""Agent markers in a pretrained model's vocabulary (EXSEARCH, DRO, MOAT).

The agents act on marker tokens (`<SEARCH>`, `<DOC>`, `<FINAL>`, DRO's `[i]`
candidate ids, MOAT's action names ...). With a pretrained checkpoint they
are **added to the tokenizer as special tokens** (never split, one id each,
dropped by `decode(..., skip_special_tokens=True)`), and the embedding and LM
head grow by one row per new token, initialised to the mean of the existing
rows (so the new tokens start as an "average" token instead of noise that can
dominate the logits). The grown model and tokenizer are saved together, so
the exported `final_*` folders load in `transformers` as they are. The task
text itself (question, passages) goes through the tokenizer's own vocabulary
and, when it has one, its chat template (`prompt_ids`); see docs/api.md.
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
from flax import nnx

from alignax.framework.model import Decoder


def add_marker_tokens(model: Decoder, tokenizer, markers: Sequence[str]
                      ) -> tuple[Decoder, int]:
  """Adds `markers` missing from `tokenizer` as special tokens and grows `model`.

  The tokenizer is changed in place. New embedding (and, when untied, LM-head)
  rows are the mean of the old rows; every other parameter is kept bit for bit.
  Rows are added only past the model's `vocab_size` (checkpoints often pad it
  beyond the tokenizer, and those spare rows are used first).

  Args:
    model: the pretrained `Decoder`.
    tokenizer: its `transformers` tokenizer.
    markers: token strings the agent writes or reads as single ids.
  Returns:
    (the model, grown if needed; the number of tokens added to the tokenizer).
  """
  vocab = tokenizer.get_vocab()
  new = [m for m in dict.fromkeys(markers) if m not in vocab]
  if new:
    tokenizer.add_tokens(new, special_tokens=True)
  size = max(len(tokenizer), model.config.vocab_size)
  if size == model.config.vocab_size:
    return model, len(new)
  extra = size - model.config.vocab_size
  grown = nnx.eval_shape(lambda: Decoder(model.config.replace(vocab_size=size)))
  state = nnx.state(model, nnx.Param)
  embed = state["embed_tokens"][...]
  mean = jnp.mean(embed.astype(jnp.float32), axis=0, keepdims=True).astype(embed.dtype)
  state["embed_tokens"].set_value(jnp.concatenate([embed, jnp.repeat(mean, extra, 0)], 0))
  if model.lm_head is not None:  # kernel [H, V]: new columns
    kernel = state["lm_head"]["kernel"][...]
    mean = jnp.mean(kernel.astype(jnp.float32), axis=1, keepdims=True).astype(kernel.dtype)
    state["lm_head"]["kernel"].set_value(
        jnp.concatenate([kernel, jnp.repeat(mean, extra, 1)], 1))
  nnx.update(grown, state)
  return grown, len(new)


def prompt_ids(tokenizer, text: str) -> list[int]:
  """The ids that start an agent's trajectory for the user message `text`.

  Through the tokenizer's chat template (one user turn and the assistant
  header) when it has one; else BOS (if the tokenizer has one) + the text.
  The built-in word-level tokenizer has no template: `<s> text`.
  """
  if getattr(tokenizer, "chat_template", None):
    out = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                        add_generation_prompt=True, tokenize=True)
    if isinstance(out, dict) or hasattr(out, "keys"):  # BatchEncoding in new versions
      out = out["input_ids"]
    return list(out)
  return bos_ids(tokenizer) + tokenizer.encode(text, add_special_tokens=False)


def bos_ids(tokenizer) -> list[int]:
  """[BOS] for a tokenizer that has one (Llama), [] for one without (Qwen2.5)."""
  return [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
