"""The agents of one method each: DRO's selector and generator, MOAT's planner,
grounder and critics (alignax/agents/__init__.py)."""
