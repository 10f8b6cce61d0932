"""alignax.objectives."""
