"""Kill-and-resume of moat and cau_unlearn against an uninterrupted run: a
kill during a checkpoint write, then a re-run, gives the same final
checkpoints, summary.json and one metrics row per step (wall-clock entries
aside). grpo, exsearch and dro check the same in their own tests' kill tests."""
import json
import os

import pytest

from alignax.experiments import cau_unlearn, moat
from alignax.experiments.runtime.config_files import load_config_file
from tests.experiments.resume import (Killed, _metrics, assert_same_final_checkpoints,
                                      kill_during_save, summary_without_time)

CONFIGS = os.path.join(os.path.dirname(moat.__file__), "configs")


def _run(name, workdir):
  config = load_config_file(os.path.join(CONFIGS, name + ".py") + ":tiny")
  if name == "moat":
    return moat.run(config, workdir, progress=False)
  return cau_unlearn.run(config, workdir)


@pytest.mark.slow
@pytest.mark.parametrize("name,at_call,how", [
    ("moat", 3, "mid_write"),            # the first `separate/` iteration's checkpoint
    ("cau_unlearn", 3, "mid_write"),     # the retrained model's first checkpoint
    ("cau_unlearn", 2, "before_manifest"),  # the original model's last checkpoint
])
def test_kill_during_checkpoint_write_resumes_identically(name, at_call, how, tmp_path):
  reference, workdir = str(tmp_path / "reference"), str(tmp_path / "killed")
  _run(name, reference)
  with pytest.raises(Killed), kill_during_save(at_call, how):
    _run(name, workdir)
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
  _run(name, workdir)
  assert summary_without_time(workdir) == summary_without_time(reference)
  assert_same_final_checkpoints(workdir, reference)
  rows = _metrics(workdir)
  ids = [(r["step"], tuple(sorted(r))) for r in rows]
  assert len(ids) == len(set(ids)), "a metrics row was written twice"
  assert sorted(ids) == sorted((r["step"], tuple(sorted(r))) for r in _metrics(reference))
