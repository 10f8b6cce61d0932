"""EXSEARCH's EM iterations with LoRA adapters (`--config.lora.rank`): the run
completes and a killed run resumes to the same metrics (checkpoints hold the
adapters and their optimiser state only)."""
import os

from alignax.experiments import exsearch
from alignax.experiments.common import load_config_file
from tests.experiments.resume import _metrics, assert_killed_run_resumes_identically

TINY = os.path.join(os.path.dirname(exsearch.__file__), "configs", "exsearch.py") + ":tiny"


def _lora_tiny():
  config = load_config_file(TINY)
  config.methods = ("exsearch",)
  config.lora.rank = 4
  config.lora.alpha = 8.0
  config.em.learning_rate = 1e-2
  return config


def test_lora_em_trains_and_resumes_identically(tmp_path):
  reference = str(tmp_path / "full")
  exsearch.run(_lora_tiny(), reference, progress=False)
  rows = _metrics(reference)
  assert len(rows) == 3 and all("exsearch/eval/em" in r for r in rows[1:])
  assert_killed_run_resumes_identically(exsearch.run, _lora_tiny, str(tmp_path / "killed"),
                                        reference, stop_after=1)
