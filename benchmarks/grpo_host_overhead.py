"""Host-side data + reward share of the GRPO step time (the default run).

Runs `python -m alignax.experiments.grpo`'s default config (or reads a finished
run's metrics.jsonl). Every step the binary times, with `time.perf_counter`, the
host work inside the step (drawing the batch's rows, decoding the completions,
calling the reward functions with their columns, the NaN/None handling and
advantage inputs) and the whole step (rollout + update, waiting for the
device); both are logged as `perf/host_seconds` and `perf/step_seconds`. The
two timings come from the same steps (interleaved), so load on a shared
machine affects both. The first steps (compilation) are skipped.

  python benchmarks/grpo_host_overhead.py                    # default run, ~3 min on 2 cores
  python benchmarks/grpo_host_overhead.py --workdir runs/grpo  # an existing run's metrics
"""
import argparse
import json
import os
import platform
import tempfile

import numpy as np


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", default="", help="a finished grpo run; empty: run the default")
  ap.add_argument("--skip", type=int, default=5, help="first steps left out (compilation)")
  ap.add_argument("--out", default="benchmarks/results/grpo_host_overhead.json")
  a = ap.parse_args()
  workdir = a.workdir
  if not workdir:
    from alignax.experiments import grpo  # pylint: disable=g-import-not-at-top
    from alignax.experiments.runtime import config_files  # pylint: disable=g-import-not-at-top
    workdir = tempfile.mkdtemp(prefix="grpo_host_")
    grpo.run(config_files.load_config_file(grpo.DEFAULT_CONFIG), workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  rows = [r for r in rows if "perf/step_seconds" in r and r["step"] > a.skip]
  host = np.asarray([r["perf/host_seconds"] for r in rows])
  step = np.asarray([r["perf/step_seconds"] for r in rows])
  result = {
      "steps": len(rows),
      "host_seconds_per_step_median": float(np.median(host)),
      "step_seconds_per_step_median": float(np.median(step)),
      "host_fraction_total": float(host.sum() / step.sum()),
      "host_fraction_median": float(np.median(host / step)),
      "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
      "workdir": workdir,
  }
  print("| steps | host ms/step (median) | step ms (median) | host share (total) |")
  print("| --- | --- | --- | --- |")
  print(f"| {result['steps']} | {1e3 * result['host_seconds_per_step_median']:.1f} |"
        f" {1e3 * result['step_seconds_per_step_median']:.1f} |"
        f" {100 * result['host_fraction_total']:.2f}% |")
  os.makedirs(os.path.dirname(a.out), exist_ok=True)
  with open(a.out, "w") as f:
    json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
