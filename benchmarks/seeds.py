r"""Runs a binary's default over several seeds and tests its headline claims.

  python benchmarks/seeds.py grpo                 # seeds 0, 1, 2 of the default
  python benchmarks/seeds.py dro --seeds 0,1,2 --preset default
  python benchmarks/seeds.py moat --preset tiny --workdir /tmp/seeds   # a quick check

Seeds run one after another, each in `<workdir>/<binary>/seed<S>` with
`--config.seed=S`; a seed whose `summary.json` exists is not run again, and an
interrupted one resumes from its own checkpoints (every binary resumes), so the
script itself is resumable: run the same command again.

Writes `benchmarks/results/seeds_<binary>.json` (or `..._<preset>.json` for a
preset other than default): for every numeric leaf of `summary.json` its mean,
sample standard deviation (ddof=1) and per-seed values, and for every headline
claim whether it holds. A claim holds when it holds on the mean summary and in
at least 2 of the 3 seeds (in general: in a majority of the seeds).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import operator
import os
import subprocess
import sys
import time
from typing import Callable, Mapping

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RESULTS = os.path.join(_ROOT, "benchmarks", "results")

Summary = Mapping[str, float]
_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le}


@dataclasses.dataclass(frozen=True)
class Claim:
  """A headline claim: `value(summary) <op> bound`, e.g. a gain >= 0.30.

  The value (not only the verdict) goes into the seeds file, so that the
  claims table (benchmarks/claims_table.py) shows how far each seed is from
  the bound.
  """
  value: Callable[[Summary], float]
  op: str
  bound: float

  def __call__(self, s: Summary) -> bool:
    return bool(_OPS[self.op](self.value(s), self.bound))


def _gain(s: Summary, key: str) -> float:
  return s[f"{key}_after"] - s[f"{key}_before"]


def _worst_drop(s: Summary, key: str) -> float:
  """The most negative change from one iteration's value to the next (0: none drops)."""
  curve = [s[f"{key}_before"]] + [
      s[k] for k in sorted((k for k in s if k.startswith(f"{key}_per_iteration/")),
                           key=lambda k: int(k.rsplit("/", 1)[1]))]
  return min([0.0] + [b - a for a, b in zip(curve, curve[1:])])


def _lead(s: Summary, key: str, baseline: str) -> float:
  """The binary's own method's `eval/<key>` after training minus `baseline`'s."""
  return s[f"eval/{key}_after"] - s[f"{baseline}/eval/{key}_after"]


def _forget_gap(s: Summary, method: str) -> float:
  """How far `method`'s forget HR@10 is from retraining's (lower is better)."""
  return abs(s[f"{method}/forget/hr@10"] - s["retrained/forget/hr@10"])



# cau_unlearn's fixed-weight runs with the curriculum of "cau" (no MGDA).
_CAU_FIXED = ("ablation/no_mgda", "ablation/fixed_forget_heavy",
              "ablation/fixed_retain_heavy")


def _pareto_margin(s: Summary, method: str, others: tuple[str, ...]) -> float:
  """> 0 iff no run of `others` is as good as `method` on both axes.

  The axes: forget HR@10's distance to retraining's (lower is better) and
  retain NDCG@10 (higher is better). Per other run, the larger of `method`'s
  leads on the two axes; the smallest of these over the runs.
  """
  return min(max(_forget_gap(s, o) - _forget_gap(s, method),
                 s[f"{method}/retain/ndcg@10"] - s[f"{o}/retain/ndcg@10"])
             for o in others)


# CAU's claims on every data set: it forgets as retraining does and keeps the rest.
_CAU_KEPT = {
    "forget HR@10 within 0.02 of retraining":
        Claim(lambda s: _forget_gap(s, "cau"), "<=", 0.02),
    "retain NDCG@10 >= 95% of the original":
        Claim(lambda s: s["cau/retain/ndcg@10"] / s["original/retain/ndcg@10"], ">=", 0.95),
}

