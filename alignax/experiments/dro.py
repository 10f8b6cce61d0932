r"""DRO: a generative selector and a generator trained by re-weighted EM (docs/algorithms.md §7).

  python -m alignax.experiments.dro                    # default preset, runs/dro
  python -m alignax.experiments.dro --config=alignax/experiments/configs/dro.py:tiny \
      --workdir=runs/dro_tiny

World (`alignax/agents/worlds/dro_world.py`): every question has its own fresh
entities and facts (nothing to memorise: answers must be read), paraphrased
questions, same-name distractor passages and decoy bridges, 2-hop questions
whose bridge passage BM25 never finds. Each question's candidates are BM25's
top `candidates.num` with the question's missing passages put in (DRO's
k_positive; its decoys too), in a uniformly random order (`candidates.shuffle`).

1. Warm-up: a word-level tokenizer (plus one token per candidate id `[i]`)
   and a small decoder, trained by SFT on a few questions -- the generator
   prompt with the gold passages shuffled among candidates -> gold answer
   (swapped for a random entity of its type in passages and target, and the
   prompt trained too, so that the generator reads instead of recalling),
   and the selector prompt -> the oracle ranking (gold ids first). Saved to
   `<workdir>/init_model` (or `init_selector`, `init_generator` with
   `shared_model=False`).
2. For every method of `config.methods`, from the warm-up model(s), repeat
   `em.num_iterations` times:
   E-step (`dro`): `m` sampled selector outputs `"[a] > [b] > ..."` per
     question (with `selector.no_repeat_ids`, decoding masks an id once
     written; `parse_ranking`, completed to a permutation); the generator's
     input is the first `top_k` passages; each output is scored by the
     token-mean log-likelihood l of the gold answer; identical outputs of a
     question are de-duplicated, weights = exp(l / tau) p_phi(z) / q(z)
     normalised per question (`objectives.dro_weights`; q: the selector at
     `selector.temperature` / `top_p`, p_phi: the selector itself); outputs
     without exactly `top_k` ids are dropped after weighting (re-normalised
     with `em.renormalize_after_filter`).
   M-step: `weighted_sequence_nll` for the selector (its own sampled ranking)
     and the generator (the gold answer given those passages), same weights.
   Baselines: `bm25_top5` (the generator trained and evaluated on BM25's
   top_k, no selector), `rejection_sft` (weight 1 for the de-duplicated,
   well-formed selections whose greedy answer is right).
   Held-out EM/F1 after every iteration (greedy selector, greedy generator).

From checkpoints: `--config.model_path=DIR` (shared model) or, with
`--config.shared_model=False`, `--config.selector_model_path` and
`--config.generator_model_path` (same architecture and tokenizer); the markers
and candidate ids are added as special tokens (alignax/framework/vocab.py); warm-up
steps may then be 0.

Under --workdir: bm25/, init_model/, final_model/ (or final_selector/ and
final_generator/: DRO's trained models as Hugging Face folders), metrics.jsonl,
TensorBoard events, em.png, summary.json, checkpoints/ (one per method
iteration; a re-run resumes).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Callable

import jax
import numpy as np
import tqdm
from flax import nnx

from alignax import objectives
from alignax.agents.data import qa_data
from alignax.agents.methods import dro_agents
from alignax.agents.scoring import answer_metrics as metrics_lib
from alignax.agents.worlds import dro_world, qa_world, retrieval
from alignax.experiments import common
from alignax.framework import lora, run_records, train
from alignax.framework.config import ModelConfig
from alignax.framework.model import Decoder
from alignax.registry import Registry

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "dro.py")
ROLES = dro_agents.ROLES


# ------------------------------------------------------------------ E-step
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


def _dro_weighting(s: Selections, em, answer_fn):
  """The paper's self-normalised weights exp(l / tau) p_phi(z) / q(z)."""
  del answer_fn
  return np.asarray(objectives.dro_weights(
      s.log_likelihoods, s.question_ids, s.num_questions, s.keep, s.valid,
      temperature=em.temperature, renormalize_after_filter=em.renormalize_after_filter,
      selector_logprobs=s.selector_logprobs, proposal_logprobs=s.proposal_logprobs),
                    np.float32), {}


def _rejection_weighting(s: Selections, em, answer_fn):
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
METHODS.add("dro", Method(functools.partial(selection_e_step, weighting=_dro_weighting),
                          "selector"))
METHODS.add("bm25_top5", Method(bm25_e_step, "bm25"))
METHODS.add("rejection_sft", Method(
    functools.partial(selection_e_step, weighting=_rejection_weighting), "selector"))


