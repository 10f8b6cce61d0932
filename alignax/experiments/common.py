"""Deprecated: the old home of what the experiment binaries share.

Kept importable for users' scripts; every name is re-exported from the module
that now holds it (`alignax.experiments.runtime`, one module per concern; see
its docstring). New code imports those modules.
"""
# pylint: disable=unused-import
from alignax.experiments.runtime.config_files import (_config_spec, _keys,
                                                      check_config_overrides,
                                                      load_config_file)
from alignax.experiments.runtime.config_schema import (FRACTION, LEARNING_RATE,
                                                       NON_NEGATIVE, POSITIVE, TOP_P,
                                                       ConfigError, PathRule, Rule,
                                                       _lookup, _schema_of, boolean,
                                                       directory_or_empty, file_or_empty,
                                                       integer, many_of,
                                                       model_dir_or_empty, number, one_of,
                                                       optional, string, validate_config)
from alignax.experiments.runtime.launch import run_binary
from alignax.experiments.runtime.loop import (Phases, check_finite, iteration_slice,
                                              per_method_summary)
from alignax.experiments.runtime.loop import run_phases as _run_phases
from alignax.experiments.runtime.model_setup import (PRECISION, REMAT, apply_lora,
                                                       builtin_model_rules, lora_config,
                                                       lora_schema, model_options,
                                                       precision_schema, setup_mesh)
from alignax.experiments.runtime.outputs import (SAMPLES_FILE, plot_curves,
                                                 plot_per_iteration, read_metrics,
                                                 truncate_metrics, truncate_samples,
                                                 write_samples)
from alignax.experiments.runtime.pretrained import (build_or_load_hf, export_models,
                                                    load_pretrained)
from alignax.experiments.runtime.workdir_checks import check_workdir, make_workdir


def run_phases(workdir, fresh, phases, iterations, *, stop_after=None, progress=True,
               **callbacks):
  """Deprecated alias of the old signature: `runtime.loop.run_phases(workdir,
  fresh, Phases(phases, iterations, **callbacks), ...)`."""
  return _run_phases(workdir, fresh, Phases(phases, iterations, **callbacks),
                     stop_after=stop_after, progress=progress)
