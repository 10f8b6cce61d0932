"""Worlds the agents act in: the generated QA worlds, MOAT's world and tools,
and BM25 search over a passage corpus (alignax/agents/__init__.py)."""
