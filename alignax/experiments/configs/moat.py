r"""MOAT (joint alignment of a planner and a grounder) on the built-in QA world.

  python -m alignax.experiments.moat --config=alignax/experiments/configs/moat.py:tiny

Presets: `default` (at most 15 minutes on a 2-core CPU) and `tiny` (tests).

Where the default deviates from docs/algorithms.md §8, its option's comment
says so (DEVIATION); the measured reasons: docs/results.md, "Tuning notes",
moat.

What the default measures, and what was measured and not taken: docs/results.md
(MOAT).
"""
import dataclasses

import ml_collections

from alignax.agents.worlds import moat_world as mw
from alignax.experiments.runtime.config_schema import (FRACTION, LEARNING_RATE,
                                                       NON_NEGATIVE, POSITIVE, TOP_P,
                                                       Section, config_dict, file_or_empty,
                                                       integer, model_dir_or_empty, number,
                                                       one_of, option)
from alignax.experiments.runtime.model_setup import (DecoderSizes, LoraConfig, MeshConfig,
                                                     Precision, Remat)

frozen = dataclasses.dataclass(frozen=True)


@frozen
class WorldConfig(Section):
  """Tasks: relation chains over `relations` (space-separated), of length
  1..`max_len`; new compositions are about a `heldout_fraction` of the chains
  at each of `heldout_lengths` (hash order), each only if every one of its
  steps (relation at its position, answer at its length) stays in some
  training chain (`moat_world.chain_split`): held-out tasks are new
  compositions of seen steps at seen lengths. Of them a hashed
  `pool_only_fraction` are pool-only (their tasks join the iterations' pool,
  never the warm-up's gold set nor any evaluation), the rest held-out.
  `nested_fraction` of the tasks are phrased "the r2 of the r1 of P" (the
  plan must reverse the relations). The default: 85 training chains (11 / 19
  / 55 of length 1 / 2 / 3), 50 held-out ones (13 / 37 of length 2 / 3), 100
  (chain, phrasing) groups."""

  num_people: int = option(200, POSITIVE)
  num_cities: int = option(24, POSITIVE)
  num_countries: int = option(6, POSITIVE)
  num_companies: int = option(16, POSITIVE)
  eval_fraction: float = option(0.2, FRACTION)
  relations: str = option(" ".join(mw.RELATIONS))
  nested_fraction: float = option(0.5, number(0, 1))
  max_len: int = option(3, integer(2), "the longest chain (training and held-out)")
  heldout_fraction: float = option(0.4, number(0, 1, hi_open=True),
                                   "share of the chains of each held-out length that"
                                   " are new compositions")
  heldout_lengths: str = option("2 3", help="space-separated chain lengths (2..max_len)"
                                " that new compositions are drawn from")
  pool_only_fraction: float = option(0.0, number(0, 1))


@frozen
class DataConfig(Section):
  """Tasks and tools from files instead of the built-in world
  (alignax/agents/data/moat_data.py, docs/api.md "MOAT tasks from files").
  Rows without a split: `eval_fraction` / `heldout_fraction` of them (by a
  hash of the id) are held-in / held-out evaluation tasks."""

  tasks_path: str = option("", file_or_empty(), "a JSONL of tasks (text, gold subgoals,"
                           " gold actions with their expected results, split); empty:"
                           " the built-in world (`world`)")
  corpus_path: str = option("", file_or_empty(), "the JSONL corpus Search ranks by BM25")
  lookup_path: str = option("", file_or_empty(), "the JSONL lookup table")
  search_result: str = option("last_word",
                              one_of("alignax.agents.worlds.moat_world:SEARCH_RESULTS"),
                              "what Search returns of the top passage: last_word or title")
  eval_fraction: float = option(0.2, number(0, 1, hi_open=True))
  heldout_fraction: float = option(0.2, number(0, 1, hi_open=True))


@frozen
class LengthsConfig(Section):
  plan_prompt_len: int = option(32, POSITIVE)
  plan_len: int = option(40, POSITIVE)
  ground_prompt_len: int = option(80, POSITIVE)
  action_len: int = option(40, POSITIVE)


