r"""DRO (a selector + a generator trained by re-weighted EM) on the built-in world.

  python -m alignax.experiments.dro --config=alignax/experiments/configs/dro.py:tiny

Presets: `default` (a few minutes on a 2-core CPU) and `tiny` (tests).
"""
import ml_collections

from alignax.experiments.runtime import config_schema, model_setup
from alignax.experiments.runtime.config_schema import (boolean, many_of, number, one_of,
                                                       string)
from alignax.experiments.runtime.model_setup import lora_config, lora_schema


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # "builtin": the selection world of alignax/agents/worlds/dro_world.py (every
  # question its own fresh entities and facts, so answers must be read from
  # its passages; paraphrased questions, same-name distractors, decoy bridges);
  # "hotpotqa" | "kilt": files under data_dir, as EXSEARCH (gold passages =
  # supporting facts / provenance, inserted as in the built-in world).
  c.dataset = "builtin"
  c.data_dir = ""
  # 1600 questions (~1255 train, ~345 held out), 400 of each type; names of
  # two words from 48 per slot and type (2304 names a type); each question:
  # the subject's two facts + 4 distractors about it, and 4 bridge-like
  # passages (the hop-1 object's + 3 decoys), 10 passages.
  c.world = ml_collections.ConfigDict(dict(
      num_questions=1600, name_pieces=48, distractors_per_question=4, bridge_decoys=3,
      max_fillers=1, heldout_fraction=0.2))
  # The selector ranks `num` candidates: BM25's top `num` for the question
  # with the question's passages it missed (its gold passages and decoys:
  # DRO's k_positive, insert_gold) put in at random positions after the first
  # `keep_top`; with `shuffle` every question's list is then in a uniformly
  # random order, so no position says anything about a passage (a gold
  # passage is equally likely anywhere). bm25_top5 reads BM25's own ranking.
  # 12 holds the question's 10 passages and 2 of BM25's others (the paper:
  # 20 candidates, on a GPU budget).
  c.candidates = ml_collections.ConfigDict(dict(num=12, insert_gold=True, keep_top=0,
                                                shuffle=True))
  # param_dtype / dtype (model_setup.PRECISION) apply to any starting model.
  c.model = ml_collections.ConfigDict(dict(
      hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4, num_kv_heads=2,
      max_position_embeddings=256, tie_word_embeddings=True, **model_setup.PRECISION))
  # Rematerialisation in the updates (model_setup.REMAT).
  c.train = ml_collections.ConfigDict(dict(model_setup.REMAT))
  # One model with two prompts (the paper's option), or separate selector and
  # generator models (shared_model=False).
  c.shared_model = True
  # Hugging Face checkpoint folders to start from ('' = the built-in model of
  # `model`): `model_path` for the shared model, `selector_model_path` and
  # `generator_model_path` (sharing one tokenizer) with shared_model=False.
  # The markers and candidate ids are added as special tokens.
  c.model_path = ""
  c.selector_model_path = ""
  c.generator_model_path = ""
  # The selector writes `top_k` ids "[a] > [b] > ..."; the generator answers
  # from those passages. The E-step samples m selections from the proposal q
  # (the selector at `temperature`, `top_p`) and weights them by the paper's
  # self-normalised importance weight exp(l / tau) p_phi(z) / q(z)
  # (objectives.dro_weights; q(z) and p_phi(z), the selection's probability
  # under the proposal and under the selector itself, from
  # dro_agents.selection_logprobs), so the paper's sharpened 0.7 / 0.95 is
  # exact too; at 1 / 1 the ratio is 1 and is not computed. (The reference
  # code drops p_phi / q; measured without the ratio: docs/results.md,
  # "Tuning notes", dro.)
  # no_repeat_ids: constrained decoding, each candidate id at most once per
  # output. DEVIATION: the paper samples freely and parse_ranking drops
  # repeats; see docs/results.md, "Tuning notes", dro.
  c.selector = ml_collections.ConfigDict(dict(top_k=5, temperature=1.0, top_p=1.0,
                                              no_repeat_ids=True))
  c.generator = ml_collections.ConfigDict(dict(max_answer_tokens=4))
  # Warm-up SFT on the first `num_questions` train questions: generator on
  # its gold passages (shuffled among candidates), selector on oracle
  # rankings (gold ids first, then random ids), as the paper's selector
  # starts from a trained ranker (RankZephyr data). selector_steps=600 (was
  # 200): with fewer the selector does not learn to read its passages; see
  # docs/results.md, "Tuning notes", dro.
  # The generator must *read*: counterfactual (answers swapped for a random
  # entity of their type, passages and target alike) and generator_prompt_loss
  # (the question and passages are trained too), for generator_steps=2000;
  # the measurements that chose them: docs/results.md, "Tuning notes", dro.
  c.warmup = ml_collections.ConfigDict(dict(
      num_questions=640, generator_steps=2000, selector_steps=600, batch_size=16,
      learning_rate=3e-3, counterfactual=True, generator_prompt_loss=True))
  # E-step: `num_samples` (m) selector outputs per question, de-duplicated,
  # weighted by exp(generator gold-answer token-mean loglik / temperature)
  # times p_phi(z) / q(z) (see `selector`), normalised per question; outputs without exactly top_k ids are then
  # dropped, and with renormalize_after_filter the rest re-normalised (the
  # reference: False). M-step: `epochs` of `weighted_sequence_nll` for the
  # selector's sampled rankings and the generator's gold answers.
  # temperature: the E-step softmax's tau. DEVIATION from the paper's tau=1:
  # 0.25 here (as EXSEARCH's default), with learning_rate 3e-4 and 192
  # questions x 2 epochs; see docs/results.md, "Tuning notes", dro.
  # num_samples: the paper's m=16 (was 8; measured: docs/results.md, "Tuning
  # notes", dro).
  # selector_epochs: the M-step's epochs over the selector's rows (`epochs`:
  # the generator's). 6 (was 2 for both): the selector's signal is one gold
  # id among its own 4 others per weighted sample, weaker than the
  # generator's; see docs/results.md, "Tuning notes", dro.
  c.em = ml_collections.ConfigDict(dict(
      num_iterations=3, questions_per_iteration=192, num_samples=16, temperature=0.25,
      renormalize_after_filter=True, epochs=2, selector_epochs=6, batch_size=32,
      micro_batches=1,
      learning_rate=3e-4, min_weight=0.01))
  # "dro" and the baselines trained in the same run from the same warm-up:
  #   bm25_top5      the generator trained (gold answer, weight 1) and
  #                  evaluated on BM25's top_k; no selector
  #   rejection_sft  sampled selections whose greedy answer is right, weight 1
  c.methods = ("dro", "bm25_top5", "rejection_sft")
  # 400: all ~345 held-out questions (one question = 0.3 points).
  c.eval = ml_collections.ConfigDict(dict(size=400))
  # LoRA adapters on each model for the EM iterations (the warm-up trains the
  # whole models); rank 0 = off. See alignax.framework.lora.
  c.lora = lora_config()

  if preset == "tiny":
    c.world.update(num_questions=120, name_pieces=12, distractors_per_question=2,
                   bridge_decoys=1)
    c.candidates.num = 8
    c.model.update(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                   num_kv_heads=1, max_position_embeddings=128)
    c.warmup.update(num_questions=8, generator_steps=3, selector_steps=2, batch_size=8)
    c.em.update(num_iterations=2, questions_per_iteration=8, num_samples=3, batch_size=8,
                epochs=1)
    c.eval.size = 8
  elif preset != "default":
    raise ValueError(f"Unknown preset {preset!r}; use 'default' or 'tiny'.")
  return c


