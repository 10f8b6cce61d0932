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
import dataclasses
import functools
import os
import time
from typing import Any

import jax
import numpy as np
import tqdm
from flax import nnx

from alignax.agents.data import qa_data
from alignax.agents.methods import dro_agents
from alignax.agents.methods.dro_em import METHODS
from alignax.agents.worlds import dro_world, qa_world, retrieval
from alignax.experiments.runtime import launch, loop, model_setup, outputs, pretrained
from alignax.framework import lora, train

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "dro.py")
ROLES = dro_agents.ROLES


# ------------------------------------------------------------------- main
def run(config, workdir: str, *, stop_after: int | None = None, progress: bool = True):
  """The warm-up selector and generator, then DRO and its baselines
  (`config.methods`, each `em.num_iterations` E/M iterations from the warm-up)
  in `workdir`, resuming; `stop_after` ends after that many method iterations
  (as a kill would). Returns the summary dict."""
  config = launch.start_run(config, workdir, DEFAULT_CONFIG).config  # runs unsharded
  setup, fresh = make_setup(config, workdir)
  return loop.run_phases(workdir, fresh, make_phases(setup, fresh), stop_after=stop_after,
                         progress=progress)


# ----------------------------------------------------------------- config
def model_sources(config) -> dict[str, str]:
  """State name -> the checkpoint it starts from ('' = the built-in model)."""
  if config.shared_model:
    return {"policy": config.model_path}
  return {"selector": config.selector_model_path, "generator": config.generator_model_path}


def roles_of(config) -> dict[str, str]:
  """role -> name of the state that plays it."""
  return {r: ("policy" if config.shared_model else r) for r in ROLES}


def _check_lengths(fmt, world, limit):
  d = world.dataset
  sel, gen = fmt.lengths(d.train + d.eval)
  if max(sel, gen) > limit:
    raise ValueError(
        f"A selector row needs {sel} positions and a generator row {gen}, but the"
        f" model has max_position_embeddings={limit} (config.model or the checkpoint)."
        " Lower config.candidates.num or use a model with a longer context.")


# ----------------------------------------------------------------- make_*
@dataclasses.dataclass(frozen=True)
class Setup:
  """What the phases read, built once by `make_setup` (never changed)."""
  config: Any
  workdir: str
  graphdef: Any
  fmt: Any              # dro_agents.DroPrompts
  roles: dict           # role -> the state that plays it
  update: Any
  lengths: tuple        # (selector, generator) row lengths
  pool: list            # E-step questions
  held_out: list        # evaluation questions
  t0: float             # when the warm-up started
  warmup_seconds: float


def make_setup(config, workdir):
  """World, BM25 candidates, the warm-up model(s) (LoRA), optimiser and
  update. Returns (Setup, fresh states {name: train state})."""
  world = load_world(config)
  t0 = time.perf_counter()
  retriever = retrieval.BM25Retriever.build_or_load(world.dataset.corpus,
                                                    os.path.join(workdir, "bm25"))
  candidates = build_candidates(config, world, retriever)
  models, fmt = build_policies(config, workdir, world, candidates)
  t_warm = time.perf_counter() - t0
  optimizer = train.make_optimizer(config.em.learning_rate, total_steps=None)
  graphdef, fresh = None, {}
  for name, model in models.items():
    model = model_setup.apply_lora(model, config.lora, seed=config.seed)  # rank 0: unchanged
    graphdef, fresh[name] = train.init_train_state(model, optimizer)
  update = train.make_weighted_update(lora.training(graphdef, fresh[name].params), optimizer,
                                      config.em.micro_batches)
  d = world.dataset
  return Setup(config, workdir, graphdef, fmt, roles_of(config), update,
               fmt.lengths(d.train + d.eval), d.train[config.warmup.num_questions:],
               d.eval[:config.eval.size], t0, t_warm), fresh


def make_phases(setup: Setup, fresh) -> loop.Phases:
  """Every method of `config.methods` (`dro_em.METHODS`)."""
  methods = list(setup.config.methods)
  return loop.Phases(
      {m: functools.partial(phase, setup, METHODS[m]) for m in methods},
      setup.config.em.num_iterations, start=functools.partial(start, setup, fresh),
      start_scores=start_scores, summarize=functools.partial(summarize, methods),
      plot=functools.partial(plot, setup.workdir), desc="DRO EM", postfix={"em": "eval/em"},
      on_method_end=functools.partial(export, setup))


