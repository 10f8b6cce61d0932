"""`model_setup.setup_mesh`: the one call every binary makes for multi-host init
and its mesh."""
import ml_collections
import pytest

from alignax.experiments.runtime import model_setup


def test_no_mesh_or_all_ones_gives_none():
  assert model_setup.setup_mesh(ml_collections.ConfigDict({"seed": 0})) is None
  assert model_setup.setup_mesh(ml_collections.ConfigDict(
      {"mesh": {"data": 1, "fsdp": 1, "tensor": 1}})) is None


def test_mesh_from_config():
  mesh = model_setup.setup_mesh(ml_collections.ConfigDict(
      {"mesh": {"data": 2, "fsdp": 2, "tensor": 2}}))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  with pytest.raises(ValueError, match="needs 16"):
    model_setup.setup_mesh(ml_collections.ConfigDict({"mesh": {"data": 2, "fsdp": 8}}))


def test_every_binary_calls_it():
  import inspect
  from alignax.experiments import cau_unlearn, dro, exsearch, grpo, moat
  for binary in (cau_unlearn, dro, exsearch, grpo, moat):
    source = inspect.getsource(binary.run)
    assert ("model_setup.setup_mesh(" in source or "launch.start_run(" in source), binary.__name__
  from alignax.experiments.runtime import launch
  assert "model_setup.setup_mesh(" in inspect.getsource(launch.start_run)
