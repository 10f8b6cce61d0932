"""Session data: synthetic generator and tfds builders for public data sets."""
