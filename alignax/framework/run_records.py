"""Shared experiment utilities: metric logging, summaries, config guard, and
the one place that says which process writes files.

Used by every absl binary under `alignax/experiments/` (docs/api.md: each writes
`metrics.jsonl`, TensorBoard events and `summary.json` under `--workdir`).

Several processes (multi-host, `jax.distributed`) run the same program; the
workdir is shared. Only the writer, process 0, writes files: the functions
here that write (`MetricWriter`, `write_summary`, `atomic_write_json`, ...)
do nothing on the other processes, and binaries mark their own writing
functions `@writer_only`. Orbax checkpoints are the exception: every process
saves and restores its shards. `barrier` and `to_host` are the collectives
the binaries need around that (every process must call them).
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Mapping

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

CONFIG_FILE = "config.json"


def is_writer() -> bool:
  """True on the process that writes files: process 0 (the only one when
  there is a single process)."""
  return jax.process_index() == 0


def writer_only(fn: Callable) -> Callable:
  """Decorates a function that writes files so that it runs on the writer
  process only; elsewhere the call does nothing and returns None. (Its
  arguments must already be on the host: it must not run collectives.)"""

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    return fn(*args, **kwargs) if is_writer() else None
  return wrapper


def barrier(name: str) -> None:
  """Waits until every process reaches `barrier(name)` (no-op with one
  process), e.g. for files the writer builds and the others then read."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def to_host(tree: Any) -> Any:
  """NumPy copies of a pytree's arrays, each whole (all rows) on every
  process: arrays sharded over several processes (a sampler's outputs on a
  multi-host mesh, trained parameters) are gathered with
  `multihost_utils.process_allgather`, the rest copied. A collective when
  there are several processes: every process must call it, in the same order.
  """

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
  return jax.tree.map(one, tree)


