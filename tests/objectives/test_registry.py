"""The one `Registry` type (`alignax.registry`) behind every name -> function
table, and the objectives' tables (`alignax.objectives.registries`)."""
import pytest

from alignax import registry
from alignax.objectives import registries as R


def test_register_lookup_and_mapping_view():
  table = registry.Registry("widget")

  @table.register("a", "alias")
  def f():
    return 1

  assert table["a"] is f and table["alias"] is f
  assert sorted(table) == ["a", "alias"] and len(table) == 2 and "a" in table


def test_duplicate_raises():
  table = registry.Registry("widget")
  table.add("a", 1)
  with pytest.raises(ValueError, match="widget 'a' is already registered"):
    table.add("a", 2)


def test_unknown_lists_the_registered_names():
  table = registry.Registry("widget")
  table.add("b", 1)
  table.add("a", 2)
  with pytest.raises(KeyError) as e:
    table["c"]
  assert str(e.value) == "unknown widget 'c'; registered: ['a', 'b']"
  with pytest.raises(ValueError, match="registered: .*'dapo'"):  # also a ValueError
    R.get_policy_loss("dapoo")


def test_project_tables_are_registries():
  for table in (R.POLICY_LOSSES, R.AGGREGATIONS, R.ADVANTAGE_ESTIMATORS, R.DPO_LOSSES):
    assert isinstance(table, registry.Registry) and len(table) > 0


def test_every_name_table_of_the_package_is_a_registry():
  from alignax.agents.data import qa_data, tasks
  from alignax.agents.methods import moat_critic
  from alignax.framework import attention
  from alignax.objectives import curriculum, em
  for table in (curriculum.CURRICULA, em.EM_WEIGHTINGS, tasks.TASKS, moat_critic.CRITICS,
                qa_data.DATASETS, attention.ATTENTION_IMPLS):
    assert isinstance(table, registry.Registry) and len(table) > 0, table


def test_every_advantage_estimator_takes_rewards_and_group_size():
  import jax.numpy as jnp
  r = jnp.asarray([1.0, 0.0, 0.5, 0.5, 0.0, 0.0])
  for name, fn in R.ADVANTAGE_ESTIMATORS.items():
    assert fn(r, 3).shape == (6,), name


def test_accepted_options_passes_only_what_a_function_takes():
  def f(x, group_size, *, scale="group", eps=1.0):
    return x, scale, eps

  assert R.accepted_options(f, {"scale": "none", "gamma": 2.0}) == {"scale": "none"}
  assert R.accepted_options(lambda x, g: x, {"scale": "none"}) == {}
