"""Wiring shared by the experiment binaries: config-flag checks, resume, plots."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from typing import Sequence

import ml_collections


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:preset]` the way `config_flags` does."""
  path, _, preset = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_alignax_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(preset) if preset else module.get_config()


def _keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  out = []
  for k, v in config.items():
    out.append(prefix + k)
    if isinstance(v, ml_collections.ConfigDict):
      out.extend(_keys(v, prefix + k + "."))
  return out


def check_config_overrides(argv: Sequence[str], default_config: str) -> None:
  """Exits with one clear message if a `--config.x=...` names no config key.

  (ml_collections otherwise fails with a bare AttributeError traceback.)
  """
  spec = default_config
  overrides = []
  for arg in argv[1:]:
    name = arg.lstrip("-").split("=", 1)[0]
    if name == "config" and "=" in arg:
      spec = arg.split("=", 1)[1]
    elif name.startswith("config."):
      overrides.append(name[len("config."):])
  if not overrides:
    return
  valid = _keys(load_config_file(spec))
  unknown = [o for o in overrides if o not in valid]
  if unknown:
    leaves = ", ".join(sorted(valid))
    sys.exit(f"Unknown config key(s): {', '.join('config.' + u for u in unknown)}.\n"
             f"Valid keys of {spec}: {leaves}")


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def truncate_metrics(workdir: str, last_step: int) -> None:
  """Drops metric lines logged after `last_step` (by a run killed before it
  could checkpoint them), so a resumed run does not log those steps twice."""
  rows = read_metrics(workdir)
  kept = [r for r in rows if r["step"] <= last_step]
  if len(kept) == len(rows):
    return
  path = os.path.join(workdir, "metrics.jsonl")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in kept)
  os.replace(tmp, path)


SAMPLES_FILE = "samples.jsonl"


def write_samples(workdir: str, step: int, samples: Sequence[dict], writer=None) -> None:
  """Appends `{"step": step, **sample}` lines to `samples.jsonl` and, given a
  `MetricWriter`, shows them as TensorBoard text (tag `samples`)."""
  if not samples:
    return
  from alignax.framework.experiment import _to_builtin  # pylint: disable=g-import-not-at-top
  rows = [_to_builtin({"step": int(step), **s}) for s in samples]
  with open(os.path.join(workdir, SAMPLES_FILE), "a") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  if writer is not None:
    writer.write_text(step, "samples", "\n\n".join(
        "\n".join(f"**{k}**: `{v}`" for k, v in r.items() if k != "step") for r in rows))


def truncate_samples(workdir: str, keep_through: int) -> None:
  """Drops `samples.jsonl` lines of steps after `keep_through` (a resumed run
  writes them again)."""
  path = os.path.join(workdir, SAMPLES_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows if r["step"] <= keep_through)
  os.replace(tmp, path)


def plot_curves(workdir: str, filename: str, panels: dict[str, Sequence[str]],
                title: str = "") -> str:
  """One panel per entry {panel title: [metric keys]} of metrics.jsonl vs step."""
  # A bare Figure draws without pyplot, so it neither needs a display nor
  # switches the backend of a notebook that imported us.
  from matplotlib.figure import Figure

  rows = read_metrics(workdir)
  fig = Figure(figsize=(5 * len(panels), 3.5))
  axes = fig.subplots(1, len(panels), squeeze=False)
  for ax, (panel, keys) in zip(axes[0], panels.items()):
    for key in keys:
      pts = [(r["step"], r[key]) for r in rows if key in r]
      if pts:
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, label=key)
    ax.set_title(panel)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  path = os.path.join(workdir, filename)
  fig.savefig(path, dpi=110)
  return path


def run_binary(run_fn, default_config: str, default_workdir: str) -> None:
  """The `__main__` of an experiment binary: `--config`, `--workdir`, absl app.

  `run_fn(config, workdir) -> summary dict`. Flags are defined only here, when
  run as a binary, so tests and notebooks can import several binaries side by
  side without duplicate-flag errors.
  """
  from absl import app, flags, logging  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  config_flags.DEFINE_config_file("config", default_config,
                                  "Experiment config (ml_collections file[:preset]).")
  flags.DEFINE_string("workdir", default_workdir, "Output folder; re-use it to resume.")
  check_config_overrides(sys.argv, default_config)

  def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
    summary = run_fn(flags.FLAGS.config, flags.FLAGS.workdir)
    print("\n".join(f"{k}: {v}" for k, v in summary.items()))

  app.run(main)
