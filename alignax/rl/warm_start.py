"""The supervised warm start before RL on a built-in task (`agents.data.tasks`):
a few SFT steps on demonstrations, a share of them flawed, so that the policy
starts with a non-zero reward that RL can then improve.

Not imported by `alignax.rl` itself (it reads `alignax.agents`, which imports
`alignax.rl.batch`).
"""
from __future__ import annotations

import numpy as np
import tqdm
from flax import nnx

from alignax.agents.data import prompt_data, tasks
from alignax.framework import sampling, train


def _pad_right(rows, length, pad):
  ids = np.full((len(rows), length), pad, np.int32)
  mask = np.zeros((len(rows), length), bool)
  for i, r in enumerate(rows):
    if len(r) > length:
      raise ValueError(f"Answer of {len(r)} tokens exceeds max_new_tokens={length}.")
    ids[i, :len(r)], mask[i, :len(r)] = r, True
  return ids, mask


def sft_batch(tokenizer, problems, max_new_tokens):
  """Teacher-forcing batch (prompt left-padded, answer + eos right-padded); the
  prompts are encoded as the RL data are (`prompt_data.PromptEncoder`)."""
  prompts = prompt_data.PromptEncoder(tokenizer).encode([p.prompt for p in problems])
  p_len = sampling.bucket_length(max(map(len, prompts)), 1 << 30)
  p_ids, p_mask = sampling.pad_prompts(prompts, p_len, tokenizer.pad_token_id)
  c_ids, c_mask = _pad_right(tasks.encode_answers(tokenizer, problems),
                             max_new_tokens, tokenizer.pad_token_id)
  return dict(sequences=np.concatenate([p_ids, c_ids], 1),
              attention_mask=np.concatenate([p_mask, c_mask], 1),
              completion_tokens=c_ids, completion_mask=c_mask)


def demonstrations(task, index, count, flawed_fraction):
  """Warm-start demonstrations, a `flawed_fraction` of them written by a flawed
  demonstrator (`task.flawed_answer`): the imitation policy then mixes the right
  and the flawed behaviour, and only the verifiable reward can tell them apart."""
  problems = task.problems("train", index, count)
  rng = np.random.RandomState(index)
  flawed = rng.rand(count) < flawed_fraction
  return [tasks.Problem(p.prompt, task.flawed_answer(p)) if f else p
          for p, f in zip(problems, flawed)]


def warm_start(model, tokenizer, task, *, steps: int, batch_size: int, learning_rate: float,
               flawed_fraction: float, max_new_tokens: int):
  """`steps` SFT updates of `model` on `batch_size` demonstrations each (step
  i draws the task's training problems at index 10**6 + i); returns the model."""
  optimizer = train.make_optimizer(learning_rate, warmup_steps=10, total_steps=steps)
  graphdef, state = train.init_train_state(model, optimizer)
  update = train.make_sft_update(graphdef, optimizer)
  bar = tqdm.trange(steps, desc="warm-start SFT", leave=False)
  for i in bar:
    batch = sft_batch(tokenizer, demonstrations(task, 10**6 + i, batch_size, flawed_fraction),
                      max_new_tokens)
    state, metrics = update(state, batch)
    train.show_loss(bar, metrics)
  return nnx.merge(graphdef, state.params)
