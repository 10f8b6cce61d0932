"""The GRPO binary as several processes: its tiny run (4 steps, fsdp=8) as
2 processes x 4 CPU devices on 127.0.0.1 (`jax.distributed` with a local
coordinator, gloo CPU collectives) gives the per-step losses (1e-6) and final
parameters of 1 process x 8 devices, with only process 0 writing files; a
killed process makes the other exit with an error (the heartbeat timeout
bounds the wait), and re-running both resumes from their checkpoint.

The worker is `multiprocess_grpo.py` (same directory).
"""
import json
import os

import numpy as np
import pytest

from tests import two_processes

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "multiprocess_grpo.py")
from tests.experiments import multiprocess_grpo  # noqa: E402  pylint: disable=g-import-not-at-top


def _run_two(workdir, *args, **kwargs):
  kwargs.setdefault("timeout", 400)
  return two_processes.run_two(WORKER, workdir, *args, **kwargs)


def _losses(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == list(range(5))
  return [r["train/loss"] for r in rows[1:]]


def _params(workdir):
  params = np.load(os.path.join(workdir, "params.npz"))
  return [params[k] for k in sorted(params.files, key=lambda n: int(n.split("_")[1]))]


def _assert_same_run(workdir, reference):
  np.testing.assert_allclose(_losses(workdir), _losses(reference), rtol=0, atol=1e-6)
  for a, b in zip(_params(workdir), _params(reference)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
  """The reference: this process, with its 8 simulated devices."""
  workdir = str(tmp_path_factory.mktemp("one"))
  multiprocess_grpo.main(workdir)
  assert np.std(_losses(workdir)) > 0  # the dense reward gives real updates
  return workdir


def test_two_processes_match_one(one_process, tmp_path):
  results = _run_two(tmp_path)
  assert all(rc == 0 for rc, _ in results), results[0][1][-3000:] + results[1][1][-3000:]
  _assert_same_run(tmp_path, one_process)
  # Process 0 wrote the binary's outputs once (one TensorBoard file, one row per step).
  files = os.listdir(tmp_path)
  assert {"summary.json", "samples.jsonl", "reward.png", "final_model", "init_model",
          "checkpoints"} <= set(files)
  assert len([f for f in files if f.startswith("events.out.tfevents")]) == 1
  with open(os.path.join(tmp_path, "summary.json")) as f:
    assert json.load(f)["train/finished"] is True


@pytest.mark.slow  # two more 2-process launches: about 2 min on 2 loaded cores
def test_killed_process_stops_the_other_and_both_resume(one_process, tmp_path):
  (rc0, log0), (rc1, _) = _run_two(tmp_path, "--die_after=2")
  assert rc1 == 3
  # Process 0 does not hang: its next collective fails ("Gloo AllGather
  # failed: ... Connection reset by peer"), then the distributed service,
  # missing process 1's heartbeat, ends it ("another task died").
  assert rc0 != 0, log0[-3000:]
  assert "Connection reset by peer" in log0 or "another task died" in log0, log0[-3000:]
  assert not os.path.exists(os.path.join(tmp_path, "summary.json"))
  results = _run_two(tmp_path)
  assert all(rc == 0 for rc, _ in results), results[0][1][-3000:] + results[1][1][-3000:]
  restored = [line for line in results[0][1].splitlines() if line.startswith("restored:")]
  assert restored and restored[0] != "restored: None", results[0][1][-3000:]
  _assert_same_run(tmp_path, one_process)
