"""Generated tokens/s: alignax's sampler vs transformers' generate on one model.

Same randomly initialised Llama (default: 4 layers, hidden 256, vocab 32k),
batch 16, prompt 64, 128 new tokens, greedy with no early stop so both produce
exactly batch x new tokens. Compile time is reported separately.

  python benchmarks/sampler.py [--quick] [--out benchmarks/results/sampler.json]
"""
import argparse
import json
import os
import platform
import tempfile
import time

import jax
import numpy as np


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--layers", type=int, default=4)
  ap.add_argument("--hidden", type=int, default=256)
  ap.add_argument("--vocab", type=int, default=32000)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--prompt", type=int, default=64)
  ap.add_argument("--new", type=int, default=128)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
  ap.add_argument("--skip-torch", action="store_true")
  ap.add_argument("--out", default="benchmarks/results/sampler.json")
  a = ap.parse_args()
  if a.quick:
    a.layers, a.hidden, a.vocab, a.batch, a.prompt, a.new, a.repeats = 2, 64, 512, 4, 8, 8, 1

  from alignax.framework import hf, sampling
  from alignax.framework.config import ModelConfig
  from alignax.framework.model import Decoder

  config = ModelConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=4 * a.hidden,
                       num_layers=a.layers, num_heads=max(a.hidden // 64, 1),
                       num_kv_heads=max(a.hidden // 64, 1), max_position_embeddings=1024)
  model = Decoder(config, seed=0)
  rng = np.random.RandomState(0)
  prompts = [list(rng.randint(0, a.vocab, a.prompt)) for _ in range(a.batch)]
  kwargs = dict(max_new_tokens=a.new)  # greedy, no stop token: every row runs to the end
  tokens = a.batch * a.new

  def run_ours():
    jax.block_until_ready(sampling.generate(model, prompts, **kwargs).tokens)

  t0 = time.perf_counter()
  run_ours()
  first = time.perf_counter() - t0
  impls = {"alignax": run_ours}

  if not a.skip_torch:
    import torch
    import transformers
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
      hf.save_pretrained(model, d)
      tm = transformers.AutoModelForCausalLM.from_pretrained(d).eval()
    ids, mask = sampling.pad_prompts(prompts, a.prompt, 0)
    ids, mask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)

    def run_torch():
      with torch.no_grad():
        tm.generate(ids, attention_mask=mask, max_new_tokens=a.new, min_new_tokens=a.new,
                    do_sample=False, pad_token_id=0)

    run_torch()  # warm-up
    impls["transformers"] = run_torch

  # Interleave the repeats so both see the same machine load; keep the best.
  best = {name: float("inf") for name in impls}
  for _ in range(a.repeats):
    for name, fn in impls.items():
      t0 = time.perf_counter()
      fn()
      best[name] = min(best[name], time.perf_counter() - t0)
  ours = best["alignax"]
  rows = [dict(impl="alignax (jax)", device=str(jax.devices()[0].device_kind),
               seconds=ours, tokens_per_s=tokens / ours, compile_s=first - ours)]
  if "transformers" in best:
    import torch
    import transformers
    theirs = best["transformers"]
    rows.append(dict(impl=f"transformers {transformers.__version__} (torch {torch.__version__})",
                     device="cpu", seconds=theirs, tokens_per_s=tokens / theirs, compile_s=0.0))
    rows[0]["speedup_vs_transformers"] = theirs / ours

  print(f"\nbatch {a.batch}, prompt {a.prompt}, new {a.new}, layers {a.layers}, "
        f"hidden {a.hidden}, vocab {a.vocab} ({platform.processor() or platform.machine()},"
        f" {os.cpu_count()} cores)")
  print(f"{'impl':48s} {'s/call':>8s} {'tok/s':>10s} {'compile s':>10s}")
  for r in rows:
    print(f"{r['impl']:48s} {r['seconds']:8.3f} {r['tokens_per_s']:10.1f} {r['compile_s']:10.2f}")
  if "speedup_vs_transformers" in rows[0]:
    print(f"alignax / transformers tokens/s: {rows[0]['speedup_vs_transformers']:.2f}x")
  os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
  with open(a.out, "w") as f:
    json.dump(dict(args=vars(a), results=rows, jax=jax.__version__), f, indent=2)


if __name__ == "__main__":
  main()