# ------------------------------------------------------------------ warm-up
def build_candidates(config, world, retriever):
  """(candidates, bm25): question id -> passage indices [candidates.num], BM25's
  top `candidates.num` with the missing passages of the question's context
  (gold passages and decoys) inserted at uniformly random positions
  (`dro_world.insert_gold_passages`), then, with `candidates.shuffle`, in a
  uniformly random order; and BM25's own ranking, which `bm25_top5` reads."""
  d = world.dataset
  examples = d.train + d.eval
  bm25 = dro_world.candidates(retriever, examples, world.gold, config.candidates.num,
                              insert_gold=False)
  cand = bm25
  if config.candidates.insert_gold:
    cand = dro_world.insert_gold_passages(bm25, examples, world.context,
                                          keep_top=config.candidates.keep_top, seed=config.seed)
  if config.candidates.shuffle:
    cand = dro_world.shuffle_candidates(cand, examples, seed=config.seed)
  return ({e.id: c for e, c in zip(examples, cand)},
          {e.id: b for e, b in zip(examples, bm25)})


def roles_of(config) -> dict[str, str]:
  """role -> name of the state that plays it."""
  return {r: ("policy" if config.shared_model else r) for r in ROLES}


def warm_up(models: dict, fmt, examples, config, roles):
  """SFT: each step one generator batch (gold passages shuffled among
  candidates) and one selector batch (oracle ranking), on the state that
  plays each role.

  Generator rows are built per batch. With `warmup.counterfactual`, each
  row's answer is swapped for a random entity of its type, drawn anew each
  time (`DroPrompts.counterfactual_swap`); with `warmup.generator_prompt_loss` the
  loss covers the question and passages as well as the answer. Both make
  the generator read its passages (measured in configs/dro.py).
  """
  w = config.warmup
  rng = np.random.RandomState(config.seed)
  gen_docs, sel_rows = [], []
  for e in examples:
    gold = list(fmt.world.gold[e.id])
    others = [int(i) for i in fmt.candidates[e.id] if int(i) not in gold]
    fill = [others[i] for i in rng.permutation(len(others))[:fmt.top_k - len(gold)]]
    docs = gold + fill
    gen_docs.append([docs[i] for i in rng.permutation(len(docs))])
    # Oracle ranking: gold ids first, then random other candidates (not BM25
    # order, which would teach the selector to copy "[1] > [2] > ...").
    gold_pos = fmt.gold_positions(e)
    rest = [p for p in rng.permutation(fmt.num).tolist() if p not in gold_pos]
    sel_rows.append(fmt.selector_row(e, fmt.ranking_ids((gold_pos + rest)[:fmt.top_k])))
  lengths = fmt.lengths(examples)
  selector_data = fmt.batch(sel_rows, lengths[0])

  def batch(role, idx):
    if role == "selector":
      return {k: v[idx] for k, v in selector_data.items()}
    return fmt.batch([fmt.generator_row(
        examples[i], gen_docs[i],
        fmt.counterfactual_swap(examples[i], rng) if w.counterfactual else None,
        train_prompt=w.generator_prompt_loss) for i in idx], lengths[1])

  steps = {"selector": w.selector_steps, "generator": w.generator_steps}
  out = {}
  for name, model in models.items():
    mine = [r for r in ROLES if roles[r] == name]
    total = max(steps[r] for r in mine)
    if total == 0:  # no warm-up (e.g. from a checkpoint that knows the format)
      out[name] = model
      continue
    optimizer = train.make_optimizer(w.learning_rate, warmup_steps=min(10, total),
                                     total_steps=total)
    graphdef, state = train.init_train_state(model, optimizer)
    update = train.make_weighted_update(graphdef, optimizer)
    for step in tqdm.trange(total, desc=f"warm-up SFT ({name})", leave=False):
      for role in mine:
        # The selector's steps are spread evenly over the generator's.
        if (step * steps[role]) // total == ((step + 1) * steps[role]) // total:
          continue
        idx = rng.randint(0, len(examples), w.batch_size)
        state, _ = update(state, batch(role, idx))
    out[name] = nnx.merge(graphdef, state.params)
  return out


def make_prompts(tokenizer, world, candidates, config) -> dro_agents.DroPrompts:
  """candidates: `build_candidates`' pair (candidate order, BM25's ranking)."""
  order, bm25 = candidates
  return dro_agents.DroPrompts(
      tokenizer, world, order, bm25=bm25, num_candidates=config.candidates.num,
      top_k=config.selector.top_k, max_answer_tokens=config.generator.max_answer_tokens,
      no_repeat_ids=config.selector.no_repeat_ids)


