"""alignax: JAX post-training research framework."""
