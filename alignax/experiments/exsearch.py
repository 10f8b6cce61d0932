r"""EXSEARCH: a search agent trained by generalized EM (docs/algorithms.md §6).

  python -m alignax.experiments.exsearch                    # default preset, runs/exsearch
  python -m alignax.experiments.exsearch --config=alignax/experiments/configs/exsearch.py:tiny \
      --workdir=runs/exsearch_tiny

1. Warm-up: a word-level tokenizer and a small decoder are built and trained
   (SFT) on a few oracle trajectories (search the right sub-queries, record the
   facts, answer), then saved to `<workdir>/init_model`.
2. For every method of `config.methods`, from the warm-up model, repeat
   `em.num_iterations` times:
   E-step: K trajectories per train question with the batched multi-turn BM25
     rollout; each is re-written with the *gold* answer after `<FINAL>` and
     scored by the token-mean log-likelihood of that answer (`answer_loglik`);
     the method turns the scores into weights (`objectives.EM_WEIGHTINGS`):
       exsearch       `em_weights` (softmax within each question)
       uniform        1/K (EM without the posterior)
       rejection_sft  1 for trajectories whose own answer is right, else 0
   M-step: `weighted_sequence_nll` over the model-written tokens (queries,
     recorded facts, `<FINAL>` + gold answer; tool outputs and prompt masked).
   Held-out EM/F1 (greedy rollouts) after every iteration.
   The warm-up model's own figures are the "no EM" baseline.

From a checkpoint: `--config.model_path=DIR` (a Llama / Qwen2 folder written by
`save_pretrained`; the markers are added as special tokens, see
alignax/framework/vocab.py) and `--config.warmup.steps=0` to skip the format warm-up.

Under --workdir: bm25/ (the index), init_model/, final_model/ (EXSEARCH's trained
model, a Hugging Face folder), metrics.jsonl, TensorBoard
events, em.png, summary.json, checkpoints/ (one per method iteration; a re-run
resumes after the last one).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import nnx

from alignax import objectives
from alignax.agents.data import qa_data
from alignax.agents.rollouts import multi_turn as rollout_lib
from alignax.agents.scoring import answer_metrics as metrics_lib
from alignax.agents.worlds import qa_world, retrieval
from alignax.experiments.runtime import launch, loop, model_setup, outputs, pretrained
from alignax.framework import lora, train, vocab

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "exsearch.py")


# ------------------------------------------------------------------- main
def run(config, workdir: str, *, stop_after: int | None = None, progress: bool = True):
  """Runs the oracle warm-up, then every method of `config.methods` (EXSEARCH
  and its baselines) from it in `workdir`, resuming. `stop_after` ends after
  that many method iterations (as a kill would). Returns the summary dict."""
  config = launch.start_run(config, workdir, DEFAULT_CONFIG).config  # runs unsharded
  setup, fresh = make_setup(config, workdir)
  return loop.run_phases(workdir, fresh, make_phases(setup, fresh), stop_after=stop_after,
                         progress=progress)


# ----------------------------------------------------------------- make_*
@dataclasses.dataclass(frozen=True)
class Setup:
  """What the phases read, built once by `make_setup` (never changed)."""
  config: Any
  workdir: str
  graphdef: Any
  agent: "Agent"
  update: Any
  pool: list      # E-step questions
  held_out: list  # evaluation questions
  t0: float       # when the warm-up started


def make_setup(config, workdir):
  """Data, BM25, the warm-up model (LoRA), optimiser and update. Returns
  (Setup, fresh train state)."""
  dataset = qa_data.load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed,
                                 world=config.world)
  retriever = retrieval.BM25Retriever.build_or_load(dataset.corpus,
                                                    os.path.join(workdir, "bm25"))
  t0 = time.perf_counter()
  model, agent = build_policy(config, workdir, dataset, retriever)
  model = model_setup.apply_lora(model, config.lora, seed=config.seed)  # rank 0: unchanged
  em = config.em
  optimizer = train.make_optimizer(em.learning_rate, total_steps=None)
  graphdef, fresh = train.init_train_state(model, optimizer)
  update = train.make_weighted_update(lora.training(graphdef, fresh.params), optimizer,
                                      em.micro_batches)
  # E-step questions start after the warm-up's oracle questions, so that
  # iteration 1 is not scored on questions the warm-up saw solved.
  pool = dataset.train[config.warmup.num_oracle:]
  return Setup(config, workdir, graphdef, agent, update, pool,
               dataset.eval[:config.eval.size], t0), fresh


def make_phases(setup: Setup, fresh) -> loop.Phases:
  """Every method of `config.methods` (an `objectives.EM_WEIGHTINGS` name)."""
  methods = list(setup.config.methods)
  return loop.Phases(
      {m: functools.partial(phase, setup, objectives.EM_WEIGHTINGS[m]) for m in methods},
      setup.config.em.num_iterations, start=functools.partial(start, setup, fresh),
      start_scores=start_scores, summarize=functools.partial(summarize, methods),
      plot=functools.partial(plot, setup.workdir), desc="EM", postfix={"em": "eval/em"},
      on_method_end=functools.partial(export, setup))


class Agent:
  """What every phase needs: tokenizer, marker ids, search tool, limits."""

  def __init__(self, tokenizer, retriever, config):
    self.tokenizer = tokenizer
    self.fmt = rollout_lib.TokenFormat.from_tokenizer(tokenizer)
    self.tool = rollout_lib.SearchTool(retriever, tokenizer, config.retrieval.top_k)
    r = config.rollout
    self.rollout_config = rollout_lib.RolloutConfig(
        max_turns=r.max_turns, max_turn_tokens=r.max_turn_tokens,
        max_tool_tokens=r.max_tool_tokens, max_total_tokens=r.max_total_tokens,
        temperature=r.temperature, top_p=r.top_p)
    self.max_answer = r.max_answer_tokens
    # Padded length of every training row (batches are then cut to their
    # longest row, `trim_padding`).
    self.seq_len = r.max_total_tokens + r.max_answer_tokens + 2

  def encode(self, text: str) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=False)

  def prompt(self, example) -> list[int]:
    return vocab.prompt_ids(self.tokenizer, qa_world.prompt_text(example))

  def gold_ids(self, example) -> list[int]:
    return self.encode(example.answers[0])[:self.max_answer]

  def decode_query(self, ids) -> str:
    return self.tokenizer.decode(ids, skip_special_tokens=True)

  def answer_text(self, traj) -> str:
    return self.tokenizer.decode(traj.answer_ids(self.fmt), skip_special_tokens=True)

  def oracle_row(self, example):
    """(tokens, loss mask, answer mask) of an oracle trajectory."""
    toks, mask = list(self.prompt(example)), [False] * len(self.prompt(example))
    for text, model_written in qa_world.oracle_segments(example, self.tool.text):
      ids = self.encode(text)
      if not model_written:
        ids = ids[:self.rollout_config.max_tool_tokens]
      toks += ids
      mask += [model_written] * len(ids)
    toks.append(self.fmt.eos_id)
    mask.append(True)
    n_answer = len(self.gold_ids(example)) + 1
    answer = [False] * (len(toks) - n_answer) + [True] * n_answer
    return toks, mask, answer

  def with_gold_answer(self, traj, example):
    """The trajectory cut after its first `<FINAL>` (appended if absent), then
    the gold answer + EOS: (tokens, loss mask, answer mask). §6.3."""
    toks, mask = traj.tokens.tolist(), traj.loss_mask.tolist()
    finals = [i for i, (t, m) in enumerate(zip(toks, mask)) if m and t == self.fmt.final_id]
    if finals:
      toks, mask = toks[:finals[0] + 1], mask[:finals[0] + 1]
    else:
      toks, mask = toks + [self.fmt.final_id], mask + [True]
    gold = self.gold_ids(example) + [self.fmt.eos_id]
    return (toks + gold, mask + [True] * len(gold),
            [False] * len(toks) + [True] * len(gold))

  def batch(self, rows, weights=None):
    """Right-padded arrays of `rows` [(tokens, loss mask, answer mask)]."""
    tokens, attn, (loss, answer) = rollout_lib.pad_trajectories(
        [np.asarray(r[0]) for r in rows], [[np.asarray(r[1]) for r in rows],
                                           [np.asarray(r[2]) for r in rows]],
        self.seq_len, self.fmt.pad_id)
    out = dict(sequences=tokens, attention_mask=attn, loss_mask=loss[:, 1:],
               answer_mask=answer[:, 1:])
    out["weights"] = (np.ones(len(rows), np.float32) if weights is None
                      else np.asarray(weights, np.float32))
    return out


def warm_up(model, agent, examples, config):
  """SFT on oracle trajectories (every model-written token, uniform weights);
  `warmup.steps=0` (e.g. from a checkpoint that already follows the format)
  returns `model` as it is."""
  w = config.warmup
  if w.steps == 0:
    return model
  optimizer = train.make_optimizer(w.learning_rate, warmup_steps=min(10, w.steps),
                                   total_steps=w.steps)
  graphdef, state = train.init_train_state(model, optimizer)
  update = train.make_weighted_update(graphdef, optimizer)
  batch = agent.batch([agent.oracle_row(e) for e in examples])
  rng = np.random.RandomState(config.seed)
  bar = tqdm.trange(w.steps, desc="warm-up SFT", leave=False)
  for _ in bar:
    idx = rng.randint(0, len(examples), w.batch_size)
    state, metrics = update(state, {k: v[idx] for k, v in batch.items()})
    train.show_loss(bar, metrics)
  return nnx.merge(graphdef, state.params)


def build_policy(config, workdir, dataset, retriever):
  """Loads `<workdir>/init_model`, or builds, warm-starts and saves it first:
  from `config.model_path` (a Hugging Face checkpoint, the markers added as
  special tokens) or, when it is '', a word-level tokenizer and a new decoder
  of `config.model`."""

  models, tokenizer = pretrained.build_or_load_hf(
      {"policy": os.path.join(workdir, "init_model")},
      functools.partial(build_builtin, config, dataset, retriever),
      model_setup.model_options(config))
  return models["policy"], Agent(tokenizer, retriever, config)


def build_builtin(config, dataset, retriever):
  """The warm-started policy: ({"policy": model}, tokenizer)."""
  if config.model_path:
    model, tokenizer = pretrained.load_pretrained(config.model_path, qa_world.MARKERS)
  else:
    tokenizer = qa_data.train_word_tokenizer(qa_world.vocabulary_text(dataset))
    model = model_setup.new_decoder(tokenizer, config.model, config.seed)
  model = warm_up(model, Agent(tokenizer, retriever, config),
                  dataset.train[:config.warmup.num_oracle], config)
  return {"policy": model}, tokenizer


# ------------------------------------------------------------------- loop
def run_rollouts(graphdef, params, agent, examples, repeats, key, greedy=False):
  config = agent.rollout_config
  if greedy:
    config = rollout_lib.RolloutConfig(**{**config.__dict__, "temperature": 0.0})
  prompts = [agent.prompt(e) for e in examples for _ in range(repeats)]
  return rollout_lib.rollout(graphdef, params, prompts, agent.tool, agent.fmt, config, key,
                             agent.decode_query)


def evaluate(graphdef, params, agent, examples) -> dict[str, float]:
  """Greedy held-out EM / F1 / accuracy (in points, 0-100) and search stats."""
  trajs = run_rollouts(graphdef, params, agent, examples, 1, jax.random.key(0), greedy=True)
  scores = metrics_lib.score_answers([agent.answer_text(t) for t in trajs],
                                     [e.answers for e in examples])
  out = {f"eval/{k}": 100.0 * v for k, v in scores.items()}
  out["eval/tool_calls"] = float(np.mean([len(t.tool_calls) for t in trajs]))
  out["eval/truncated"] = float(np.mean([t.truncated for t in trajs]))
  return out


def e_step(graphdef, params, agent, examples, weighting, em, key):
  """Samples K = em.num_samples trajectories per question and weights them
  with `weighting` (an `objectives.EM_WEIGHTINGS` entry). Returns (M-step
  batch, metrics)."""
  k = em.num_samples
  trajs = run_rollouts(graphdef, params, agent, examples, k, key)
  rows_ex = [e for e in examples for _ in range(k)]
  correct = np.asarray([metrics_lib.exact_match(agent.answer_text(t), e.answers)
                        for t, e in zip(trajs, rows_ex)], np.float32)
  batch = agent.batch([agent.with_gold_answer(t, e) for t, e in zip(trajs, rows_ex)])
  ll = train.answer_logliks(graphdef, params, batch)
  weights = weighting(ll, correct, k, temperature=em.temperature)
  batch["weights"] = np.asarray(weights, np.float32)
  w = batch["weights"].reshape(-1, k)
  # Rows whose weight is below `min_weight` add (almost) nothing to the
  # weighted loss; skipping them makes the M-step cost follow the posterior's
  # effective sample size instead of K. (min_weight=0 keeps every row with w > 0.)
  keep = batch["weights"] > em.min_weight
  batch = {name: v[keep] for name, v in batch.items()}
  stats = {"train/sample_em": 100.0 * float(correct.mean()),
           "train/answer_loglik": float(jnp.mean(ll)),
           "train/weight_max": float(w.max(axis=1).mean()),
           "train/tool_calls": float(np.mean([len(t.tool_calls) for t in trajs])),
           "train/truncated": float(np.mean([t.truncated for t in trajs])),
           "train/rows_trained": float(keep.sum())}
  return batch, stats


def start(setup: Setup, fresh) -> dict:
  """The extras of a fresh run: the warm-up's scores and the seconds so far."""
  return {"before": evaluate(setup.graphdef, fresh.params, setup.agent, setup.held_out),
          "seconds": time.perf_counter() - setup.t0}