def build_policies(config, workdir, world, candidates):
  """Loads the warm-up model(s) from the workdir, or builds, trains and saves
  them first. Returns ({name: Decoder}, DroPrompts)."""

  def build():
    ids = [f"[{i + 1}]" for i in range(config.candidates.num)]
    sources = model_sources(config)
    if any(sources.values()):
      models, tokenizer = {}, None
      for name, path in sources.items():
        models[name], tok = common.load_pretrained(path, [*qa_world.MARKERS, *ids])
        if tokenizer is not None and tok.get_vocab() != tokenizer.get_vocab():
          raise ValueError(f"config.selector_model_path and config.generator_model_path"
                           f" must share one tokenizer; {path!r} has another.")
        tokenizer = tokenizer or tok
    else:
      tokenizer = qa_data.train_word_tokenizer(dro_world.vocabulary_text(world))
      tokenizer.add_tokens(ids)
      model_config = ModelConfig(
          vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
          **config.model.to_dict())
      models = {name: Decoder(model_config, seed=config.seed + i)
                for i, name in enumerate(dirs)}
    fmt = make_prompts(tokenizer, world, candidates, config)
    _check_lengths(fmt, world, min(m.config.max_position_embeddings for m in models.values()))
    return warm_up(models, fmt, world.dataset.train[:config.warmup.num_questions], config,
                   roles_of(config)), tokenizer

  if config.shared_model:
    dirs = {"policy": os.path.join(workdir, "init_model")}
  else:
    dirs = {r: os.path.join(workdir, f"init_{r}") for r in ROLES}
  models, tokenizer = common.build_or_load_hf(dirs, build, common.model_options(config))
  return models, make_prompts(tokenizer, world, candidates, config)


def load_world(config) -> dro_world.DroWorld:
  """The built-in selection world, or HotpotQA / KILT files under
  `config.data_dir` (the loaders and errors of EXSEARCH, `alignax/agents/data/qa_data.py`)."""
  if config.dataset != "builtin":
    return dro_world.from_qa_dataset(qa_data.load_dataset(config.dataset,
                                                          data_dir=config.data_dir))
  return dro_world.make_dro_world(seed=config.seed, **config.world.to_dict())


def model_sources(config) -> dict[str, str]:
  """State name -> the checkpoint it starts from ('' = the built-in model)."""
  if config.shared_model:
    return {"policy": config.model_path}
  return {"selector": config.selector_model_path, "generator": config.generator_model_path}


def _check_lengths(fmt, world, limit):
  d = world.dataset
  sel, gen = fmt.lengths(d.train + d.eval)
  if max(sel, gen) > limit:
    raise ValueError(
        f"A selector row needs {sel} positions and a generator row {gen}, but the"
        f" model has max_position_embeddings={limit} (config.model or the checkpoint)."
        " Lower config.candidates.num or use a model with a longer context.")


def _check_config(config):
  """What the config's SCHEMA and CHECKS (run first, by `common.validate_config`)
  cannot say: they already bound every count, rate and `selector.top_k`."""
  if "dro" not in config.methods:
    raise ValueError(f"config.methods={tuple(config.methods)!r} must include 'dro' (the"
                     f" baselines {sorted(set(METHODS) - {'dro'})} run beside it).")
  cand = config.candidates
  if not 0 <= cand.keep_top <= cand.num:
    raise ValueError(f"config.candidates.keep_top={cand.keep_top} must be in"
                     f" [0, config.candidates.num={cand.num}].")
  pretrained = any(model_sources(config).values())
  if not pretrained and min(config.warmup.generator_steps, config.warmup.selector_steps) < 1:
    raise ValueError("config.warmup.generator_steps and selector_steps must be >= 1 unless"
                     " the model starts from a checkpoint (config.model_path ...).")


