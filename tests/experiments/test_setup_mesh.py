"""`common.setup_mesh`: the one call every binary makes for multi-host init
and its mesh."""
import ml_collections
import pytest

from alignax.experiments import common


def test_no_mesh_or_all_ones_gives_none():
  assert common.setup_mesh(ml_collections.ConfigDict({"seed": 0})) is None
  assert common.setup_mesh(ml_collections.ConfigDict(
      {"mesh": {"data": 1, "fsdp": 1, "tensor": 1}})) is None


def test_mesh_from_config():
  mesh = common.setup_mesh(ml_collections.ConfigDict(
      {"mesh": {"data": 2, "fsdp": 2, "tensor": 2}}))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  with pytest.raises(ValueError, match="needs 16"):
    common.setup_mesh(ml_collections.ConfigDict({"mesh": {"data": 2, "fsdp": 8}}))


def test_every_binary_calls_it():
  import inspect
  from alignax.experiments import cau_unlearn, dro, exsearch, grpo, moat
  for binary in (cau_unlearn, dro, exsearch, grpo, moat):
    assert "common.setup_mesh(" in inspect.getsource(binary.run), binary.__name__