def load_world(config) -> dro_world.DroWorld:
  """The built-in selection world, or HotpotQA / KILT files under
  `config.data_dir` (the loaders and errors of EXSEARCH, `alignax/agents/data/qa_data.py`)."""
  if config.dataset != "builtin":
    return dro_world.from_qa_dataset(qa_data.load_dataset(config.dataset,
                                                          data_dir=config.data_dir))
  return dro_world.make_dro_world(seed=config.seed, **config.world.to_dict())


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

  if config.shared_model:
    dirs = {"policy": os.path.join(workdir, "init_model")}
  else:
    dirs = {r: os.path.join(workdir, f"init_{r}") for r in ROLES}
  build = functools.partial(build_builtin, config, world, candidates, list(dirs))
  models, tokenizer = pretrained.build_or_load_hf(dirs, build,
                                                  model_setup.model_options(config))
  return models, make_prompts(tokenizer, world, candidates, config)


def build_builtin(config, world, candidates, names):
  """The warm-up model(s) `names`, new or from checkpoints, trained:
  ({name: model}, tokenizer)."""
  ids = [f"[{i + 1}]" for i in range(config.candidates.num)]
  sources = model_sources(config)
  if any(sources.values()):
    models, tokenizer = {}, None
    for name, path in sources.items():
      models[name], tok = pretrained.load_pretrained(path, [*qa_world.MARKERS, *ids])
      if tokenizer is not None and tok.get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"config.selector_model_path and config.generator_model_path"
                         f" must share one tokenizer; {path!r} has another.")
      tokenizer = tokenizer or tok
  else:
    tokenizer = qa_data.train_word_tokenizer(dro_world.vocabulary_text(world))
    tokenizer.add_tokens(ids)
    models = {name: model_setup.new_decoder(tokenizer, config.model, config.seed + i)
              for i, name in enumerate(names)}
  fmt = make_prompts(tokenizer, world, candidates, config)
  _check_lengths(fmt, world, min(m.config.max_position_embeddings for m in models.values()))
  return warm_up(models, fmt, world.dataset.train[:config.warmup.num_questions], config,
                 roles_of(config)), tokenizer


def warmup_passages(fmt, ex, rng) -> list[int]:
  """A warm-up generator input: the question's gold passages and top_k - |gold|
  other candidates drawn at random, in a random order."""
  gold = list(fmt.world.gold[ex.id])
  others = [int(i) for i in fmt.candidates[ex.id] if int(i) not in gold]
  docs = gold + [others[i] for i in rng.permutation(len(others))[:fmt.top_k - len(gold)]]
  return [docs[i] for i in rng.permutation(len(docs))]


def warm_up(models: dict, fmt, examples, config, roles):
  """SFT: each step one generator batch (gold passages shuffled among
  candidates) and one selector batch (oracle ranking), on the state that
  plays each role.

  Generator rows are built per batch. With `warmup.fresh_passages` each
  row's passages (`warmup_passages`) are drawn anew each time, so where the
  answer sits cannot be memorised per question; otherwise once per question.
  With `warmup.counterfactual`, each
  row's answer is swapped for a random entity of its type, drawn anew each
  time (`DroPrompts.counterfactual_swap`); with `warmup.generator_prompt_loss` the
  loss covers the question and passages as well as the answer. Both make
  the generator read its passages (measured in configs/dro.py).
  """
  w = config.warmup
  rng = np.random.RandomState(config.seed)
  gen_docs, sel_rows = [], []
  for e in examples:
    gen_docs.append(warmup_passages(fmt, e, rng))
    # Oracle ranking: gold ids first, then random other candidates (not BM25
    # order, which would teach the selector to copy "[1] > [2] > ...").
    gold_pos = fmt.gold_positions(e)
    rest = [p for p in rng.permutation(fmt.num).tolist() if p not in gold_pos]
    sel_rows.append(fmt.selector_row(e, fmt.ranking_ids((gold_pos + rest)[:fmt.top_k])))
  lengths = fmt.lengths(examples)
  selector_data = fmt.batch(sel_rows, lengths[0])

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
    bar = tqdm.trange(total, desc=f"warm-up SFT ({name})", leave=False)
    for step in bar:
      for role in mine:
        # The selector's steps are spread evenly over the generator's.
        if (step * steps[role]) // total == ((step + 1) * steps[role]) // total:
          continue
        idx = rng.randint(0, len(examples), w.batch_size)
        if role == "selector":
          batch = {k: v[idx] for k, v in selector_data.items()}
        else:  # a counterfactual answer (and, fresh_passages, the passages) drawn anew
          batch = fmt.batch([fmt.generator_row(
              examples[i],
              warmup_passages(fmt, examples[i], rng) if w.fresh_passages else gen_docs[i],
              fmt.counterfactual_swap(examples[i], rng) if w.counterfactual else None,
              train_prompt=w.generator_prompt_loss) for i in idx], lengths[1])
        state, metrics = update(state, batch)
        train.show_loss(bar, metrics)
    out[name] = nnx.merge(graphdef, state.params)
  return out


