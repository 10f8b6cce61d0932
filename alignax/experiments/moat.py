r"""MOAT: joint alignment of a planning agent and a grounding agent (docs/algorithms.md §8).

  python -m alignax.experiments.moat                       # default preset, runs/moat
  python -m alignax.experiments.moat --config=alignax/experiments/configs/moat.py:tiny \
      --workdir=runs/moat_tiny

Tasks come from the built-in QA world (`agents.worlds.moat_world`): relation chains
applied to a person, with gold subgoals and gold actions; held-in chains are
trained on, held-out chains (new compositions of steps seen in training, at
training lengths: `moat_world.chain_split`) only evaluated;
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
   execution) after every iteration, per chain length, with its standard
   error over the (chain, phrasing) groups (`summary_metrics`).
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

import dataclasses
import functools
import os
import re
import time
from typing import Any

from flax import nnx

from alignax.agents.data import moat_data, qa_data
from alignax.agents.methods import moat_agents, moat_critic
from alignax.agents.methods.moat_stages import stage1, stage2
from alignax.agents.worlds import retrieval
from alignax.agents.worlds import moat_world as mw
from alignax.experiments.runtime import launch, loop, model_setup, outputs, pretrained
from alignax.framework import lora, sharding, train

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "moat.py")
ROLES = ("planner", "grounder")


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


def _split_args(w):
  """`chain_split`'s options of `config.world` (as keyword arguments)."""
  return dict(heldout_fraction=w.heldout_fraction, pool_only_fraction=w.pool_only_fraction,
              heldout_lengths=tuple(int(x) for x in w.heldout_lengths.split()),
              max_len=w.max_len)


def split_tasks(world, config):
  """(train, held-in, held-out) tasks of `world` under `config.world`."""
  return world.splits(config.world.eval_fraction, **_split_args(config.world))


def pool_tasks(world, config, train_tasks):
  """The iterations' pool: the training tasks after the warm-up's gold set,
  with `world.pool_only_tasks` (`config.world.pool_only_fraction`) mixed in
  evenly, so that every iteration's slice holds both in proportion."""
  labeled = list(train_tasks[config.warmup.num_gold:])
  pool_only = world.pool_only_tasks(**_split_args(config.world))
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


def _warm_up(model, batch, w, steps, seed, name):
  if steps == 0:
    return model
  optimizer = train.make_optimizer(w.learning_rate, warmup_steps=min(10, steps),
                                   total_steps=steps)
  graphdef, state = train.init_train_state(model, optimizer)
  update = train.make_sft_update(graphdef, optimizer)
  state, _, _ = train.train_minibatches(update, state, batch, w.batch_size, seed, steps=steps,
                                        desc=f"warm-up SFT ({name})")
  return nnx.merge(graphdef, state.params)


def build_builtin_agents(config, world, gold_tasks):
  """The two agents warm-started on the gold tasks: ({role: model}, tokenizer)."""
  _, held_in, held_out = split_tasks(world, config)
  tokenizer = qa_data.train_word_tokenizer(
      mw.vocabulary(world, list(gold_tasks) + held_in + held_out))
  models = {}
  if config.planner_model_path:  # subgoals and actions are text: no markers to add
    for name in ROLES:
      models[name], tok = pretrained.load_pretrained(config[f"{name}_model_path"], ())
      if name != ROLES[0] and tok.get_vocab() != tokenizer.get_vocab():
        raise ValueError("config.planner_model_path and config.grounder_model_path must"
                         " share one tokenizer.")
      tokenizer = tok
  for i, (name, batch) in enumerate(zip(ROLES, sft_batches(make_io(tokenizer, config),
                                                           gold_tasks))):
    if name not in models:
      models[name] = model_setup.new_decoder(tokenizer, config[name], config.seed + i)
    models[name] = _warm_up(models[name], batch, config.warmup,
                            config.warmup[f"{name}_steps"], config.seed + i, name)
  return models, tokenizer


def build_agents(config, workdir, world, gold_tasks):
  """Loads the two agents (HF dirs `planner_dir`, `grounder_dir`, or
  `<workdir>/{planner,grounder}_init`, built and warm-started first if absent)."""

  build = functools.partial(build_builtin_agents, config, world, gold_tasks)
  if config.planner_dir:
    dirs, build = {"planner": config.planner_dir, "grounder": config.grounder_dir}, None
  else:
    dirs = {n: os.path.join(workdir, f"{n}_init") for n in ROLES}
  models, tokenizer = pretrained.build_or_load_hf(dirs, build,
                                                  model_setup.model_options(config))
  return models["planner"], models["grounder"], make_io(tokenizer, config)