def _to_builtin(x):
  """JSON-friendly scalars (jax/numpy scalars and 0-d arrays become floats)."""
  if isinstance(x, (bool, int, float, str)) or x is None:
    return x
  if isinstance(x, Mapping):
    return {str(k): _to_builtin(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_to_builtin(v) for v in x]
  arr = np.asarray(x)
  return arr.item() if arr.ndim == 0 else arr.tolist()


METRICS_FILE = "metrics.jsonl"


def _row_id(row: Mapping[str, Any]) -> tuple:
  """A row's identity: its step and metric names. Writing the same identity
  again (a resumed run redoing a step) replaces the row instead of adding one."""
  return (row["step"], tuple(sorted(k for k in row if k != "step")))


def _parse_metrics(path: str) -> tuple[list[dict], list[str]]:
  """Rows of a metrics.jsonl and a description of each unreadable line."""
  rows, bad = [], []
  with open(path, "rb") as f:
    lines = f.read().split(b"\n")
  for i, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      if not isinstance(row, dict) or not isinstance(row.get("step"), int):
        raise ValueError("not an object with an integer 'step'")
    except ValueError as e:
      cut = i == len(lines)  # no newline after it: a write cut short by a kill
      bad.append(f"{path}:{i}: {'cut-off last line' if cut else e} ({line[:60]!r})")
      continue
    rows.append(row)
  return rows, bad


def _dedupe(rows: list[dict]) -> list[dict]:
  """Keeps the last row of each identity, in the order of their last writes."""
  last = {_row_id(r): i for i, r in enumerate(rows)}
  return [r for i, r in enumerate(rows) if last[_row_id(r)] == i]


def _rewrite(path: str, rows: list[dict]) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  os.replace(tmp, path)


def _set_aside(path: str, why: str) -> str:
  """Copies `path` to a free `path.corrupt[.n]` (never deletes it); returns that."""
  dest, n = path + ".corrupt", 1
  while os.path.exists(dest):
    dest, n = f"{path}.corrupt.{n}", n + 1
  shutil.copyfile(path, dest)
  logging.warning("%s: %s. Kept a copy in %s; the readable rows are kept.", path, why, dest)
  return dest


def read_metrics(workdir: str) -> list[dict]:
  """The rows of `workdir/metrics.jsonl` ([] if absent).

  Unreadable lines (a line cut off by a kill, or a damaged file) are skipped
  with a warning naming the file and line.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  rows, bad = _parse_metrics(path)
  for b in bad:
    logging.warning("Skipping unreadable metrics line %s", b)
  return rows


@writer_only
def truncate_metrics(workdir: str, last_step: int) -> None:
  """Keeps the rows of steps <= `last_step` (the restored checkpoint's step),
  one per step and metric set, before a resumed run logs the later steps again.

  A damaged file is copied aside (`metrics.jsonl.corrupt`) before its readable
  rows are kept.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return
  rows, bad = _parse_metrics(path)
  if bad:
    _set_aside(path, f"{len(bad)} unreadable line(s), first {bad[0]}")
  kept = _dedupe([r for r in rows if r["step"] <= last_step])
  if bad or len(kept) != len(rows):
    _rewrite(path, kept)


class MetricWriter:
  """Appends `{"step": s, **metrics}` lines to `metrics.jsonl` and TB scalars.

  Every row is written once: writing a step again with the same metric names
  (a resumed run redoing it) replaces the earlier row. The writer keeps the
  rows in memory and checks the file before each write, so a file deleted,
  truncated or replaced while the run goes on is noticed (a warning) and
  rebuilt, the changed file copied aside. TensorBoard events are written with
  tensorboardX, so no TensorFlow is needed.
  """

  def __init__(self, workdir: str):
    # Only the writer process logs; on the others every method does nothing.
    self._active = is_writer()
    self._rows, self._jsonl, self._tb = [], None, None
    if not self._active:
      return
    # Imported lazily: only binaries that log need tensorboardX.
    import tensorboardX  # pylint: disable=g-import-not-at-top

    os.makedirs(workdir, exist_ok=True)
    self._path = os.path.join(workdir, METRICS_FILE)
    rows, bad = _parse_metrics(self._path) if os.path.exists(self._path) else ([], [])
    if bad:
      _set_aside(self._path, f"{len(bad)} unreadable line(s), first {bad[0]}")
    self._rows = _dedupe(rows)
    self._jsonl = None
    self._rebuild()
    self._tb = tensorboardX.SummaryWriter(logdir=workdir)

  def _rebuild(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    _rewrite(self._path, self._rows)
    self._jsonl = open(self._path, "a")
    self._size = os.path.getsize(self._path)

  def _check_file(self) -> None:
    """Rebuilds the file from memory if something else changed it."""
    try:
      size = os.path.getsize(self._path)
    except FileNotFoundError:
      logging.warning("%s vanished during the run; rewrote it from the %d rows this"
                      " run holds.", self._path, len(self._rows))
      self._rebuild()
      return
    if size != self._size:
      _set_aside(self._path, f"changed by something else during the run ({size} bytes,"
                 f" expected {self._size}); rewrote it from the {len(self._rows)} rows"
                 " this run holds")
      self._rebuild()

  @property
  def rows(self) -> list[dict]:
    return list(self._rows)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self._active:
      return
    metrics = {k: _to_builtin(v) for k, v in metrics.items()}
    row = {"step": int(step), **metrics}
    self._check_file()
    if any(_row_id(r) == _row_id(row) for r in self._rows):
      self._rows = [r for r in self._rows if _row_id(r) != _row_id(row)] + [row]
      self._rebuild()
    else:
      self._rows.append(row)
      line = json.dumps(row) + "\n"
      self._jsonl.write(line)
      self._jsonl.flush()
      self._size += len(line.encode())
    for k, v in metrics.items():
      if isinstance(v, (int, float)) and not isinstance(v, bool):
        self._tb.add_scalar(k, v, int(step))

  def write_text(self, step: int, tag: str, text: str) -> None:
    """TensorBoard text (markdown) under `tag`."""
    if not self._active:
      return
    self._tb.add_text(tag, text, int(step))

  def close(self) -> None:
    if not self._active:
      return
    self._jsonl.close()
    self._tb.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


@writer_only
def atomic_write_json(path: str, obj: Any) -> None:
  """Writes JSON to a temp file in the same folder, then `os.replace`s it, so
  readers never see a half-written file."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".json")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(_to_builtin(obj), f, indent=2, sort_keys=True)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_summary(workdir: str, summary: Mapping[str, Any]) -> str:
  """Atomically writes `workdir/summary.json` (on the writer process);
  returns its path."""
  path = os.path.join(workdir, "summary.json")
  atomic_write_json(path, summary)
  return path


class ConfigMismatchError(ValueError):
  """A workdir was started with a different config."""


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def check_or_store_config(workdir: str, config: Any) -> None:
  """Stores the config as JSON on the first run; later runs must match it.

  Resuming a workdir with a different config would silently mix two
  experiments, so a mismatch raises one error naming every differing key.

  Args:
    workdir: experiment folder.
    config: an `ml_collections.ConfigDict` (anything with `to_dict()`) or a dict.

  Raises:
    ConfigMismatchError: if `workdir/config.json` exists and differs.
  """
  new = _to_builtin(config.to_dict() if hasattr(config, "to_dict") else config)
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    atomic_write_json(path, new)
    return
  with open(path) as f:
    old = json.load(f)
  a, b = _flatten(old), _flatten(new)
  diff = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))
  if diff:
    details = ", ".join(f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
                        for k in diff)
    raise ConfigMismatchError(
        f"workdir {workdir} was started with a different config; differing "
        f"keys: {details}. Use a new --workdir or the original config.")
