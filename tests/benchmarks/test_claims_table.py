"""benchmarks/claims_table.py: the docs/results.md table from seeds files."""
import json
import os

import pytest

from tests.benchmarks import scripts

_DIR = scripts.BENCHMARKS


claims_table = scripts.load("claims_table")


def _seeds_file(tmp_path, per_seed):
  metrics = {k: {"mean": sum(s[k] for s in per_seed.values()) / len(per_seed), "std": 0.0,
                 "per_seed": {str(i): s[k] for i, s in per_seed.items()}}
             for k in next(iter(per_seed.values()))}
  (tmp_path / "seeds_grpo.json").write_text(json.dumps(
      {"binary": "grpo", "preset": "default", "seeds": list(per_seed), "metrics": metrics}))


def test_rows_recompute_values_and_keep_the_prose(tmp_path):
  # Gains 0.5, 0.1, 0.4: the claim (>= 0.3) fails in seed 1, holds on the mean (1/3).
  _seeds_file(tmp_path, {0: {"eval/accuracy_before": 0.2, "eval/accuracy_after": 0.7},
                         1: {"eval/accuracy_before": 0.3, "eval/accuracy_after": 0.4},
                         2: {"eval/accuracy_before": 0.1, "eval/accuracy_after": 0.5}})
  doc = tmp_path / "results.md"
  doc.write_text(f"intro\n{claims_table.BEGIN}\nold table\n{claims_table.END}\nnotes\n")
  claims_table.write(str(doc), str(tmp_path))
  text = doc.read_text()
  assert text.startswith("intro\n") and text.endswith("notes\n") and "old table" not in text
  row = next(l for l in text.splitlines() if l.startswith("| held-out accuracy +30"))
  cells = [c.strip() for c in row.split("|")[1:-1]]
  assert cells[1] == ">= 0.3" and cells[2] == "0.333"       # the value on the mean
  assert cells[4] == "0.5, 0.1 ✗, 0.4" and cells[5] == "**yes**"
  assert "`python benchmarks/seeds.py grpo`" in text
  claims_table.write(str(doc), str(tmp_path))                 # idempotent
  assert doc.read_text() == text


def test_missing_metric_and_missing_markers_are_named(tmp_path):
  _seeds_file(tmp_path, {0: {"eval/accuracy_before": 0.2}})
  assert "not in this file" in claims_table.table(str(tmp_path))
  doc = tmp_path / "results.md"
  doc.write_text("no markers\n")
  with pytest.raises(ValueError, match="claims:begin"):
    claims_table.write(str(doc), str(tmp_path))


def test_docs_results_table_is_current():
  """docs/results.md shows what the committed seeds files say."""
  doc = os.path.join(_DIR, "..", "docs", "results.md")
  with open(doc) as f:
    text = f.read()
  block = text.split(claims_table.BEGIN, 1)[1].split(claims_table.END, 1)[0]
  assert block.strip() == claims_table.table(os.path.join(_DIR, "results")).strip(), (
      "docs/results.md is stale: run python benchmarks/claims_table.py")
