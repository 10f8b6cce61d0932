"""The rollout sampled ahead by one-step off-policy GRPO, in a checkpoint.

With `grpo_step(off_policy_steps=1)` the batch trained at step k + 1 is
sampled by parameters that no checkpoint keeps (those before the update of
step k), so a checkpoint of such a run also holds that `Rollout`: its prompt
rows left-padded to a fixed width, completions, the sampler's log-probs and
the rewards per function, all fixed shapes (the template Orbax restores
into); the prompt length in use is saved beside it (in the extras), and
`rollout_from_host` rebuilds the `Rollout` a resumed run trains on.
"""
from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
import numpy as np

from alignax.framework import run_records, sampling
from alignax.rl.step import Rollout, build_rollout


def width(max_prompt_length: int, max_new_tokens: int, max_position_embeddings: int) -> int:
  """The widest prompt bucket the sampler can use (prompts <= max_prompt_length)."""
  return sampling.bucket_length(max_prompt_length, max_position_embeddings - max_new_tokens)


def template(num_rows: int, completion_length: int, prompt_width: int,
             num_functions: int) -> dict:
  """Zero arrays of the saved rollout's shapes (what a checkpoint restores into)."""
  n, c, w = num_rows, completion_length, prompt_width
  return dict(prompt_tokens=np.zeros((n, w), np.int32), prompt_mask=np.zeros((n, w), bool),
              tokens=np.zeros((n, c), np.int32), mask=np.zeros((n, c), bool),
              logprobs=np.zeros((n, c), np.float32),
              rewards=np.zeros((n, num_functions), np.float32))


def rollout_to_host(pending: Optional[Rollout], arrays: dict):
  """(`arrays`, the `template`, filled with `pending`; its prompt length, or
  None when nothing is pending)."""
  if pending is None:
    return arrays, None
  gen = pending.generation
  p_tokens, p_mask, tokens, mask, logprobs = run_records.to_host(
      (gen.prompt_tokens, gen.prompt_mask, gen.tokens, gen.mask, gen.logprobs))
  w, plen = arrays["prompt_tokens"].shape[1], p_tokens.shape[1]
  if plen > w:
    raise ValueError(f"prompt bucket {plen} exceeds the checkpoint's width {w}")
  arrays["prompt_tokens"][:, w - plen:] = p_tokens
  arrays["prompt_mask"][:, w - plen:] = p_mask
  arrays.update(tokens=tokens, mask=mask, logprobs=logprobs,
                rewards=np.asarray(pending.rewards.per_function, np.float32))
  return arrays, plen


def rollout_from_host(arrays, prompt_length: Optional[int], **rollout_options):
  """The `Rollout` saved by `rollout_to_host` (None if none was pending);
  `rollout_options`: `build_rollout`'s (num_generations, temperature,
  weights, advantage, advantage_options, reference, mesh)."""
  if prompt_length is None:
    return None
  a = {k: np.asarray(v) for k, v in arrays.items()}
  w = a["prompt_tokens"].shape[1]
  gen = sampling.Generation(
      tokens=jnp.asarray(a["tokens"]), mask=jnp.asarray(a["mask"]),
      logprobs=jnp.asarray(a["logprobs"]),
      prompt_tokens=jnp.asarray(a["prompt_tokens"][:, w - prompt_length:]),
      prompt_mask=jnp.asarray(a["prompt_mask"][:, w - prompt_length:]))
  return build_rollout(gen, a["rewards"], **rollout_options)
