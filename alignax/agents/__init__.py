"""alignax.agents."""