# ---------------------------------------------------------------------- run
def run(config, workdir: str, *, stop_after: int | None = None, progress: bool = True):
  """Warm-up + every method's EM iterations in `workdir` (resuming).

  `stop_after` ends after that many method iterations (as a kill would).
  Returns the summary dict.
  """
  common.validate_config(config, DEFAULT_CONFIG)  # before any work
  common.setup_mesh(config)  # multi-host init; these binaries run unsharded
  _check_config(config)
  common.make_workdir(workdir)
  run_records.check_or_store_config(workdir, config)
  world = load_world(config)
  t0 = time.perf_counter()
  retriever = retrieval.BM25Retriever.build_or_load(world.dataset.corpus,
                                                    os.path.join(workdir, "bm25"))
  candidates = build_candidates(config, world, retriever)
  models, fmt = build_policies(config, workdir, world, candidates)
  t_warm = time.perf_counter() - t0
  roles = roles_of(config)
  held_out = world.dataset.eval[:config.eval.size]
  lengths = fmt.lengths(world.dataset.train + world.dataset.eval)
  em = config.em
  optimizer = train.make_optimizer(em.learning_rate, total_steps=None)
  graphdef = None
  fresh = {}
  for name, model in models.items():
    model = common.apply_lora(model, config.lora, seed=config.seed)  # rank 0: unchanged
    graphdef, fresh[name] = train.init_train_state(model, optimizer)
  update = train.make_weighted_update(lora.training(graphdef, fresh[name].params), optimizer,
                                      em.micro_batches)
  methods = list(config.methods)
  pool = world.dataset.train[config.warmup.num_questions:]
  evaluate = lambda states, mode: dro_agents.evaluate(graphdef, states, roles, fmt, held_out,
                                                      mode)

  def start():
    t1 = time.perf_counter()
    before = {"selector": evaluate(fresh, "selector")}
    for mode in sorted({METHODS[m].eval_mode for m in methods} - {"selector"}):
      before[mode] = evaluate(fresh, mode)
    return {"before": before, "seconds": time.perf_counter() - t0,
            "timings": {"warmup": t_warm, "e_step": 0.0, "m_step": 0.0,
                        "eval": time.perf_counter() - t1}}

  def phase(states, it, index, extras, *, method):
    t1 = time.perf_counter()
    examples = common.iteration_slice(pool, it, em.questions_per_iteration)
    key = jax.random.fold_in(jax.random.key(config.seed), index)
    batches, stats = method.e_step(graphdef, states, roles, fmt, examples, config, key, lengths)
    t2 = time.perf_counter()
    states = dict(states)
    for role, batch in batches.items():
      name = roles[role]
      epochs = em.selector_epochs if role == "selector" else em.epochs
      states[name], _, _ = train.train_minibatches(update, states[name], batch, em.batch_size,
                                                   config.seed + index, epochs=epochs)
    jax.block_until_ready(states)  # updates run asynchronously: time them here
    t3 = time.perf_counter()
    scores = evaluate(states, method.eval_mode)
    for k, v in (("e_step", t2 - t1), ("m_step", t3 - t2), ("eval", time.perf_counter() - t3)):
      extras["timings"][k] += v
    return states, {"time/e_step": t2 - t1, "time/m_step": t3 - t2, **stats}, scores

  # Each method starts from its own warm-up evaluation (bm25_top5 has its own).
  start_scores = lambda extras, method: extras["before"][METHODS[method].eval_mode]

  def summarize(extras):
    """DRO's keys bare, each baseline's prefixed by its name."""
    names = ("em", "f1", "gold_recall", "gold_passage_recall")
    return {"train/seconds": extras["seconds"],
            **{f"time/{k}_seconds": v for k, v in extras["timings"].items()},
            **common.per_method_summary(extras, methods, "dro",
                                        {n: f"eval/{n}" for n in names}, start_scores)}

  plot = lambda extras: common.plot_per_iteration(
      workdir, "em.png", extras["curves"], lambda m: start_scores(extras, m),
      {"eval/em": "held-out EM", "eval/f1": "held-out F1"}, "DRO vs baselines (held-out)",
      xlabel="EM iteration (0 = warm-up only)")
  phases = {m: functools.partial(phase, method=METHODS[m]) for m in methods}
  sources = model_sources(config)

  def export(method, states):  # DRO's model(s) -> final_model or final_{selector,generator}
    if method == "dro":
      folder = lambda name: "model" if name == "policy" else name
      common.export_models(
          workdir, {folder(n): nnx.merge(graphdef, s.params) for n, s in states.items()},
          fmt.tokenizer, {folder(n): p for n, p in sources.items()})

  return common.run_phases(workdir, fresh, phases, em.num_iterations, start=start,
                           start_scores=start_scores, summarize=summarize,
                           plot=plot, desc="DRO EM", postfix={"em": "eval/em"},
                           stop_after=stop_after, progress=progress, on_method_end=export)


if __name__ == "__main__":
  common.run_binary(run, DEFAULT_CONFIG, "runs/dro")
