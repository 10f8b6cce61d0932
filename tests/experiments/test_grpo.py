"""The GRPO binary on the `tiny` preset: outputs, exact resume, mesh, errors."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from alignax.experiments import grpo
from alignax.experiments.runtime.config_files import load_config_file
from alignax.experiments.runtime.config_schema import ConfigError
from alignax.framework import run_records
from tests.experiments.resume import Killed, kill_during_save

TINY = os.path.join(os.path.dirname(grpo.__file__), "configs", "grpo.py") + ":tiny"


def tiny(**overrides):
  config = load_config_file(TINY)
  config.update_from_flattened_dict(overrides)
  return config


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(state.params)]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("full"))
  summary, state = grpo.run(tiny(), workdir, progress=False)
  return workdir, summary, _leaves(state)


def test_outputs(full_run):
  workdir, summary, _ = full_run
  with open(os.path.join(workdir, "summary.json")) as f:
    written = json.load(f)
  for key in ("eval/accuracy_before", "eval/accuracy_after", "eval/reward_before",
              "eval/reward_after", "eval/reward/exact_match_after", "eval/pass@2_after",
              "eval/mean@2_after", "train/steps", "train/seconds"):
    assert key in written
  assert written["train/steps"] == 12
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == list(range(13))
  assert all(np.isfinite(r["train/loss"]) for r in rows[1:])
  # The tiny preset learns: non-zero reward, rising train reward and accuracy.
  reward = [r["train/reward"] for r in rows[1:]]
  assert np.mean(reward[-4:]) > np.mean(reward[:4]) > 0
  assert written["eval/accuracy_after"] > written["eval/accuracy_before"]
  assert all(r["train/reward/exact_match"] == r["train/reward"] for r in rows[1:])
  samples = [json.loads(l) for l in open(os.path.join(workdir, "samples.jsonl"))]
  assert [s["step"] for s in samples] == [0] * 4 + [4] * 4 + [8] * 4 + [12] * 4
  assert {"prompt", "completion", "ground_truth", "reward"} <= set(samples[0])
  assert written["final_model"] == os.path.join(workdir, "final_model")
  assert os.path.exists(os.path.join(workdir, "final_model", "generation_config.json"))
  assert os.path.getsize(os.path.join(workdir, "reward.png")) > 1000
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  assert os.path.exists(os.path.join(workdir, "init_model", "tokenizer.json"))


def test_kill_and_resume_is_bitwise_identical(full_run, tmp_path):
  _, _, expected = full_run
  workdir = str(tmp_path)
  # Killed while writing the checkpoint of step 8 (checkpoint_every=4; the 2nd
  # save): the rows of steps 5-8 are logged, the step folder is still Orbax's
  # temporary one, the last whole checkpoint is step 4.
  with pytest.raises(Killed), kill_during_save(2, "mid_write"):
    grpo.run(tiny(), workdir, progress=False)
  summary, state = grpo.run(tiny(), workdir, progress=False)
  for a, b in zip(_leaves(state), expected):
    np.testing.assert_array_equal(a, b)
  steps = [json.loads(l)["step"] for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert steps == list(range(13))  # steps 5-8 were not logged twice
  assert summary["train/steps"] == 12
  samples = [json.loads(l)["step"] for l in open(os.path.join(workdir, "samples.jsonl"))]
  assert samples == [0] * 4 + [4] * 4 + [8] * 4 + [12] * 4


def test_eight_device_mesh_gives_the_same_losses(full_run, tmp_path):
  workdir, _, _ = full_run
  summary, _ = grpo.run(tiny(**{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}),
                        str(tmp_path), progress=False)
  def losses(d):
    return [json.loads(l).get("train/loss") for l in open(os.path.join(d, "metrics.jsonl"))][1:]
  np.testing.assert_allclose(losses(str(tmp_path)), losses(workdir), atol=1e-5)


def _losses(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return [r.get("train/loss") for r in rows][1:]


def test_remat_gives_the_same_losses(full_run, tmp_path):
  workdir, _, _ = full_run
  grpo.run(tiny(**{"train.remat": "dots_saveable"}), str(tmp_path), progress=False)
  np.testing.assert_allclose(_losses(str(tmp_path)), _losses(workdir), atol=1e-6)


def test_bf16_compute_with_f32_master_weights_runs(tmp_path):
  _, state = grpo.run(tiny(**{"model.dtype": "bfloat16", "train.remat": "full"}),
                      str(tmp_path), stop_after=2, progress=False)
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype("float32")}
  assert all(np.isfinite(l) for l in _losses(str(tmp_path)))


def test_other_config_on_same_workdir_is_refused(full_run):
  workdir, _, _ = full_run
  with pytest.raises(run_records.ConfigMismatchError, match="train.learning_rate"):
    grpo.run(tiny(**{"train.learning_rate": 0.5}), workdir, progress=False)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(full_run, tmp_path, monkeypatch):
  """A NaN injected into step 6's loss: the run stops naming the step, keeps
  the step-4 checkpoint and metrics, and a re-run finishes as if nothing
  happened."""
  make = grpo.train.make_grpo_update

  def poisoned(*args, **kwargs):
    update = make(*args, **kwargs)

    def wrapped(state, batch):
      state, metrics = update(state, batch)
      if int(state.step) == 6:
        metrics = dict(metrics, loss=np.float32("nan"))
      return state, metrics
    return wrapped

  workdir = str(tmp_path)
  monkeypatch.setattr(grpo.train, "make_grpo_update", poisoned)
  with pytest.raises(FloatingPointError, match=r"Non-finite loss .* at step 6\. The last"
                     r" good checkpoint \(step 4\)"):
    grpo.run(tiny(), workdir, progress=False)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4"]
  steps = [json.loads(l)["step"] for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert steps == [0, 1, 2, 3, 4, 5]
  monkeypatch.setattr(grpo.train, "make_grpo_update", make)
  _, state = grpo.run(tiny(), workdir, progress=False)
  for a, b in zip(_leaves(state), full_run[2]):
    np.testing.assert_array_equal(a, b)


def test_missing_model_path(tmp_path):
  # Checked with the rest of the config, before any work.
  with pytest.raises(ConfigError, match="config.model_path=.*save_pretrained model folder.*does not exist"):
    grpo.run(tiny(model_path=str(tmp_path / "nope")), str(tmp_path / "w"), progress=False)


def test_unknown_config_key_lists_valid_keys(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "alignax.experiments.grpo", f"--config={TINY}",
       "--config.train.stepz=3", f"--workdir={tmp_path}"], capture_output=True, text=True)
  assert out.returncode != 0
  assert "Unknown config key(s): config.train.stepz" in out.stderr
  assert "train.steps" in out.stderr
