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
import numpy as np

from alignax import objectives
from alignax.agents.worlds import moat_world as mw
from alignax.framework import run_records, sampling, train, vocab


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

  def planner_prompt(self, task: mw.MoatTask) -> list[int]:
    ids = vocab.bos_ids(self.tokenizer) + self.encode(mw.task_text(task) + " plan :")
    return ids[-self.plan_prompt_len:]

  def grounder_prompt(self, task: mw.MoatTask, subgoal_ids: Sequence[int]) -> list[int]:
    head = vocab.bos_ids(self.tokenizer) + self.encode(mw.task_text(task) + " subgoals :")
    tail = self.encode("actions :")
    room = self.ground_prompt_len - len(head) - len(tail)
    return head + list(subgoal_ids)[:max(room, 0)] + tail

  def completion(self, text: str, length: int) -> list[int]:
    return self.encode(text)[:length - 1] + [self.eos]

  def subgoal_ids(self, gen: sampling.Generation) -> list[list[int]]:
    """Each generated plan's tokens, without the stop token and padding."""
    toks, mask = run_records.to_host((gen.tokens, gen.mask))  # gathered across processes
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


# ----------------------------------------------------------- generation
def sample_plans(graphdef, params, io: AgentIO, tasks, *, num_samples: int,
                 temperature: float, top_p: float | None, seed,
                 mesh=None) -> sampling.Generation:
  """K plans per task in ONE batched generate call (rows task-major), from
  the planner `(graphdef, params)`."""
  return sampling.generate_from_state(graphdef, params, [io.planner_prompt(t) for t in tasks],
                           max_new_tokens=io.plan_len, temperature=temperature,
                           top_p=top_p, eos_token_id=io.eos, pad_token_id=io.pad,
                           num_generations=num_samples, seed=seed, mesh=mesh)


def ground(graphdef, params, io: AgentIO, tasks, subgoal_ids, *, temperature: float,
           top_p: float | None, seed, mesh=None) -> list[str]:
  """The grounder `(graphdef, params)`'s action text for every (task,
  subgoals) row (one call)."""
  gen = sampling.generate_from_state(graphdef, params, [io.grounder_prompt(t, s) for t, s in
                                                        zip(tasks, subgoal_ids)],
                          max_new_tokens=io.action_len, temperature=temperature,
                          top_p=top_p, eos_token_id=io.eos, pad_token_id=io.pad,
                          seed=seed, mesh=mesh)
  return [io.decode(ids) for ids in io.subgoal_ids(gen)]


def evaluate(planner, grounder, io: AgentIO, world: mw.MoatWorld, tasks,
             search_fn=None, mesh=None) -> dict:
  """End to end (greedy planner -> greedy grounder -> world execution):
  success rate in points (0-100), and the share of exactly-gold plans, over
  all `tasks` and per group: `success_hops<n>` (tasks of n gold hops) and
  `success_nested` / `success_possessive` (the task's phrasing). The success
  rate's standard error (points) over the (chain, phrasing) groups
  (`success_se`, `moat_world.cluster_se` of `task.group`), over the chains
  (`success_se_chains`) and over tasks as if independent (`success_se_tasks`),
  with the numbers of groups and chains (`groups`, `chains`); `outcomes`:
  each task's success as a string of "0" / "1" (for paired comparisons).
  planner, grounder: `(graphdef, params)` of each agent."""
  gen = sample_plans(*planner, io, tasks, num_samples=1, temperature=0.0, top_p=None,
                     seed=0, mesh=mesh)
  subgoals = io.subgoal_ids(gen)
  actions = ground(*grounder, io, tasks, subgoals, temperature=0.0, top_p=None, seed=0,
                   mesh=mesh)
  ok = [mw.success(world, t, a, search_fn) for t, a in zip(tasks, actions)]
  plan_ok = [mw.normalize(io.decode(s)) == mw.normalize(mw.gold_subgoals(t))
             for t, s in zip(tasks, subgoals)]
  out = {"success": 100.0 * float(np.mean(ok)),
         "plan_exact": 100.0 * float(np.mean(plan_ok)),
         "success_se": 100.0 * mw.cluster_se(ok, [t.group for t in tasks]),
         "success_se_chains": 100.0 * mw.cluster_se(ok, [t.chain for t in tasks]),
         "success_se_tasks": 100.0 * mw.cluster_se(ok, range(len(tasks))),
         "groups": float(len({t.group for t in tasks})),
         "chains": float(len({t.chain for t in tasks})),
         "outcomes": "".join("1" if k else "0" for k in ok)}
  groups = {}
  for t, k in zip(tasks, ok):
    for g in (f"hops{len(mw.gold_actions(t)) - 1}", "nested" if t.nested else "possessive"):
      groups.setdefault(g, []).append(k)
  out.update({f"success_{g}": 100.0 * float(np.mean(v)) for g, v in sorted(groups.items())})
  return out

