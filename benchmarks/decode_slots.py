r"""What a decode step costs against the KV-cache slots it attends over.

The sampler preallocates prompt bucket + max_new_tokens cache slots and every
decode step attends over all of them (masked), however few are filled; a
cache that grows with the sequence (transformers' DynamicCache) reads only
the filled ones. This times the same decode (64 rows: 8 prompts of
`--prompt` tokens x 8 completions, `--steps` sampled tokens, SmolLM2-135M
from `runs/smollm2`) into caches of different sizes, so the difference is
the cost of the empty slots alone.

  python -m alignax.tools.fetch_smollm2 runs/smollm2   # once
  python benchmarks/decode_slots.py                     # ~2 min on 2 cores

Writes benchmarks/results/decode_slots.json (`--out`) and prints a table.
Each size is timed `--repeats` times, the sizes interleaved; the median counts.
"""
import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignax.framework import hf, sampling


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--model", default="runs/smollm2")
  ap.add_argument("--prompt", type=int, default=96, help="prompt bucket (the word"
                  " problems' 66-81 tokens round up to 96)")
  ap.add_argument("--steps", type=int, default=32)
  ap.add_argument("--slots", default="128,224,352,608",
                  help="cache sizes (>= prompt + steps); 352 = 96 + 256, the workload's")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--out", default="benchmarks/results/decode_slots.json")
  a = ap.parse_args()
  sizes = [int(s) for s in a.slots.split(",")]
  if min(sizes) < a.prompt + a.steps:
    ap.error(f"--slots must each be >= --prompt + --steps = {a.prompt + a.steps}")
  if not os.path.isfile(os.path.join(a.model, "config.json")):
    ap.error(f"--model={a.model} is not a model folder; run"
             f" `python -m alignax.tools.fetch_smollm2 {a.model}` first.")

  graphdef, state = nnx.split(hf.from_pretrained(a.model))
  prompts, group = 8, 8
  ids = jnp.asarray(np.random.default_rng(0).integers(100, 40000, (prompts, a.prompt)),
                    jnp.int32)
  mask = jnp.ones(ids.shape, bool)
  params = sampling.SamplingParams(max_new_tokens=a.steps, temperature=1.0)

  def decode_seconds(slots):
    cache, logits = sampling.prefill(graphdef, state, ids, mask, slots=slots, repeats=group)
    jax.block_until_ready(logits)
    positions = jnp.full((prompts * group,), a.prompt, jnp.int32)
    t0 = time.perf_counter()
    out = sampling.decode(graphdef, state, cache, logits, positions, jnp.int32(a.prompt),
                          jax.random.key(0), sampling_params=params)
    jax.block_until_ready(out[0])
    return time.perf_counter() - t0

  for slots in sizes:  # compile every size first
    decode_seconds(slots)
  seconds = {s: [] for s in sizes}
  for _ in range(a.repeats):
    for slots in sizes:
      seconds[slots].append(decode_seconds(slots))
  base = statistics.median(seconds[sizes[0]])
  rows = [{"slots": s, "ms_per_step": 1e3 * statistics.median(seconds[s]) / a.steps,
           "vs_smallest": statistics.median(seconds[s]) / base, "seconds": seconds[s]}
          for s in sizes]
  print(f"decode of {prompts * group} rows, {a.steps} steps after a {a.prompt}-token prompt:\n")
  print("| cache slots | ms per decode step | vs smallest |\n| --- | --- | --- |")
  for r in rows:
    print(f"| {r['slots']} | {r['ms_per_step']:.1f} | {r['vs_smallest']:.2f}x |")
  os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
  with open(a.out, "w") as f:
    json.dump({"args": vars(a), "rows": rows, "jax": jax.__version__,
               "machine": platform.processor() or platform.machine(),
               "cpus": os.cpu_count()}, f, indent=1)
  print(f"\nwrote {a.out}")


if __name__ == "__main__":
  main()
