"""MOAT planner and grounder agents: prompts, batched scoring, DPO, evaluation.

Both agents are `framework.model.Decoder`s sharing one tokenizer (so the
planner's sampled subgoal ids go straight into the grounder's prompt):

  planner  : <s> task : <question> plan :            -> <subgoals> </s>
  grounder : <s> task : <question> subgoals : <subgoals> actions :
                                                      -> <actions> </s>

Rows are prompt (left-padded to a fixed length) + completion (right-padded to
a fixed length), the layout of `framework.sampling.Generation`, so a sampled
batch can be trained on without re-padding and every jit compiles once.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignax import objectives
from alignax.agents import moat_world as mw
from alignax.framework import sampling, train


class AgentIO:
  """Token-level formats of both agents (fixed padded lengths)."""

  def __init__(self, tokenizer, *, plan_prompt_len: int, plan_len: int,
               ground_prompt_len: int, action_len: int):
    self.tokenizer = tokenizer
    self.pad, self.bos, self.eos = (tokenizer.pad_token_id, tokenizer.bos_token_id,
                                    tokenizer.eos_token_id)
    self.plan_prompt_len, self.plan_len = plan_prompt_len, plan_len
    self.ground_prompt_len, self.action_len = ground_prompt_len, action_len

  def encode(self, text: str) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=False)

  def decode(self, ids) -> str:
    return self.tokenizer.decode(list(ids), skip_special_tokens=True)

  def planner_prompt(self, task: mw.Task) -> list[int]:
    ids = [self.bos] + self.encode(mw.task_text(task) + " plan :")
    return ids[-self.plan_prompt_len:]

  def grounder_prompt(self, task: mw.Task, subgoal_ids: Sequence[int]) -> list[int]:
    head = [self.bos] + self.encode(mw.task_text(task) + " subgoals :")
    tail = self.encode("actions :")
    room = self.ground_prompt_len - len(head) - len(tail)
    return head + list(subgoal_ids)[:max(room, 0)] + tail

  def completion(self, text: str, length: int) -> list[int]:
    return self.encode(text)[:length - 1] + [self.eos]

  def subgoal_ids(self, gen: sampling.Generation) -> list[list[int]]:
    """Each generated plan's tokens, without the stop token and padding."""
    toks, mask = np.asarray(gen.tokens), np.asarray(gen.mask)
    return [[int(t) for t, m in zip(r, mr) if m and t != self.eos]
            for r, mr in zip(toks, mask)]

  def batch(self, prompts, completions, prompt_len: int, completion_len: int):
    """Left-padded prompts + right-padded completions -> SFT/scoring arrays."""
    n = len(prompts)
    ids, pmask = sampling.pad_prompts([p[-prompt_len:] for p in prompts], prompt_len,
                                      self.pad)
    comp = np.full((n, completion_len), self.pad, np.int32)
    cmask = np.zeros((n, completion_len), bool)
    for i, c in enumerate(completions):
      c = list(c)[:completion_len]
      comp[i, :len(c)] = c
      cmask[i, :len(c)] = True
    return dict(sequences=np.concatenate([ids, comp], 1),
                attention_mask=np.concatenate([pmask, cmask], 1),
                completion_tokens=comp, completion_mask=cmask)

  def planner_batch(self, tasks, plans: Sequence[str]):
    return self.batch([self.planner_prompt(t) for t in tasks],
                      [self.completion(p, self.plan_len) for p in plans],
                      self.plan_prompt_len, self.plan_len)

  def grounder_batch(self, tasks, subgoal_ids, actions: Sequence[str]):
    return self.batch([self.grounder_prompt(t, s) for t, s in zip(tasks, subgoal_ids)],
                      [self.completion(a, self.action_len) for a in actions],
                      self.ground_prompt_len, self.action_len)


# ------------------------------------------------------------ scoring
@functools.partial(jax.jit, static_argnames=("graphdef",))
def grounder_scores(graphdef, params, batch):
  """docs/algorithms.md §8.1 score of every row in one forward pass: token-mean CE of the gold
  actions given (task, subgoals), counting tokens with CE >= 1e-9 [N]."""
  logp, _ = train.completion_logprobs(graphdef, params, batch["sequences"],
                                      batch["attention_mask"], batch["completion_tokens"])
  return objectives.perplexity_scores(logp, batch["completion_mask"], count_threshold=1e-9)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def sequence_logps(graphdef, params, batch):
  """Summed completion log-probs [N] (no gradient use: the DPO reference)."""
  logp, _ = train.completion_logprobs(graphdef, params, batch["sequences"],
                                      batch["attention_mask"], batch["completion_tokens"])
  return objectives.sequence_logprobs(logp, batch["completion_mask"].astype(logp.dtype))


