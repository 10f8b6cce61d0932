"""Old module paths kept as deprecated aliases (docs/api.md, "Renamed").

Each old path is a two-line module that calls `alias_module(__name__)`: on
import it imports the new module, warns once (`DeprecationWarning`) and puts
the new module itself in `sys.modules` under the old name, so
`import alignax.agents.tasks` and `from alignax.agents import tasks` give the
very object `alignax.agents.data.tasks` is (patching one patches the other).
"""
import importlib
import sys
import warnings

RENAMED_ON = "2026-12-07"

# old module path -> new module path
MODULES = {
    "alignax.agents.moat_data": "alignax.agents.data.moat_data",
    "alignax.agents.moat_world": "alignax.agents.worlds.moat_world",
    "alignax.agents.prompt_data": "alignax.agents.data.prompt_data",
    "alignax.agents.rewards": "alignax.agents.scoring.rewards",
    "alignax.agents.tasks": "alignax.agents.data.tasks",
    "alignax.framework.experiment": "alignax.framework.run_records",
    "alignax.objectives.registry": "alignax.objectives.registries",
}


def alias_module(old: str) -> None:
  """Makes the module being imported as `old` the module it was renamed to."""
  new = MODULES[old]
  module = importlib.import_module(new)
  warnings.warn(f"{old} was renamed to {new} on {RENAMED_ON}; the old path is a"
                " deprecated alias", DeprecationWarning, stacklevel=3)
  sys.modules[old] = module
