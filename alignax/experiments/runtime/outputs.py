"""What a run writes under its workdir besides checkpoints: metrics.jsonl
(read, truncated on resume), samples.jsonl and the plots."""
from __future__ import annotations

import json
import os
from typing import Callable, Mapping, Sequence

from alignax.framework import run_records


def read_metrics(workdir: str) -> list[dict]:
  return run_records.read_metrics(workdir)


def truncate_metrics(workdir: str, last_step: int) -> None:
  """Drops metric rows logged after `last_step` (by a run killed before it
  could checkpoint them) and duplicates, so a resumed run logs each step once
  (see `framework.run_records.truncate_metrics`)."""
  run_records.truncate_metrics(workdir, last_step)


SAMPLES_FILE = "samples.jsonl"


@run_records.writer_only
def write_samples(workdir: str, step: int, samples: Sequence[dict], writer=None) -> None:
  """Appends `{"step": step, **sample}` lines to `samples.jsonl` and, given a
  `MetricWriter`, shows them as TensorBoard text (tag `samples`)."""
  if not samples:
    return
  from alignax.framework.run_records import _to_builtin  # pylint: disable=g-import-not-at-top
  rows = [_to_builtin({"step": int(step), **s}) for s in samples]
  with open(os.path.join(workdir, SAMPLES_FILE), "a") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  if writer is not None:
    writer.write_text(step, "samples", "\n\n".join(
        "\n".join(f"**{k}**: `{v}`" for k, v in r.items() if k != "step") for r in rows))


@run_records.writer_only
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


@run_records.writer_only
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


@run_records.writer_only
def plot_per_iteration(workdir: str, filename: str, curves: Mapping[str, Sequence[dict]],
                       start_of: Callable[[str], dict], panels: Mapping[str, str],
                       title: str, xlabel: str = "iteration (0 = warm-up)") -> None:
  """One panel per {score key: panel title}: each method's held-out score per
  iteration. curves: method -> per-iteration scores; start_of(method): the
  scores it starts from (iteration 0, the warm-up)."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(5 * len(panels), 3.5))
  for ax, (key, panel) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels.items()):
    for method, curve in curves.items():
      ys = [start_of(method)[key]] + [c[key] for c in curve]
      ax.plot(range(len(ys)), ys, marker="o", label=method)
    ax.set_title(panel)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, filename), dpi=110)
