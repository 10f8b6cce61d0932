"""Deprecated alias of `alignax.agents.scoring.rewards` (renamed 2026-12-07, docs/api.md)."""
from alignax._renamed import alias_module

alias_module(__name__)
