"""DRO's E-steps and the methods that run them (docs/algorithms.md §7).

`selection_e_step` samples m selector outputs per question, scores each by the
generator's log-likelihood of the gold answer given the selected passages and
weights them (`dro_weighting`: the paper's self-normalised weights;
`rejection_weighting`: 1 for right, well-formed selections); `bm25_e_step`
trains the generator on BM25's top_k. `METHODS` {name: `Method`} is what
`config.methods` of `alignax.experiments.dro` names.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import numpy as np

from alignax import objectives
from alignax.agents.methods import dro_agents
from alignax.agents.scoring import answer_metrics as metrics_lib
from alignax.framework import train
from alignax.registry import Registry


@dataclasses.dataclass(frozen=True)
class Selections:
  """m sampled selections of each of q questions, rows question-major."""
  num_questions: int  # q
  examples: list      # [q*m] the question of each row
  question_ids: np.ndarray  # [q*m] in [0, q)
  outputs: list       # [q*m] selector output token lists
  passages: list      # [q*m] passage indices given to the generator
  keep: np.ndarray    # [q*m] False for a repeat of the question's output
  valid: np.ndarray   # [q*m] False for a malformed output
  log_likelihoods: np.ndarray  # [q*m] the gold answer's, given the passages
  # [q*m] log p_phi(z) (the selector) and log q(z) (the tempered, top-p
  # proposal the outputs were sampled from); None when q is the selector.
  selector_logprobs: np.ndarray | None = None
  proposal_logprobs: np.ndarray | None = None


def dro_weighting(s: Selections, em, answer_fn):
  """The paper's self-normalised weights exp(l / tau) p_phi(z) / q(z)."""
  del answer_fn
  return np.asarray(objectives.dro_weights(
      s.log_likelihoods, s.question_ids, s.num_questions, s.keep, s.valid,
      temperature=em.temperature, renormalize_after_filter=em.renormalize_after_filter,
      selector_logprobs=s.selector_logprobs, proposal_logprobs=s.proposal_logprobs),
                    np.float32), {}


def rejection_weighting(s: Selections, em, answer_fn):
  """1 for the de-duplicated, well-formed selections whose greedy answer is right."""
  del em
  preds = answer_fn(s.examples, s.passages)
  correct = np.asarray([metrics_lib.exact_match(p, e.answers)
                        for p, e in zip(preds, s.examples)], np.float32)
  return ((correct * s.keep * s.valid).astype(np.float32),
          {"train/sample_em": 100.0 * float(correct.mean())})


def selection_e_step(graphdef, states, roles, fmt, examples, config, key, lengths, *,
                     weighting):
  """Samples, scores and weights selections (`weighting(Selections, em,
  answer_fn) -> (weights [q*m], stats)`). Returns ({role: M-step batch}, stats)."""
  em, q, m = config.em, len(examples), config.em.num_samples
  rows_ex = [e for e in examples for _ in range(m)]
  qids = np.repeat(np.arange(q), m)
  outs, perms, valid = dro_agents.select(
      graphdef, states[roles["selector"]].params, fmt, examples, key, repeats=m,
      temperature=config.selector.temperature, top_p=config.selector.top_p)
  passages = [fmt.docs(e, p) for e, p in zip(rows_ex, perms)]
  gen = fmt.batch([fmt.generator_row(e, p) for e, p in zip(rows_ex, passages)], lengths[1])
  ll = np.asarray(train.answer_logliks(graphdef, states[roles["generator"]].params, gen))
  sel_cfg, ratio = config.selector, (None, None)
  if sel_cfg.temperature != 1.0 or sel_cfg.top_p < 1.0:  # q is not the selector itself
    ratio = dro_agents.selection_logprobs(
        graphdef, states[roles["selector"]].params, [fmt.selector_prompt(e) for e in rows_ex],
        outs, temperature=sel_cfg.temperature, top_p=sel_cfg.top_p, no_repeat=fmt.no_repeat)
  sample = Selections(q, rows_ex, qids, outs, passages,
                      objectives.first_occurrences(outs, qids), valid, ll, *ratio)
  answer_fn = lambda exs, docs: dro_agents.answers(
      graphdef, states[roles["generator"]].params, fmt, exs, docs)
  w, extra = weighting(sample, em, answer_fn)
  gold = [set(fmt.world.gold[e.id]) for e in rows_ex]
  recall = np.asarray([g <= set(p) for g, p in zip(gold, passages)], np.float32)
  sel = fmt.batch([fmt.selector_row(e, o) for e, o in zip(rows_ex, outs)], lengths[0], w)
  gen["weights"] = w
  take = w > em.min_weight
  batches = {"selector": {k: v[take] for k, v in sel.items()},
             "generator": {k: v[take] for k, v in gen.items()}}
  stats = {"train/valid_rankings": 100.0 * float(valid.mean()),
           "train/unique_per_question": float(sample.keep.sum() / q),
           "train/sample_gold_recall": 100.0 * float(recall.mean()),
           # Above sample_gold_recall when the weights favour gold selections.
           "train/weighted_gold_recall": 100.0 * float(np.sum(w * recall) / max(w.sum(), 1e-9)),
           "train/answer_loglik": float(np.nanmean(ll)),
           "train/weight_max": float(np.max(w.reshape(q, m), axis=1).mean()),
           "train/rows_trained": float(take.sum()), **extra}
  return batches, stats


def bm25_e_step(graphdef, states, roles, fmt, examples, config, key, lengths):
  """The generator on BM25's top_k, weight 1, no selector."""
  del graphdef, states, roles, config, key
  rows = [fmt.generator_row(e, fmt.bm25_docs(e)) for e in examples]
  return {"generator": fmt.batch(rows, lengths[1])}, {}


@dataclasses.dataclass(frozen=True)
class Method:
  """A method of config.methods: its E-step and how it is evaluated."""
  e_step: Callable  # (graphdef, states, roles, fmt, examples, config, key, lengths)
  eval_mode: str    # "selector" (greedy selection) or "bm25" (BM25's top_k)


METHODS = Registry("DRO method")
METHODS.add("dro", Method(functools.partial(selection_e_step, weighting=dro_weighting),
                          "selector"))
METHODS.add("bm25_top5", Method(bm25_e_step, "bm25"))
METHODS.add("rejection_sft", Method(
    functools.partial(selection_e_step, weighting=rejection_weighting), "selector"))
