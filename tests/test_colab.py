"""The notebooks in colabs/ run top to bottom."""
import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_notebook_executes(tmp_path):
  nb = nbformat.read(os.path.join(ROOT, "colabs", "quickstart.ipynb"), as_version=4)
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.get("outputs", []))
  assert "gold" in outputs  # the sampling cell printed its completions
  assert any(o.get("output_type") == "display_data" for c in nb.cells
             if c.cell_type == "code" for o in c.get("outputs", []))  # the plot
  # Something learns: non-zero reward that rises over the run.
  first, last = map(float, re.search(
      r"train reward: first 4 steps ([\d.]+) -> last 4 steps ([\d.]+)", outputs).groups())
  assert last > first > 0, outputs[-300:]


@pytest.mark.slow  # the real model: about three minutes on 2 cores
def test_real_model_notebook_executes(tmp_path):
  nb = nbformat.read(os.path.join(ROOT, "colabs", "real_model.ipynb"), as_version=4)
  NotebookClient(nb, timeout=900, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.get("outputs", []))
  assert "<|im_start|>assistant" in outputs and "sampled reward per step" in outputs
