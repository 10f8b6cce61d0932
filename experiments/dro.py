r"""DRO: a generative selector and a generator trained by re-weighted EM (docs/algorithms.md §7).

  python -m alignax.experiments.dro                    # default preset, runs/dro
  python -m alignax.experiments.dro --config=experiments/configs/dro.py:tiny \
      --workdir=runs/dro_tiny

World (`agents/dro_world.py`): paraphrased questions, many same-name
distractor passages, 2-hop questions whose bridge passage BM25 never finds.
Each question's candidates are BM25's top `candidates.num` (+ the missing gold
passages, DRO's k_positive).

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
     token-mean log-likelihood of the gold answer; identical outputs of a
     question are de-duplicated, weights = `segment_em_weights`; outputs
     without exactly `top_k` ids are dropped after weighting (re-normalised
     with `em.renormalize_after_filter`).
   M-step: `weighted_sequence_nll` for the selector (its own sampled ranking)
     and the generator (the gold answer given those passages), same weights.
   Baselines: `bm25_top5` (the generator trained and evaluated on BM25's
   top_k, no selector), `rejection_sft` (weight 1 for the de-duplicated,
   well-formed selections whose greedy answer is right).
   Held-out EM/F1 after every iteration (greedy selector, greedy generator).

Under --workdir: bm25/, init_model/, metrics.jsonl, TensorBoard events, em.png,
summary.json, checkpoints/ (one per method iteration; a re-run resumes).
"""
from __future__ import annotations

import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import nnx

from alignax import objectives
from alignax.agents import dro_world, qa_data, qa_world, retrieval
from alignax.agents import metrics as metrics_lib
from alignax.agents import rollout as rollout_lib
from alignax.experiments import common
from alignax.framework import checkpoint, experiment, hf, lora, sampling, train
from alignax.framework.config import ModelConfig
from alignax.framework.model import Decoder

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "dro.py")
METHODS = ("dro", "bm25_top5", "rejection_sft")
ROLES = ("selector", "generator")


# ------------------------------------------------------- E-step, pure parts
def parse_selections(texts, num_candidates: int, top_k: int):
  """Selector outputs -> (permutations [N] of candidate positions, valid [N]).

  `parse_ranking` drops out-of-range ids and repeats and appends the unseen
  candidates in BM25 order (§7.1); an output is valid when it names exactly
  `top_k` distinct in-range ids.
  """
  perms = [metrics_lib.parse_ranking(t, num_candidates) for t in texts]
  valid = np.asarray([len(metrics_lib.parse_ranking(t, num_candidates, complete=False))
                      == top_k for t in texts])
  return perms, valid


def first_occurrences(outputs, question_ids) -> np.ndarray:
  """bool [N]: True for the first of identical outputs of the same question."""
  seen, keep = set(), []
  for out, q in zip(outputs, question_ids):
    key = (int(q), tuple(out) if not isinstance(out, str) else out)
    keep.append(key not in seen)
    seen.add(key)
  return np.asarray(keep, bool)


def dro_weights(log_likelihoods, question_ids, num_questions: int, keep, valid, *,
                temperature: float = 1.0, renormalize_after_filter: bool = False):
  """DRO E-step weights [N] (§7.1).

  Duplicates (`keep` False) are removed *before* the softmax
  (`segment_em_weights` over the kept samples of each question); malformed
  samples (`valid` False) are dropped *after* it, and with
  `renormalize_after_filter` the remaining weights of each question are
  re-normalised to sum to 1 (a question with none left keeps zeros).
  """
  ll = jnp.where(jnp.asarray(keep), jnp.asarray(log_likelihoods, jnp.float32), jnp.nan)
  qids = jnp.asarray(question_ids, jnp.int32)
  w = objectives.segment_em_weights(ll, qids, num_questions, temperature)
  w = jnp.where(jnp.asarray(valid), w, 0.0)
  if renormalize_after_filter:
    total = jax.ops.segment_sum(w, qids, num_questions)[qids]
    w = jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0), 0.0)
  return np.asarray(w, np.float32)


