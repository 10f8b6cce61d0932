"""MOAT binary on the `tiny` preset: outputs, summary keys, resume after a
stop, a finished workdir returns the same summary, config checks."""
import json
import os

import pytest

from alignax.experiments import moat
from alignax.experiments.runtime import loop
from alignax.experiments.runtime.config_files import load_config_file
from alignax.framework.run_records import ConfigMismatchError
from tests.experiments.em_fixtures import assert_transformers_loads

TINY = os.path.join(os.path.dirname(moat.__file__), "configs", "moat.py") + ":tiny"
SPLITS = ("held_in", "held_out")


# One test for the whole tiny run (a module fixture shared by several tests
# would be built once per pytest-xdist worker).
def test_run_resume_outputs_and_summary(tmp_path):
  workdir = str(tmp_path / "moat")
  # Stop after one phase (as a kill would), then resume to the end.
  partial = moat.run(load_config_file(TINY), workdir, stop_after=1, progress=False)
  assert len(partial["eval/held_in_per_iteration"]) == 1
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
  summary = moat.run(load_config_file(TINY), workdir, progress=False)
  with open(os.path.join(workdir, "summary.json")) as f:
    written = json.load(f)
  for prefix in ("", "separate/", "separate_gold/"):
    for split in SPLITS:
      for key in ("before", "after"):
        assert isinstance(written[f"{prefix}eval/{split}_{key}"], float)
      curve = written[f"{prefix}eval/{split}_per_iteration"]
      assert len(curve) == 2
      assert written[f"{prefix}eval/{split}_after"] == curve[-1]
    # Per-length held-out success and its standard errors (issue 32): the
    # tiny held-out set is 8 tasks (1 of length 2, 7 of length 3), 8 (chain,
    # phrasing) groups of one task, so the SE over groups is the ordinary one
    # of 8 outcomes.
    for key in ("before", "after"):
      p = written[f"{prefix}eval/held_out_{key}"] / 100
      per_length = [written[f"{prefix}eval/held_out_hops{n}_{key}"] for n in (2, 3)]
      assert abs(1 * per_length[0] + 7 * per_length[1] - 800 * p) < 1e-9
      assert written[f"{prefix}eval/held_out_groups_{key}"] == 8
      want = 100 * (p * (1 - p) / 7) ** 0.5
      for se in ("se", "se_chains", "se_tasks"):
        assert abs(written[f"{prefix}eval/held_out_{se}_{key}"] - want) < 1e-9
    assert len(written[f"{prefix}eval/held_in_se_per_iteration"]) == 2
    assert f"{prefix}eval/held_in_hops1_after" in written
  # The paired difference MOAT - baseline on the same tasks, and its SE over
  # groups (one task a group here: the ordinary SE of the 8 differences).
  for prefix in ("separate/", "separate_gold/"):
    for split in SPLITS:
      diff = written[f"{prefix}eval/{split}_moat_minus"]
      assert abs(diff - (written[f"eval/{split}_after"]
                         - written[f"{prefix}eval/{split}_after"])) < 1e-9
      assert written[f"{prefix}eval/{split}_moat_minus_se"] >= 0
  assert "eval/held_out_moat_minus" not in written
  assert written["train/seconds"] > 0
  assert len(written["time/stage1_seconds"]) == len(written["time/stage2_seconds"]) == 2
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == list(range(7))  # warm-up + 3 methods x 2 iterations
  for key in ("moat/stage1/seconds", "moat/stage2/seconds", "moat/stage1/pairs",
              "moat/stage2/sft_rows", "moat/eval/held_out_success"):
    assert key in rows[1], key
  # stage2.accumulate + replay_gold: earlier corrected pairs and the gold set
  # are trained on beside this iteration's pairs.
  pairs = [rows[i]["moat/stage2/corrected_pairs"] for i in (1, 2)]
  num_gold = load_config_file(TINY).warmup.num_gold
  assert rows[1]["moat/stage2/sft_rows"] == pairs[0] + num_gold
  assert rows[2]["moat/stage2/sft_rows"] == pairs[0] + pairs[1] + num_gold
  assert rows[3]["separate/planner_updates"] == rows[1]["moat/stage1/updates"]
  assert rows[3]["separate/grounder_updates"] == rows[1]["moat/stage2/updates"]
  assert rows[3]["separate/rows"] == rows[4]["separate/rows"] == num_gold
  # separate_gold/: MOAT's update counts, on the gold set plus the pool tasks
  # MOAT drew so far (their gold subgoals and actions).
  config = load_config_file(TINY)
  world = moat.make_world(config)
  train_tasks, _, held_out = moat.split_tasks(world, config)
  assert [len(t.chain) for t in held_out[:config.eval.held_out_size]].count(2) == 1
  pool, q = moat.pool_tasks(world, config, train_tasks), config.stage1.tasks_per_iteration
  # The pool: the training tasks after the gold set, with the pool-only
  # chains' tasks mixed in (the tiny preset sets world.pool_only_fraction=0.5).
  pool_only = world.pool_only_tasks(config.world.heldout_fraction,
                                    config.world.pool_only_fraction)
  assert pool_only and sorted(t.id for t in pool) == sorted(
      t.id for t in train_tasks[num_gold:] + pool_only)
  assert any(t in pool_only for t in pool[:q])  # mixed in from the first slice on
  for it, row in enumerate(rows[5:7]):
    assert row["separate_gold/planner_updates"] == rows[1 + it]["moat/stage1/updates"]
    assert row["separate_gold/grounder_updates"] == rows[1 + it]["moat/stage2/updates"]
    drawn = {t.id for i in range(it + 1) for t in loop.iteration_slice(pool, i, q)}
    assert row["separate_gold/rows"] == num_gold + len(drawn)
  assert rows[6]["separate_gold/rows"] > rows[5]["separate_gold/rows"]
  assert os.path.getsize(os.path.join(workdir, "success.png")) > 1000
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  for f in ("planner_init/tokenizer.json", "grounder_init/model.safetensors",
            "bm25/corpus.jsonl"):
    assert os.path.exists(os.path.join(workdir, f)), f
  for role in ("planner", "grounder"):
    assert_transformers_loads(os.path.join(workdir, f"final_{role}"))
  # A finished workdir returns the same summary.
  assert moat.run(load_config_file(TINY), workdir, progress=False) == summary


def test_agents_load_from_hf_dirs_and_config_checks(tmp_path):
  config = load_config_file(TINY)
  world = moat.make_world(config)
  gold = moat.split_tasks(world, config)[0][:config.warmup.num_gold]
  workdir = str(tmp_path / "init")
  moat.build_agents(config, workdir, world, gold)  # warm-up, saved as HF dirs
  config.planner_dir = os.path.join(workdir, "planner_init")
  config.grounder_dir = os.path.join(workdir, "grounder_init")
  config.num_iterations = 1
  config.separate.enabled = config.separate.gold_pool = False
  summary = moat.run(config, str(tmp_path / "loaded"), progress=False)
  assert not any(k.startswith("separate") for k in summary)
  assert len(summary["eval/held_out_per_iteration"]) == 1
  with pytest.raises(ConfigMismatchError):
    moat.run(load_config_file(TINY), str(tmp_path / "loaded"), progress=False)
  bad = load_config_file(TINY)
  bad.critic.name = "nope"
  with pytest.raises(ValueError, match="critic"):
    moat.run(bad, str(tmp_path / "bad"), progress=False)
  bad = load_config_file(TINY)
  bad.planner_dir = "x"
  with pytest.raises(ValueError, match="planner_dir"):
    moat.run(bad, str(tmp_path / "bad2"), progress=False)
