r"""MOAT (joint alignment of a planner and a grounder) on the built-in QA world.

  python -m alignax.experiments.moat --config=alignax/experiments/configs/moat.py:tiny

Presets: `default` (at most 15 minutes on a 2-core CPU) and `tiny` (tests).

Where the default deviates from docs/algorithms.md §8, its option's comment
says so (DEVIATION); the measured reasons: docs/results.md, "Tuning notes",
moat.

What the default measures, and what was measured and not taken: docs/results.md
(MOAT).
"""
import ml_collections

from alignax.agents.worlds import moat_world as mw

from alignax.experiments.runtime import config_schema, model_setup
from alignax.experiments.runtime.config_schema import (boolean, file_or_empty, integer,
                                                       number, one_of, string)
from alignax.experiments.runtime.model_setup import lora_config, lora_schema


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Tasks: relation chains over `relations` (space-separated); new
  # compositions are a hashed `heldout_fraction` of the length-3 chains, of
  # which a hashed `pool_only_fraction` are pool-only (their tasks join the
  # iterations' pool, never the warm-up's gold set nor any evaluation) and the
  # rest held-out, with `num_long` length-4 chains; `nested_fraction` of the
  # tasks are phrased "the r2 of the r1 of P" (the plan must reverse the
  # relations).
  c.world = ml_collections.ConfigDict(dict(
      num_people=200, num_cities=24, num_countries=6, num_companies=16,
      eval_fraction=0.2, relations=" ".join(mw.RELATIONS), nested_fraction=0.5,
      heldout_fraction=0.25, num_long=24, pool_only_fraction=0.0))
  # Tasks and tools from files instead of the built-in world (alignax/agents/data/moat_data.py,
  # docs/api.md "MOAT tasks from files"): `tasks_path` a JSONL of tasks (text,
  # gold subgoals, gold actions with their expected results, split),
  # `corpus_path` the JSONL corpus Search ranks by BM25 (it returns the top
  # passage's `search_result`: last_word or title), `lookup_path` the JSONL
  # lookup table. Rows without a split: `eval_fraction` / `heldout_fraction`
  # of them (by a hash of the id) are held-in / held-out evaluation tasks.
  # Empty tasks_path: the built-in world (`world`), the default.
  c.data = ml_collections.ConfigDict(dict(
      tasks_path="", corpus_path="", lookup_path="", search_result="last_word",
      eval_fraction=0.2, heldout_fraction=0.2))
  # Both agents: decoders built here, warm-started and saved in the HF format
  # under <workdir>/{planner,grounder}_init; `planner_dir` / `grounder_dir`
  # load existing HF directories instead (they must share one tokenizer).
  agent = dict(hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4,
               num_kv_heads=2, max_position_embeddings=256, tie_word_embeddings=True)
  c.planner = ml_collections.ConfigDict(dict(agent))
  c.grounder = ml_collections.ConfigDict(dict(agent))
  c.planner_dir = ""
  c.grounder_dir = ""
  # Precision of both agents (model_setup.PRECISION) and rematerialisation in
  # their updates (model_setup.REMAT).
  c.model = ml_collections.ConfigDict(dict(model_setup.PRECISION))
  c.train = ml_collections.ConfigDict(dict(model_setup.REMAT))
  # Hugging Face checkpoints to start from instead of the built-in decoders
  # (warm-started by `warmup` as the built-in ones; the steps may be 0). They
  # may be the same folder and must share one tokenizer; subgoals and actions
  # are plain text in its own vocabulary.
  c.planner_model_path = ""
  c.grounder_model_path = ""
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1))
  c.lengths = ml_collections.ConfigDict(dict(
      plan_prompt_len=32, plan_len=40, ground_prompt_len=80, action_len=40))
  # Warm-up SFT of each agent on `num_gold` gold (task, subgoals, actions),
  # `planner_steps` / `grounder_steps` updates.
  c.warmup = ml_collections.ConfigDict(dict(num_gold=128, planner_steps=200,
                                            grounder_steps=300, batch_size=32,
                                            learning_rate=3e-3))
  # Stage 1 (§8.1): K plans per task (temperature 1, top-p 0.95), grounder
  # scores, pairs with gap >= min_gap, DPO (sigmoid, beta) vs a frozen copy;
  # rpo_alpha: + that times the chosen plans' token-mean NLL (TRL's rpo_alpha);
  # max_chosen_score > 0: a pair only when its chosen plan scores at most that
  # (the grounder reproduces the gold actions from it; 0: off).
  # DEVIATIONS from §8.1: tasks_per_iteration=256 (§8.1: every training task,
  # each iteration), num_samples (K)=8 (§8.1: 15), min_gap=0.02 (§8.1: 0.1),
  # learning_rate=2e-4 (§8.1: 4e-7 for Lumos' 7B agents), rpo_alpha=1.0
  # (§8.1 has plain DPO); see docs/results.md, "Tuning notes", moat.
  c.stage1 = ml_collections.ConfigDict(dict(
      tasks_per_iteration=256, num_samples=8, temperature=1.0, top_p=0.95, min_gap=0.02,
      beta=0.2, learning_rate=2e-4, batch_size=16, epochs=1, rpo_alpha=1.0,
      max_chosen_score=0.0))
  # Stage 2 (§8.2): the grounder acts (temperature 0.1, top-p 0.95) on up to
  # `plans_per_task` distinct sampled plans per task; the critic's corrected
  # pairs are the grounder's SFT set; `accumulate`: the corrected pairs of
  # earlier iterations stay in it; `replay_gold`: so do the warm-up gold rows.
  # DEVIATION: accumulate / replay_gold (§8.2: SFT on this iteration's
  # corrected pairs only); see docs/results.md, "Tuning notes", moat.
  c.stage2 = ml_collections.ConfigDict(dict(
      plans_per_task=2, temperature=0.1, top_p=0.95, learning_rate=1e-4, batch_size=32,
      epochs=1, accumulate=True, replay_gold=True))
  # "builtin" (world execution) or "llm" (model_dir: an HF causal LM).
  # rewrite_subgoals (builtin): rewrite the planner's subgoals to match the
  # corrected actions (docs/algorithms.md §8.2's critic returns both); False keeps the
  # planner's own subgoals (measured and not taken: docs/results.md, MOAT).
  c.critic = ml_collections.ConfigDict(dict(name="builtin", model_dir="",
                                            max_new_tokens=96, rewrite_subgoals=True))
  # DEVIATION: 4 iterations (§8.3's run script: 2); see docs/results.md,
  # "Tuning notes", moat.
  c.num_iterations = 4
  # Linear learning-rate warm-up (updates) of the stage and baseline optimisers,
  # then ~constant. DEVIATION: §8.1 uses cosine over one epoch; see
  # docs/results.md, "Tuning notes", moat.
  c.optimizer_warmup_steps = 10
  # The baselines: each agent SFT alone, the same number of updates per
  # iteration as MOAT's stage 1 / stage 2 used, at its stage's learning rate
  # (learning_rate > 0: that one for both). enabled: `separate/`, on the
  # warm-up gold set; gold_pool: `separate_gold/`, on the gold set plus the
  # pool tasks MOAT drew so far, with their gold subgoals and gold actions.
  c.separate = ml_collections.ConfigDict(dict(enabled=True, gold_pool=True,
                                              learning_rate=0.0))
  c.eval = ml_collections.ConfigDict(dict(held_in_size=500, held_out_size=500))
  # LoRA adapters on both agents for the iterations (the warm-up trains the
  # whole models); rank 0 = off. See alignax.framework.lora.
  c.lora = lora_config()

  if preset == "tiny":
    c.world.update(num_people=24, num_cities=6, num_countries=3, num_companies=4,
                   num_long=4, pool_only_fraction=0.5)
    for a in (c.planner, c.grounder):
      a.update(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
               num_kv_heads=1, max_position_embeddings=128)
    c.warmup.update(num_gold=16, planner_steps=4, grounder_steps=4, batch_size=8)
    c.stage1.update(tasks_per_iteration=8, num_samples=3, batch_size=4)
    c.stage2.update(batch_size=8)
    c.num_iterations = 2
    c.eval.update(held_in_size=8, held_out_size=8)
  elif preset != "default":
    raise ValueError(f"Unknown preset {preset!r}; use 'default' or 'tiny'.")
  return c


