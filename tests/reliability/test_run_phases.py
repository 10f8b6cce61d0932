"""The EM binaries' shared loop (`loop.run_phases`) on a toy state: kills at
any checkpoint write resume to the same metrics, summary and final
checkpoint; a NaN left by a phase stops the run naming the phase and keeps
the last good checkpoint."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from alignax.experiments.runtime import loop
from tests.experiments.resume import (Killed, _metrics, assert_same_final_checkpoints,
                                      kill_during_save, summary_without_time)

ITERATIONS = 3


def _phase(poison_at=None):
  def phase(state, it, index, extras):
    w = state["w"] * 0.5 + index + 1
    if index == poison_at:
      w = w.at[1].set(jnp.nan)
    extras["seen"] = extras.get("seen", 0) + 1
    return {"w": w}, {"loss": float(w.sum())}, {"score": float(w[0])}
  return phase


def _run(workdir, poison_at=None, stop_after=None):
  phases = loop.Phases(
      {"a": _phase(poison_at), "b": _phase(poison_at)}, ITERATIONS,
      start=lambda: {"seconds": 0.0}, start_scores=lambda e, m: {"score": 0.0},
      summarize=lambda e: {"curves": e["curves"], "seen": e["seen"]},
      plot=lambda e: None, desc="toy", postfix={"s": "score"})
  return loop.run_phases(workdir, {"w": jnp.zeros(4)}, phases, stop_after=stop_after,
                         progress=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("reference"))
  _run(workdir)
  return workdir


def _assert_like_reference(workdir, reference):
  assert _metrics(workdir) == _metrics(reference)
  assert [r["step"] for r in _metrics(workdir)] == list(range(2 * ITERATIONS + 1))
  assert summary_without_time(workdir) == summary_without_time(reference)
  assert_same_final_checkpoints(workdir, reference)


@pytest.mark.parametrize("how", ["mid_write", "before_manifest"])
@pytest.mark.parametrize("at_call", [1, 3, 4, 6])
def test_kill_during_a_checkpoint_write(reference, tmp_path, at_call, how):
  workdir = str(tmp_path)
  with pytest.raises(Killed), kill_during_save(at_call, how):
    _run(workdir)
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
  _run(workdir)
  _assert_like_reference(workdir, reference)
  # The half-written temporary folder is gone; nothing else was removed.
  assert not [d for d in os.listdir(os.path.join(workdir, "checkpoints")) if "tmp" in d]


def test_repeated_kills(reference, tmp_path):
  workdir = str(tmp_path)
  for at_call, how in ((2, "mid_write"), (1, "before_manifest"), (2, "mid_write")):
    with pytest.raises(Killed), kill_during_save(at_call, how):
      _run(workdir)
  _run(workdir)
  _assert_like_reference(workdir, reference)


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(reference, tmp_path):
  workdir = str(tmp_path)
  with pytest.raises(FloatingPointError) as e:
    _run(workdir, poison_at=3)  # method b's first iteration
  msg = str(e.value)
  assert "b iteration 1 (step 4)" in msg and "checkpoint (step 3)" in msg
  assert max(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == 3
  assert [r["step"] for r in _metrics(workdir)] == [0, 1, 2, 3]
  _run(workdir)  # the cause fixed, a re-run resumes and ends as if nothing happened
  _assert_like_reference(workdir, reference)