# The claims the README makes for each binary's default run (docs/results.md).
CLAIMS: dict[str, dict[str, Claim]] = {
    "grpo": {
        "held-out accuracy +30 points over the warm-start":
            Claim(lambda s: _gain(s, "eval/accuracy"), ">=", 0.30),
    },
    # The real model (SmolLM2-135M-Instruct, two-digit addition; README "A real model").
    "grpo:smollm2": {
        "held-out greedy accuracy >= 0.75 after training":
            Claim(lambda s: s["eval/accuracy_after"], ">=", 0.75),
        "still well-formed (a number in >= 95% of answers)":
            Claim(lambda s: s["eval/reward/has_number_after"], ">=", 0.95),
        "at most 10 minutes of training":
            Claim(lambda s: s["train/seconds"] / 60, "<=", 10),
    },
    # The harder task (two operations on three numbers, base model below 10%).
    "grpo:smollm2_two_ops": {
        "held-out greedy accuracy +30 points":
            Claim(lambda s: _gain(s, "eval/accuracy"), ">=", 0.30),
        "still well-formed (a number in >= 95% of answers)":
            Claim(lambda s: s["eval/reward/has_number_after"], ">=", 0.95),
        "at most 45 minutes of training":
            Claim(lambda s: s["train/seconds"] / 60, "<=", 45),
    },
    "exsearch": {
        "held-out EM +15 over the warm-up": Claim(lambda s: _gain(s, "eval/em"), ">=", 15),
        "beats uniform": Claim(lambda s: _lead(s, "em", "uniform"), ">", 0),
        "beats rejection_sft": Claim(lambda s: _lead(s, "em", "rejection_sft"), ">", 0),
    },
    # Issue 32's claims on the world where reading is required (bridge facts
    # drawn per question, docs/algorithms.md §7): +5 EM and F1 over the start,
    # bm25_top5 and rejection_sft, and the mechanism itself: the selector
    # picks a larger share of the gold passages.
    "dro": {
        **{f"held-out {m.upper()} +5 over the warm-up":
               Claim(lambda s, m=m: _gain(s, f"eval/{m}"), ">=", 5) for m in ("em", "f1")},
        **{f"held-out {m.upper()} +5 over {base}":
               Claim(lambda s, m=m, base=base: _lead(s, m, base), ">=", 5)
           for m in ("em", "f1") for base in ("bm25_top5", "rejection_sft")},
        "selector's gold-passage recall +10 points":
            Claim(lambda s: _gain(s, "eval/gold_passage_recall"), ">=", 10),
    },
    # Held-out: new compositions of steps seen in training, at training
    # lengths 2 and 3, 100 (chain, phrasing) groups (moat_world.chain_split).
    "moat": {
        "held-out success >= separate/ + 3":
            Claim(lambda s: _lead(s, "held_out", "separate"), ">=", 3),
        # (a zero SE: the methods agree on every group, or one group decides)
        "held-out margin over separate/ >= 2 standard errors (paired, over groups)":
            Claim(lambda s: (lambda d, se: d / se if se > 0 else float(np.sign(d)) * 1e9)(
                s["separate/eval/held_out_moat_minus"],
                s["separate/eval/held_out_moat_minus_se"]), ">=", 2),
        **{f"held-out length-{n} success >= separate/":
               Claim(lambda s, n=n: _lead(s, f"held_out_hops{n}", "separate"), ">=", 0)
           for n in (2, 3)},
        "held-in success > separate/": Claim(lambda s: _lead(s, "held_in", "separate"), ">", 0),
        "no iteration drops more than 2 points":
            Claim(lambda s: min(_worst_drop(s, "eval/held_in"), _worst_drop(s, "eval/held_out")),
                  ">=", -2),
    },
    "cau_unlearn": {
        **_CAU_KEPT,
        "MGDA (cau) beats fixed weights on retain NDCG@10":
            Claim(lambda s: s["cau/retain/ndcg@10"] - s["weighted_sum/retain/ndcg@10"], ">", 0),
        # Both sides without XLA compilation (details/*/compile_seconds); CAU's
        # time includes its difficulty scores and schedule.
        "at least 10x faster than retraining (compile excluded)":
            Claim(lambda s: s["retrained/seconds"] / s["cau/seconds"], ">=", 10),
    },
    # Conflicting objectives: each forgotten item is in its context's own
    # cluster, so retraining keeps it fairly high (docs/results.md, cau_unlearn).
    "cau_unlearn:conflict": {
        **_CAU_KEPT,
        "MGDA not dominated by a fixed weighting (same curriculum)":
            Claim(lambda s: _pareto_margin(s, "cau", _CAU_FIXED), ">", 0),
    },
}


BINARIES = sorted({key.split(":")[0] for key in CLAIMS})


def claims_of(binary: str, preset: str) -> dict[str, Claim]:
  """The claims of `binary`'s `preset` (its own entry "binary:preset" if any)."""
  return CLAIMS.get(f"{binary}:{preset}", CLAIMS[binary])


