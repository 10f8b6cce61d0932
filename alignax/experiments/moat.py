r"""MOAT: joint alignment of a planning agent and a grounding agent (docs/algorithms.md §8).

  python -m alignax.experiments.moat                       # default preset, runs/moat
  python -m alignax.experiments.moat --config=alignax/experiments/configs/moat.py:tiny \
      --workdir=runs/moat_tiny

Tasks come from the built-in QA world (`agents.worlds.moat_world`): relation chains
applied to a person, with gold subgoals and gold actions; held-in chains are
trained on, held-out chains (new compositions, longer chains) only evaluated;
pool-only chains (other new compositions, `world.pool_only_fraction`) join
the iterations' pool only: neither the warm-up's gold set nor `separate/` has
them.
Or from files (`--config.data.tasks_path=... --config.data.corpus_path=...
[--config.data.lookup_path=...]`, `agents.data.moat_data`): tasks with their gold
subgoals, actions and the actions' results, a BM25 corpus and a lookup table.

1. Warm-up: a word tokenizer and two decoders (planner, grounder) are built
   and SFT-trained on `warmup.num_gold` gold tasks, then saved (HF format) to
   `<workdir>/{planner,grounder}_init` (or loaded from `planner_dir`/`grounder_dir`).
   `planner_model_path`/`grounder_model_path`: Hugging Face checkpoints (one
   tokenizer; subgoals and actions stay plain text) warm-started instead of
   the built-in decoders (`warmup.*_steps` may be 0).
2. For `num_iterations`:
   Stage 1: K plans per task from ONE batched `generate` call; ONE batched
     grounder pass scores each by the token-mean CE of the gold actions given
     (task, plan); `build_dpo_pairs` (argmin vs argmax, gap >= min_gap; with
     `max_chosen_score`, only pairs whose chosen plan scores at most that); DPO
     (sigmoid, plus `rpo_alpha` x the chosen plans' NLL) of the planner
     against a frozen copy of itself (the planner at the iteration's start).
   Stage 2: the grounder acts on the sampled plans (one generate call); the
     critic (`agents.methods.moat_critic.CRITICS`) corrects each (subgoals, actions)
     pair; the grounder is SFT-trained (one epoch) on the corrected pairs,
     with the corrected pairs of earlier iterations (`stage2.accumulate`) and
     the warm-up gold rows (`stage2.replay_gold`).
   Held-in and held-out success (greedy planner -> greedy grounder -> world
   execution) after every iteration.
3. Two baselines from the same warm-up agents, each agent SFT-trained alone
   (no interaction) with the same number of updates per iteration as MOAT's
   stage 1 (planner) and stage 2 (grounder), at the same learning rates:
   `separate/` (`separate.enabled`) on the warm-up gold set, and
   `separate_gold/` (`separate.gold_pool`), the stronger one, on the gold set
   plus the pool tasks MOAT has drawn so far with their gold subgoals
   (planner) and gold actions (grounder): the supervision MOAT never sees.

Under --workdir: bm25/, planner_init/, grounder_init/, final_planner/ and
final_grounder/ (MOAT's trained agents as Hugging Face folders), metrics.jsonl,
TensorBoard events, success.png, summary.json, checkpoints/ (one per
iteration of each method; a re-run resumes, a finished one returns its summary).
"""
from __future__ import annotations

import os
import time

import numpy as np
from flax import nnx

from alignax import objectives
from alignax.agents.data import moat_data, qa_data
from alignax.agents.methods import moat_agents
from alignax.agents.methods import moat_critic
from alignax.agents.worlds import retrieval
from alignax.agents.worlds import moat_world as mw
from alignax.experiments import common
from alignax.framework import lora, run_records, sharding, train
from alignax.framework.config import ModelConfig
from alignax.framework.model import Decoder

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "moat.py")
ROLES = ("planner", "grounder")


def _check_config(config):
  if config.num_iterations < 1:
    raise ValueError(f"config.num_iterations must be >= 1, got {config.num_iterations}.")
  if config.stage1.num_samples < 2:
    raise ValueError("config.stage1.num_samples (K) must be >= 2 to form DPO pairs.")
  if config.critic.name not in moat_critic.CRITICS:
    raise ValueError(f"config.critic.name={config.critic.name!r}; choose one of"
                     f" {sorted(moat_critic.CRITICS)}.")
  if bool(config.planner_dir) != bool(config.grounder_dir):
    raise ValueError("Set both config.planner_dir and config.grounder_dir, or neither.")


