"""Checks shared by the binaries' tests: a run killed between phases, or in
the middle of a checkpoint write, and re-run resumes to the same metrics, final
checkpoint and summary as an uninterrupted run."""
import contextlib
import glob
import json
import os
from unittest import mock

import numpy as np
import orbax.checkpoint as ocp

from alignax.framework import checkpoint

WALL_CLOCK = ("time", "seconds")


class Killed(BaseException):
  """Stands for SIGKILL: a BaseException, so no `except Exception` stops it."""


def _untimed(d):
  if isinstance(d, dict):
    return {k: _untimed(v) for k, v in d.items() if not any(w in k for w in WALL_CLOCK)}
  return d


def _metrics(workdir):
  """metrics.jsonl rows without wall-clock entries."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [_untimed(r) for r in rows]


def summary_without_time(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return _untimed(json.load(f))


def final_states(workdir):
  """{newest step folder: leaves of its state} of each checkpoint folder under
  workdir (Orbax's temporary folders of killed writes aside)."""
  import jax  # pylint: disable=g-import-not-at-top
  steps = {}
  for state_dir in glob.glob(os.path.join(workdir, "checkpoints", "**", "state"),
                             recursive=True):
    step_dir = os.path.dirname(state_dir)
    if os.path.basename(step_dir).isdigit():
      steps.setdefault(os.path.dirname(step_dir), []).append(step_dir)
  leaves = {}
  for parent, dirs in steps.items():
    newest = max(dirs, key=lambda s: int(os.path.basename(s)))
    tree = ocp.PyTreeCheckpointer().restore(os.path.join(newest, "state"))
    leaves[os.path.relpath(newest, workdir)] = [np.asarray(x) for x in jax.tree.leaves(tree)]
  return leaves


def assert_same_final_checkpoints(workdir, reference_workdir):
  a, b = final_states(workdir), final_states(reference_workdir)
  assert sorted(a) == sorted(b) and a
  for name in a:
    assert len(a[name]) == len(b[name])
    for x, y in zip(a[name], b[name]):
      np.testing.assert_array_equal(x, y, err_msg=name)


@contextlib.contextmanager
def kill_during_save(at_call: int, how: str = "mid_write"):
  """Patches `Checkpointer.save`: the `at_call`-th save is killed part-way.

  how="mid_write": killed while Orbax writes (the step folder is still a
    temporary one, holding a truncated file); "before_manifest": killed after
    Orbax's rename, before the digest manifest was written.
  The run then raises `Killed` out of the binary.
  """
  original = checkpoint.Checkpointer.save
  calls = [0]

  def save(self, step, state, extras=None, *, wait=True):
    calls[0] += 1
    if calls[0] != at_call:
      return original(self, step, state, extras, wait=wait)
    original(self, step, state, extras, wait=True)
    step_dir = os.path.join(self.directory, str(step))
    if how == "mid_write":
      files = [f for f in glob.glob(os.path.join(step_dir, "**", "*"), recursive=True)
               if os.path.isfile(f)]
      with open(max(files, key=os.path.getsize), "r+b") as f:
        f.truncate(os.path.getsize(f.name) // 2)
      os.replace(step_dir, f"{step_dir}.orbax-checkpoint-tmp-1234567")
    elif how == "before_manifest":
      os.remove(os.path.join(step_dir, checkpoint.DIGESTS))
    else:
      raise ValueError(how)
    raise Killed(f"killed during the save of step {step} ({how})")

  with mock.patch.object(checkpoint.Checkpointer, "save", save):
    yield


def assert_killed_run_resumes_identically(run, config_fn, workdir, reference_workdir,
                                          stop_after, kill=None):
  """`run(config, workdir, stop_after=...)` then `run(config, workdir)` writes
  the metrics (losses, weights, held-out scores), final checkpoint and summary
  of the uninterrupted run in `reference_workdir`.

  With `kill` ("mid_write" or "before_manifest") the first run is instead
  killed during its `stop_after`-th checkpoint write.
  """
  if kill is None:
    partial = run(config_fn(), workdir, stop_after=stop_after, progress=False)
    assert len(_metrics(workdir)) == 1 + stop_after and partial
  else:
    try:
      with kill_during_save(stop_after, kill):
        run(config_fn(), workdir, progress=False)
    except Killed:
      pass
    else:
      raise AssertionError("the run was not killed")
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
  run(config_fn(), workdir, progress=False)
  assert _metrics(workdir) == _metrics(reference_workdir)
  assert summary_without_time(workdir) == summary_without_time(reference_workdir)
  assert_same_final_checkpoints(workdir, reference_workdir)
