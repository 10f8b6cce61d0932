"""A small wrapper over orbax `CheckpointManager` for experiment binaries.

Each checkpoint holds a state pytree (params, optimiser state, ...) and a JSON
dict of extras (data-iterator position, RNG seeds, phase names) so that a
killed run resumes where it stopped. Orbax writes to a temporary folder and
renames it when complete, so a checkpoint is either whole or absent.
"""
from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp


class Checkpointer:
  """Keeps the last `max_to_keep` checkpoints under `directory`.

  Example:
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    restored = ckpt.restore_latest(template)   # None on a fresh run
    ckpt.save(step, state, {"epoch": 3})
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3):
    self._mgr = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             create=True),
        item_names=("state", "extras"))

  def save(self, step: int, state: Any, extras: dict | None = None, *,
           wait: bool = True) -> None:
    """Saves `state` (a pytree of arrays) and `extras` (JSON-able) at `step`."""
    self._mgr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        extras=ocp.args.JsonSave(extras or {})))
    if wait:
      self._mgr.wait_until_finished()

  def latest_step(self) -> int | None:
    return self._mgr.latest_step()

  def restore_latest(self, template: Any):
    """Returns `(step, state, extras)` of the newest checkpoint, or None.

    Args:
      template: a pytree with the structure, shapes and dtypes of the saved
        state (e.g. freshly initialised params); leaves may be arrays or
        `jax.ShapeDtypeStruct`s.
    """
    step = self._mgr.latest_step()
    if step is None:
      return None
    out = self._mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(template),
        extras=ocp.args.JsonRestore()))
    return step, out["state"], dict(out["extras"])

  def close(self) -> None:
    self._mgr.close()
