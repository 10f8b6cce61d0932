"""Command-line helpers (`python -m alignax.tools.<name>`)."""
