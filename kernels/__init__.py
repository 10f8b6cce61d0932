"""alignax.kernels."""
