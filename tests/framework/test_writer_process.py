"""Which process writes (framework.run_records): on a process other than 0
the binaries' writers write nothing and the warm-up build is left to process
0; `to_host` gives whole NumPy arrays. (The real several-process runs:
tests/experiments/test_multiprocess_grpo.py.)"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignax.experiments.runtime import outputs, pretrained
from alignax.framework import run_records


@pytest.fixture
def other_process(monkeypatch):
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  assert not run_records.is_writer()


def test_only_process_zero_writes(other_process, tmp_path):
  workdir = str(tmp_path)
  with run_records.MetricWriter(workdir) as writer:
    writer.write(1, {"loss": 0.5})
    writer.write_text(1, "samples", "text")
  run_records.write_summary(workdir, {"a": 1})
  run_records.check_or_store_config(workdir, {"seed": 0})
  outputs.write_samples(workdir, 1, [{"prompt": "p"}])
  outputs.plot_curves(workdir, "curves.png", {"loss": ["loss"]})
  outputs.plot_per_iteration(workdir, "em.png", {"m": [{"s": 1.0}]}, lambda _: {"s": 0.0},
                            {"s": "score"}, "title")
  run_records.truncate_metrics(workdir, 0)
  assert os.listdir(workdir) == []


def test_process_zero_writes_them(tmp_path):
  workdir = str(tmp_path)
  with run_records.MetricWriter(workdir) as writer:
    writer.write(1, {"loss": 0.5})
  run_records.write_summary(workdir, {"a": 1})
  outputs.write_samples(workdir, 1, [{"prompt": "p"}])
  assert {"metrics.jsonl", "summary.json", "samples.jsonl"} <= set(os.listdir(workdir))


def test_warm_up_folders_are_built_by_process_zero_only(other_process, tmp_path):
  def build():
    raise AssertionError("only process 0 builds")
  # Process 0 has not built it here (one process), so loading fails after the barrier.
  with pytest.raises(Exception, match="init_model|config.json|No such file"):
    pretrained.build_or_load_hf({"policy": str(tmp_path / "init_model")}, build)
  assert not os.path.exists(tmp_path / "init_model.tmp")


def test_to_host_gives_whole_numpy_arrays():
  mesh = jax.make_mesh((8,), ("data",))
  x = jax.device_put(jnp.arange(16.0).reshape(8, 2),
                     jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  out = run_records.to_host({"x": x, "y": (jnp.ones(3), np.zeros(2))})
  assert isinstance(out["x"], np.ndarray) and out["x"].shape == (8, 2)
  np.testing.assert_array_equal(out["x"], np.arange(16.0).reshape(8, 2))
  assert all(isinstance(a, np.ndarray) for a in out["y"])