# ------------------------------------------------------------------- main
def run(config, workdir: str, *, stop_after: int | None = None, progress: bool = True,
        critic=None):
  """Warm-up + MOAT iterations + the separate baselines in `workdir` (resuming).

  `stop_after` ends after that many (method, iteration) phases, as a kill
  would. `critic` overrides `config.critic` (e.g. a stub). Returns the summary.
  """
  config, mesh, _ = launch.start_run(config, workdir, DEFAULT_CONFIG)  # before any work
  setup, fresh = make_setup(config, workdir, mesh, critic)
  return loop.run_phases(workdir, fresh, make_phases(setup, fresh), stop_after=stop_after,
                         progress=progress)


@dataclasses.dataclass(frozen=True)
class Setup:
  """What MOAT's phases read, built once by `make_setup` (never changed)."""
  config: Any
  workdir: str
  mesh: Any
  world: Any
  search_fn: Any
  critic: Any
  io: Any
  tasks: dict            # gold (the warm-up's), held_in, held_out, pool
  graphdefs: dict        # planner, grounder
  updates: dict          # dpo, sft (stage 2), separate_planner, separate_grounder
  gold_batches: tuple    # the gold set's (planner rows, grounder rows)
  gold_replay: list      # stage2.replay_gold: (task, subgoal ids, actions) rows
  t0: float              # when the warm-up started


def make_setup(config, workdir, mesh, critic):
  """World, critic, the two agents (warm-up, LoRA, mesh), optimisers and
  updates. Returns (Setup, fresh state {"planner", "grounder"})."""
  world = make_world(config, os.path.join(workdir, "bm25"))
  train_tasks, held_in, held_out = split_tasks(world, config)
  gold_tasks = train_tasks[:config.warmup.num_gold]
  tasks = {"gold": gold_tasks, "held_in": held_in[:config.eval.held_in_size],
           "held_out": held_out[:config.eval.held_out_size],
           "pool": pool_tasks(world, config, train_tasks)}
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
  planner, grounder = (model_setup.apply_lora(m, config.lora, seed=config.seed)
                       for m in (planner, grounder))  # rank 0: unchanged
  if mesh is not None:  # both agents on the same mesh
    sharding.shard_model(planner, mesh)
    sharding.shard_model(grounder, mesh)
  # A linear warm-up of every optimiser (a fresh Adam's first steps are
  # full-size and knock the warm-started agents about); then ~constant (the
  # cosine horizon is far beyond the few hundred updates of a run).
  w = config.optimizer_warmup_steps
  opt = lambda lr: train.make_optimizer(lr, warmup_steps=w, total_steps=100 * max(w, 100))
  dpo_opt, sft_opt = opt(config.stage1.learning_rate), opt(config.stage2.learning_rate)
  # The separate baselines: each agent at its own stage's learning rate unless
  # separate.learning_rate > 0 sets one for both.
  sep_lr = config.separate.learning_rate
  sep_p_opt = opt(sep_lr or config.stage1.learning_rate)
  sep_g_opt = opt(sep_lr or config.stage2.learning_rate)
  p_graphdef, p_fresh = train.init_train_state(planner, dpo_opt)
  g_graphdef, g_fresh = train.init_train_state(grounder, sft_opt)
  # Under LoRA the updates run the adapters' dropout.
  p_train, g_train = (lora.training(p_graphdef, p_fresh.params),
                      lora.training(g_graphdef, g_fresh.params))
  updates = {"dpo": train.make_dpo_update(p_train, dpo_opt, beta=config.stage1.beta,
                                          rpo_alpha=config.stage1.rpo_alpha),
             "sft": train.make_sft_update(g_train, sft_opt)}
  updates["separate_planner"] = train.make_sft_update(p_train, sep_p_opt)
  # (stage 2's optimiser unless separate.learning_rate is set: reuse its update)
  updates["separate_grounder"] = (train.make_sft_update(g_train, sep_g_opt) if sep_lr
                                  else updates["sft"])
  gold_replay = [(t, io.encode(mw.gold_subgoals(t)), mw.actions_text(mw.gold_actions(t)))
                 for t in gold_tasks] if config.stage2.replay_gold else []
  setup = Setup(config, workdir, mesh, world, search_fn, critic, io, tasks,
                {"planner": p_graphdef, "grounder": g_graphdef}, updates,
                sft_batches(io, gold_tasks), gold_replay, t0)
  return setup, {"planner": p_fresh, "grounder": g_fresh}


