"""The one `Registry` type behind every name -> function table."""
import pytest

from alignax.objectives import registry as R


def test_register_lookup_and_mapping_view():
  table = R.Registry("widget")

  @table.register("a", "alias")
  def f():
    return 1

  assert table["a"] is f and table["alias"] is f
  assert sorted(table) == ["a", "alias"] and len(table) == 2 and "a" in table


def test_duplicate_raises():
  table = R.Registry("widget")
  table.add("a", 1)
  with pytest.raises(ValueError, match="widget 'a' is already registered"):
    table.add("a", 2)


def test_unknown_lists_the_registered_names():
  table = R.Registry("widget")
  table.add("b", 1)
  table.add("a", 2)
  with pytest.raises(KeyError) as e:
    table["c"]
  assert str(e.value) == "unknown widget 'c'; registered: ['a', 'b']"
  with pytest.raises(ValueError, match="registered: .*'dapo'"):  # also a ValueError
    R.get_policy_loss("dapoo")


def test_project_tables_are_registries():
  for table in (R.POLICY_LOSSES, R.AGGREGATIONS, R.ADVANTAGE_ESTIMATORS, R.DPO_LOSSES):
    assert isinstance(table, R.Registry) and len(table) > 0
