"""Two processes for real: 2 processes x 4 CPU devices on 127.0.0.1 (a local
coordinator, gloo CPU collectives) run sharded GRPO updates over one
fsdp=8 mesh and give the losses and parameters of 1 process x 8 devices;
killing one process makes the other exit with the distributed service's
error (heartbeat timeout, bounded), and re-running both resumes from the
Orbax checkpoint they saved together.

The worker is `multiprocess_update.py` (same directory).
"""
import json
import os

import numpy as np

from tests import two_processes

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "multiprocess_update.py")
from tests.framework import multiprocess_update  # noqa: E402  pylint: disable=g-import-not-at-top


def _run_two(out, *args, **kwargs):
  kwargs.setdefault("timeout", 240)
  return two_processes.run_two(WORKER, out, *args, **kwargs)


def _load(out):
  with open(os.path.join(out, "result.json")) as f:
    result = json.load(f)
  params = np.load(os.path.join(out, "params.npz"))
  return result, [params[k] for k in sorted(params.files, key=lambda n: int(n.split("_")[1]))]


def test_two_processes_match_one_and_resume_after_a_kill(tmp_path):
  # Reference: this (single) process with its 8 simulated devices.
  multiprocess_update.main([str(tmp_path / "one")])
  one, one_params = _load(tmp_path / "one")
  assert one["processes"] == 1 and len(one["losses"]) == 3

  results = _run_two(tmp_path / "two")
  assert all(rc == 0 for rc, _ in results), results[0][1][-3000:]
  two, two_params = _load(tmp_path / "two")
  assert two["processes"] == 2
  np.testing.assert_allclose(two["losses"], one["losses"], atol=1e-6)
  for a, b in zip(two_params, one_params):
    np.testing.assert_allclose(a, b, atol=1e-6)

  # Process 1 dies after the first update (its checkpoint saved): process 0
  # must not hang; it exits with the distributed service's error.
  (rc0, log0), (rc1, _) = _run_two(tmp_path / "kill", "--die_after=1")
  assert rc1 == 3
  assert rc0 != 0 and "another task died" in log0, log0[-3000:]
  assert not (tmp_path / "kill" / "result.json").exists()

  # Both re-run: resume from step 1 and end where the uninterrupted run did.
  results = _run_two(tmp_path / "kill")
  assert all(rc == 0 for rc, _ in results), results[0][1][-3000:]
  resumed, resumed_params = _load(tmp_path / "kill")
  assert resumed["start"] == 1
  np.testing.assert_allclose(resumed["losses"], one["losses"][1:], atol=1e-6)
  for a, b in zip(resumed_params, one_params):
    np.testing.assert_allclose(a, b, atol=1e-6)