def make_phases(setup: Setup, fresh) -> loop.Phases:
  """MOAT, then the baselines that match its update counts."""
  methods = {"moat": functools.partial(moat_phase, setup)}
  if setup.config.separate.enabled:
    methods["separate"] = functools.partial(separate_phase, setup, gold_rows)
  if setup.config.separate.gold_pool:
    methods["separate_gold"] = functools.partial(separate_phase, setup, gold_pool_rows)
  return loop.Phases(
      methods, setup.config.num_iterations, start=functools.partial(start, setup, fresh),
      start_scores=start_scores,
      summarize=functools.partial(summarize, list(methods),
                                  groups={s: [t.group for t in setup.tasks[s]]
                                          for s in ("held_in", "held_out")}),
      plot=functools.partial(plot, setup.workdir), desc="MOAT",
      postfix={"held_in": "eval/held_in_success", "held_out": "eval/held_out_success"},
      on_method_end=functools.partial(export, setup))


# ------------------------------------------------------------------- loop
def evaluate(setup: Setup, state) -> dict:
  """Held-in and held-out success (greedy planner -> greedy grounder -> world)."""
  p = (setup.graphdefs["planner"], state["planner"].params)
  g = (setup.graphdefs["grounder"], state["grounder"].params)
  out = {}
  for split in ("held_in", "held_out"):
    for k, v in moat_agents.evaluate(p, g, setup.io, setup.world, setup.tasks[split],
                                     setup.search_fn, setup.mesh).items():
      out[f"eval/{split}_{k}"] = v
  return out


def start(setup: Setup, state) -> dict:
  """The extras of a fresh run: the warm-up's scores ("before"), MOAT's update
  counts per iteration ("budgets", which the baselines match), the corrected
  pairs replayed with `stage2.accumulate` ("buffer": [task id, subgoals,
  actions]), the stages' seconds and the seconds so far."""
  return {"before": evaluate(setup, state), "budgets": [], "buffer": [],
          "stage_seconds": {"stage1": [], "stage2": []},
          "seconds": time.perf_counter() - setup.t0}


def start_scores(extras, method):
  del method  # every method starts from the same warm-up agents
  return extras["before"]


def moat_phase(setup: Setup, state, it, index, extras):
  """One MOAT iteration on its slice of the pool: stage 1, then stage 2."""
  config, io = setup.config, setup.io
  seed = config.seed * 1000 + index
  tasks = loop.iteration_slice(setup.tasks["pool"], it, config.stage1.tasks_per_iteration)
  p_state, plans, s1 = stage1(setup.graphdefs["planner"], state["planner"],
                              setup.graphdefs["grounder"], state["grounder"].params, io,
                              tasks, config, setup.updates["dpo"], seed, setup.mesh)
  by_id = {t.id: t for t in setup.tasks["pool"]}
  replay = ([(by_id[i], io.encode(sg), a) for i, sg, a in extras["buffer"]]
            + setup.gold_replay)
  g_state, pairs, s2 = stage2(setup.graphdefs["grounder"], state["grounder"], io,
                              setup.world, tasks, plans, setup.critic, config,
                              setup.updates["sft"], seed, setup.mesh, setup.search_fn, replay)
  if config.stage2.accumulate:  # this iteration's pairs are replayed from now on
    extras["buffer"] += [[t.id, sg, a] for t, sg, a in pairs]
  extras["budgets"].append([s1["stage1/updates"], s2["stage2/updates"]])
  extras["stage_seconds"]["stage1"].append(s1["stage1/seconds"])
  extras["stage_seconds"]["stage2"].append(s2["stage2/seconds"])
  state = {"planner": p_state, "grounder": g_state}
  return state, {**s1, **s2}, evaluate(setup, state)


def gold_rows(setup: Setup, it):
  """The warm-up gold set (planner rows, grounder rows)."""
  del it
  return setup.gold_batches


def gold_pool_rows(setup: Setup, it):
  """The gold set + the pool tasks MOAT drew in iterations 0..it, with their
  gold subgoals (planner) and gold actions (grounder)."""
  q = setup.config.stage1.tasks_per_iteration
  drawn = {t.id: t for i in range(it + 1)
           for t in loop.iteration_slice(setup.tasks["pool"], i, q)}
  return sft_batches(setup.io, list(setup.tasks["gold"]) + list(drawn.values()))


