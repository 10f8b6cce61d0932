r"""EXSEARCH (generalized EM for a search agent) on the built-in QA world.

  python -m alignax.experiments.exsearch --config=alignax/experiments/configs/exsearch.py:tiny

Presets: `default` (a few minutes on a 2-core CPU) and `tiny` (tests).
"""
import dataclasses

import ml_collections

from alignax.experiments.runtime.config_schema import (FRACTION, LEARNING_RATE,
                                                       NON_NEGATIVE, POSITIVE, TOP_P,
                                                       Section, config_dict, many_of,
                                                       model_dir_or_empty, number, one_of,
                                                       option)
from alignax.experiments.runtime.model_setup import BuiltinModel, LoraConfig, Remat

frozen = dataclasses.dataclass(frozen=True)


@frozen
class WorldConfig(Section):
  """The built-in world (400 people give ~300 held-out questions, all evaluated)."""

  num_people: int = option(400, POSITIVE)
  num_cities: int = option(24, POSITIVE)
  num_countries: int = option(6, POSITIVE)
  num_companies: int = option(16, POSITIVE)
  heldout_fraction: float = option(0.2, FRACTION)
  split: str = option("question", one_of(("question", "person")))
  name_words: int = option(2, POSITIVE, "2: people are \"first last\" from shared word"
                           " inventories, so a name the warm-up never wrote can still be"
                           " copied into a query (one-word names measured:"
                           " docs/results.md, \"Tuning notes\", exsearch)")


@frozen
class RetrievalConfig(Section):
  top_k: int = option(3, POSITIVE)


@frozen
class RolloutConfig(Section):
  """E-step sampling as the paper (temperature 0.8, top_p 0.95); measured
  against temperature 1: docs/results.md, "Tuning notes", exsearch."""

  max_turns: int = option(3, POSITIVE)
  max_turn_tokens: int = option(12, POSITIVE)
  max_tool_tokens: int = option(40, POSITIVE)
  max_total_tokens: int = option(160, POSITIVE)
  max_answer_tokens: int = option(8, POSITIVE)
  temperature: float = option(0.8, number(0, lo_open=True))
  top_p: float = option(0.95, TOP_P)


@frozen
class WarmupConfig(Section):
  """Warm-up SFT on a few oracle trajectories (the "annotated" set); 150 steps
  (fewer sit on a cliff of the warm-up's held-out EM; see docs/results.md,
  "Tuning notes", exsearch)."""

  num_oracle: int = option(64, POSITIVE)
  steps: int = option(150, NON_NEGATIVE)
  batch_size: int = option(16, POSITIVE)
  learning_rate: float = option(3e-3, LEARNING_RATE)


@frozen
class EmConfig(Section):
  """E-step: `num_samples` (K) trajectories for each of
  `questions_per_iteration` train questions (the next slice of the questions
  after the oracle ones every iteration, wrapping around), weighted per
  `methods`; M-step: `epochs` passes of the re-weighted NLL, one Adam optimizer
  continuing across a method's iterations (the default run's EM by iteration:
  docs/results.md, "Tuning notes", exsearch)."""

  num_iterations: int = option(6, POSITIVE)
  questions_per_iteration: int = option(256, POSITIVE)
  num_samples: int = option(8, POSITIVE)
  temperature: float = option(0.25, number(0, lo_open=True), "the E-step softmax's tau;"
                              " 0.25 sharpens the weights toward a question's best"
                              " samples. DEVIATION from the paper's tau=1: see"
                              " docs/results.md, \"Tuning notes\", exsearch")
  epochs: int = option(1, POSITIVE)
  batch_size: int = option(32, POSITIVE)
  micro_batches: int = option(1, POSITIVE)
  learning_rate: float = option(1e-3, LEARNING_RATE)
  min_weight: float = option(0.01, number(0, 1))


@frozen
class EvalConfig(Section):
  size: int = option(400, POSITIVE)


@frozen
class Config(Section):
  """The EXSEARCH binary's options (`alignax.experiments.exsearch`)."""

  seed: int = option(0, NON_NEGATIVE)
  dataset: str = option("builtin", one_of("alignax.agents.data.qa_data:DATASETS"),
                        "builtin (generated world) | hotpotqa | kilt (files under"
                        " data_dir)")
  data_dir: str = option("")
  world: WorldConfig = option(WorldConfig())
  model_path: str = option("", model_dir_or_empty(), "a Hugging Face checkpoint folder to"
                           " start from; its tokenizer gets the markers as special"
                           " tokens. '': the built-in model (`model`): a word-level"
                           " tokenizer trained on the corpus and the model warm-started"
                           " on oracle trajectories, both saved in <workdir>/init_model"
                           " and re-loaded from there")
  model: BuiltinModel = option(BuiltinModel(), help="the built-in model's sizes; the"
                               " precision applies to any starting model")
  train: Remat = option(Remat())
  retrieval: RetrievalConfig = option(RetrievalConfig())
  rollout: RolloutConfig = option(RolloutConfig())
  warmup: WarmupConfig = option(WarmupConfig())
  em: EmConfig = option(EmConfig())
  methods: tuple = option(("exsearch", "uniform", "rejection_sft"),
                          many_of("alignax.objectives.em:EM_WEIGHTINGS"),
                          "the method (exsearch) and the baselines trained in the same"
                          " run, each from the same warm-up model; keys of"
                          " objectives.EM_WEIGHTINGS")
  eval: EvalConfig = option(EvalConfig())
  lora: LoraConfig = option(LoraConfig(), help="adapters for the EM iterations (the"
                            " warm-up trains the whole model); rank 0 = off")


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
  c = config_dict(Config())
  if preset == "tiny":
    c.world.update(num_people=40, num_cities=8, num_countries=3, num_companies=5)
    c.model.update(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                   num_kv_heads=1)
    c.rollout.update(max_turns=3, max_turn_tokens=8, max_tool_tokens=40,
                     max_total_tokens=128)
    c.warmup.update(num_oracle=8, steps=4, batch_size=8)
    c.em.update(num_iterations=2, questions_per_iteration=8, num_samples=2, epochs=1,
                batch_size=8)
    c.eval.size = 8
  elif preset != "default":
    raise ValueError(f"Unknown preset {preset!r}; use 'default' or 'tiny'.")
  return c



# ---------------------------------------------------------------- CHECKS
def _check_methods(c):
  if "exsearch" not in c.methods:
    return (f"config.methods={tuple(c.methods)!r} must include 'exsearch' (the baselines"
            " run beside it)")


CHECKS = (_check_methods,)
