"""`benchmarks/accelerator_check.py --smoke` runs on CPU, so the GPU script
cannot rot: every section runs and the kernel checks pass."""
import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_accelerator_check_smoke(tmp_path):
  spec = importlib.util.spec_from_file_location(
      "accelerator_check", os.path.join(ROOT, "benchmarks", "accelerator_check.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  rows, out = module.main(["--smoke", "--out_dir", str(tmp_path)])
  with open(out) as f:
    written = json.load(f)
  assert written["smoke"] and written["rows"] == rows
  sections = {r["section"] for r in rows}
  assert sections == {"kernels", "attention", "decode", "grpo_step"}
  assert all(r["ok"] for r in rows if "ok" in r)
  assert not [r for r in rows if "error" in r]
  assert {r["impl"] for r in rows if r["section"] == "attention"} == {
      "ours", "dot_product_attention"}
