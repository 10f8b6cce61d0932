"""Config for `python -m alignax.experiments.cau_unlearn` (CAU, docs/algorithms.md §9).

Presets: `--config=alignax/experiments/configs/cau_unlearn.py:<preset>` with
  default   synthetic planted-structure sessions, SASRec (paper size), CPU < 10 min
  tiny      a seconds-scale end-to-end run for tests
  ml1m      MovieLens-1M through the tfds builder (needs the download or manual_dir)
Any field can be overridden: `--config.unlearn.lr=0.5`.
"""
import ml_collections

from alignax.experiments.runtime import config_schema, model_setup
from alignax.experiments.runtime.config_schema import (Rule, boolean, directory_or_empty,
                                                       number, one_of, string)


def _base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = ml_collections.ConfigDict(dict(
      name="synthetic",         # key of cau_unlearn.DATASETS
      max_len=20,               # left-padded window L
      synthetic=dict(num_items=500, num_clusters=25, num_train=3000,
                     num_test=1000, min_len=5, max_len=20, num_patterns=10,
                     sessions_per_pattern=20, seed=0),
      # Real data sets (tfds builders): where prepared data and manual files live.
      data_dir="", manual_dir="", num_forget=200, test_fraction=0.1,
  ))
  c.model = ml_collections.ConfigDict(dict(
      name="sasrec",            # key of recommenders.RECOMMENDERS
      kwargs={},                # size overrides; empty = the paper's sizes
  ))
  c.train = ml_collections.ConfigDict(dict(
      epochs=30, batch_size=128, lr=2e-3, eval_every=10, checkpoint_every=5))
  # Where to load a trained original model from instead of training it: a
  # previous run's workdir (its checkpoints/original). Empty = train here.
  c.load_original_from = ""
  c.unlearn = ml_collections.ConfigDict(dict(
      optimizer="sgd",          # key of cau_unlearn.OPTIMIZERS
      lr=0.5,
      # Unit-norm gradients before weighting: the step size is then set by lr
      # alone, and MGDA is not stalled by the KL term's vanishing gradient.
      normalization="l2",
      batch_size=32,
      # Every method gets the same fixed budget: E steps per batch (§9.4).
      max_steps_per_batch=3,
      # Option: stop a batch early once none of its items is in the top-k any
      # more. Off by default: it hides plain gradient ascent's failure mode
      # (it cannot overshoot if it stops as soon as the items leave the top-k).
      stop_when_forgotten=False,
      stop_topk=10,
      passes=1,                 # sweeps over the curriculum
      difficulty="gradient",    # "gradient" | "embedding"
      curriculum="hard",        # key of objectives.curriculum.CURRICULA
      tau=1.0,
      fixed_weights=(1.0 / 3, 1.0 / 3, 1.0 / 3),
      # KL over all items but the forgotten one [DEVIATION from §9.1, see
      # alignax/recsys/cau.py]; the "full_kl" ablation runs the literal form.
      kl_exclude_target=True,
  ))
  c.ablations = ("no_curriculum", "soft", "embedding_difficulty", "no_mgda",
                 "full_kl")
  c.eval_batch_size = 512
  c.plot = True
  return c


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
  c = _base()
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
  elif preset == "ml1m":
    c.data.name = "movielens_1m"
    c.data.max_len = 200   # SASRec / BERT4Rec setting for ML-1M
    c.train.epochs = 200
  else:
    raise ValueError(f"unknown preset {preset!r}; use default, tiny or ml1m")
  return c


# What each key may hold, checked before any work (`config_schema.validate_config`).
_POS, _NONNEG = config_schema.POSITIVE, config_schema.NON_NEGATIVE
_FRACTION, _LR = config_schema.FRACTION, config_schema.LEARNING_RATE
_TOP_P = config_schema.TOP_P
_MODEL = model_setup.builtin_model_rules()
SCHEMA = {
    "seed": _NONNEG,
    "data.name": one_of(("synthetic", "movielens_1m", "amazon_beauty", "amazon_games")),
    "data.max_len": _POS,
    **{f"data.synthetic.{k}": _POS for k in (
        "num_items", "num_clusters", "num_train", "num_test", "min_len", "max_len",
        "num_patterns", "sessions_per_pattern")},
    "data.synthetic.seed": _NONNEG,
    "data.data_dir": string(), "data.manual_dir": string(),
    "data.num_forget": _POS, "data.test_fraction": _FRACTION,
    "model.name": one_of("alignax.recsys.recommenders:RECOMMENDERS"),
    "train.epochs": _POS, "train.batch_size": _POS, "train.lr": _LR,
    "train.eval_every": _POS, "train.checkpoint_every": _POS,
    "load_original_from": directory_or_empty(),
    "unlearn.optimizer": one_of(("sgd", "adam")),
    "unlearn.lr": _LR,
    "unlearn.normalization": one_of(("none", "l2", "loss", "loss+")),
    "unlearn.batch_size": _POS, "unlearn.max_steps_per_batch": _POS,
    "unlearn.stop_when_forgotten": boolean(), "unlearn.stop_topk": _POS,
    "unlearn.passes": _POS,
    "unlearn.difficulty": one_of(("gradient", "embedding")),
    "unlearn.curriculum": one_of("alignax.objectives.curriculum:CURRICULA"),
    "unlearn.tau": number(0, lo_open=True),
    "unlearn.kl_exclude_target": boolean(),
    "ablations": Rule(lambda v: isinstance(v, (tuple, list)) and all(
        a in ("no_curriculum", "hard", "soft", "embedding_difficulty", "no_mgda",
              "full_kl") for a in v),
        "a tuple of names from 'embedding_difficulty', 'full_kl', 'hard',"
        " 'no_curriculum', 'no_mgda', 'soft' (may be empty)"),
    "eval_batch_size": _POS,
    "plot": boolean(),
}


def _check_weights(c):
  w = c.unlearn.fixed_weights
  if len(w) != 3 or any(not isinstance(x, (int, float)) or x < 0 for x in w):
    return (f"config.unlearn.fixed_weights={tuple(w)!r}: must be three numbers >= 0"
            " (forget, retain, KL)")


CHECKS = (_check_weights,)
