"""The GRPO binary's rollout-speed options on the `tiny` preset:
`rollout.compact` (token for token the same run), `train.pack` (the same
metrics to float rounding), `rollout.off_policy_steps=1` (learns, logs the
sampler correction, resumes after a kill exactly), and their config errors.

Each run after the first starts from the first one's warm-started
`init_model/` (copied), so only the first pays for the warm-up."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from alignax.experiments import grpo
from alignax.experiments.runtime.config_files import load_config_file
from alignax.experiments.runtime.config_schema import ConfigError
from tests.experiments.resume import Killed, kill_during_save

TINY = os.path.join(os.path.dirname(grpo.__file__), "configs", "grpo.py") + ":tiny"


def tiny(**overrides):
  config = load_config_file(TINY)
  config.update_from_flattened_dict(overrides)
  return config


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _untimed(rows):
  """Rows without perf/ entries (wall clock, compile counts of this process)."""
  return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(state.params)]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("base"))
  summary, state = grpo.run(tiny(), workdir, progress=False)
  return workdir, summary, _leaves(state)


@pytest.fixture
def workdir(base, tmp_path):
  """A fresh workdir holding the base run's warm-started model."""
  shutil.copytree(os.path.join(base[0], "init_model"), tmp_path / "init_model")
  return str(tmp_path)


def test_compact_rollouts_give_the_same_run(base, workdir):
  summary, state = grpo.run(tiny(**{"rollout.compact": True}), workdir, progress=False)
  assert _untimed(_rows(workdir)) == _untimed(_rows(base[0]))
  for a, b in zip(_leaves(state), base[2]):
    np.testing.assert_array_equal(a, b)
  # Compaction ran fewer decode rows at some step (rows stop at 4-5 of 5 tokens).
  steps = [r["perf/decode_row_steps"] for r in _rows(workdir)[1:]]
  assert min(steps) < max(r["perf/decode_row_steps"] for r in _rows(base[0])[1:])


def test_packed_update_gives_the_same_metrics(base, workdir):
  grpo.run(tiny(**{"train.pack": True}), workdir, stop_after=4, progress=False)
  rows, ref = _rows(workdir), _rows(base[0])[:5]
  assert [r["step"] for r in rows] == list(range(5))
  for r, e in zip(rows[1:], ref[1:]):
    assert set(e) - set(r) <= {"perf/decode_row_steps"} and "perf/pack_fill" in r
    for k, v in e.items():
      if k.startswith("train/"):
        np.testing.assert_allclose(r[k], v, atol=1e-5, rtol=1e-5, err_msg=f"{r['step']} {k}")
    assert 0 < r["perf/pack_fill"] <= 1 and r["perf/update_compiles"] == 1
  assert rows[0] == ref[0]  # the evaluation before training


@pytest.fixture(scope="module")
def off_policy(base, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("off_policy"))
  shutil.copytree(os.path.join(base[0], "init_model"), os.path.join(workdir, "init_model"))
  summary, state = grpo.run(tiny(**{"rollout.off_policy_steps": 1}), workdir, progress=False)
  return workdir, summary, _leaves(state)


def test_off_policy_learns_and_logs_the_correction(off_policy, base):
  workdir, summary, _ = off_policy
  rows = _rows(workdir)
  assert summary["eval/accuracy_after"] > summary["eval/accuracy_before"] + 0.3
  reward = [r["train/reward"] for r in rows[1:]]
  assert np.mean(reward[-4:]) > np.mean(reward[:4])
  for r in rows[1:]:
    ratio = r["train/sampling/importance_sampling_ratio/mean"]
    assert 0.5 < ratio < 1.5 and 0 <= r["train/sampling/importance_sampling_ratio/clipped_fraction"] <= 1
    assert np.isfinite(r["train/loss"])
  # Step 1 trains on the batch sampled before any update, as on-policy; step
  # 2's was sampled before update 1 (lr 0 at the first warm-up step: the same
  # parameters), from step 3 on the batches lag one update behind.
  on = _rows(base[0])
  assert rows[1]["train/reward"] == on[1]["train/reward"]
  assert any(r["train/reward"] != o["train/reward"] for r, o in zip(rows[3:], on[3:]))


def test_off_policy_resumes_after_a_kill_exactly(off_policy, workdir):
  reference, _, expected = off_policy
  config = lambda: tiny(**{"rollout.off_policy_steps": 1})  # noqa: E731
  # Killed while writing the checkpoint of step 8: the last whole one is step
  # 4's, which holds the batch sampled for step 5 by the parameters of step 4
  # minus one update, which no checkpoint keeps.
  with pytest.raises(Killed), kill_during_save(2, "mid_write"):
    grpo.run(config(), workdir, progress=False)
  summary, state = grpo.run(config(), workdir, progress=False)
  for a, b in zip(_leaves(state), expected):
    np.testing.assert_array_equal(a, b)
  assert _untimed(_rows(workdir)) == _untimed(_rows(reference))
  assert summary["train/steps"] == 12


def test_off_policy_on_an_eight_device_mesh_gives_the_same_losses(off_policy, workdir):
  grpo.run(tiny(**{"rollout.off_policy_steps": 1, "mesh.data": 2, "mesh.fsdp": 2,
                   "mesh.tensor": 2}), workdir, stop_after=4, progress=False)
  got = [r["train/loss"] for r in _rows(workdir)[1:]]
  want = [r["train/loss"] for r in _rows(off_policy[0])[1:5]]
  np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("overrides,match", [
    ({"train.pack": True, "train.share_prompt": True},
     "train.pack=True cannot combine with config.train.share_prompt=True"),
    ({"train.pack": True, "mesh.data": 2}, "packed rows are not split over batch shards"),
    ({"rollout.off_policy_steps": 1, "loss.loss_type": "vespo"}, "not implemented"),
    ({"rollout.off_policy_steps": 2}, "rollout.off_policy_steps"),
    ({"loss.sampling_is_mode": "token"}, "loss.sampling_is_mode"),
])
def test_invalid_combinations_are_refused_before_any_work(overrides, match, tmp_path):
  with pytest.raises(ConfigError, match=match):
    grpo.run(tiny(**overrides), str(tmp_path / "w"), progress=False)
  assert not os.path.exists(tmp_path / "w" / "init_model")