def make_world(config, index_dir: str | None = None):
  """The built-in world of `config.world`, or, with `config.data.tasks_path`,
  the tasks and tools of `config.data`'s files (BM25 index saved under
  `index_dir`)."""
  if config.data.tasks_path:
    world = moat_data.load_world(**config.data.to_dict(), seed=config.seed, index_dir=index_dir)
    if len(world.tasks[0]) <= config.warmup.num_gold:
      raise ValueError(f"{config.data.tasks_path}: {len(world.tasks[0])} training tasks, not"
                       f" more than config.warmup.num_gold={config.warmup.num_gold} (the"
                       " warm-up's gold tasks; the rest feed the iterations). Lower it.")
    return world
  w = config.world
  return mw.make_moat_world(config.seed, relations=tuple(w.relations.split()),
                            nested_fraction=w.nested_fraction, num_people=w.num_people,
                            num_cities=w.num_cities, num_countries=w.num_countries,
                            num_companies=w.num_companies)


def split_tasks(world, config):
  """(train, held-in, held-out) tasks of `world` under `config.world`."""
  w = config.world
  return world.splits(w.eval_fraction, w.heldout_fraction, w.num_long,
                      w.pool_only_fraction)


def pool_tasks(world, config, train_tasks):
  """The iterations' pool: the training tasks after the warm-up's gold set,
  with `world.pool_only_tasks` (`config.world.pool_only_fraction`) mixed in
  evenly, so that every iteration's slice holds both in proportion."""
  labeled = list(train_tasks[config.warmup.num_gold:])
  pool_only = world.pool_only_tasks(config.world.heldout_fraction,
                                    config.world.pool_only_fraction)
  key = lambda i, n: (i + 0.5) / n
  rows = [(key(i, len(labeled)), 0, t) for i, t in enumerate(labeled)]
  rows += [(key(i, len(pool_only)), 1, t) for i, t in enumerate(pool_only)]
  return [t for _, _, t in sorted(rows, key=lambda r: r[:2])]


def make_io(tokenizer, config):
  return moat_agents.AgentIO(tokenizer, **config.lengths.to_dict())


def sft_batches(io, tasks):
  """Gold planner rows and gold grounder rows of `tasks`."""
  plans = [mw.gold_subgoals(t) for t in tasks]
  planner = io.planner_batch(tasks, plans)
  grounder = io.grounder_batch(tasks, [io.encode(p) for p in plans],
                               [mw.actions_text(mw.gold_actions(t)) for t in tasks])
  return planner, grounder


def _warm_up(model, batch, w, steps, seed):
  if steps == 0:
    return model
  optimizer = train.make_optimizer(w.learning_rate, warmup_steps=min(10, steps),
                                   total_steps=steps)
  graphdef, state = train.init_train_state(model, optimizer)
  update = train.make_sft_update(graphdef, optimizer)
  state, _, _ = train.train_minibatches(update, state, batch, w.batch_size, seed, steps=steps)
  return nnx.merge(graphdef, state.params)


def build_agents(config, workdir, world, gold_tasks):
  """Loads the two agents (HF dirs `planner_dir`, `grounder_dir`, or
  `<workdir>/{planner,grounder}_init`, built and warm-started first if absent)."""

  def build():
    _, held_in, held_out = split_tasks(world, config)
    tokenizer = qa_data.train_word_tokenizer(
        mw.vocabulary(world, list(gold_tasks) + held_in + held_out))
    models = {}
    if config.planner_model_path:  # subgoals and actions are text: no markers to add
      for name in ROLES:
        models[name], tok = common.load_pretrained(config[f"{name}_model_path"], ())
        if name != ROLES[0] and tok.get_vocab() != tokenizer.get_vocab():
          raise ValueError("config.planner_model_path and config.grounder_model_path must"
                           " share one tokenizer.")
        tokenizer = tok
    for i, (name, batch) in enumerate(zip(ROLES, sft_batches(make_io(tokenizer, config),
                                                             gold_tasks))):
      if name not in models:
        models[name] = Decoder(ModelConfig(
            vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            **config[name].to_dict()), seed=config.seed + i)
      models[name] = _warm_up(models[name], batch, config.warmup,
                              config.warmup[f"{name}_steps"], config.seed + i)
    return models, tokenizer

  if config.planner_dir:
    dirs, build = {"planner": config.planner_dir, "grounder": config.grounder_dir}, None
  else:
    dirs = {n: os.path.join(workdir, f"{n}_init") for n in ROLES}
  models, tokenizer = common.build_or_load_hf(dirs, build, common.model_options(config))
  return models["planner"], models["grounder"], make_io(tokenizer, config)


