"""metrics.jsonl: exactly one row per step after any sequence of kills, and a
file damaged or removed during a run is noticed and rebuilt, never lost."""
import json
import logging
import os

import pytest

from alignax.experiments.runtime import outputs
from alignax.framework import run_records


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _steps(workdir):
  return [r["step"] for r in _rows(workdir)]


def _run(workdir, restored_step, steps, kill_at=None):
  """A binary's loop: truncate to the restored step, write step 0 on a fresh
  start, then each step's row and a checkpoint every 2 steps; a kill right
  after writing row `kill_at` (before its checkpoint). Returns the last
  checkpointed step (None if none)."""
  outputs.truncate_metrics(workdir, restored_step or 0)
  w = run_records.MetricWriter(workdir)
  if restored_step is None:
    w.write(0, {"eval": 0.5})
  if kill_at == 0:
    return restored_step
  for s in range((restored_step or 0) + 1, steps + 1):
    w.write(s, {"loss": float(s)})
    if s == kill_at:
      return restored_step
    if s % 2 == 0:
      restored_step = s
  w.close()
  return restored_step


@pytest.mark.parametrize("kills", [
    [0, 0, 1],        # killed three times before the first checkpoint
    [3, 5, 8],        # killed after rows that were not checkpointed yet
    [2, 4, 4, 6],     # killed before the checkpoint of a row just written
])
def test_one_row_per_step_after_kills(tmp_path, kills):
  wd, restored = str(tmp_path), None
  for k in kills:
    restored = _run(wd, restored, 8, kill_at=k)
  _run(wd, restored, 8)
  assert _steps(wd) == list(range(9))


def test_cut_off_last_line_is_dropped_and_kept_aside(tmp_path, caplog):
  wd = str(tmp_path)
  _run(wd, None, 3, kill_at=3)
  with open(os.path.join(wd, "metrics.jsonl"), "a") as f:
    f.write('{"step": 4, "lo')  # killed mid-write
  with caplog.at_level(logging.WARNING):
    outputs.truncate_metrics(wd, 3)
  assert _steps(wd) == [0, 1, 2, 3]
  assert "metrics.jsonl:5" in caplog.text
  assert os.path.exists(os.path.join(wd, "metrics.jsonl.corrupt"))


def test_damaged_middle_line_names_file_and_line(tmp_path, caplog):
  wd = str(tmp_path)
  _run(wd, None, 4)
  path = os.path.join(wd, "metrics.jsonl")
  lines = open(path).read().splitlines(True)
  lines[2] = "garbage\n"
  open(path, "w").writelines(lines)
  with caplog.at_level(logging.WARNING):
    rows = outputs.read_metrics(wd)
  assert [r["step"] for r in rows] == [0, 1, 3, 4]
  assert f"{path}:3" in caplog.text


@pytest.mark.parametrize("damage", ["deleted", "truncated", "emptied"])
def test_file_damaged_during_the_run_is_rebuilt(tmp_path, damage, caplog):
  wd = str(tmp_path)
  path = os.path.join(wd, "metrics.jsonl")
  w = run_records.MetricWriter(wd)
  for s in range(3):
    w.write(s, {"loss": s})
  if damage == "deleted":
    os.remove(path)
  elif damage == "truncated":
    with open(path, "r+") as f:
      f.truncate(os.path.getsize(path) - 7)
  else:
    open(path, "w").close()
  with caplog.at_level(logging.WARNING):
    w.write(3, {"loss": 3})
  w.close()
  assert _steps(wd) == [0, 1, 2, 3]
  assert path in caplog.text
  if damage != "deleted":
    assert os.path.exists(path + ".corrupt")  # what was there is kept


def test_same_step_different_series_are_both_kept(tmp_path):
  """cau_unlearn logs several series (method/...) at the same step numbers."""
  wd = str(tmp_path)
  w = run_records.MetricWriter(wd)
  w.write(5, {"a/loss": 1.0})
  w.write(5, {"b/loss": 2.0})
  w.write(5, {"a/loss": 1.5})  # a re-run of series a's step 5 replaces it
  w.close()
  assert _rows(wd) == [{"step": 5, "b/loss": 2.0}, {"step": 5, "a/loss": 1.5}]


def test_duplicates_already_on_disk_are_removed(tmp_path):
  wd = str(tmp_path)
  with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
    for s in (0, 0, 1, 0, 1, 2):
      f.write(json.dumps({"step": s, "x": s}) + "\n")
  outputs.truncate_metrics(wd, 1)
  assert sorted(_steps(wd)) == [0, 1]
