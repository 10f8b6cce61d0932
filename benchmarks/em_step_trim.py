r"""EXSEARCH E-step scoring and M-step: rows padded to the fixed length vs trimmed.

  python benchmarks/em_step_trim.py [--workdir runs/exsearch] [--questions 256]

Takes one E-step batch of the default config (K trajectories for `--questions`
train questions, from the run's warm-up model in `<workdir>/init_model`, built
if missing) and times, after a compile call each:
  scoring  gold-answer log-likelihood of every row (`answer_logliks`);
  M-step   one epoch of `train.train_minibatches` over the first `--rows` rows, batch 32;
once on rows right-padded to the config's fixed length and once trimmed to
the rows' real length (`train.trim_padding`, what the binary does).
Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np
from flax import nnx

from alignax.agents.data import qa_data
from alignax.agents.worlds import retrieval
from alignax.experiments import exsearch
from alignax.experiments.runtime import config_files
from alignax.framework import train


def _timed(fn) -> float:
  fn()  # compile
  t = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", default="runs/exsearch")
  parser.add_argument("--questions", type=int, default=256)
  parser.add_argument("--rows", type=int, default=1216)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                    "em_step_trim.json"))
  args = parser.parse_args()
  config = config_files.load_config_file(exsearch.DEFAULT_CONFIG)
  dataset = qa_data.load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed,
                                 world=config.world)
  retriever = retrieval.BM25Retriever.build_or_load(dataset.corpus,
                                                    os.path.join(args.workdir, "bm25"))
  model, agent = exsearch.build_policy(config, args.workdir, dataset, retriever)
  k = config.em.num_samples
  start = config.warmup.num_oracle
  examples = dataset.train[start:start + args.questions]
  graphdef, params = nnx.split(model)
  trajs = exsearch.run_rollouts(graphdef, params, agent, examples, k, jax.random.key(0))
  batch = agent.batch([agent.with_gold_answer(t, e)
                       for t, e in zip(trajs, [e for e in examples for _ in range(k)])])
  lengths = batch["attention_mask"].sum(axis=1)
  optimizer = train.make_optimizer(config.em.learning_rate, total_steps=None)
  graphdef, state = train.init_train_state(model, optimizer)
  update = train.make_weighted_update(graphdef, optimizer)
  rows = {name: v[:args.rows] for name, v in batch.items()}

  def m_step():
    return train.train_minibatches(update, state, rows, config.em.batch_size, 0, epochs=1)[0]

  trim = train.trim_padding
  results = {}
  for mode in ("padded", "trimmed"):
    train.trim_padding = trim if mode == "trimmed" else (lambda b, multiple=32: b)
    score = ((lambda: train.answer_logliks(graphdef, state.params, batch)) if mode == "trimmed"
             else (lambda: train._answer_logliks(graphdef, state.params, batch)))  # pylint: disable=protected-access
    results[mode] = {"scoring_s": _timed(score), "m_step_s": _timed(m_step)}
  train.trim_padding = trim
  out = {"rows": len(lengths), "padded_length": int(batch["sequences"].shape[1]),
         "mean_length": float(lengths.mean()), "max_length": int(lengths.max()),
         "m_step_rows": len(rows["weights"]), **results,
         "speedup": {key: results["padded"][key] / results["trimmed"][key]
                     for key in ("scoring_s", "m_step_s")}}
  print(f"{out['rows']} rows, real length mean {out['mean_length']:.1f} / max"
        f" {out['max_length']}, padded to {out['padded_length']}")
  print(f"| {'':8} | scoring {out['rows']} rows | M-step {out['m_step_rows']} rows |")
  print("|---|---|---|")
  for mode in ("padded", "trimmed"):
    r = results[mode]
    print(f"| {mode:8} | {r['scoring_s']:.2f} s | {r['m_step_s']:.2f} s |")
  print(f"| speed-up | {out['speedup']['scoring_s']:.2f}x | {out['speedup']['m_step_s']:.2f}x |")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(out, f, indent=2)


if __name__ == "__main__":
  main()