def separate_phase(setup: Setup, rows, state, it, index, extras):
  """A baseline phase: MOAT's number of updates of that iteration, each agent
  SFT-trained alone on `rows(setup, it)` -> (planner rows, grounder rows)."""
  config = setup.config
  seed = config.seed * 1000 + index
  p_steps, g_steps = extras["budgets"][it]
  p_rows, g_rows = rows(setup, it)
  p_state, _, _ = train.train_minibatches(setup.updates["separate_planner"], state["planner"],
                                          p_rows, config.stage1.batch_size, seed,
                                          steps=p_steps)
  g_state, _, _ = train.train_minibatches(setup.updates["separate_grounder"],
                                          state["grounder"], g_rows, config.stage2.batch_size,
                                          seed, steps=g_steps)
  state = {"planner": p_state, "grounder": g_state}
  return (state, {"planner_updates": p_steps, "grounder_updates": g_steps,
                  "rows": len(p_rows["sequences"])}, evaluate(setup, state))


def summary_metrics(scores) -> dict[str, str]:
  """{summary name: score key} of an evaluation's `scores`: each split's
  success (`held_in`, `held_out`), its success per chain length
  (`held_out_hops<n>`), its standard errors (`held_out_se` over the (chain,
  phrasing) groups, `_se_chains`, `_se_tasks`) and its numbers of groups and
  chains."""
  out = {}
  for s in ("held_in", "held_out"):
    out[s] = f"eval/{s}_success"
    for k in sorted(scores):
      m = re.fullmatch(rf"eval/{s}_success_(hops\d+|se|se_chains|se_tasks)", k)
      if m:
        out[f"{s}_{m.group(1)}"] = k
    for k in ("groups", "chains"):
      if f"eval/{s}_{k}" in scores:
        out[f"{s}_{k}"] = f"eval/{s}_{k}"
  return out


def paired_difference(a: str, b: str, groups) -> tuple[float, float]:
  """(mean of a - b, its standard error over `groups`), in points, of two
  methods' per-task outcomes on the same tasks ("0" / "1" strings)."""
  d = [int(x) - int(y) for x, y in zip(a, b)]
  return 100.0 * sum(d) / len(d), 100.0 * mw.cluster_se(d, groups)


def summarize(methods, extras, groups=None):
  """MOAT's keys bare, each baseline's prefixed by its name: per split (and
  `summary_metrics`' per-length figures and standard errors) its score
  before, after and per iteration. With `groups` ({split: each task's
  group}), each baseline's `<method>/eval/<split>_moat_minus` (MOAT's success
  minus the baseline's after the last iteration, on the same tasks) and
  `_moat_minus_se` (the paired difference's standard error over groups: the
  SE that decides whether a margin is resolved)."""
  splits = summary_metrics(extras["before"])
  out = {"train/seconds": extras["seconds"],
         "time/stage1_seconds": extras["stage_seconds"]["stage1"],
         "time/stage2_seconds": extras["stage_seconds"]["stage2"],
         **loop.per_method_summary(extras, methods, "moat", splits, start_scores)}
  last = {m: (extras["curves"][m] or [extras["before"]])[-1] for m in methods}
  for m in methods if groups else ():
    for s, g in groups.items():
      key = f"eval/{s}_outcomes"
      if m != "moat" and key in last[m] and key in last["moat"]:
        diff, se = paired_difference(last["moat"][key], last[m][key], g)
        out[f"{m}/eval/{s}_moat_minus"], out[f"{m}/eval/{s}_moat_minus_se"] = diff, se
  return out


def plot(workdir, extras):
  outputs.plot_per_iteration(
      workdir, "success.png", extras["curves"], functools.partial(start_scores, extras),
      {"eval/held_in_success": "held-in success (%)",
       "eval/held_out_success": "held-out success (%)"},
      "MOAT vs separately fine-tuned agents")


def export(setup: Setup, method, state):
  """MOAT's agents -> final_planner/, final_grounder/."""
  if method == "moat":
    c = setup.config
    pretrained.export_models(
        setup.workdir, {n: nnx.merge(setup.graphdefs[n], state[n].params) for n in ROLES},
        setup.io.tokenizer, {n: c[f"{n}_model_path"] or c[f"{n}_dir"] for n in ROLES})


if __name__ == "__main__":
  launch.run_binary(run, DEFAULT_CONFIG, "runs/moat")
