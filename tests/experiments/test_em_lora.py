"""EXSEARCH, DRO and MOAT with LoRA adapters (`--config.lora.rank`): a killed
run resumes to the metrics of an uninterrupted one. Checkpoints hold the
adapters and their optimiser state only; each method restarts from the warm-up
with fresh adapters over the same base arrays (MOAT's updates donate their
state: only the adapters may be donated, or the next method's base is gone)."""
import os

import pytest

from alignax.experiments import dro, exsearch, moat
from alignax.experiments.runtime.config_files import load_config_file
from tests.experiments.resume import assert_killed_run_resumes_identically

BINARIES = {"dro": dro, "exsearch": exsearch, "moat": moat}


def _lora_tiny(name):
  config = load_config_file(
      os.path.join(os.path.dirname(dro.__file__), "configs", f"{name}.py") + ":tiny")
  config.lora.rank = 4
  config.lora.alpha = 8.0
  return config


@pytest.mark.parametrize("name", ["exsearch", "moat",
                                  pytest.param("dro", marks=pytest.mark.slow)])
def test_lora_run_resumes_identically(name, tmp_path):
  run = BINARIES[name].run
  reference = str(tmp_path / "full")
  run(_lora_tiny(name), reference, progress=False)
  config = _lora_tiny(name)
  iters = config.get("num_iterations") or config.em.num_iterations
  # Killed after the first method's last iteration: the next one starts afresh.
  assert_killed_run_resumes_identically(run, lambda: _lora_tiny(name),
                                        str(tmp_path / "killed"), reference,
                                        stop_after=iters)