# What each key may hold, checked before any work (`config_schema.validate_config`).
_POS, _NONNEG = config_schema.POSITIVE, config_schema.NON_NEGATIVE
_FRACTION, _LR = config_schema.FRACTION, config_schema.LEARNING_RATE
_TOP_P = config_schema.TOP_P
_MODEL = model_setup.builtin_model_rules()
SCHEMA = {
    "seed": _NONNEG,
    "dataset": one_of("alignax.agents.data.qa_data:DATASETS"),
    "data_dir": string(),
    "world.num_questions": _POS, "world.name_pieces": config_schema.integer(2),
    "world.bridge_decoys": _NONNEG,
    "world.distractors_per_question": _NONNEG,
    "world.max_fillers": _NONNEG, "world.heldout_fraction": _FRACTION,
    "candidates.num": _POS, "candidates.insert_gold": boolean(),
    "candidates.keep_top": _NONNEG, "candidates.shuffle": boolean(),
    **_MODEL, **model_setup.precision_schema(),
    "shared_model": boolean(),
    "model_path": config_schema.model_dir_or_empty(),
    "selector_model_path": config_schema.model_dir_or_empty(),
    "generator_model_path": config_schema.model_dir_or_empty(),
    "selector.top_k": _POS, "selector.temperature": number(0, lo_open=True),
    "selector.top_p": _TOP_P, "selector.no_repeat_ids": boolean(),
    "generator.max_answer_tokens": _POS,
    "warmup.num_questions": _POS, "warmup.generator_steps": _NONNEG,
    "warmup.selector_steps": _NONNEG, "warmup.batch_size": _POS,
    "warmup.learning_rate": _LR, "warmup.counterfactual": boolean(),
    "warmup.generator_prompt_loss": boolean(),
    "em.num_iterations": _POS, "em.questions_per_iteration": _POS,
    "em.num_samples": _POS, "em.temperature": number(0, lo_open=True),
    "em.renormalize_after_filter": boolean(), "em.epochs": _POS, "em.selector_epochs": _POS,
    "em.batch_size": _POS, "em.micro_batches": _POS, "em.learning_rate": _LR,
    "em.min_weight": number(0, 1),
    "methods": many_of("alignax.agents.methods.dro_em:METHODS"),
    "eval.size": _POS,
    **lora_schema(),
}


def _check_top_k(c):
  if c.selector.top_k > c.candidates.num:
    return (f"config.selector.top_k={c.selector.top_k} exceeds"
            f" config.candidates.num={c.candidates.num}")


def _check_shuffle(c):
  if c.candidates.shuffle and c.candidates.keep_top:
    return (f"config.candidates.keep_top={c.candidates.keep_top} keeps BM25's first"
            " candidates in place, which config.candidates.shuffle=True undoes; set one")


def _check_model_paths(c):
  if c.shared_model and (c.selector_model_path or c.generator_model_path):
    return ("config.selector_model_path / generator_model_path need"
            " config.shared_model=False (one shared model: config.model_path)")
  if not c.shared_model and c.model_path:
    return ("config.model_path is the shared model's; with config.shared_model=False set"
            " config.selector_model_path and config.generator_model_path")
  if bool(c.selector_model_path) != bool(c.generator_model_path):
    return "set both config.selector_model_path and config.generator_model_path, or neither"


CHECKS = (_check_top_k, _check_shuffle, _check_model_paths)
