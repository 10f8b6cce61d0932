r"""Writes the claims table of docs/results.md from benchmarks/results/seeds_*.json.

  python benchmarks/seeds.py dro          # (re)measures one binary's claims
  python benchmarks/claims_table.py       # rewrites the table in docs/results.md

Every claim of `benchmarks/seeds.py` (CLAIMS) whose seeds file exists gets a
row: the claim's bound, its value on the mean summary, the sample standard
deviation and the value of each seed, and whether it holds (on the mean and
in a majority of seeds). Values are recomputed from the per-seed metrics the
file stores, so a file written before the claims carried their values reads
the same. Only the part of docs/results.md between the two `claims` markers
is replaced; the prose around it is kept.
"""
import argparse
import glob
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import seeds  # pylint: disable=g-import-not-at-top,wrong-import-position

BEGIN, END = "<!-- claims:begin (benchmarks/claims_table.py) -->", "<!-- claims:end -->"


def _per_seed_summaries(result: dict) -> dict[str, dict[str, float]]:
  out: dict[str, dict[str, float]] = {}
  for key, m in result["metrics"].items():
    for seed, value in m["per_seed"].items():
      out.setdefault(seed, {})[key] = value
  return out


def _fmt(x: float) -> str:
  return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def section(path: str) -> str:
  """The markdown of one seeds file: its command, wall times and claim rows."""
  with open(path) as f:
    result = json.load(f)
  binary, preset = result["binary"], result["preset"]
  per_seed = _per_seed_summaries(result)
  mean = {k: m["mean"] for k, m in result["metrics"].items()}
  command = f"python benchmarks/seeds.py {binary}" + (
      "" if preset == "default" else f" --preset {preset}")
  walls = result["metrics"].get("wall_seconds", {}).get("per_seed")
  wall = (", ".join(f"seed {s}: {v / 60:.1f} min" for s, v in walls.items()) if walls
          else "not recorded in this file")
  lines = [f"### {binary} ({preset})", "",
           f"`{command}` — wall time on 2 cores: {wall}; "
           f"file `{os.path.relpath(path, ROOT)}`.", "",
           f"| claim | bound | on the mean | std | per seed ({', '.join(per_seed)}) | holds |",
           "| --- | --- | --- | --- | --- | --- |"]
  for name, claim in seeds.claims_of(binary, preset).items():
    try:
      values = [claim.value(per_seed[s]) for s in per_seed]
      on_mean = claim.value(mean)
    except KeyError as e:  # a file older than the claim: say so, do not guess
      lines.append(f"| {name} | {claim.op} {claim.bound:g} | metric {e} not in this file"
                   f" | | | not measured |")
      continue
    verdicts = [claim(per_seed[s]) for s in per_seed]
    holds = claim(mean) and 2 * sum(verdicts) > len(verdicts)
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    per = ", ".join(f"{_fmt(v)}{'' if ok else ' ✗'}" for v, ok in zip(values, verdicts))
    lines.append(f"| {name} | {claim.op} {claim.bound:g} | {_fmt(on_mean)} | {_fmt(std)}"
                 f" | {per} | {'**yes**' if holds else 'no'} |")
  return "\n".join(lines) + "\n"


def table(results_dir: str) -> str:
  paths = sorted(glob.glob(os.path.join(results_dir, "seeds_*.json")))
  if not paths:
    raise FileNotFoundError(f"no seeds_*.json in {results_dir}; run benchmarks/seeds.py first.")
  return "\n".join(section(p) for p in paths)


def write(doc: str, results_dir: str) -> None:
  with open(doc) as f:
    text = f.read()
  if BEGIN not in text or END not in text:
    raise ValueError(f"{doc} has no {BEGIN} ... {END} block to replace.")
  head, rest = text.split(BEGIN, 1)
  _, tail = rest.split(END, 1)
  with open(doc, "w") as f:
    f.write(f"{head}{BEGIN}\n\n{table(results_dir)}\n{END}{tail}")


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "results"))
  p.add_argument("--doc", default=os.path.join(ROOT, "docs", "results.md"))
  args = p.parse_args()
  write(args.doc, args.results)
  print(f"wrote the claims table of {args.doc}")


if __name__ == "__main__":
  main()
