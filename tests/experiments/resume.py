"""A check shared by the EM binaries' tests: a run killed between phases and
re-run resumes to the same metrics as an uninterrupted run."""
import json
import os


def _metrics(workdir):
  """metrics.jsonl rows without wall-clock entries."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [{k: v for k, v in r.items() if "time" not in k and "seconds" not in k}
          for r in rows]


def assert_killed_run_resumes_identically(run, config_fn, workdir, reference_workdir,
                                          stop_after):
  """`run(config, workdir, stop_after=...)` then `run(config, workdir)` writes
  the metrics (losses, weights, held-out scores) of the uninterrupted run in
  `reference_workdir`."""
  partial = run(config_fn(), workdir, stop_after=stop_after, progress=False)
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
  assert len(_metrics(workdir)) == 1 + stop_after and partial
  run(config_fn(), workdir, progress=False)
  assert _metrics(workdir) == _metrics(reference_workdir)
