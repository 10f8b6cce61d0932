r"""One-step off-policy GRPO against on-policy on a real model: learning curves.

  python benchmarks/off_policy_curve.py                  # seed 0, about 30 min on 2 cores
  python benchmarks/off_policy_curve.py --seeds 0,1 --preset smollm2

Runs the grpo binary's `--preset` (default `smollm2`: SmolLM2-135M-Instruct on
two-digit addition, 90 steps, held-out greedy accuracy on 256 prompts at
steps 0, 30, 60, 90) twice per seed: as is (on-policy) and with
`--config.rollout.off_policy_steps=1` (each step trains on the batch sampled
by the previous step's parameters, re-weighted by the truncated importance
weight; docs/algorithms.md §2.3). Same seed, same prompts per step. Each run
goes to `<workdir>/<variant>_s<seed>`; a finished run (its `summary.json`
exists) is read, not run again, so the script resumes.

Writes `benchmarks/results/off_policy_<preset>.json` (per run: the held-out
curve, the training reward per step, the importance-ratio metrics, training
seconds) and a PNG beside it (held-out accuracy and training reward against
step). Training seconds of runs launched one after the other are a rough
comparison only (not interleaved); the interleaved step timing of the two
modes is `benchmarks/rollout_step.py --variants baseline,off_policy`.
"""
from __future__ import annotations

import argparse
import json
import os

import seeds  # benchmarks/seeds.py: runs (or resumes) one binary launch

_ROOT = seeds._ROOT  # pylint: disable=protected-access
VARIANTS = {"on_policy": {}, "off_policy": {"rollout.off_policy_steps": 1}}
_RATIO = "train/sampling/importance_sampling_ratio/"


def read_run(workdir: str) -> dict:
  """The curves of one finished run, from its metrics.jsonl and summary.json."""
  curve, reward, ratio = {}, {}, {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      step = row.get("step")
      if "eval/accuracy" in row:
        curve[step] = row["eval/accuracy"]
      if "train/reward" in row:
        reward[step] = row["train/reward"]
      if _RATIO + "mean" in row:
        ratio[step] = {k[len(_RATIO):]: row[k] for k in row if k.startswith(_RATIO)}
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  return {"eval_accuracy": curve, "train_reward": reward, "importance_ratio": ratio,
          "train_seconds": summary["train/seconds"],
          "pass@4_after": summary["eval/pass@4_after"]}


def _plot(result: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (acc, rew) = plt.subplots(1, 2, figsize=(10, 4))
  for name, run in result["runs"].items():
    steps = sorted(run["eval_accuracy"], key=int)
    acc.plot([int(s) for s in steps], [run["eval_accuracy"][s] for s in steps], "o-",
             label=name)
    steps = sorted(run["train_reward"], key=int)
    rew.plot([int(s) for s in steps], [run["train_reward"][s] for s in steps], label=name,
             alpha=0.7)
  acc.set(xlabel="step", ylabel="held-out greedy accuracy", title=result["preset"])
  rew.set(xlabel="step", ylabel="training reward (mean of the batch)")
  acc.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", default="0")
  parser.add_argument("--preset", default="smollm2")
  parser.add_argument("--workdir", default=os.path.join(_ROOT, "runs", "off_policy_curve"))
  parser.add_argument("--out", default=None, help="JSON path (default: results/)")
  args = parser.parse_args(argv)
  runs = {}
  for seed in [int(s) for s in args.seeds.split(",")]:
    for variant, overrides in VARIANTS.items():
      workdir = os.path.join(args.workdir, f"{args.preset}_{variant}_s{seed}")
      seeds.run_seed("grpo", args.preset, seed, workdir, overrides)
      runs[f"{variant}_s{seed}"] = read_run(workdir)
  result = {"preset": args.preset, "variants": VARIANTS, "runs": runs}
  out = args.out or os.path.join(_ROOT, "benchmarks", "results",
                                 f"off_policy_{args.preset}.json")
  with open(out, "w") as f:
    json.dump(result, f, indent=1)
  _plot(result, os.path.splitext(out)[0] + ".png")

  steps = sorted({s for r in runs.values() for s in r["eval_accuracy"]}, key=int)
  print(f"| run | {' | '.join(f'step {s}' for s in steps)} | pass@4 after | train s |")
  print("| --- |" + " --- |" * (len(steps) + 2))
  for name, r in runs.items():
    accs = " | ".join(f"{r['eval_accuracy'].get(s, float('nan')):.3f}" for s in steps)
    print(f"| {name} | {accs} | {r['pass@4_after']:.3f} | {r['train_seconds']:.0f} |")
  print(f"wrote {out}")
  return result


if __name__ == "__main__":
  main()