def start_scores(extras, method):
  del method  # every method starts from the same warm-up model
  return extras["before"]


def phase(setup: Setup, weighting, state, it, index, extras):
  """One EM iteration: E-step on the iteration's questions, M-step, evaluation."""
  del extras
  config, em = setup.config, setup.config.em
  examples = loop.iteration_slice(setup.pool, it, em.questions_per_iteration)
  key = jax.random.fold_in(jax.random.key(config.seed), index)
  batch, stats = e_step(setup.graphdef, state.params, setup.agent, examples, weighting, em,
                        key)
  state, _, _ = train.train_minibatches(setup.update, state, batch, em.batch_size,
                                        config.seed + index, epochs=em.epochs)
  return state, stats, evaluate(setup.graphdef, state.params, setup.agent, setup.held_out)


def summarize(methods, extras):
  """EXSEARCH's keys bare, each baseline's prefixed by its name."""
  before = extras["before"]
  return {"no_em/eval/em": before["eval/em"], "no_em/eval/f1": before["eval/f1"],
          "train/seconds": extras["seconds"],
          **loop.per_method_summary(extras, methods, "exsearch",
                                    {"em": "eval/em", "f1": "eval/f1"}, start_scores)}


def plot(workdir, extras):
  outputs.plot_per_iteration(
      workdir, "em.png", extras["curves"], functools.partial(start_scores, extras),
      {"eval/em": "held-out EM", "eval/f1": "held-out F1"}, "EXSEARCH vs baselines (held-out)",
      xlabel="EM iteration (0 = warm-up only)")


def export(setup: Setup, method, state):
  """EXSEARCH's model -> <workdir>/final_model."""
  if method == "exsearch":
    pretrained.export_models(setup.workdir, {"model": nnx.merge(setup.graphdef, state.params)},
                             setup.agent.tokenizer, {"model": setup.config.model_path})


if __name__ == "__main__":
  launch.run_binary(run, DEFAULT_CONFIG, "runs/exsearch")
