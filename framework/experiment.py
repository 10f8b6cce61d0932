"""Shared experiment utilities: metric logging, summaries, config guard.

Used by every absl binary under `experiments/` (api.md: each writes
`metrics.jsonl`, TensorBoard events and `summary.json` under `--workdir`).
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Mapping

import numpy as np

CONFIG_FILE = "config.json"


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


class MetricWriter:
  """Appends `{"step": s, **metrics}` lines to `metrics.jsonl` and TB scalars.

  TensorBoard events are written with tensorboardX, so no TensorFlow is needed.
  """

  def __init__(self, workdir: str):
    # Imported lazily: only binaries that log need tensorboardX.
    import tensorboardX  # pylint: disable=g-import-not-at-top

    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    self._tb = tensorboardX.SummaryWriter(logdir=workdir)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    metrics = {k: _to_builtin(v) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({"step": int(step), **metrics}) + "\n")
    self._jsonl.flush()
    for k, v in metrics.items():
      if isinstance(v, (int, float)) and not isinstance(v, bool):
        self._tb.add_scalar(k, v, int(step))

  def write_text(self, step: int, tag: str, text: str) -> None:
    """TensorBoard text (markdown) under `tag`."""
    self._tb.add_text(tag, text, int(step))

  def close(self) -> None:
    self._jsonl.close()
    self._tb.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


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
  """Atomically writes `workdir/summary.json`; returns its path."""
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
