"""MOAT stage-2 critics (docs/algorithms.md §8.2): fix subgoal/action pairs.

A critic maps a list of `CriticInput` (task, the planner's subgoals, the
grounder's actions) to one `Correction` or None (nothing usable) per input.
Critics are registered in `CRITICS` by name and built with `make_critic`:

  builtin  executes each action in the world and rewrites the wrong ones from
           the world's facts (hop i must reach the i-th entity of the task's
           relation path); correct actions, including Search actions that find
           the right entity, are kept, so the SFT set holds self-generated pairs.
  llm      a causal LM loaded from a Hugging Face directory, prompted with
           `critic_prompt` and parsed by `parse_critic_output` (§8.2's
           "Corrected Subgoals:" / "Corrected Actions:" lines).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Sequence

from alignax.agents.worlds import moat_world as mw
from alignax.registry import Registry


@dataclasses.dataclass(frozen=True)
class CriticInput:
  task: mw.MoatTask
  subgoals: str
  actions: str


@dataclasses.dataclass(frozen=True)
class Correction:
  subgoals: str
  actions: str
  changed: bool  # False: the input pair was already right and is kept as is


CRITICS = Registry("critic")
register_critic = CRITICS.register


def make_critic(name: str, **kwargs):
  return CRITICS[name](**kwargs)


@register_critic("builtin")
class BuiltinCritic:
  """Executes every action; keeps hop i when it reaches `task.path[i]`, else
  replaces it by the task's gold action i (built-in tasks: `Lookup[#i,
  relation_i]`, `#0` = the task's entity, from the world's facts).

  `rewrite_subgoals`: True (the default, as §8.2's critic returns
  corrected subgoals and actions) rewrites the planner's subgoals to describe
  the corrected actions whenever they differ, so the grounder learns to follow
  its subgoals and its scores tell right plans from wrong ones (stage 1).
  False keeps the planner's own subgoals, so the grounder learns to reach the
  answer from the task also under a wrong plan (its held-in success then
  exceeds the planner's exact-plan rate; alignax/experiments/configs/moat.py gives
  what that does to held-out success).
  """

  def __init__(self, world: mw.MoatWorld, search_fn=None, rewrite_subgoals: bool = True,
               **unused):
    del unused
    self.world, self.search_fn = world, search_fn
    self.rewrite_subgoals = rewrite_subgoals

  def correct_one(self, item: CriticInput) -> Correction:
    task = item.task
    parsed = mw.parse_actions(item.actions)
    values = mw.execute(self.world, parsed, self.search_fn, task.subject).values
    gold = mw.gold_actions(task)  # hops, then the Answer
    fixed = []
    for i, hop in enumerate(gold[:-1]):
      ok = (i < len(parsed) and not mw.TOOLS[parsed[i].kind].final
            and values[i] == task.path[i])
      fixed.append(parsed[i] if ok else hop)
    fixed.append(gold[-1])
    if mw.execute(self.world, fixed, self.search_fn, task.subject).answer != task.answer:
      fixed = gold  # a kept Search must have been non-deterministic
    changed = fixed != parsed
    fixed_subgoals = mw.task_subgoals_text(task, fixed)
    keep = (not self.rewrite_subgoals or
            mw.parse_subgoals(item.subgoals) == mw.parse_subgoals(fixed_subgoals))
    subgoals = item.subgoals if keep else fixed_subgoals
    return Correction(subgoals, mw.actions_text(fixed), changed or subgoals != item.subgoals)

  def __call__(self, items: Sequence[CriticInput]) -> list[Correction | None]:
    return [self.correct_one(it) for it in items]


# ------------------------------------------------------------- LLM critic
CRITIC_INSTRUCTION = (
    "Check whether the subgoals solve the task and whether each action grounds its"
    " subgoal. Rewrite them if needed, as two lines:")


def critic_prompt(item: CriticInput) -> str:
  """The LLM critic's prompt (§8.2's Corrected Subgoals/Actions format)."""
  return (f"Task: {item.task.question}\nSubgoals: {item.subgoals}\n"
          f"Actions: {item.actions}\n{CRITIC_INSTRUCTION}\n"
          "Corrected Subgoals: ...\nCorrected Actions: ...\n")


_OUTPUT_RE = re.compile(
    r"corrected\s*subgoals\s*:\s*(?P<s>.*?)\s*(?:\n|\s)corrected\s*actions\s*:\s*(?P<a>[^\n]*)",
    re.IGNORECASE | re.DOTALL)


def parse_critic_output(text: str) -> tuple[str, str] | None:
  """`(subgoals, actions)` from "Corrected Subgoals: ... Corrected Actions: ...".

  Returns None when either line is missing or empty, or when the actions
  parse to nothing that ends with an Answer (the pair is then dropped). The
  last occurrence wins (a model may first echo the prompt's template).
  """
  matches = list(_OUTPUT_RE.finditer(text))
  for m in reversed(matches):
    subgoals, actions = m.group("s").strip(), m.group("a").strip()
    if subgoals in ("", "...") or actions in ("", "..."):
      continue
    parsed = mw.parse_actions(actions)
    if not parsed or parsed[-1].kind != "answer":
      continue
    return subgoals, mw.actions_text(parsed)
  return None


@register_critic("llm")
class LLMCritic:
  """A causal LM critic: `model_dir` holds a Hugging Face model + tokenizer
  (or pass `generate_fn(prompts) -> texts`, e.g. a stub, instead)."""

  def __init__(self, model_dir: str = "", generate_fn=None, max_new_tokens: int = 96,
               **unused):
    del unused
    if generate_fn is None:
      if not model_dir:
        raise ValueError("The llm critic needs config.critic.model_dir (a model directory).")
      generate_fn = _hf_generate_fn(model_dir, max_new_tokens)
    self.generate_fn = generate_fn

  def __call__(self, items: Sequence[CriticInput]) -> list[Correction | None]:
    if not items:
      return []
    outs = self.generate_fn([critic_prompt(it) for it in items])
    result = []
    for it, text in zip(items, outs):
      parsed = parse_critic_output(text)
      if parsed is None:
        result.append(None)
      else:
        s, a = parsed
        result.append(Correction(s, a, (s, a) != (it.subgoals, it.actions)))
    return result


def _hf_generate_fn(model_dir: str, max_new_tokens: int):
  from alignax.framework import hf, sampling  # pylint: disable=g-import-not-at-top
  model = hf.from_pretrained(model_dir)
  tokenizer = hf.load_tokenizer(model_dir, model.config)

  def generate(prompts):
    ids = [tokenizer.encode(p) for p in prompts]
    limit = model.config.max_position_embeddings - max_new_tokens
    ids = [x[-limit:] for x in ids]
    gen = sampling.generate(model, ids, max_new_tokens=max_new_tokens,
                            eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id or 0)
    toks, mask = gen.tokens.tolist(), gen.mask.tolist()
    return [p + tokenizer.decode([t for t, m in zip(row, mrow) if m],
                                 skip_special_tokens=True)
            for p, row, mrow in zip(prompts, toks, mask)]

  return generate
