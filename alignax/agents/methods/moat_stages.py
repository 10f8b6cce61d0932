"""MOAT's two stages (docs/algorithms.md §8), one iteration each.

`stage1` (planner alignment): K plans per task from one batched `generate`
call, scored in one grounder pass by the token-mean CE of the gold actions
given (task, plan); `objectives.build_dpo_pairs`; DPO of the planner against
a frozen copy of itself. `stage2` (grounder improving): the grounder acts on
the sampled plans, the critic (`moat_critic`) corrects each (subgoals,
actions) pair, the grounder is SFT-trained on the corrected pairs (and the
replayed rows). `alignax.experiments.moat` runs them per iteration.
"""
from __future__ import annotations

import time

import numpy as np

from alignax import objectives
from alignax.agents.methods import moat_agents, moat_critic
from alignax.agents.worlds import moat_world as mw
from alignax.framework import run_records, train


def stage1(p_graphdef, p_state, g_graphdef, g_params, io, tasks, config, update, seed,
           mesh):
  """Planner alignment. Returns (planner state, per-row plan ids, stats)."""
  s = config.stage1
  k = s.num_samples
  t0 = time.perf_counter()
  gen = moat_agents.sample_plans(p_graphdef, p_state.params, io, tasks, num_samples=k,
                                 temperature=s.temperature, top_p=s.top_p, seed=seed,
                                 mesh=mesh)  # one call, T*K rows
  plans = io.subgoal_ids(gen)
  rows = [t for t in tasks for _ in range(k)]
  gold = [mw.actions_text(mw.gold_actions(t)) for t in rows]
  scores = moat_agents.grounder_scores(g_graphdef, g_params,  # one pass over T*K rows
                                  io.grounder_batch(rows, plans, gold))
  t_sample = time.perf_counter() - t0
  chosen, rejected, valid, scores = run_records.to_host(
      (*objectives.build_dpo_pairs(scores, k, min_gap=s.min_gap), scores))
  if s.max_chosen_score > 0:  # only plans the grounder turns into the gold actions
    valid = valid & (scores[chosen] <= s.max_chosen_score)
  toks, mask = run_records.to_host((gen.tokens, gen.mask))  # gathered across processes
  completions = [r[m].tolist() for r, m in zip(toks, mask)]
  pb = io.batch([io.planner_prompt(t) for t in rows], completions, io.plan_prompt_len,
                io.plan_len)
  ref = train.sequence_logps(p_graphdef, p_state.params, pb)  # frozen copy
  batch = train.dpo_batch(pb, chosen[valid], rejected[valid], ref)
  p_state, steps, m = train.train_minibatches(update, p_state, batch, s.batch_size, seed,
                                              epochs=s.epochs)
  scores = scores.reshape(-1, k)
  plan_ok = np.array([mw.normalize(io.decode(p)) == mw.normalize(mw.gold_subgoals(t))
                      for p, t in zip(plans, rows)])
  gold_share = lambda idx: 100.0 * float(np.mean(plan_ok[idx[valid]])) if valid.any() else 0.0
  stats = {"stage1/pairs": int(valid.sum()), "stage1/updates": steps,
           "stage1/score_mean": float(scores.mean()),
           "stage1/score_gap": float((scores.max(1) - scores.min(1)).mean()),
           "stage1/sample_plan_exact": 100.0 * float(np.mean(plan_ok)),
           # how often the pair's chosen / rejected plan is the gold plan
           "stage1/chosen_exact": gold_share(chosen),
           "stage1/rejected_exact": gold_share(rejected),
           "stage1/sample_and_score_seconds": t_sample,
           "stage1/seconds": time.perf_counter() - t0}
  stats.update({f"stage1/dpo_{k_}": float(v) for k_, v in m.items()})
  return p_state, plans, stats


def stage2(g_graphdef, g_state, io, world, tasks, plans, critic, config, update, seed, mesh,
           search_fn, replay=()):
  """Grounder improving. `replay`: (task, subgoal ids, actions) rows trained
  on beside this iteration's corrected pairs (earlier corrected pairs and/or
  the gold set). Returns (grounder state, this iteration's corrected pairs,
  stats)."""
  s = config.stage2
  k = config.stage1.num_samples
  t0 = time.perf_counter()
  row_tasks, row_plans = [], []
  for i, task in enumerate(tasks):  # up to plans_per_task distinct plans per task
    seen = set()
    for p in plans[i * k:(i + 1) * k]:
      if tuple(p) not in seen and len(seen) < s.plans_per_task:
        seen.add(tuple(p))
        row_tasks.append(task)
        row_plans.append(p)
  actions = moat_agents.ground(g_graphdef, g_state.params, io, row_tasks, row_plans,
                               temperature=s.temperature, top_p=s.top_p, seed=seed, mesh=mesh)
  own_ok = [mw.success(world, t, a, search_fn) for t, a in zip(row_tasks, actions)]
  fixes = critic([moat_critic.CriticInput(t, io.decode(p), a)
                  for t, p, a in zip(row_tasks, row_plans, actions)])
  pairs, seen = [], set()
  for t, fix in zip(row_tasks, fixes):
    if fix is not None and (t.id, fix.subgoals, fix.actions) not in seen:
      seen.add((t.id, fix.subgoals, fix.actions))
      pairs.append((t, fix.subgoals, fix.actions))
  sft = [(t, io.encode(sg), a) for t, sg, a in pairs] + list(replay)
  steps = 0
  if sft:
    batch = io.grounder_batch(*zip(*sft))
    g_state, steps, _ = train.train_minibatches(update, g_state, batch, s.batch_size, seed,
                                                epochs=s.epochs)
  return g_state, pairs, {
      "stage2/rows": len(row_tasks), "stage2/corrected_pairs": len(pairs),
      "stage2/sft_rows": len(sft), "stage2/updates": steps,
      "stage2/own_success": 100.0 * float(np.mean(own_ok)),
      "stage2/corrected": 100.0 * float(np.mean([f is not None and f.changed
                                                  for f in fixes])),
      "stage2/seconds": time.perf_counter() - t0}
