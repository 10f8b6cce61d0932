"""Scoring completions: reward functions (TRL's convention) and answer metrics
(alignax/agents/__init__.py)."""