def make_dpo_update(graphdef, optimizer, *, beta: float, loss_type: str = "sigmoid",
                    rpo_alpha: float = 0.0, micro_batches: int = 1):
  """Jitted DPO update of the planner. batch (B pairs): `chosen_*` and
  `rejected_*` planner rows (sequences, attention_mask, completion_tokens,
  completion_mask) and `ref_chosen`, `ref_rejected` [B] (frozen planner).

  `rpo_alpha` > 0 adds `rpo_alpha *` the token-mean NLL of the chosen rows
  (TRL's `rpo_alpha`; Pang et al. 2024, arXiv:2404.19733), which keeps the
  chosen plans' likelihood from falling with the rejected ones' (without it
  a few DPO epochs collapsed the tiny planner in our runs).
  The metric `nll` is that NLL (logged whatever `rpo_alpha`).
  """

  def terms(params, mb):
    b = mb["ref_chosen"].shape[0]
    both = {k: jnp.concatenate([mb["chosen_" + k], mb["rejected_" + k]])
            for k in ("sequences", "attention_mask", "completion_tokens", "completion_mask")}
    logp, _ = train.completion_logprobs(graphdef, params, both["sequences"],
                                        both["attention_mask"], both["completion_tokens"])
    seq = objectives.sequence_logprobs(logp, both["completion_mask"].astype(logp.dtype))
    loss, metrics = objectives.dpo_loss(seq[:b], seq[b:], mb["ref_chosen"],
                                        mb["ref_rejected"], beta=beta, loss_type=loss_type)
    mask = both["completion_mask"][:b].astype(logp.dtype)
    nll = -jnp.sum(logp[:b] * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    if rpo_alpha:
      loss = loss + rpo_alpha * nll
    return loss * b, (jnp.float32(b), {**metrics, "nll": nll})

  @functools.partial(jax.jit, donate_argnums=0)
  def update(state, batch):
    return train.accumulate_and_apply(state, batch, terms, optimizer, micro_batches)

  return update


def dpo_batch(gen_batch, chosen, rejected, ref_logps):
  """Pairs from a planner batch (rows = samples) and their reference log-probs."""
  out = {}
  for k, v in gen_batch.items():
    out["chosen_" + k] = np.asarray(v)[chosen]
    out["rejected_" + k] = np.asarray(v)[rejected]
  ref = np.asarray(ref_logps)
  out["ref_chosen"], out["ref_rejected"] = ref[chosen], ref[rejected]
  return out


def run_epochs(update, state, batch, batch_size: int, epochs: int, seed: int):
  """`epochs` shuffled passes over the rows of `batch` (wrapped to full
  batches). Returns (state, number of updates, last metrics)."""
  n = len(next(iter(batch.values())))
  steps, metrics = 0, {}
  if n == 0:
    return state, 0, metrics
  rng = np.random.RandomState(seed)
  for _ in range(epochs):
    order = np.resize(rng.permutation(n), -(-n // batch_size) * batch_size)
    for s in range(0, len(order), batch_size):
      idx = order[s:s + batch_size]
      state, metrics = update(state, {k: v[idx] for k, v in batch.items()})
      steps += 1
  return state, steps, metrics


def run_steps(update, state, batch, batch_size: int, steps: int, seed: int):
  """Exactly `steps` updates on shuffled batches of `batch` (the budget-matched
  baseline)."""
  n = len(next(iter(batch.values())))
  rng = np.random.RandomState(seed)
  order = np.resize(rng.permutation(n), max(steps, 1) * batch_size)
  for s in range(steps):
    idx = order[s * batch_size:(s + 1) * batch_size]
    state, _ = update(state, {k: v[idx] for k, v in batch.items()})
  return state


# ----------------------------------------------------------- generation
def sample_plans(planner, io: AgentIO, tasks, *, num_samples: int, temperature: float,
                 top_p: float | None, seed, mesh=None) -> sampling.Generation:
  """K plans per task in ONE batched generate call (rows task-major)."""
  return sampling.generate(planner, [io.planner_prompt(t) for t in tasks],
                           max_new_tokens=io.plan_len, temperature=temperature,
                           top_p=top_p, eos_token_id=io.eos, pad_token_id=io.pad,
                           num_generations=num_samples, seed=seed, mesh=mesh)


def ground(grounder, io: AgentIO, tasks, subgoal_ids, *, temperature: float,
           top_p: float | None, seed, mesh=None) -> list[str]:
  """The grounder's action text for every (task, subgoals) row (one call)."""
  gen = sampling.generate(grounder, [io.grounder_prompt(t, s) for t, s in
                                     zip(tasks, subgoal_ids)],
                          max_new_tokens=io.action_len, temperature=temperature,
                          top_p=top_p, eos_token_id=io.eos, pad_token_id=io.pad,
                          seed=seed, mesh=mesh)
  return [io.decode(ids) for ids in io.subgoal_ids(gen)]


def evaluate(planner, grounder, io: AgentIO, world: mw.MoatWorld, tasks,
             search_fn=None, mesh=None) -> dict[str, float]:
  """End to end (greedy planner -> greedy grounder -> world execution):
  success rate in points (0-100), and the share of exactly-gold plans."""
  gen = sample_plans(planner, io, tasks, num_samples=1, temperature=0.0, top_p=None,
                     seed=0, mesh=mesh)
  subgoals = io.subgoal_ids(gen)
  actions = ground(grounder, io, tasks, subgoals, temperature=0.0, top_p=None, seed=0,
                   mesh=mesh)
  ok = [mw.success(world, t, a, search_fn) for t, a in zip(tasks, actions)]
  plan_ok = [mw.normalize(io.decode(s)) == mw.normalize(mw.gold_subgoals(t))
             for t, s in zip(tasks, subgoals)]
  return {"success": 100.0 * float(np.mean(ok)),
          "plan_exact": 100.0 * float(np.mean(plan_ok))}


def merge(graphdef, params):
  return nnx.merge(graphdef, params)
