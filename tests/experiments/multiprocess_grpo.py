"""Worker of test_multiprocess_grpo.py: the GRPO binary's tiny run on an
fsdp=8 mesh, on however many processes the environment declares
(`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`: see
`alignax.framework.sharding.maybe_initialize_distributed`).

  python tests/experiments/multiprocess_grpo.py WORKDIR [--die_after=K]

Every process runs the same program; the binary itself writes metrics.jsonl,
summary.json, final_model/ ... from process 0 only. This worker adds
`WORKDIR/params.npz` (the final parameters, gathered; process 0 writes it) and
prints `restored: <step or None>` (the checkpoint the run resumed from).
`--die_after=K`: process 1 exits abruptly (no clean-up, as a killed host)
right after its part of the step-K checkpoint.
"""
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
from alignax.experiments import grpo
from alignax.experiments.runtime import config_files
from alignax.framework import checkpoint, run_records

TINY = os.path.join(ROOT, "alignax", "experiments", "configs", "grpo.py") + ":tiny"
# Seconds per run: a random (not warm-started) model, 4 steps, a small eval;
# a dense reward (below) so that every group has non-zero advantages.
OVERRIDES = {
    "warmup.steps": 0, "task.train_size": 64, "train.steps": 4, "train.checkpoint_every": 1,
    "train.eval_every": 4, "eval.size": 8, "eval.batch_size": 8, "eval.num_samples": 0,
    "eval.log_samples": 2, "mesh.fsdp": 8,
    "reward.functions": "tests.experiments.multiprocess_grpo:even_tokens",
}


def even_tokens(prompts, completions, completion_ids, **columns):
  """Share of even token ids in a completion: a reward that differs within a group."""
  del prompts, completions, columns
  return [float(np.mean([t % 2 == 0 for t in ids])) if ids else 0.0 for ids in completion_ids]


def config():
  c = config_files.load_config_file(TINY)
  c.update_from_flattened_dict(OVERRIDES)
  return c


def _instrument(die_after):
  """Reports the restored step; makes process 1 die after checkpoint `die_after`."""
  restore, save = checkpoint.Checkpointer.restore_latest, checkpoint.Checkpointer.save

  def restore_latest(self, template):
    out = restore(self, template)
    print(f"restored: {None if out is None else out[0]}", flush=True)
    return out

  def dying_save(self, step, *args, **kwargs):
    save(self, step, *args, **kwargs)
    if step == die_after and jax.process_index() == 1:
      os._exit(3)  # pylint: disable=protected-access
  checkpoint.Checkpointer.restore_latest = restore_latest
  checkpoint.Checkpointer.save = dying_save


def main(workdir, die_after=-1):
  _instrument(die_after)
  summary, state = grpo.run(config(), workdir, progress=False)
  params = run_records.to_host(jax.tree.leaves(state.params))  # every process gathers
  if run_records.is_writer():
    np.savez(os.path.join(workdir, "params.npz"), *params)
  return summary


if __name__ == "__main__":
  main(sys.argv[1], *[int(a.split("=")[1]) for a in sys.argv[2:] if a.startswith("--die_after=")])