# What each key may hold, checked before any work (`config_schema.validate_config`).
_POS, _NONNEG = config_schema.POSITIVE, config_schema.NON_NEGATIVE
_FRACTION, _LR = config_schema.FRACTION, config_schema.LEARNING_RATE
_TOP_P = config_schema.TOP_P
_MODEL = model_setup.builtin_model_rules()
_AGENT = {f"{a}.{k}": v for a in ("planner", "grounder")
          for k, v in ((k.split(".", 1)[1], v) for k, v in _MODEL.items())}
SCHEMA = {
    "seed": _NONNEG,
    "world.num_people": _POS, "world.num_cities": _POS, "world.num_countries": _POS,
    "world.num_companies": _POS, "world.eval_fraction": _FRACTION,
    "world.nested_fraction": number(0, 1), "world.heldout_fraction": _FRACTION,
    "world.num_long": _NONNEG, "world.pool_only_fraction": number(0, 1),
    "world.relations": string(),
    "data.tasks_path": file_or_empty(), "data.corpus_path": file_or_empty(),
    "data.lookup_path": file_or_empty(),
    "data.search_result": one_of("alignax.agents.worlds.moat_world:SEARCH_RESULTS"),
    "data.eval_fraction": number(0, 1, hi_open=True),
    "data.heldout_fraction": number(0, 1, hi_open=True),
    **_AGENT, **model_setup.precision_schema(),
    "planner_dir": config_schema.model_dir_or_empty(),
    "grounder_dir": config_schema.model_dir_or_empty(),
    "planner_model_path": config_schema.model_dir_or_empty(),
    "grounder_model_path": config_schema.model_dir_or_empty(),
    "mesh.data": _POS, "mesh.fsdp": _POS, "mesh.tensor": _POS,
    "lengths.plan_prompt_len": _POS, "lengths.plan_len": _POS,
    "lengths.ground_prompt_len": _POS, "lengths.action_len": _POS,
    "warmup.num_gold": _POS, "warmup.planner_steps": _NONNEG,
    "warmup.grounder_steps": _NONNEG, "warmup.batch_size": _POS,
    "warmup.learning_rate": _LR,
    "stage1.tasks_per_iteration": _POS, "stage1.num_samples": integer(2),
    "stage1.temperature": number(0, lo_open=True), "stage1.top_p": _TOP_P,
    "stage1.min_gap": number(0), "stage1.beta": number(0, lo_open=True),
    "stage1.learning_rate": _LR, "stage1.batch_size": _POS, "stage1.epochs": _POS,
    "stage1.rpo_alpha": number(0), "stage1.max_chosen_score": number(0),
    "stage2.plans_per_task": _POS, "stage2.temperature": number(0),
    "stage2.top_p": _TOP_P, "stage2.learning_rate": _LR, "stage2.batch_size": _POS,
    "stage2.epochs": _POS, "stage2.accumulate": boolean(), "stage2.replay_gold": boolean(),
    "critic.name": one_of("alignax.agents.methods.moat_critic:CRITICS"),
    "critic.model_dir": config_schema.model_dir_or_empty(), "critic.max_new_tokens": _POS,
    "critic.rewrite_subgoals": boolean(),
    "num_iterations": _POS, "optimizer_warmup_steps": _NONNEG,
    "separate.enabled": boolean(), "separate.gold_pool": boolean(),
    "separate.learning_rate": number(0),
    "eval.held_in_size": _POS, "eval.held_out_size": _POS,
    **lora_schema(),
}