# ------------------------------------------------------------- prompts, rows
class Task:
  """Tokenizer, candidates and the two prompts (selector, generator)."""

  def __init__(self, tokenizer, world, candidates: dict, config):
    self.tokenizer = tokenizer
    self.world = world
    self.corpus = world.dataset.corpus
    self.candidates = candidates  # question id -> passage indices [n]
    self.num = config.candidates.num
    self.top_k = config.selector.top_k
    self.max_answer = config.generator.max_answer_tokens
    self.pad, self.bos, self.eos = (tokenizer.pad_token_id, tokenizer.bos_token_id,
                                    tokenizer.eos_token_id)
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)
    self.encode = enc
    self._passage = {}
    self._doc = enc(qa_world.DOC)
    self._end = enc(qa_world.END_SEARCH)
    self._final = enc(qa_world.FINAL)
    self._ids = [enc(f"[{i + 1}]") for i in range(self.num)]
    # Constrained selector decoding: each candidate id's tokens at most once per
    # output (None: free sampling).
    self.no_repeat = ([t for ids in self._ids for t in ids]
                      if config.selector.no_repeat_ids else None)
    self._sep = enc(">")
    # Generator budget: the answer + EOS. Selector: top_k ids, separators, EOS.
    self.sel_new = 2 * self.top_k + 1
    self.gen_new = self.max_answer + 1

  def passage(self, i: int) -> list[int]:
    if i not in self._passage:
      self._passage[i] = self.encode(self.corpus[i].text)
    return self._passage[i]

  def selector_prompt(self, ex) -> list[int]:
    ids = [self.bos] + self.encode(f"rank question : {ex.question}")
    for pos, i in enumerate(self.candidates[ex.id]):
      ids += self._ids[pos] + self.passage(int(i))
    return ids + self._end

  def ranking_ids(self, positions) -> list[int]:
    """Output tokens `[a] > [b] > ... </s>` of candidate positions (0-based)."""
    out = []
    for j, p in enumerate(positions):
      out += (self._sep if j else []) + self._ids[p]
    return out + [self.eos]

  def generator_prompt(self, ex, passages) -> list[int]:
    ids = [self.bos] + self.encode(f"answer question : {ex.question}")
    for i in passages:
      ids += self._doc + self.passage(int(i))
    return ids + self._end + self._final

  def gold_ids(self, ex) -> list[int]:
    return self.encode(ex.answers[0])[:self.max_answer] + [self.eos]

  def docs(self, ex, permutation) -> list[int]:
    """Passage indices of the first top_k candidates of a permutation."""
    return [int(self.candidates[ex.id][p]) for p in permutation[:self.top_k]]

  def gold_positions(self, ex) -> list[int]:
    cand = list(self.candidates[ex.id])
    return [cand.index(g) for g in self.world.gold[ex.id] if g in cand]

  def oracle_ranking(self, ex) -> list[int]:
    """Gold candidate positions first (hop order), then BM25 order."""
    gold = self.gold_positions(ex)
    return (gold + [p for p in range(self.num) if p not in gold])[:self.top_k]

  # Rows: (tokens, loss mask, answer mask); the answer mask is the gold span.
  def generator_row(self, ex, passages, swap=None, train_prompt: bool = False):
    """swap: (old, new) token lists replaced everywhere in the row.
    train_prompt: the loss mask covers the prompt too (the answer mask never)."""
    prompt, gold = self.generator_prompt(ex, passages), self.gold_ids(ex)
    if swap is not None:
      prompt, gold = _swap(prompt, *swap), _swap(gold, *swap)
    answer = [False] * len(prompt) + [True] * len(gold)
    return prompt + gold, ([True] * len(answer) if train_prompt else answer), answer

  def counterfactual_swap(self, ex, rng):
    """(gold answer, a random other entity of its type) as token lists: with
    it, the answer can only be read from the passages, never recalled from
    other rows about the same person (see `warm_up`)."""
    pool = [a for a in self.world.answer_pool[ex.id] if a != ex.answers[0]]
    if not pool:
      raise ValueError(f"warmup.counterfactual needs a second entity of the type of"
                       f" {ex.answers[0]!r} ({ex.id}); enlarge config.world or turn it off.")
    return self.encode(ex.answers[0]), self.encode(pool[rng.randint(len(pool))])

  def selector_row(self, ex, output):
    prompt = self.selector_prompt(ex)
    mask = [False] * len(prompt) + [True] * len(output)
    return prompt + list(output), mask, mask

  def batch(self, rows, length, weights=None):
    tokens, attn, (loss, answer) = rollout_lib.pad_trajectories(
        [np.asarray(r[0]) for r in rows], [[np.asarray(r[1]) for r in rows],
                                           [np.asarray(r[2]) for r in rows]],
        length, self.pad)
    out = dict(sequences=tokens, attention_mask=attn, loss_mask=loss[:, 1:],
               answer_mask=answer[:, 1:])
    out["weights"] = (np.ones(len(rows), np.float32) if weights is None
                      else np.asarray(weights, np.float32))
    return out

  def lengths(self, examples):
    """Padded row lengths (selector, generator), multiples of 8."""
    sel = max(len(self.selector_prompt(e)) for e in examples) + self.sel_new
    longest = sorted((len(self.passage(int(i))) for e in examples
                      for i in self.candidates[e.id]), reverse=True)[:self.top_k]
    gen = (max(len(self.generator_prompt(e, [])) for e in examples) + sum(longest)
           + self.gen_new)
    return -(-sel // 8) * 8, -(-gen // 8) * 8


def _swap(tokens, old, new):
  """`tokens` with every occurrence of the sub-sequence `old` replaced by `new`."""
  if not old:
    raise ValueError("_swap needs a non-empty sub-sequence to replace.")
  out, i = [], 0
  while i < len(tokens):
    if tokens[i:i + len(old)] == old:
      out += new
      i += len(old)
    else:
      out.append(tokens[i])
      i += 1
  return out


# ---------------------------------------------------------- model plumbing
def _generate(graphdef, params, task, prompts, max_new, key, *, temperature=0.0,
              top_p=None, repeats=1, no_repeat=None):
  """Completions (token lists, stop token included) of every prompt x repeats."""
  model = nnx.merge(graphdef, params)
  gen = sampling.generate(model, prompts, max_new_tokens=max_new, temperature=temperature,
                          top_p=top_p if temperature > 0 else None,
                          eos_token_id=task.eos, seed=key, num_generations=repeats,
                          pad_token_id=task.pad, no_repeat_token_ids=no_repeat)
  tokens, mask = np.asarray(gen.tokens), np.asarray(gen.mask)
  return [t[m].tolist() for t, m in zip(tokens, mask)]


def _text(task, ids) -> str:
  return task.tokenizer.decode(ids, skip_special_tokens=True)


def _select(graphdef, params, task, examples, key, *, repeats=1, temperature=0.0,
            top_p=None):
  """Selector outputs (token lists), permutations and validity, row p*m + j."""
  outs = _generate(graphdef, params, task, [task.selector_prompt(e) for e in examples],
                   task.sel_new, key, temperature=temperature, top_p=top_p, repeats=repeats,
                   no_repeat=task.no_repeat)
  perms, valid = parse_selections([_text(task, o) for o in outs], task.num, task.top_k)
  return outs, perms, valid


def _answers(graphdef, params, task, examples, passages) -> list[str]:
  """Greedy generator answers for (example, passages) pairs."""
  outs = _generate(graphdef, params, task,
                   [task.generator_prompt(e, p) for e, p in zip(examples, passages)],
                   task.gen_new, jax.random.key(0))
  return [_text(task, o) for o in outs]


def evaluate(graphdef, states, roles, task, examples, mode: str) -> dict[str, float]:
  """Held-out EM / F1 / accuracy (points) and gold recall of the generator's
  passages; mode "selector" (greedy selection) or "bm25" (BM25's top_k)."""
  if mode == "selector":
    _, perms, valid = _select(graphdef, states[roles["selector"]].params, task, examples,
                              jax.random.key(0))
  else:
    perms, valid = [list(range(task.num))] * len(examples), np.ones(len(examples), bool)
  passages = [task.docs(e, p) for e, p in zip(examples, perms)]
  preds = _answers(graphdef, states[roles["generator"]].params, task, examples, passages)
  scores = metrics_lib.score_answers(preds, [e.answers for e in examples])
  out = {f"eval/{k}": 100.0 * v for k, v in scores.items()}
  gold = [set(task.world.gold[e.id]) for e in examples]
  # gold_recall: every gold passage selected; gold_passage_recall: the share of
  # gold passages selected (a 2-hop question with one of its two counts 1/2).
  out["eval/gold_recall"] = 100.0 * float(np.mean(
      [g <= set(p) for g, p in zip(gold, passages)]))
  out["eval/gold_passage_recall"] = 100.0 * float(np.mean(
      [len(g & set(p)) / len(g) for g, p in zip(gold, passages)]))
  out["eval/valid_rankings"] = 100.0 * float(np.mean(valid))
  return out


def e_step(graphdef, states, roles, task, examples, method, config, key, lengths):
  """Samples, scores and weights selections. Returns ({role: M-step batch}, stats)."""
  em, q = config.em, len(examples)
  if method == "bm25_top5":  # the generator on BM25's top_k, weight 1, no selector
    rows = [task.generator_row(e, task.docs(e, range(task.num))) for e in examples]
    return {"generator": task.batch(rows, lengths[1])}, {}
  m = em.num_samples
  rows_ex = [e for e in examples for _ in range(m)]
  qids = np.repeat(np.arange(q), m)
  outs, perms, valid = _select(graphdef, states[roles["selector"]].params, task, examples,
                               key, repeats=m, temperature=config.selector.temperature,
                               top_p=config.selector.top_p)
  keep = first_occurrences(outs, qids)
  passages = [task.docs(e, p) for e, p in zip(rows_ex, perms)]
  gen = task.batch([task.generator_row(e, p) for e, p in zip(rows_ex, passages)], lengths[1])
  ll = np.asarray(train.answer_logliks(graphdef, states[roles["generator"]].params, gen))
  gold = [set(task.world.gold[e.id]) for e in rows_ex]
  recall = np.asarray([g <= set(p) for g, p in zip(gold, passages)], np.float32)
  if method == "dro":
    w = dro_weights(ll, qids, q, keep, valid, temperature=em.temperature,
                    renormalize_after_filter=em.renormalize_after_filter)
    correct = None
  else:  # rejection_sft
    preds = _answers(graphdef, states[roles["generator"]].params, task, rows_ex, passages)
    correct = np.asarray([metrics_lib.exact_match(p, e.answers)
                          for p, e in zip(preds, rows_ex)], np.float32)
    w = (correct * keep * valid).astype(np.float32)
  sel = task.batch([task.selector_row(e, o) for e, o in zip(rows_ex, outs)], lengths[0], w)
  gen["weights"] = w
  take = w > em.min_weight
  batches = {"selector": {k: v[take] for k, v in sel.items()},
             "generator": {k: v[take] for k, v in gen.items()}}
  stats = {"train/valid_rankings": 100.0 * float(valid.mean()),
           "train/unique_per_question": float(keep.sum() / q),
           "train/sample_gold_recall": 100.0 * float(recall.mean()),
           "train/answer_loglik": float(np.nanmean(ll)),
           "train/weight_max": float(np.max(w.reshape(q, m), axis=1).mean()),
           "train/rows_trained": float(take.sum())}
  if correct is not None:
    stats["train/sample_em"] = 100.0 * float(correct.mean())
  return batches, stats


# ------------------------------------------------------------------ warm-up
def build_task(config, workdir, world, retriever):
  """Tokenizer (built once, saved with the warm-up model) + candidates."""
  d = world.dataset
  examples = d.train + d.eval
  cand = dro_world.candidates(retriever, examples, world.gold, config.candidates.num,
                              insert_gold=config.candidates.insert_gold,
                              keep_top=config.candidates.keep_top, seed=config.seed)
  return {e.id: c for e, c in zip(examples, cand)}


def _model_dirs(config, workdir):
  if config.shared_model:
    return {"policy": os.path.join(workdir, "init_model")}
  return {r: os.path.join(workdir, f"init_{r}") for r in ROLES}


def roles_of(config) -> dict[str, str]:
  """role -> name of the state that plays it."""
  return {r: ("policy" if config.shared_model else r) for r in ROLES}


def warm_up(models: dict, task, examples, config, roles):
  """SFT: each step one generator batch (gold passages shuffled among
  candidates) and one selector batch (oracle ranking), on the state that
  plays each role.

  Generator rows are built per batch. With `warmup.counterfactual`, each
  row's answer is swapped for a random entity of its type, drawn anew each
  time (`Task.counterfactual_swap`); with `warmup.generator_prompt_loss` the
  loss covers the question and passages as well as the answer. Both make
  the generator read its passages (measured in configs/dro.py).
  """
  w = config.warmup
  rng = np.random.RandomState(config.seed)
  gen_docs, sel_rows = [], []
  for e in examples:
    gold = list(task.world.gold[e.id])
    others = [int(i) for i in task.candidates[e.id] if int(i) not in gold]
    fill = [others[i] for i in rng.permutation(len(others))[:task.top_k - len(gold)]]
    docs = gold + fill
    gen_docs.append([docs[i] for i in rng.permutation(len(docs))])
    # Oracle ranking: gold ids first, then random other candidates (not BM25
    # order, which would teach the selector to copy "[1] > [2] > ...").
    gold_pos = task.gold_positions(e)
    rest = [p for p in rng.permutation(task.num).tolist() if p not in gold_pos]
    sel_rows.append(task.selector_row(e, task.ranking_ids((gold_pos + rest)[:task.top_k])))
  lengths = task.lengths(examples)
  selector_data = task.batch(sel_rows, lengths[0])

  def batch(role, idx):
    if role == "selector":
      return {k: v[idx] for k, v in selector_data.items()}
    return task.batch([task.generator_row(
        examples[i], gen_docs[i],
        task.counterfactual_swap(examples[i], rng) if w.counterfactual else None,
        train_prompt=w.generator_prompt_loss) for i in idx], lengths[1])

  steps = {"selector": w.selector_steps, "generator": w.generator_steps}
  out = {}
  for name, model in models.items():
    mine = [r for r in ROLES if roles[r] == name]
    total = max(steps[r] for r in mine)
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


def build_policies(config, workdir, world, candidates):
  """Loads the warm-up model(s) from the workdir, or builds, trains and saves
  them. Returns ({name: Decoder}, Task)."""
  dirs = _model_dirs(config, workdir)
  roles = roles_of(config)
  if not all(os.path.exists(os.path.join(p, "model.safetensors")) for p in dirs.values()):
    tokenizer = qa_data.train_word_tokenizer(dro_world.vocabulary_text(world))
    tokenizer.add_tokens([f"[{i + 1}]" for i in range(config.candidates.num)])
    model_config = ModelConfig(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        **config.model.to_dict())
    task = Task(tokenizer, world, candidates, config)
    _check_lengths(task, world, config)
    models = {name: Decoder(model_config, seed=config.seed + i)
              for i, name in enumerate(dirs)}
    models = warm_up(models, task, world.dataset.train[:config.warmup.num_questions],
                     config, roles)
    for name, path in dirs.items():
      tmp = path + ".tmp"
      shutil.rmtree(tmp, ignore_errors=True)
      hf.save_pretrained(models[name], tmp)
      tokenizer.save_pretrained(tmp)
      shutil.rmtree(path, ignore_errors=True)
      os.replace(tmp, path)
  models = {name: hf.from_pretrained(path) for name, path in dirs.items()}
  first = next(iter(dirs))
  tokenizer = hf.load_tokenizer(dirs[first], models[first].config)
  return models, Task(tokenizer, world, candidates, config)


def _check_lengths(task, world, config):
  d = world.dataset
  sel, gen = task.lengths(d.train + d.eval)
  limit = config.model.max_position_embeddings
  if max(sel, gen) > limit:
    raise ValueError(
        f"A selector row needs {sel} positions and a generator row {gen}, but"
        f" config.model.max_position_embeddings={limit}. Raise it or lower"
        " config.candidates.num.")


def _check_config(config):
  unknown = [m for m in config.methods if m not in METHODS]
  if unknown or "dro" not in config.methods:
    raise ValueError(f"config.methods={tuple(config.methods)!r} must include 'dro' and"
                     f" only name {list(METHODS)}.")
  if config.dataset != "builtin":
    raise ValueError(f"config.dataset={config.dataset!r}: the DRO binary runs on the"
                     " built-in selection world only ('builtin').")
  if not 1 <= config.selector.top_k <= config.candidates.num:
    raise ValueError(f"config.selector.top_k={config.selector.top_k} must be in"
                     f" [1, config.candidates.num={config.candidates.num}].")
  cand = config.candidates
  if not 0 <= cand.keep_top <= cand.num:
    raise ValueError(f"config.candidates.keep_top={cand.keep_top} must be in"
                     f" [0, config.candidates.num={cand.num}].")
  if cand.insert_gold and cand.keep_top < config.selector.top_k and "bm25_top5" in config.methods:
    raise ValueError(
        f"config.candidates.keep_top={cand.keep_top} < config.selector.top_k="
        f"{config.selector.top_k}: inserted gold passages could land in the first top_k"
        " candidates, which bm25_top5 takes as BM25's top_k. Raise keep_top or drop"
        " bm25_top5 from config.methods.")
  em = config.em
  if em.num_samples < 1 or em.num_iterations < 1 or em.questions_per_iteration < 1:
    raise ValueError("config.em.num_samples, num_iterations and questions_per_iteration"
                     " must be >= 1.")
  if not em.temperature > 0 or not config.selector.temperature > 0:
    raise ValueError("config.em.temperature and config.selector.temperature must be > 0.")
  if (config.warmup.num_questions < 1 or config.eval.size < 1
      or min(config.warmup.generator_steps, config.warmup.selector_steps) < 1):
    raise ValueError("config.warmup.num_questions, generator_steps, selector_steps and"
                     " config.eval.size must be >= 1.")


# ---------------------------------------------------------------------- run
def run(config, workdir: str, *, stop_after: int | None = None, progress: bool = True):
  """Warm-up + every method's EM iterations in `workdir` (resuming).

  `stop_after` ends after that many method iterations (as a kill would).
  Returns the summary dict.
  """
  common.validate_config(config, DEFAULT_CONFIG)  # before any work
  _check_config(config)
  os.makedirs(workdir, exist_ok=True)
  experiment.check_or_store_config(workdir, config)
  w = config.world
  world = dro_world.make_dro_world(
      seed=config.seed, num_people=w.num_people, num_cities=w.num_cities,
      num_countries=w.num_countries, num_companies=w.num_companies,
      distractors_per_person=w.distractors_per_person, max_fillers=w.max_fillers,
      heldout_fraction=w.heldout_fraction)
  t0 = time.perf_counter()
  retriever = retrieval.BM25Retriever.build_or_load(world.dataset.corpus,
                                                    os.path.join(workdir, "bm25"))
  candidates = build_task(config, workdir, world, retriever)
  models, task = build_policies(config, workdir, world, candidates)
  t_warm = time.perf_counter() - t0
  roles = roles_of(config)
  held_out = world.dataset.eval[:config.eval.size]
  lengths = task.lengths(world.dataset.train + world.dataset.eval)
  em = config.em
  optimizer = train.make_optimizer(em.learning_rate, total_steps=None)
  graphdef = None
  fresh = {}
  for name, model in models.items():
    model = common.apply_lora(model, config.lora, seed=config.seed)
    graphdef, fresh[name] = train.init_train_state(model, optimizer)
  update = train.make_weighted_update(lora.training(graphdef, fresh[name].params), optimizer,
                                      em.micro_batches)
  methods, iters = list(config.methods), em.num_iterations
  # Under LoRA a checkpoint holds the adapters and their optimiser state only.
  saved_part = lambda states: {k: train.checkpoint_state(s) for k, s in states.items()}
  with_base = lambda saved: {k: train.from_checkpoint_state(fresh[k], s)
                             for k, s in saved.items()}

  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=2)
  restored = ckpt.restore_latest(saved_part(fresh))
  if restored is None:
    done, states = 0, fresh
    t1 = time.perf_counter()
    before = {"selector": evaluate(graphdef, fresh, roles, task, held_out, "selector")}
    if "bm25_top5" in methods:
      before["bm25"] = evaluate(graphdef, fresh, roles, task, held_out, "bm25")
    extras = {"before": before, "curves": {m: [] for m in methods},
              "seconds": time.perf_counter() - t0,
              "timings": {"warmup": t_warm, "e_step": 0.0, "m_step": 0.0,
                          "eval": time.perf_counter() - t1}}
  else:
    done, saved, extras = restored
    states = with_base(saved)
  common.truncate_metrics(workdir, done)
  writer = experiment.MetricWriter(workdir)
  if restored is None:
    writer.write(0, {f"{m}/{k}": v for m in methods
                     for k, v in extras["before"][_mode(m)].items()})

  total = len(methods) * iters
  end = total if stop_after is None else min(total, done + stop_after)
  bar = tqdm.tqdm(range(done, end), initial=done, total=total, desc="DRO EM",
                  disable=not progress)
  timings = extras["timings"]
  for phase in bar:
    method, it = methods[phase // iters], phase % iters
    if it == 0:
      # Every method starts from the warm-up (under LoRA: fresh adapters).
      states = with_base(jax.tree.map(jnp.copy, saved_part(fresh)))
    t1 = time.perf_counter()
    q, pool = em.questions_per_iteration, world.dataset.train[config.warmup.num_questions:]
    start = (it * q) % max(len(pool) - q + 1, 1)
    examples = pool[start:start + q]
    key = jax.random.fold_in(jax.random.key(config.seed), phase)
    batches, stats = e_step(graphdef, states, roles, task, examples, method, config, key,
                            lengths)
    t2 = time.perf_counter()
    for role, batch in batches.items():
      name = roles[role]
      states[name], _, _ = train.train_minibatches(update, states[name], batch, em.batch_size,
                                                   config.seed + phase, epochs=em.epochs)
    jax.block_until_ready(states)  # updates run asynchronously: time them here
    t3 = time.perf_counter()
    scores = evaluate(graphdef, states, roles, task, held_out, _mode(method))
    t4 = time.perf_counter()
    for k, v in (("e_step", t2 - t1), ("m_step", t3 - t2), ("eval", t4 - t3)):
      timings[k] += v
    extras["curves"][method].append(scores)
    extras["seconds"] += t4 - t1
    writer.write(phase + 1, {"iteration": it + 1, f"{method}/time/e_step": t2 - t1,
                             f"{method}/time/m_step": t3 - t2,
                             **{f"{method}/{k}": v for k, v in {**stats, **scores}.items()}})
    bar.set_postfix(method=method, em=f"{scores['eval/em']:.1f}")
    ckpt.save(phase + 1, saved_part(states), extras)
  writer.close()
  ckpt.close()
  # Each method starts from its own warm-up evaluation (bm25_top5 has its own).
  common.plot_per_iteration(workdir, "em.png", extras["curves"],
                     lambda m: extras["before"][_mode(m)], "DRO vs baselines (held-out)")
  summary = _summary(extras, methods)
  if end == total:
    experiment.write_summary(workdir, summary)
  return summary


def _mode(method: str) -> str:
  return "bm25" if method == "bm25_top5" else "selector"


def _summary(extras, methods):
  """summary.json: DRO's keys bare, each baseline's prefixed by its name."""
  out = {"train/seconds": extras["seconds"]}
  out.update({f"time/{k}_seconds": v for k, v in extras["timings"].items()})
  for m in methods:
    before, curve = extras["before"][_mode(m)], extras["curves"][m]
    prefix = "" if m == "dro" else f"{m}/"
    last = curve[-1] if curve else before
    for name in ("em", "f1", "gold_recall", "gold_passage_recall"):
      out[f"{prefix}eval/{name}_before"] = before[f"eval/{name}"]
      out[f"{prefix}eval/{name}_after"] = last[f"eval/{name}"]
      out[f"{prefix}eval/{name}_per_iteration"] = [c[f"eval/{name}"] for c in curve]
  return out


if __name__ == "__main__":
  common.run_binary(run, DEFAULT_CONFIG, "runs/dro")
