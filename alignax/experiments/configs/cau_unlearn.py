"""Config for `python -m alignax.experiments.cau_unlearn` (CAU, docs/algorithms.md §9).

Presets: `--config=alignax/experiments/configs/cau_unlearn.py:<preset>` with
  default   synthetic planted-structure sessions, SASRec (paper size), CPU < 10 min
  tiny      a seconds-scale end-to-end run for tests
  conflict  the default with each forgotten item drawn from its context's own
            cluster (retain data supports it: forgetting and retaining conflict),
            and fixed-weight ablations on both sides of the equal weights, for
            MGDA against the fixed-weight front
  ml1m      MovieLens-1M through the tfds builder (needs the download or manual_dir)
Any field can be overridden: `--config.unlearn.lr=0.5`.
"""
import dataclasses

import ml_collections

from alignax.experiments.runtime.config_schema import (FRACTION, LEARNING_RATE,
                                                       NON_NEGATIVE, POSITIVE, Rule,
                                                       Section, config_dict,
                                                       directory_or_empty, number, one_of,
                                                       option)

frozen = dataclasses.dataclass(frozen=True)


@frozen
class SyntheticData(Section):
  """The synthetic planted-structure sessions (data.name=synthetic)."""

  num_items: int = option(500, POSITIVE)
  num_clusters: int = option(25, POSITIVE)
  num_train: int = option(3000, POSITIVE)
  num_test: int = option(1000, POSITIVE)
  min_len: int = option(5, POSITIVE)
  max_len: int = option(20, POSITIVE)
  num_patterns: int = option(10, POSITIVE)
  sessions_per_pattern: int = option(20, POSITIVE)
  forget_item: str = option("other_cluster", one_of(("other_cluster", "same_cluster")),
                            "where a pattern's forgotten item b comes from: another"
                            " cluster than a (retraining drops it) or a's own cluster"
                            " (retain sessions still support it: the objectives"
                            " conflict; the conflict preset)")
  seed: int = option(0, NON_NEGATIVE)


@frozen
class DataConfig(Section):
  name: str = option("synthetic", one_of(("synthetic", "movielens_1m", "amazon_beauty",
                                          "amazon_games")), "key of cau_unlearn.DATASETS")
  max_len: int = option(20, POSITIVE, "left-padded window L")
  synthetic: SyntheticData = option(SyntheticData())
  data_dir: str = option("", help="real data sets (tfds builders): where prepared data"
                         " lives")
  manual_dir: str = option("", help="... and their manual files")
  num_forget: int = option(200, POSITIVE)
  test_fraction: float = option(0.1, FRACTION)


@frozen
class ModelConfig(Section):
  name: str = option("sasrec", one_of("alignax.recsys.recommenders:RECOMMENDERS"),
                     "key of recommenders.RECOMMENDERS")
  kwargs: dict = option({}, help="size overrides (checked by the recommender); empty ="
                        " the paper's sizes")


@frozen
class TrainConfig(Section):
  epochs: int = option(30, POSITIVE)
  batch_size: int = option(128, POSITIVE)
  lr: float = option(2e-3, LEARNING_RATE)
  eval_every: int = option(10, POSITIVE)
  checkpoint_every: int = option(5, POSITIVE)


