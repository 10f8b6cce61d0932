"""A small wrapper over orbax `CheckpointManager` for experiment binaries.

Each checkpoint holds a state pytree (params, optimiser state, ...) and a JSON
dict of extras (data-iterator position, RNG seeds, phase names) so that a
killed run resumes where it stopped. Orbax writes to a temporary folder and
renames it when complete, so a checkpoint is either whole or absent.

Orbax does not notice bytes that change afterwards (a bad disk, a copy cut
short, a stray edit), so once a save has completed a digest manifest
(`DIGESTS`: the SHA-256 of every file) is written into the step folder,
atomically. `restore_latest` checks it first: a checkpoint that fails is moved
aside (never deleted) to `<directory>.corrupt/` with a warning naming it, and
the newest intact one is restored instead; if none is intact, one error lists
them all.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec as P, SingleDeviceSharding
import orbax.checkpoint as ocp
from absl import logging

DIGESTS = "alignax_digests.json"


class CheckpointCorruptError(RuntimeError):
  """No checkpoint in the folder passes its integrity check."""


def _file_digest(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _files(step_dir: str) -> list[str]:
  """Paths of every file under `step_dir`, relative to it, except the manifest."""
  out = []
  for root, _, names in os.walk(step_dir):
    for name in names:
      rel = os.path.relpath(os.path.join(root, name), step_dir)
      if rel != DIGESTS and not name.startswith(".tmp_"):
        out.append(rel)
  return sorted(out)


def write_digests(step_dir: str) -> None:
  """Writes `step_dir/DIGESTS` ({relative path: sha256}) atomically."""
  digests = {rel: _file_digest(os.path.join(step_dir, rel)) for rel in _files(step_dir)}
  fd, tmp = tempfile.mkstemp(dir=step_dir, prefix=".tmp_")
  with os.fdopen(fd, "w") as f:
    json.dump({"sha256": digests}, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, os.path.join(step_dir, DIGESTS))


def verify_digests(step_dir: str) -> str | None:
  """Checks `step_dir` against its manifest.

  Returns None if every listed file is present with its digest, else a short
  description of the first problems found (a missing manifest included).
  """
  manifest = os.path.join(step_dir, DIGESTS)
  if not os.path.exists(manifest):
    return f"it has no {DIGESTS} (the save did not complete)"
  try:
    with open(manifest) as f:
      digests = json.load(f)["sha256"]
    if not isinstance(digests, dict) or not digests:
      raise ValueError("no file digests")
  except (ValueError, KeyError, TypeError) as e:
    return f"its {DIGESTS} is unreadable ({e})"
  problems = []
  for rel, want in sorted(digests.items()):
    path = os.path.join(step_dir, rel)
    if not os.path.isfile(path):
      problems.append(f"{rel} is missing")
    elif _file_digest(path) != want:
      problems.append(f"{rel} has changed (SHA-256 differs; {os.path.getsize(path)} bytes)")
  if problems:
    more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more
  return None


def _global_template(template: Any) -> Any:
  """With several processes, leaves of `template` that live on one device
  (e.g. the optimiser's step counter, created unsharded next to sharded
  parameters) are restored replicated over the mesh of the sharded leaves:
  restored onto one device they would be committed there, and a jitted
  update taking them with the global parameters fails ("incompatible
  devices"). One process: the template is used as is."""
  if jax.process_count() == 1:
    return template
  leaves = jax.tree.leaves(template)
  mesh = next((x.sharding.mesh for x in leaves
               if isinstance(getattr(x, "sharding", None), NamedSharding)), None)
  if mesh is None:
    return template

  def one(x):
    if isinstance(getattr(x, "sharding", None), SingleDeviceSharding):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, P()))
    return x
  return jax.tree.map(one, template)


