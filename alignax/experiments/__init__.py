"""alignax.experiments."""