@frozen
class WarmupConfig(Section):
  """Warm-up SFT of each agent on `num_gold` gold (task, subgoals, actions),
  `planner_steps` / `grounder_steps` updates."""

  num_gold: int = option(128, POSITIVE)
  planner_steps: int = option(200, NON_NEGATIVE)
  grounder_steps: int = option(300, NON_NEGATIVE)
  batch_size: int = option(32, POSITIVE)
  learning_rate: float = option(3e-3, LEARNING_RATE)


@frozen
class Stage1Config(Section):
  """Stage 1 (§8.1): K plans per task (temperature 1, top-p 0.95), grounder
  scores, pairs with gap >= min_gap, DPO (sigmoid, beta) vs a frozen copy.
  DEVIATIONS from §8.1: tasks_per_iteration=256 (§8.1: every training task,
  each iteration), num_samples (K)=8 (§8.1: 15), min_gap=0.02 (§8.1: 0.1),
  learning_rate=2e-4 (§8.1: 4e-7 for Lumos' 7B agents), rpo_alpha=1.0 (§8.1
  has plain DPO); see docs/results.md, "Tuning notes", moat."""

  tasks_per_iteration: int = option(256, POSITIVE)
  num_samples: int = option(8, integer(2), "K plans per task (>= 2 to form DPO pairs)")
  temperature: float = option(1.0, number(0, lo_open=True))
  top_p: float = option(0.95, TOP_P)
  min_gap: float = option(0.02, number(0))
  beta: float = option(0.2, number(0, lo_open=True))
  learning_rate: float = option(2e-4, LEARNING_RATE)
  batch_size: int = option(16, POSITIVE)
  epochs: int = option(1, POSITIVE)
  rpo_alpha: float = option(1.0, number(0), "+ that times the chosen plans' token-mean"
                            " NLL (TRL's rpo_alpha)")
  max_chosen_score: float = option(0.0, number(0), "> 0: a pair only when its chosen"
                                   " plan scores at most that (the grounder reproduces"
                                   " the gold actions from it; 0: off)")


@frozen
class Stage2Config(Section):
  """Stage 2 (§8.2): the grounder acts (temperature 0.1, top-p 0.95) on up to
  `plans_per_task` distinct sampled plans per task; the critic's corrected
  pairs are the grounder's SFT set. DEVIATION: accumulate / replay_gold (§8.2:
  SFT on this iteration's corrected pairs only); see docs/results.md, "Tuning
  notes", moat."""

  plans_per_task: int = option(2, POSITIVE)
  temperature: float = option(0.1, number(0))
  top_p: float = option(0.95, TOP_P)
  learning_rate: float = option(1e-4, LEARNING_RATE)
  batch_size: int = option(32, POSITIVE)
  epochs: int = option(1, POSITIVE)
  accumulate: bool = option(True, help="the corrected pairs of earlier iterations stay"
                            " in the SFT set")
  replay_gold: bool = option(True, help="so do the warm-up gold rows")


@frozen
class CriticConfig(Section):
  name: str = option("builtin", one_of("alignax.agents.methods.moat_critic:CRITICS"),
                     "builtin (world execution) or llm (model_dir: an HF causal LM)")
  model_dir: str = option("", model_dir_or_empty())
  max_new_tokens: int = option(96, POSITIVE)
  rewrite_subgoals: bool = option(True, help="builtin: rewrite the planner's subgoals to"
                                  " match the corrected actions (docs/algorithms.md"
                                  " §8.2's critic returns both); False keeps the"
                                  " planner's own (measured and not taken:"
                                  " docs/results.md, MOAT)")


@frozen
class SeparateConfig(Section):
  """The baselines: each agent SFT alone, the same number of updates per
  iteration as MOAT's stage 1 / stage 2 used, at its stage's learning rate."""

  enabled: bool = option(True, help="`separate/`, on the warm-up gold set")
  gold_pool: bool = option(True, help="`separate_gold/`, on the gold set plus the pool"
                           " tasks MOAT drew so far, with their gold subgoals and actions")
  learning_rate: float = option(0.0, number(0), "> 0: that one for both")