class Checkpointer:
  """Keeps the last `max_to_keep` checkpoints under `directory`.

  Example:
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    restored = ckpt.restore_latest(template)   # None on a fresh run
    ckpt.save(step, state, {"epoch": 3})
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3):
    self.directory = os.path.abspath(directory)
    self._mgr = ocp.CheckpointManager(
        self.directory,
        # cleanup_tmp_directories: the temporary folder of a write killed
        # half-way holds no checkpoint; it is removed when the run restarts.
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             cleanup_tmp_directories=True),
        item_names=("state", "extras"))
    self._pending: list[int] = []  # async saves whose manifest is not written yet

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _finish_pending(self) -> None:
    """Waits for async saves, then writes their manifests (only whole
    checkpoints get one, so a manifest vouches for every file it lists)."""
    if not self._pending:
      return
    self._mgr.wait_until_finished()
    if jax.process_index() == 0:
      for step in self._pending:
        if os.path.isdir(self._step_dir(step)):  # not already rotated away
          write_digests(self._step_dir(step))
    self._pending = []

  def save(self, step: int, state: Any, extras: dict | None = None, *,
           wait: bool = True) -> None:
    """Saves `state` (a pytree of arrays) and `extras` (JSON-able) at `step`.

    With `wait=False` the write continues in the background; its digest
    manifest is written by the next call of any method (or `close`).
    """
    self._finish_pending()
    saved = self._mgr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        extras=ocp.args.JsonSave(extras or {})))
    if saved:  # Orbax may decline (e.g. the step exists): vouch only for new writes
      self._pending.append(step)
    if wait:
      self._finish_pending()

  def latest_step(self) -> int | None:
    self._finish_pending()
    return self._mgr.latest_step()

  def _restore(self, step: int, template: Any):
    out = self._mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_global_template(template)),
        extras=ocp.args.JsonRestore()))
    return step, out["state"], dict(out["extras"])

  def _move_aside(self, step: int) -> str:
    aside = self.directory + ".corrupt"
    os.makedirs(aside, exist_ok=True)
    dest, n = os.path.join(aside, str(step)), 1
    while os.path.exists(dest):
      dest, n = os.path.join(aside, f"{step}.{n}"), n + 1
    shutil.move(self._step_dir(step), dest)
    return dest

  def restore_latest(self, template: Any):
    """Returns `(step, state, extras)` of the newest intact checkpoint, or None.

    Each checkpoint is checked against its digest manifest before it is
    restored. One that fails (changed, truncated or missing files) is moved to
    `<directory>.corrupt/` with a warning naming it, and the next older one is
    tried. A checkpoint without a manifest (a run killed between the save and
    the manifest, or written by an older alignax) is accepted if Orbax can
    restore it.

    Args:
      template: a pytree with the structure, shapes and dtypes of the saved
        state (e.g. freshly initialised params); leaves may be arrays or
        `jax.ShapeDtypeStruct`s.

    Raises:
      CheckpointCorruptError: checkpoints exist but none is intact (nothing is
        moved then, so the message stays true on a re-run).
    """
    self._finish_pending()
    bad = []
    for step in sorted(self._mgr.all_steps(), reverse=True):
      problem = verify_digests(self._step_dir(step))
      verified = problem is None
      if verified or problem.startswith(f"it has no {DIGESTS}"):
        try:
          out = self._restore(step, template)
        except Exception as e:  # pylint: disable=broad-except
          if verified:
            raise  # the files are as saved: the template, not the disk, differs
          problem = (f"it has no {DIGESTS} and Orbax cannot read it "
                     f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})")
        else:
          if not verified:
            logging.warning("Checkpoint %s has no %s (killed before it was written, or"
                            " written by an older alignax); restored it unverified.",
                            self._step_dir(step), DIGESTS)
          for bad_step, reason in bad:
            dest = self._move_aside(bad_step)
            logging.warning(
                "Checkpoint %s is corrupt: %s. Moved it to %s (kept for inspection) and"
                " resumed from step %d instead.", self._step_dir(bad_step), reason, dest,
                step)
          if bad:
            self._mgr.reload()
          return out
      bad.append((step, problem))
    if bad:
      details = "\n".join(f"  {self._step_dir(s)}: {reason}" for s, reason in bad)
      raise CheckpointCorruptError(
          f"No intact checkpoint in {self.directory}; every one fails its integrity"
          f" check:\n{details}\nRestore them from a backup, or move {self.directory}"
          " away to start the run afresh.")
    return None

  def close(self) -> None:
    self._finish_pending()
    self._mgr.close()
