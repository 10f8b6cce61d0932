"""`run_binary`, the absl `__main__` of every experiment binary, and
`start_run`, the first thing each binary's `run` does."""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, NamedTuple

from alignax.experiments.runtime import model_setup
from alignax.experiments.runtime.config_files import check_config_overrides
from alignax.experiments.runtime.config_schema import ConfigError, validate_config
from alignax.experiments.runtime.workdir_checks import check_workdir, make_workdir


def _print_summary(summary) -> None:
  print("\n".join(f"{k}: {v}" for k, v in summary.items()))


def run_binary(run_fn, default_config: str, default_workdir: str, *,
               show: Callable[[Any], None] = _print_summary) -> None:
  """The `__main__` of an experiment binary: `--config`, `--workdir`, absl app.

  `run_fn(config, workdir) -> summary`, printed by `show` (default: one
  `key: value` a line). `run_fn` validates the config (`start_run`); a
  `ConfigError` ends the process with its message, no traceback. Flags are
  defined only here, when run as a binary, so tests and notebooks can import
  several binaries side by side without duplicate-flag errors.
  """
  # Before JAX creates its CPU client: XLA sizes the intra-op thread pool from
  # NPROC, else from the CPUs in this process's affinity mask, and that count
  # decides how the Eigen dots (the weight gradients) and the YNNPACK reductions
  # split their sums. Pinned to the machine's CPU count, a seed gives the same
  # floats under taskset or a cpuset (tests/reliability/test_reproducible_launch.py).
  os.environ.setdefault("NPROC", str(os.cpu_count() or 1))
  from absl import app, flags, logging  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  check_config_overrides(sys.argv, default_config)
  config_flags.DEFINE_config_file("config", default_config,
                                  "Experiment config (ml_collections file[:preset]).")
  flags.DEFINE_string("workdir", default_workdir, "Output folder; re-use it to resume.")

  def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
    try:
      check_workdir(flags.FLAGS.workdir)
      summary = run_fn(flags.FLAGS.config, flags.FLAGS.workdir)
    except ConfigError as e:
      sys.exit(str(e))
    show(summary)

  app.run(main)


class Start(NamedTuple):
  """What `start_run` returns: the validated, typed `config`, the device
  `mesh` (None: unsharded) and what the binary's `prepare` returned."""

  config: Any
  mesh: Any
  prepared: Any = None


def start_run(config, workdir: str, default_config: str,
              prepare: Callable[[Any], Any] | None = None) -> Start:
  """What a binary's `run` does first, before any work: validates `config`
  once against the options declared in `default_config` (a `ConfigDict` or an
  already typed config; see `config_schema.validate_config`), runs the
  binary's `prepare(typed config)` (inputs that can fail on bad data, read
  before anything is written), joins the other processes and makes the mesh
  (`model_setup.setup_mesh`), makes `workdir` and stores the config there (a
  resumed run must match it)."""
  from alignax.framework import run_records  # pylint: disable=g-import-not-at-top
  config = validate_config(config, default_config)
  prepared = prepare(config) if prepare is not None else None
  mesh = model_setup.setup_mesh(config)
  make_workdir(workdir)
  run_records.check_or_store_config(workdir, config)
  return Start(config, mesh, prepared)