def flatten(tree, prefix: str = "") -> dict[str, float]:
  """Numeric leaves of a summary as {"a/b/c": float}; lists become "/i" keys."""
  out = {}
  items = (tree.items() if isinstance(tree, Mapping)
           else enumerate(tree) if isinstance(tree, list) else None)
  if items is None:
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
      out[prefix] = float(tree)
    return out
  for k, v in items:
    out.update(flatten(v, f"{prefix}/{k}" if prefix else str(k)))
  return out


def run_seed(binary: str, preset: str, seed: int, workdir: str,
             overrides: Mapping[str, object] = ()) -> dict:
  """Runs (or resumes) one seed, with `--config.<key>=<value>` for each of
  `overrides`; returns its flat summary."""
  path = os.path.join(workdir, "summary.json")
  wall = os.path.join(workdir, "wall_seconds.txt")
  if not os.path.exists(path):
    start = time.perf_counter()
    config = os.path.join(_ROOT, "alignax", "experiments", "configs", f"{binary}.py")
    cmd = [sys.executable, "-m", f"alignax.experiments.{binary}",
           f"--config={config}" + ("" if preset == "default" else f":{preset}"),
           f"--config.seed={seed}", f"--workdir={workdir}",
           *(f"--config.{k}={v}" for k, v in dict(overrides).items())]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=_ROOT)
    # This launch's wall time (a resumed seed's earlier launches are not in it).
    with open(wall, "w") as f:
      f.write(f"{time.perf_counter() - start:.1f}\n")
  with open(path) as f:
    summary = flatten(json.load(f))
  if os.path.exists(wall):
    with open(wall) as f:
      summary["wall_seconds"] = float(f.read())
  return summary


def aggregate(per_seed: Mapping[int, Summary], claims: Mapping[str, Claim]) -> dict:
  """Mean, std (ddof=1) and per-seed values of every common leaf; claim verdicts."""
  seeds = sorted(per_seed)
  keys = sorted(set.intersection(*(set(per_seed[s]) for s in seeds)))
  metrics = {}
  for k in keys:
    vals = np.array([per_seed[s][k] for s in seeds])
    metrics[k] = {"mean": float(vals.mean()),
                  "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                  "per_seed": {str(s): float(v) for s, v in zip(seeds, vals)}}
  mean = {k: m["mean"] for k, m in metrics.items()}
  verdicts = {}
  for name, claim in claims.items():
    by_seed = {str(s): bool(claim(per_seed[s])) for s in seeds}
    on_mean = bool(claim(mean))
    passed = sum(by_seed.values())
    verdicts[name] = {"on_mean": on_mean, "per_seed": by_seed,
                      "holds": on_mean and 2 * passed > len(seeds)}
    if isinstance(claim, Claim):
      verdicts[name].update(
          bound=f"{claim.op} {claim.bound:g}", value_on_mean=float(claim.value(mean)),
          value_per_seed={str(s): float(claim.value(per_seed[s])) for s in seeds})
  return {"seeds": seeds, "metrics": metrics, "claims": verdicts}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("binary", choices=BINARIES)
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--preset", default="default")
  parser.add_argument("--workdir", default=os.path.join(_ROOT, "runs", "seeds"))
  parser.add_argument("--out", default=None, help="JSON path (default: results/)")
  args = parser.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(",")]
  suffix = "" if args.preset == "default" else f"_{args.preset}"
  per_seed = {s: run_seed(args.binary, args.preset, s,
                          os.path.join(args.workdir, f"{args.binary}{suffix}", f"seed{s}"))
              for s in seeds}
  result = {"binary": args.binary, "preset": args.preset,
            **aggregate(per_seed, claims_of(args.binary, args.preset))}
  out = args.out or os.path.join(_RESULTS, f"seeds_{args.binary}{suffix}.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=1)

  headline = [k for k in result["metrics"]
              if "per_iteration" not in k and "seconds" not in k and "details" not in k]
  print(f"\n{args.binary} ({args.preset}), seeds {seeds}")
  print(f"{'metric':<48} {'mean':>10} {'std':>9}  per seed")
  for k in headline:
    m = result["metrics"][k]
    vals = " ".join(f"{v:.4g}" for v in m["per_seed"].values())
    print(f"{k:<48} {m['mean']:>10.4g} {m['std']:>9.3g}  {vals}")
  print(f"\n{'claim':<52} {'mean':>5} {'seeds':>8}  holds")
  for name, v in result["claims"].items():
    seeds_ok = "".join("+" if ok else "-" for ok in v["per_seed"].values())
    print(f"{name:<52} {'yes' if v['on_mean'] else 'no':>5} {seeds_ok:>8}  "
          f"{'YES' if v['holds'] else 'no'}")
  print(f"\nwrote {out}")
  return result


if __name__ == "__main__":
  main()
