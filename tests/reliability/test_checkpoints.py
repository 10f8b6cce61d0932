"""Checkpoint integrity: damaged checkpoints are detected at restore, moved
aside (never deleted) and the newest intact one is restored instead."""
import glob
import json
import logging
import os

import jax.numpy as jnp
import numpy as np
import pytest

from alignax.framework import checkpoint


def _state(step):
  return {"w": jnp.arange(256, dtype=jnp.float32) + step, "b": {"c": jnp.full((3,), step)}}


@pytest.fixture
def ckdir(tmp_path):
  """Three checkpoints (steps 1, 2, 3; the middle one saved asynchronously)."""
  d = str(tmp_path / "checkpoints")
  c = checkpoint.Checkpointer(d, max_to_keep=5)
  c.save(1, _state(1), {"step": 1})
  c.save(2, _state(2), {"step": 2}, wait=False)
  c.save(3, _state(3), {"step": 3})
  c.close()
  return d


def _largest_data_file(step_dir):
  files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"),
                                recursive=True)]
  return max(files, key=os.path.getsize)


def _flip(path):
  data = bytearray(open(path, "rb").read())
  mid = len(data) // 2
  data[mid:mid + 8] = bytes(b ^ 0xFF for b in data[mid:mid + 8])
  open(path, "wb").write(bytes(data))


def _truncate(path):
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size // 2)


def _empty(path):
  open(path, "wb").close()


DAMAGES = {
    "flipped_bytes_in_data": lambda d: _flip(_largest_data_file(d)),
    "truncated_data_file": lambda d: _truncate(_largest_data_file(d)),
    "empty_METADATA": lambda d: _empty(os.path.join(d, "state", "_METADATA")),
    "missing_data_file": lambda d: os.remove(_largest_data_file(d)),
    "missing_METADATA": lambda d: os.remove(os.path.join(d, "state", "_METADATA")),
    "flipped_extras": lambda d: open(os.path.join(d, "extras", "metadata"), "w").write(
        '{"step": 9}'),
    "unreadable_manifest": lambda d: _empty(os.path.join(d, checkpoint.DIGESTS)),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_latest_falls_back_and_is_moved_aside(ckdir, damage, caplog):
  DAMAGES[damage](os.path.join(ckdir, "3"))
  c = checkpoint.Checkpointer(ckdir)
  with caplog.at_level(logging.WARNING):
    step, state, extras = c.restore_latest(_state(0))
  c.close()
  assert step == 2 and extras == {"step": 2}
  np.testing.assert_array_equal(state["w"], _state(2)["w"])
  assert os.path.join(ckdir, "3") in caplog.text and "corrupt" in caplog.text
  # Moved aside, not deleted; the folder holds only intact checkpoints.
  assert os.path.isdir(ckdir + ".corrupt/3")
  assert sorted(os.listdir(ckdir)) == ["1", "2"]


@pytest.mark.parametrize("damage", ["flipped_bytes_in_data", "truncated_data_file",
                                    "empty_METADATA"])
def test_no_intact_checkpoint_is_one_clear_error(ckdir, damage):
  for step in ("1", "2", "3"):
    DAMAGES[damage](os.path.join(ckdir, step))
  c = checkpoint.Checkpointer(ckdir)
  with pytest.raises(checkpoint.CheckpointCorruptError) as e:
    c.restore_latest(_state(0))
  for step in ("1", "2", "3"):
    assert os.path.join(ckdir, step) in str(e.value)
  assert "backup" in str(e.value)
  assert sorted(os.listdir(ckdir)) == ["1", "2", "3"]  # nothing moved or deleted


def test_two_bad_checkpoints_fall_back_two_steps(ckdir, caplog):
  _flip(_largest_data_file(os.path.join(ckdir, "3")))
  _empty(os.path.join(ckdir, "2", "state", "_METADATA"))
  with caplog.at_level(logging.WARNING):
    step, _, _ = checkpoint.Checkpointer(ckdir).restore_latest(_state(0))
  assert step == 1
  assert os.path.join(ckdir, "3") in caplog.text and os.path.join(ckdir, "2") in caplog.text
  assert sorted(os.listdir(ckdir + ".corrupt")) == ["2", "3"]


def test_checkpoint_without_manifest_is_restored_with_a_warning(ckdir, caplog):
  """A kill between Orbax's rename and the manifest write loses nothing."""
  os.remove(os.path.join(ckdir, "3", checkpoint.DIGESTS))
  with caplog.at_level(logging.WARNING):
    step, state, _ = checkpoint.Checkpointer(ckdir).restore_latest(_state(0))
  assert step == 3 and "unverified" in caplog.text
  np.testing.assert_array_equal(state["w"], _state(3)["w"])


def test_async_save_gets_a_manifest_once_finished(ckdir):
  with open(os.path.join(ckdir, "2", checkpoint.DIGESTS)) as f:
    digests = json.load(f)["sha256"]
  assert any(k.startswith("state/") for k in digests) and "extras/metadata" in digests
  assert checkpoint.verify_digests(os.path.join(ckdir, "2")) is None


def test_resave_after_fallback_continues(ckdir):
  _truncate(_largest_data_file(os.path.join(ckdir, "3")))
  c = checkpoint.Checkpointer(ckdir)
  step, state, _ = c.restore_latest(_state(0))
  c.save(3, _state(3), {"step": 3})
  c.close()
  step, state, _ = checkpoint.Checkpointer(ckdir).restore_latest(_state(0))
  assert step == 3
  np.testing.assert_array_equal(state["w"], _state(3)["w"])
