"""`--workdir`: checked before any work, then made."""
from __future__ import annotations

import os

from alignax.experiments.runtime.config_schema import (ConfigError, nearest_existing,
                                                        describe_path)


def check_workdir(workdir) -> None:
  """Raises ConfigError unless `workdir` is, or can be made, a writable folder.

  Called before any work, so a bad `--workdir` fails in a second with its path
  and what to do, not as an OSError from deep inside a run.
  """
  if not isinstance(workdir, (str, os.PathLike)) or not str(workdir):
    raise ConfigError(f"--workdir={workdir!r}: give a folder path (new, or an earlier"
                      " run's to resume it)")
  path = os.path.abspath(os.fspath(workdir))
  if os.path.lexists(path) and not os.path.isdir(path):
    raise ConfigError(f"--workdir={workdir}: {describe_path(path)}, not a folder; give a"
                      " folder path (new, or an earlier run's to resume it)")
  existing = nearest_existing(path)
  if not os.path.isdir(existing):
    raise ConfigError(f"--workdir={workdir}: {existing} is a file, so the folder cannot"
                      " be made there; choose another path")
  if not os.access(existing, os.W_OK | os.X_OK):
    where = "" if existing == path else f" (its nearest existing folder {existing})"
    raise ConfigError(f"--workdir={workdir}{where} is not writable by this user; choose"
                      " a folder you can write, e.g. --workdir=runs/<name>")


def make_workdir(workdir) -> None:
  """`check_workdir`, then creates the folder."""
  check_workdir(workdir)
  os.makedirs(workdir, exist_ok=True)
