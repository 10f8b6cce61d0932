r"""Batched multi-turn BM25 rollouts vs the same rollouts one trajectory at a time.

  python benchmarks/agent_rollout.py [--num 64] [--hidden 128] [--out benchmarks/results/agent_rollout.json]

Model: `--model_path` (e.g. an EXSEARCH run's `init_model`, the warm-up agent,
which really searches 1-2 times per question), else a random built-in decoder
whose search marker is set to a token it emits often (as in the rollout tests). Both modes run the same compiled
functions after a warm-up call, greedy, so they produce the same tokens.
Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import time

import jax
import numpy as np
from flax import nnx

from alignax.agents.data import qa_data
from alignax.agents.rollouts import multi_turn as rollout_lib
from alignax.agents.worlds import qa_world, retrieval
from alignax.framework import hf, sampling
from alignax.framework.config import ModelConfig
from alignax.framework.model import Decoder


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--num", type=int, default=64)
  parser.add_argument("--hidden", type=int, default=128)
  parser.add_argument("--layers", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--model_path", default="",
                      help="an EXSEARCH workdir's init_model (real search behaviour);"
                           " empty: a random model with a forced search marker")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                    "agent_rollout.json"))
  args = parser.parse_args()

  dataset = qa_world.make_world(0).dataset()
  retriever = retrieval.BM25Retriever.build(dataset.corpus)
  if args.model_path:
    model = hf.from_pretrained(args.model_path)
    tokenizer = hf.load_tokenizer(args.model_path, model.config)
  else:
    tokenizer = qa_data.train_word_tokenizer(qa_world.vocabulary_text(dataset))
    config = ModelConfig(vocab_size=len(tokenizer), hidden_size=args.hidden,
                         intermediate_size=2 * args.hidden, num_layers=args.layers,
                         num_heads=4, num_kv_heads=2, max_position_embeddings=256)
    model = Decoder(config, seed=0)
  graphdef, state = nnx.split(model)
  examples = dataset.train[:args.num]
  prompts = [[tokenizer.bos_token_id] +
             tokenizer.encode(qa_world.prompt_text(e), add_special_tokens=False)
             for e in examples]
  fmt = rollout_lib.TokenFormat.from_tokenizer(tokenizer)
  if not args.model_path:
    greedy = np.asarray(sampling.generate(model, prompts, max_new_tokens=8).tokens)
    counts = collections.Counter(greedy[:, 2:].ravel().tolist())
    fmt = rollout_lib.TokenFormat(counts.most_common(1)[0][0], fmt.eos_id, fmt.query_id,
                                  fmt.final_id, fmt.pad_id)
  tool = rollout_lib.SearchTool(retriever, tokenizer, 3)
  rc = rollout_lib.RolloutConfig(max_turns=3, max_turn_tokens=12, max_tool_tokens=40,
                                 max_total_tokens=160, temperature=0.0)
  decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)

  def batched():
    return rollout_lib.rollout(graphdef, state, prompts, tool, fmt, rc, jax.random.key(0),
                               decode)

  def one_by_one():
    return [rollout_lib.rollout(graphdef, state, [p], tool, fmt, rc, jax.random.key(0),
                                decode)[0] for p in prompts]

  rows = {}
  for name, fn in (("batched", batched), ("one_at_a_time", one_by_one)):
    fn()  # compile
    times = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      trajs = fn()
      times.append(time.perf_counter() - t0)
    best = min(times)
    generated = int(sum(t.loss_mask.sum() for t in trajs))
    rows[name] = dict(seconds=best, trajectories_per_s=len(trajs) / best,
                      generated_tokens_per_s=generated / best,
                      tool_calls=int(sum(len(t.tool_calls) for t in trajs)),
                      generated_tokens=generated)
  speedup = rows["batched"]["trajectories_per_s"] / rows["one_at_a_time"]["trajectories_per_s"]
  result = dict(device=jax.devices()[0].device_kind, num_trajectories=args.num,
                model=args.model_path or "random",
                hidden=args.hidden, layers=args.layers, rollout=rc.__dict__, modes=rows,
                speedup=speedup)
  print(f"{'mode':<14} {'seconds':>8} {'traj/s':>8} {'gen tok/s':>10} {'tool calls':>10}")
  for name, r in rows.items():
    print(f"{name:<14} {r['seconds']:8.2f} {r['trajectories_per_s']:8.1f}"
          f" {r['generated_tokens_per_s']:10.1f} {r['tool_calls']:10d}")
  print(f"speedup (batched / one at a time): {speedup:.1f}x")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