@frozen
class EvalConfig(Section):
  held_in_size: int = option(500, POSITIVE)
  held_out_size: int = option(500, POSITIVE)


@frozen
class Config(Section):
  """The MOAT binary's options (`alignax.experiments.moat`)."""

  seed: int = option(0, NON_NEGATIVE)
  world: WorldConfig = option(WorldConfig())
  data: DataConfig = option(DataConfig())
  planner: DecoderSizes = option(DecoderSizes(), help="the built-in planner: a decoder"
                                 " built here, warm-started and saved in the HF format"
                                 " under <workdir>/planner_init")
  grounder: DecoderSizes = option(DecoderSizes(), help="the same for the grounder")
  planner_dir: str = option("", model_dir_or_empty(), "an existing HF directory loaded"
                            " instead (sharing one tokenizer with grounder_dir)")
  grounder_dir: str = option("", model_dir_or_empty())
  model: Precision = option(Precision(), help="precision of both agents")
  train: Remat = option(Remat())
  planner_model_path: str = option("", model_dir_or_empty(), "a Hugging Face checkpoint to"
                                   " start from instead of the built-in decoder"
                                   " (warm-started by `warmup` as the built-in ones; the"
                                   " steps may be 0); may be the same folder as"
                                   " grounder_model_path and must share its tokenizer")
  grounder_model_path: str = option("", model_dir_or_empty())
  mesh: MeshConfig = option(MeshConfig())
  lengths: LengthsConfig = option(LengthsConfig())
  warmup: WarmupConfig = option(WarmupConfig())
  stage1: Stage1Config = option(Stage1Config())
  stage2: Stage2Config = option(Stage2Config())
  critic: CriticConfig = option(CriticConfig())
  num_iterations: int = option(4, POSITIVE, "DEVIATION: 4 (§8.3's run script: 2); see"
                               " docs/results.md, \"Tuning notes\", moat")
  optimizer_warmup_steps: int = option(10, NON_NEGATIVE, "linear learning-rate warm-up"
                                       " (updates) of the stage and baseline optimisers,"
                                       " then ~constant. DEVIATION: §8.1 uses cosine over"
                                       " one epoch")
  separate: SeparateConfig = option(SeparateConfig())
  eval: EvalConfig = option(EvalConfig())
  lora: LoraConfig = option(LoraConfig(), help="adapters on both agents for the"
                            " iterations (the warm-up trains the whole models); rank 0 ="
                            " off")


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
  c = config_dict(Config())
  if preset == "tiny":
    c.world.update(num_people=24, num_cities=6, num_countries=3, num_companies=4,
                   pool_only_fraction=0.5)
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



# ---------------------------------------------------------------- CHECKS
def _check_relations(c):
  unknown = sorted(set(c.world.relations.split()) - set(mw.RELATIONS))
  if unknown or not c.world.relations.split():
    return (f"config.world.relations={c.world.relations!r}: give space-separated names"
            f" from {sorted(mw.RELATIONS)} (unknown: {unknown})")


def _check_heldout_lengths(c):
  w = c.world
  try:
    lengths = [int(x) for x in w.heldout_lengths.split()]
  except ValueError:
    lengths = None
  if not lengths or not all(2 <= n <= w.max_len for n in lengths):
    return (f"config.world.heldout_lengths={w.heldout_lengths!r}: give space-separated"
            f" chain lengths in 2..config.world.max_len={w.max_len} (held-out chains are"
            " new compositions at lengths the training chains also have)")


def _check_model_paths(c):
  if bool(c.planner_model_path) != bool(c.grounder_model_path):
    return "set both config.planner_model_path and config.grounder_model_path, or neither"
  if bool(c.planner_dir) != bool(c.grounder_dir):
    return "set both config.planner_dir and config.grounder_dir, or neither"
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


CHECKS = (_check_relations, _check_heldout_lengths, _check_model_paths, _check_data)