# ------------------------------------------------------------------ stages
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


# ------------------------------------------------------------------- run
def run(config, workdir: str, *, stop_after: int | None = None, progress: bool = True,
        critic=None):
  """Warm-up + MOAT iterations + the separate baseline in `workdir` (resuming).

  `stop_after` ends after that many (method, iteration) phases, as a kill
  would. `critic` overrides `config.critic` (e.g. a stub). Returns the summary.
  """
  common.validate_config(config, DEFAULT_CONFIG)  # before any work
  _check_config(config)
  mesh = common.setup_mesh(config)
  common.make_workdir(workdir)
  run_records.check_or_store_config(workdir, config)
  world = make_world(config, os.path.join(workdir, "bm25"))
  train_tasks, held_in, held_out = split_tasks(world, config)
  held_in, held_out = held_in[:config.eval.held_in_size], held_out[:config.eval.held_out_size]
  gold_tasks = train_tasks[:config.warmup.num_gold]
  pool = pool_tasks(world, config, train_tasks)
  by_id = {t.id: t for t in pool}
  retriever = retrieval.BM25Retriever.build_or_load(world.corpus,
                                                    os.path.join(workdir, "bm25"))
  search_fn = mw.make_search_fn(retriever, world.search_result)
  if critic is None:
    critic = moat_critic.make_critic(config.critic.name, world=world, search_fn=search_fn,
                                     model_dir=config.critic.model_dir,
                                     rewrite_subgoals=config.critic.rewrite_subgoals,
                                     max_new_tokens=config.critic.max_new_tokens)
  t0 = time.perf_counter()
  planner, grounder, io = build_agents(config, workdir, world, gold_tasks)
  planner, grounder = (common.apply_lora(m, config.lora, seed=config.seed)  # rank 0: unchanged
                       for m in (planner, grounder))
  if mesh is not None:  # both agents on the same mesh
    sharding.shard_model(planner, mesh)
    sharding.shard_model(grounder, mesh)

  # A linear warm-up of every optimiser (a fresh Adam's first steps are
  # full-size and knock the warm-started agents about); then ~constant (the
  # cosine horizon is far beyond the few hundred updates of a run).
  w = config.optimizer_warmup_steps
  opt = lambda lr: train.make_optimizer(lr, warmup_steps=w, total_steps=100 * max(w, 100))
  dpo_opt, sft_opt = opt(config.stage1.learning_rate), opt(config.stage2.learning_rate)
  # The separate baseline: each agent at its own stage's learning rate unless
  # separate.learning_rate > 0 sets one for both.
  sep_lr = config.separate.learning_rate
  sep_p_opt = opt(sep_lr or config.stage1.learning_rate)
  sep_g_opt = opt(sep_lr or config.stage2.learning_rate)
  p_graphdef, p_fresh = train.init_train_state(planner, dpo_opt)
  g_graphdef, g_fresh = train.init_train_state(grounder, sft_opt)
  fresh = {"planner": p_fresh, "grounder": g_fresh}
  # Under LoRA the updates run the adapters' dropout.
  p_train, g_train = (lora.training(p_graphdef, p_fresh.params),
                      lora.training(g_graphdef, g_fresh.params))
  dpo_update = train.make_dpo_update(p_train, dpo_opt, beta=config.stage1.beta,
                                      rpo_alpha=config.stage1.rpo_alpha)
  g_update = train.make_sft_update(g_train, sft_opt)
  sep_p_update = train.make_sft_update(p_train, sep_p_opt)
  # (stage 2's optimiser unless separate.learning_rate is set: reuse its update)
  sep_g_update = train.make_sft_update(g_train, sep_g_opt) if sep_lr else g_update

  # stage2.replay_gold: the warm-up gold rows, trained on beside every iteration's pairs.
  gold_replay = [(t, io.encode(mw.gold_subgoals(t)), mw.actions_text(mw.gold_actions(t)))
                 for t in gold_tasks] if config.stage2.replay_gold else []

  def evaluate(state):
    p = (p_graphdef, state["planner"].params)
    g = (g_graphdef, state["grounder"].params)
    out = {}
    for split, tasks in (("held_in", held_in), ("held_out", held_out)):
      for k, v in moat_agents.evaluate(p, g, io, world, tasks, search_fn, mesh).items():
        out[f"eval/{split}_{k}"] = v
    return out

  q = config.stage1.tasks_per_iteration
  gold_p, gold_g = sft_batches(io, gold_tasks)

  def start():
    return {"before": evaluate(fresh), "budgets": [],
            "buffer": [],  # [task id, subgoals, actions] (stage2.accumulate)
            "stage_seconds": {"stage1": [], "stage2": []},
            "seconds": time.perf_counter() - t0}

  def moat_phase(state, it, index, extras):
    seed = config.seed * 1000 + index
    tasks = common.iteration_slice(pool, it, q)
    p_state, plans, s1 = stage1(p_graphdef, state["planner"], g_graphdef,
                                state["grounder"].params, io, tasks, config, dpo_update,
                                seed, mesh)
    replay = [(by_id[i], io.encode(sg), a) for i, sg, a in extras["buffer"]] + gold_replay
    g_state, pairs, s2 = stage2(g_graphdef, state["grounder"], io, world, tasks, plans,
                                critic, config, g_update, seed, mesh, search_fn, replay)
    if config.stage2.accumulate:  # this iteration's pairs are replayed from now on
      extras["buffer"] += [[t.id, sg, a] for t, sg, a in pairs]
    extras["budgets"].append([s1["stage1/updates"], s2["stage2/updates"]])
    extras["stage_seconds"]["stage1"].append(s1["stage1/seconds"])
    extras["stage_seconds"]["stage2"].append(s2["stage2/seconds"])
    state = {"planner": p_state, "grounder": g_state}
    return state, {**s1, **s2}, evaluate(state)

  def separate_phase(rows):
    """A baseline phase: MOAT's number of updates of that iteration, each agent
    SFT-trained alone on `rows(it)` -> (planner rows, grounder rows)."""

    def phase(state, it, index, extras):
      seed = config.seed * 1000 + index
      p_steps, g_steps = extras["budgets"][it]
      p_rows, g_rows = rows(it)
      p_state, _, _ = train.train_minibatches(sep_p_update, state["planner"], p_rows,
                                              config.stage1.batch_size, seed, steps=p_steps)
      g_state, _, _ = train.train_minibatches(sep_g_update, state["grounder"], g_rows,
                                              config.stage2.batch_size, seed, steps=g_steps)
      state = {"planner": p_state, "grounder": g_state}
      return (state, {"planner_updates": p_steps, "grounder_updates": g_steps,
                      "rows": len(p_rows["sequences"])}, evaluate(state))

    return phase

  def gold_pool_rows(it):
    """The gold set + the pool tasks MOAT drew in iterations 0..it, with their
    gold subgoals (planner) and gold actions (grounder)."""
    drawn = {t.id: t for i in range(it + 1) for t in common.iteration_slice(pool, i, q)}
    return sft_batches(io, list(gold_tasks) + list(drawn.values()))

  # The baselines run after MOAT, whose update counts they match.
  phases = {"moat": moat_phase}
  if config.separate.enabled:
    phases["separate"] = separate_phase(lambda it: (gold_p, gold_g))
  if config.separate.gold_pool:
    phases["separate_gold"] = separate_phase(gold_pool_rows)
  methods = list(phases)
  start_scores = lambda extras, method: extras["before"]

  def summarize(extras):
    """MOAT's keys bare, each baseline's prefixed by its name."""
    splits = {s: f"eval/{s}_success" for s in ("held_in", "held_out")}
    return {"train/seconds": extras["seconds"],
            "time/stage1_seconds": extras["stage_seconds"]["stage1"],
            "time/stage2_seconds": extras["stage_seconds"]["stage2"],
            **common.per_method_summary(extras, methods, "moat", splits, start_scores)}

  plot = lambda extras: common.plot_per_iteration(
      workdir, "success.png", extras["curves"], lambda _: extras["before"],
      {"eval/held_in_success": "held-in success (%)",
       "eval/held_out_success": "held-out success (%)"},
      "MOAT vs separately fine-tuned agents")
  graphdefs = {"planner": p_graphdef, "grounder": g_graphdef}

  def export(method, state):  # MOAT's agents -> final_planner/, final_grounder/
    if method == "moat":
      common.export_models(
          workdir, {n: nnx.merge(graphdefs[n], state[n].params) for n in ROLES},
          io.tokenizer, {n: config[f"{n}_model_path"] or config[f"{n}_dir"] for n in ROLES})

  return common.run_phases(workdir, fresh, phases, config.num_iterations, start=start,
                           start_scores=start_scores, summarize=summarize,
                           plot=plot, desc="MOAT",
                           postfix={"held_in": "eval/held_in_success",
                                    "held_out": "eval/held_out_success"},
                           stop_after=stop_after, progress=progress, on_method_end=export)


if __name__ == "__main__":
  common.run_binary(run, DEFAULT_CONFIG, "runs/moat")
