"""`run_binary`, the absl `__main__` of every experiment binary, and
`start_run`, the first thing each binary's `run` does."""
from __future__ import annotations

import os
import sys

from alignax.experiments.runtime import model_setup
from alignax.experiments.runtime.config_files import check_config_overrides
from alignax.experiments.runtime.config_schema import ConfigError, validate_config
from alignax.experiments.runtime.workdir_checks import check_workdir, make_workdir


def run_binary(run_fn, default_config: str, default_workdir: str) -> None:
  """The `__main__` of an experiment binary: `--config`, `--workdir`, absl app.

  `run_fn(config, workdir) -> summary dict`. Flags are defined only here, when
  run as a binary, so tests and notebooks can import several binaries side by
  side without duplicate-flag errors.
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
      # The schema lives in the default config file (a --config file of the
      # user's own holds only values).
      validate_config(flags.FLAGS.config, default_config)
      summary = run_fn(flags.FLAGS.config, flags.FLAGS.workdir)
    except ConfigError as e:
      sys.exit(str(e))
    print("\n".join(f"{k}: {v}" for k, v in summary.items()))

  app.run(main)


def start_run(config, workdir: str, default_config: str, check=None):
  """What a binary's `run` does first, before any work: validates `config`
  against `default_config`'s schema, joins the other processes and makes the
  mesh (`model_setup.setup_mesh`), runs the binary's own `check(config)`,
  makes `workdir` and stores the config there (a resumed run must match it).
  Returns the mesh (None: unsharded)."""
  from alignax.framework import run_records  # pylint: disable=g-import-not-at-top
  validate_config(config, default_config)
  mesh = model_setup.setup_mesh(config)
  if check is not None:
    check(config)
  make_workdir(workdir)
  run_records.check_or_store_config(workdir, config)
  return mesh
