r"""LoRA against full fine-tuning on SmolLM2-135M-Instruct, and the adapter in PEFT.

  python -m alignax.tools.fetch_smollm2 runs/smollm2     # once
  python benchmarks/real_model_lora.py                    # ~6 min on 2 cores

The `grpo.py:smollm2` run (two-digit addition, 4 prompts x 8, 16 new tokens)
twice: full fine-tuning (lr 1e-5) and LoRA rank 16 on the q, k, v, o, gate,
up and down projections (alpha 32, lr 2e-4: adapters start at zero and need a
larger step). The two sides run in alternating segments of `--segment` steps,
each a fresh process resuming from the last segment's checkpoint, so both see
the same machine load; a segment's first step holds compilation and is reported
apart. Then the exported `final_adapter/` is loaded by PEFT on the transformers
model, and its logits on chat-templated held-out prompts are compared with
alignax's (base + the same adapter file): the max abs difference is reported.

Writes benchmarks/results/real_model_lora.json and prints a table.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
CONFIG = os.path.join(ROOT, "alignax", "experiments", "configs", "grpo.py") + ":smollm2"
SIDES = {"full": {"lora.rank": 0, "train.learning_rate": 1e-5},
         "lora": {"lora.rank": 16, "lora.alpha": 32.0, "train.learning_rate": 2e-4}}


def run_side(args, side: str, until: int) -> dict:
  """One segment of one side, in this process: trains to step `until`."""
  from alignax.experiments import grpo  # pylint: disable=g-import-not-at-top
  from alignax.experiments.runtime import config_files, outputs  # pylint: disable=g-import-not-at-top
  config = config_files.load_config_file(CONFIG)
  config.update_from_flattened_dict({
      "model_path": args.model, "seed": args.seed, "train.steps": args.steps,
      "train.checkpoint_every": args.segment, "train.eval_every": args.steps,
      # A small greedy evaluation at the start and end: the timing is the point.
      "eval.size": args.eval_size, "eval.batch_size": args.eval_size,
      "eval.num_samples": 0, **SIDES[side]})
  workdir = os.path.join(args.workdir, side)
  grpo.run(config, workdir, stop_after=args.segment, progress=False)
  start = until - args.segment
  rows = [r for r in outputs.read_metrics(workdir)
          if start < r["step"] <= until or r["step"] == start == 0]
  return {"steps": [{"step": r["step"], "seconds": r["perf/step_seconds"],
                     "generation": r["perf/rollout_seconds"], "update": r["perf/update_seconds"],
                     "reward": r["train/reward"]} for r in rows if "perf/step_seconds" in r],
          "evals": [{"step": r["step"], "accuracy": r["eval/accuracy"]} for r in rows
                    if "eval/accuracy" in r],
          "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def peft_logit_diff(base: str, adapter: str, prompts: list[str]) -> dict:
  """Max |alignax - PEFT| logits over the real tokens of chat-templated prompts."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import peft  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from alignax.framework import hf, lora  # pylint: disable=g-import-not-at-top

  tok = transformers.AutoTokenizer.from_pretrained(base)
  rows = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                  tokenize=True) for p in prompts]
  rows = [r["input_ids"] if isinstance(r, dict) or hasattr(r, "keys") else r for r in rows]
  width = max(map(len, rows))
  ids = np.array([[0] * (width - len(r)) + list(r) for r in rows])  # left-padded
  mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows])
  ours = lora.load_peft(hf.from_pretrained(base), adapter)
  got = np.asarray(ours(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
  model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
  model = peft.PeftModel.from_pretrained(model, adapter).eval()
  pos = np.where(mask == 1, np.cumsum(mask, -1) - 1, 0)
  with torch.no_grad():
    want = model(torch.tensor(ids), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(pos)).logits.float().numpy()
    base_model = model.get_base_model()
    with model.disable_adapter():
      plain = base_model(torch.tensor(ids), attention_mask=torch.tensor(mask),
                         position_ids=torch.tensor(pos)).logits.float().numpy()
  real = mask.astype(bool)
  return {"max_abs_diff": float(np.abs(got - want)[real].max()),
          "logit_scale": float(np.abs(want[real]).max()),
          # How far the adapter moved the model: the check is not vacuous.
          "adapter_effect_max_abs": float(np.abs(want - plain)[real].max()),
          "prompts": len(prompts), "tokens": int(real.sum())}


def _segment(args, side, until):
  cmd = [sys.executable, os.path.abspath(__file__), "--side", side, "--until", str(until),
         *(f"--{k}={v}" for k, v in vars(args).items() if k not in ("side", "until", "out"))]
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=os.path.join(args.workdir, "jax_cache"))
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
  if proc.returncode:
    sys.exit(f"{side} segment to step {until} failed:\n{proc.stderr[-4000:]}")
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  result["wall"] = time.perf_counter() - t0
  return result


def _median(xs):
  xs = sorted(xs)
  return xs[len(xs) // 2] if xs else float("nan")


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default=os.path.join(ROOT, "runs", "smollm2"))
  p.add_argument("--steps", type=int, default=12)
  p.add_argument("--segment", type=int, default=6)
  p.add_argument("--eval_size", type=int, default=32,
                 help="held-out prompts evaluated (greedy) at the start and the end")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "real_model_lora"))
  p.add_argument("--out", default=os.path.join(RESULTS, "real_model_lora.json"))
  p.add_argument("--side", choices=tuple(SIDES), help=argparse.SUPPRESS)
  p.add_argument("--until", type=int, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.side:
    print(json.dumps(run_side(args, args.side, args.until)))
    return
  if not os.path.isfile(os.path.join(args.model, "config.json")):
    sys.exit(f"--model={args.model} is not a model folder; run"
             f" `python -m alignax.tools.fetch_smollm2 {args.model}` first.")
  if args.steps % args.segment:
    sys.exit(f"--steps={args.steps} must be a multiple of --segment={args.segment}.")
  if os.path.exists(args.workdir):
    sys.exit(f"--workdir={args.workdir} exists: remove it or pass another.")
  segments = {side: [] for side in SIDES}
  for until in range(args.segment, args.steps + 1, args.segment):
    for side in SIDES:
      segments[side].append(_segment(args, side, until))
      print(f"{side:5s} to step {until:3d}: {segments[side][-1]['wall']:6.1f} s wall", flush=True)
  result = {"config": {"model": args.model, "steps": args.steps, "segment": args.segment,
                       "seed": args.seed, "sides": SIDES, "cpus": os.cpu_count()}}
  for side, segs in segments.items():
    steady = [s for seg in segs for s in seg["steps"][1:]]
    result[side] = {
        "steps": [s for seg in segs for s in seg["steps"]],
        "evals": [e for seg in segs for e in seg["evals"]],
        "median_step_seconds": _median([s["seconds"] for s in steady]),
        "median_generation_seconds": _median([s["generation"] for s in steady]),
        "median_update_seconds": _median([s["update"] for s in steady]),
        "first_step_of_segment_seconds": [seg["steps"][0]["seconds"] for seg in segs],
        "peak_rss_gib": max(seg["peak_rss_gib"] for seg in segs)}
  held_out = [json.loads(l)["prompt"] for l in open(os.path.join(ROOT, "examples",
                                                                 "addition_eval.jsonl"))][:8]
  result["peft"] = peft_logit_diff(args.model, os.path.join(args.workdir, "lora", "final_adapter"),
                                   held_out)
  f, l = result["full"], result["lora"]
  result["lora_over_full_step_seconds"] = l["median_step_seconds"] / f["median_step_seconds"]
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as fh:
    json.dump(result, fh, indent=1)
  print("\n| | full fine-tuning | LoRA r16 |\n|---|---|---|")
  for key, name in (("median_step_seconds", "s / step (median, steady)"),
                    ("median_generation_seconds", "  generation"),
                    ("median_update_seconds", "  update"), ("peak_rss_gib", "peak RSS (GiB)")):
    print(f"| {name} | {f[key]:.2f} | {l[key]:.2f} |")
  pe = result["peft"]
  print(f"\nPEFT vs alignax logits, {pe['tokens']} tokens of {pe['prompts']} prompts: max abs diff"
        f" {pe['max_abs_diff']:.2e} (logit scale {pe['logit_scale']:.1f}; the adapter moves"
        f" logits by up to {pe['adapter_effect_max_abs']:.2e}); wrote {args.out}")


if __name__ == "__main__":
  main()
