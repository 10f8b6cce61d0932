"""Data the agents train and evaluate on: prompt data sets, QA data sets, MOAT
tasks from files, built-in verifiable tasks (alignax/agents/__init__.py)."""