def _check_relations(c):
  unknown = sorted(set(c.world.relations.split()) - set(mw.RELATIONS))
  if unknown or not c.world.relations.split():
    return (f"config.world.relations={c.world.relations!r}: give space-separated names"
            f" from {sorted(mw.RELATIONS)} (unknown: {unknown})")


def _check_model_paths(c):
  if bool(c.planner_model_path) != bool(c.grounder_model_path):
    return "set both config.planner_model_path and config.grounder_model_path, or neither"
  if c.planner_model_path and c.planner_dir:
    return ("config.planner_dir/grounder_dir (ready agents) and config.planner_model_path/"
            "grounder_model_path (checkpoints to warm up) exclude each other")


def _check_data(c):
  d = c.data
  if d.tasks_path and not d.corpus_path:
    return ("config.data.tasks_path needs config.data.corpus_path (the corpus Search ranks;"
            " config.data.lookup_path, the lookup table, is optional)")
  if not d.tasks_path and (d.corpus_path or d.lookup_path):
    return ("config.data.corpus_path/lookup_path are read only with config.data.tasks_path"
            " (without it the built-in world has its own corpus and facts)")
  if d.eval_fraction + d.heldout_fraction >= 1:
    return (f"config.data.eval_fraction + heldout_fraction = {d.eval_fraction}"
            f" + {d.heldout_fraction} leaves no training tasks; keep the sum below 1")


CHECKS = (_check_relations, _check_model_paths, _check_data)