# ------------------------------------------------------------------- loop
def evaluate(setup: Setup, states, mode):
  return dro_agents.evaluate(setup.graphdef, states, setup.roles, setup.fmt, setup.held_out,
                             mode)


def start(setup: Setup, fresh) -> dict:
  """The extras of a fresh run: the warm-up's scores per evaluation mode, the
  seconds so far and the time per part."""
  t1 = time.perf_counter()
  before = {"selector": evaluate(setup, fresh, "selector")}
  for mode in sorted({METHODS[m].eval_mode for m in setup.config.methods} - {"selector"}):
    before[mode] = evaluate(setup, fresh, mode)
  return {"before": before, "seconds": time.perf_counter() - setup.t0,
          "timings": {"warmup": setup.warmup_seconds, "e_step": 0.0, "m_step": 0.0,
                      "eval": time.perf_counter() - t1}}


def start_scores(extras, method):
  """Each method starts from its own warm-up evaluation (bm25_top5 has its own)."""
  return extras["before"][METHODS[method].eval_mode]


def phase(setup: Setup, method, states, it, index, extras):
  """One EM iteration of `method`: E-step, M-step of each role, evaluation."""
  config, em = setup.config, setup.config.em
  t1 = time.perf_counter()
  examples = loop.iteration_slice(setup.pool, it, em.questions_per_iteration)
  key = jax.random.fold_in(jax.random.key(config.seed), index)
  batches, stats = method.e_step(setup.graphdef, states, setup.roles, setup.fmt, examples,
                                 config, key, setup.lengths)
  t2 = time.perf_counter()
  states = dict(states)
  for role, batch in batches.items():
    name = setup.roles[role]
    epochs = em.selector_epochs if role == "selector" else em.epochs
    states[name], _, _ = train.train_minibatches(setup.update, states[name], batch,
                                                 em.batch_size, config.seed + index,
                                                 epochs=epochs)
  jax.block_until_ready(states)  # updates run asynchronously: time them here
  t3 = time.perf_counter()
  scores = evaluate(setup, states, method.eval_mode)
  for k, v in (("e_step", t2 - t1), ("m_step", t3 - t2), ("eval", time.perf_counter() - t3)):
    extras["timings"][k] += v
  return states, {"time/e_step": t2 - t1, "time/m_step": t3 - t2, **stats}, scores


def summarize(methods, extras):
  """DRO's keys bare, each baseline's prefixed by its name."""
  names = ("em", "f1", "gold_recall", "gold_passage_recall")
  return {"train/seconds": extras["seconds"],
          **{f"time/{k}_seconds": v for k, v in extras["timings"].items()},
          **loop.per_method_summary(extras, methods, "dro",
                                    {n: f"eval/{n}" for n in names}, start_scores)}


def plot(workdir, extras):
  outputs.plot_per_iteration(
      workdir, "em.png", extras["curves"], functools.partial(start_scores, extras),
      {"eval/em": "held-out EM", "eval/f1": "held-out F1"}, "DRO vs baselines (held-out)",
      xlabel="EM iteration (0 = warm-up only)")


def export(setup: Setup, method, states):
  """DRO's model(s) -> final_model or final_{selector,generator}."""
  if method == "dro":
    folder = lambda name: "model" if name == "policy" else name
    pretrained.export_models(
        setup.workdir, {folder(n): nnx.merge(setup.graphdef, s.params) for n, s in states.items()},
        setup.fmt.tokenizer, {folder(n): p for n, p in model_sources(setup.config).items()})


if __name__ == "__main__":
  launch.run_binary(run, DEFAULT_CONFIG, "runs/dro")
