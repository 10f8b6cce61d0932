"""cau_unlearn end-to-end on the tiny preset, and the shared experiment utilities."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import importlib.util

from alignax.experiments import cau_unlearn
from alignax.framework import checkpoint
from alignax.framework import run_records
from tests.experiments.resume import Killed, kill_during_save

METHODS = ("original", "retrained", "cau", "gradient_ascent", "weighted_sum")
# Config files are loaded by path, as config_flags does (configs/ is no package).
_SPEC = importlib.util.spec_from_file_location(
    "cau_config", os.path.join(os.path.dirname(cau_unlearn.__file__),
                               "configs", "cau_unlearn.py"))
cau_config = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(cau_config)

KEYS = ("forget/hr@10", "forget/ndcg@10", "retain/hr@10", "retain/ndcg@10",
        "seconds")


def test_tiny_preset_end_to_end(tmp_path):
  cfg = cau_config.get_config("tiny")
  workdir = str(tmp_path / "run")
  # Killed while writing the retrained model's first checkpoint, then resumed
  # (tests/experiments/test_kill_resume.py compares with an unkilled run).
  with pytest.raises(Killed), kill_during_save(3, "mid_write"):
    cau_unlearn.run(cfg, workdir)
  summary = cau_unlearn.run(cfg, workdir)
  with open(os.path.join(workdir, "summary.json")) as f:
    on_disk = json.load(f)
  for name in METHODS:
    for key in KEYS:
      assert np.isfinite(on_disk[name][key]), (name, key)
      assert 0.0 <= on_disk[name][key] <= (1e6 if key == "seconds" else 1.0)
  assert set(on_disk["ablation"]) == set(cfg.ablations)
  assert on_disk == json.loads(json.dumps(summary))
  assert os.path.exists(os.path.join(workdir, "methods.png"))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = [json.loads(l) for l in f]
  assert all("step" in l for l in lines)
  ids = [(l["step"], tuple(sorted(l))) for l in lines]
  assert len(ids) == len(set(ids))  # one row per step and series after the kill
  assert any("cau/seconds" in l for l in lines)
  if on_disk["details"]["cau"]["steps"]:
    assert any("cau/alpha/kl" in l for l in lines)
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "original"))
  # The retrained model never saw the forget items.
  assert on_disk["retrained"]["forget/hr@10"] <= on_disk["original"][
      "forget/hr@10"]
  # Same workdir, different config: one clear error before any work.
  cfg.unlearn.lr = cfg.unlearn.lr / 2
  with pytest.raises(run_records.ConfigMismatchError, match="unlearn.lr"):
    cau_unlearn.run(cfg, workdir)


def test_check_or_store_config(tmp_path):
  d = str(tmp_path)
  cfg = {"a": 1, "b": {"c": [1, 2], "d": "x"}}
  run_records.check_or_store_config(d, cfg)
  run_records.check_or_store_config(d, cfg)  # same config: fine
  with pytest.raises(run_records.ConfigMismatchError) as e:
    run_records.check_or_store_config(d, {"a": 2, "b": {"c": [1, 2]}, "e": 0})
  msg = str(e.value)
  assert "a: 1 -> 2" in msg and "b.d" in msg and "e" in msg and "b.c" not in msg


def test_metric_writer_and_summary(tmp_path):
  d = str(tmp_path)
  with run_records.MetricWriter(d) as w:
    w.write(1, {"loss": jnp.float32(0.5), "name": "x"})
    w.write(2, {"loss": np.float64(0.25)})
  with open(os.path.join(d, "metrics.jsonl")) as f:
    lines = [json.loads(l) for l in f]
  assert lines == [{"step": 1, "loss": 0.5, "name": "x"},
                   {"step": 2, "loss": 0.25}]
  path = run_records.write_summary(d, {"m": {"x": np.float32(1.5)}})
  with open(path) as f:
    assert json.load(f) == {"m": {"x": 1.5}}
  assert not [f for f in os.listdir(d) if f.startswith(".tmp_")]


def test_checkpoint_round_trip_keeps_last_few(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), max_to_keep=2)
  template = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2, jnp.int32)}
  assert ckpt.restore_latest(template) is None
  for step in (1, 2, 3):
    state = {"w": jnp.full((3, 2), float(step)), "b": jnp.arange(2) + step}
    ckpt.save(step, state, {"epoch": step, "rng": [0, step]})
  step, state, extras = ckpt.restore_latest(template)
  assert step == 3 and extras == {"epoch": 3, "rng": [0, 3]}
  np.testing.assert_array_equal(state["w"], np.full((3, 2), 3.0))
  np.testing.assert_array_equal(state["b"], [3, 4])
  assert sorted(int(p) for p in os.listdir(tmp_path / "ckpt")
                if p.isdigit()) == [2, 3]
  ckpt.close()


def test_diverged_training_stops_with_a_clear_error(tmp_path):
  cfg = cau_config.get_config("tiny")
  cfg.train.lr = 1e30  # valid by the schema; the first epoch overflows
  with pytest.raises(FloatingPointError) as e:
    cau_unlearn.run(cfg, str(tmp_path / "run"))
  msg = str(e.value)
  assert "training original, epoch 1" in msg and "checkpoint (none)" in msg
  assert "lower the learning rates" in msg
  # Nothing non-finite was saved.
  assert not os.path.isdir(os.path.join(tmp_path, "run", "checkpoints", "original",
                                        "1"))


def test_diverged_unlearning_stops_with_a_clear_error(tmp_path):
  cfg = cau_config.get_config("tiny")
  cfg.unlearn.lr = 1e30
  cfg.train.update(epochs=1, eval_every=1, checkpoint_every=1)
  cfg.ablations = ()
  with pytest.raises(FloatingPointError) as e:
    cau_unlearn.run(cfg, str(tmp_path / "run"))
  assert "unlearning with" in str(e.value)
