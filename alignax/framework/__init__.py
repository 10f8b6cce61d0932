"""alignax.framework."""