@frozen
class UnlearnConfig(Section):
  optimizer: str = option("sgd", one_of(("sgd", "adam")), "key of cau_unlearn.OPTIMIZERS")
  lr: float = option(0.5, LEARNING_RATE)
  normalization: str = option("l2", one_of(("none", "l2", "loss", "loss+")),
                              "unit-norm gradients before weighting: the step size is"
                              " then set by lr alone, and MGDA is not stalled by the KL"
                              " term's vanishing gradient")
  batch_size: int = option(32, POSITIVE)
  max_steps_per_batch: int = option(3, POSITIVE, "every method gets the same fixed"
                                    " budget: E steps per batch (§9.4)")
  stop_when_forgotten: bool = option(False, help="stop a batch early once none of its"
                                     " items is in the top-k any more. Off by default: it"
                                     " hides plain gradient ascent's failure mode (it"
                                     " cannot overshoot if it stops as soon as the items"
                                     " leave the top-k)")
  stop_topk: int = option(10, POSITIVE)
  passes: int = option(1, POSITIVE, "sweeps over the curriculum")
  difficulty: str = option("gradient", one_of(("gradient", "embedding")))
  curriculum: str = option("hard", one_of("alignax.objectives.curriculum:CURRICULA"),
                           "key of objectives.curriculum.CURRICULA")
  tau: float = option(1.0, number(0, lo_open=True))
  fixed_weights: tuple = option(
      (1.0 / 3, 1.0 / 3, 1.0 / 3),
      Rule(lambda w: isinstance(w, (tuple, list)) and len(w) == 3 and all(
          isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in w),
           "three numbers >= 0 (forget, retain, KL)"),
      "the weights of the fixed-weight baselines (no MGDA)")
  kl_exclude_target: bool = option(True, help="KL over all items but the forgotten one"
                                   " [DEVIATION from §9.1, see alignax/recsys/cau.py]; the"
                                   " full_kl ablation runs the literal form")
  kl_exclude_forget_set: bool = option(True, help="also leave every other item of the"
                                       " unlearning set out of the KL [DEVIATION, see"
                                       " cau.loss_vector]: two requests with the same"
                                       " context otherwise pull each other's item back"
                                       " up (the kl_own_target ablation)")


_ABLATIONS = ("no_curriculum", "hard", "soft", "embedding_difficulty", "no_mgda", "full_kl",
              "kl_own_target", "fixed_forget_heavy", "fixed_retain_heavy")


@frozen
class Config(Section):
  """The CAU binary's options (`alignax.experiments.cau_unlearn`)."""

  seed: int = option(0, NON_NEGATIVE)
  data: DataConfig = option(DataConfig())
  model: ModelConfig = option(ModelConfig())
  train: TrainConfig = option(TrainConfig())
  load_original_from: str = option("", directory_or_empty(), "a previous run's workdir to"
                                   " load the trained original model from (its"
                                   " checkpoints/original) instead of training it; empty ="
                                   " train here")
  unlearn: UnlearnConfig = option(UnlearnConfig())
  ablations: tuple = option(
      ("no_curriculum", "soft", "embedding_difficulty", "no_mgda", "full_kl",
       "kl_own_target"),
      Rule(lambda v: isinstance(v, (tuple, list)) and all(a in _ABLATIONS for a in v),
           "a tuple of names from " + ", ".join(map(repr, sorted(_ABLATIONS)))
           + " (may be empty)"),
      "keys of cau_unlearn.ABLATIONS run beside the methods")
  eval_batch_size: int = option(512, POSITIVE)
  plot: bool = option(True)


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
  c = config_dict(Config())
  if preset == "default":
    pass
  elif preset == "tiny":
    c.data.max_len = 10
    c.data.synthetic.update(num_items=60, num_clusters=6, num_train=160,
                            num_test=40, min_len=4, max_len=10,
                            num_patterns=2, sessions_per_pattern=6)
    c.model.kwargs = dict(hidden=16)
    c.train.update(epochs=3, batch_size=32, eval_every=3, checkpoint_every=2)
    # Embedding difficulty and one ablation: fewer compilations, so the
    # end-to-end test stays short (timing: docs/results.md, "Tuning notes",
    # cau_unlearn).
    c.unlearn.update(batch_size=4, max_steps_per_batch=2, passes=1,
                     difficulty="embedding")
    c.ablations = ("soft",)
    c.eval_batch_size = 64
  elif preset == "conflict":
    c.data.synthetic.forget_item = "same_cluster"
    c.ablations = ("no_mgda", "fixed_forget_heavy", "fixed_retain_heavy")
  elif preset == "ml1m":
    c.data.name = "movielens_1m"
    c.data.max_len = 200   # SASRec / BERT4Rec setting for ML-1M
    c.train.epochs = 200
  else:
    raise ValueError(f"unknown preset {preset!r}; use default, tiny, conflict or ml1m")
  return c
