"""One seed, two launches of the binary, the same floats.

The two launches of the tiny GRPO run differ in everything a launch can change
without changing the command's meaning: environment size (a 5 kB variable),
argv (a redundant `--config.seed=0`), workdir path length, the string-hash
seed (PYTHONHASHSEED) and the CPUs the process may use (the second is pinned to
one CPU). Their metrics, summary and final weights must be bit-identical.

The CPU pinning is the one that mattered: XLA:CPU sizes its intra-op thread
pool from the process's affinity mask (unless NPROC is set), and the pool size
changes how Eigen splits the contraction of the weight-gradient dots and how
YNNPACK splits its reductions, so the warm-start weights already differed (by up
to 8e-3). `launch.run_binary` pins NPROC to the machine's CPU count. The
other differences never changed a bit (23 launches of the five binaries, tiny
presets and the EXSEARCH default, with other environment, argv and workdir
sizes and random hash seeds were identical). XLA makes the pool at least the
host device count, so runs compare only under the same
--xla_force_host_platform_device_count (the tests' 8 is stripped here).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "alignax", "experiments", "configs", "grpo.py") + ":tiny"
# Values that are wall-clock times or the workdir's own paths.
VOLATILE = ("seconds", "perf/", "final_model", "final_adapter")


def _launch_env(**extra):
  """The environment of a command-line launch: CPU, one device (the tests'
  simulated 8 devices would size XLA's pool to 8 whatever the CPUs), no NPROC."""
  env = {k: v for k, v in os.environ.items() if k not in ("NPROC", "XLA_FLAGS")}
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  if flags:
    env["XLA_FLAGS"] = " ".join(flags)
  env.update(JAX_PLATFORMS="cpu", **extra)
  return env


def _run(workdir, extra_args=(), env=None, cpus=None):
  cmd = [sys.executable, "-m", "alignax.experiments.grpo", f"--config={TINY}",
         f"--workdir={workdir}", *extra_args]
  preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600, preexec_fn=preexec)
  assert out.returncode == 0, out.stderr[-3000:]


def _clean(x):
  if isinstance(x, dict):
    return {k: _clean(v) for k, v in x.items() if not any(s in k for s in VOLATILE)}
  return [_clean(v) for v in x] if isinstance(x, list) else x


def _results(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    metrics = [_clean(json.loads(line)) for line in f]
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = _clean(json.load(f))
  return metrics, summary


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs a Linux process allowed on at least 2 CPUs")
def test_same_seed_same_floats_across_launches(tmp_path):
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  a = str(tmp_path / "a")
  b = str(tmp_path / ("a_much_longer_workdir_name_" * 4) / "b")
  _run(a, env=_launch_env(PYTHONHASHSEED="1"))
  _run(b, ["--config.seed=0"], cpus={min(os.sched_getaffinity(0))},
       env=_launch_env(PYTHONHASHSEED="2", ALIGNAX_TEST_PADDING="x" * 5000))

  metrics_a, summary_a = _results(a)
  metrics_b, summary_b = _results(b)
  assert len(metrics_a) == len(metrics_b) > 1
  for row_a, row_b in zip(metrics_a, metrics_b):
    assert row_a == row_b, f"first difference at step {row_a.get('step')}"
  assert summary_a == summary_b
  assert summary_a["train/finished"] is True
  weights_a = load_file(os.path.join(a, "final_model", "model.safetensors"))
  weights_b = load_file(os.path.join(b, "final_model", "model.safetensors"))
  assert sorted(weights_a) == sorted(weights_b)
  differing = [k for k in weights_a if weights_a[k].tobytes() != weights_b[k].tobytes()]
  assert not differing, (differing, max(
      float(np.abs(weights_a[k].astype(np.float64) - weights_b[k]).max()) for k in differing))
