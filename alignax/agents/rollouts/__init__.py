"""Rollouts: batched multi-turn tool use over one KV cache (alignax/agents/__init__.py)."""
