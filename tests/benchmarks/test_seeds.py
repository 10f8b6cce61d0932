"""benchmarks/seeds.py: flattening, mean/std over seeds, and the 2-of-3 rule."""
import numpy as np

from tests.benchmarks import scripts

seeds = scripts.load("seeds")


def test_flatten_nested_and_lists():
  flat = seeds.flatten({"a": {"b": 1, "c": [2.0, 3]}, "d": True, "e": "x", "f": 0.5})
  assert flat == {"a/b": 1.0, "a/c/0": 2.0, "a/c/1": 3.0, "f": 0.5}


def test_aggregate_matches_numpy_and_majority_rule():
  per_seed = {0: {"x": 1.0}, 1: {"x": 4.0}, 2: {"x": 10.0}}
  out = seeds.aggregate(per_seed, {"x > 3": lambda s: s["x"] > 3,
                                   "x > 5": lambda s: s["x"] > 5})
  vals = np.array([1.0, 4.0, 10.0])
  assert out["metrics"]["x"]["mean"] == vals.mean()
  assert np.isclose(out["metrics"]["x"]["std"], np.std(vals, ddof=1))
  assert out["metrics"]["x"]["per_seed"] == {"0": 1.0, "1": 4.0, "2": 10.0}
  # Mean 5: "x > 3" holds on the mean and in 2 of 3 seeds; "x > 5" in 1 seed only.
  assert out["claims"]["x > 3"]["holds"] and not out["claims"]["x > 5"]["holds"]
  assert out["claims"]["x > 5"]["per_seed"] == {"0": False, "1": False, "2": True}


def test_worst_drop_reads_the_whole_curve_in_iteration_order():
  s = {"m_before": 10.0, "m_per_iteration/0": 12.0, "m_per_iteration/1": 9.5,
       "m_per_iteration/10": 9.0}
  assert seeds._worst_drop(s, "m") == -2.5   # 12 -> 9.5 (10 sorts after 1)
  assert seeds._worst_drop({"m_before": 1.0, "m_per_iteration/0": 2.0}, "m") == 0.0


def test_claim_values_and_bounds_reach_the_seeds_file():
  claim = seeds.Claim(lambda s: s["x"] - s["y"], ">=", 3)
  out = seeds.aggregate({0: {"x": 5.0, "y": 1.0}, 1: {"x": 5.0, "y": 3.0},
                         2: {"x": 9.0, "y": 1.0}}, {"x - y >= 3": claim})
  v = out["claims"]["x - y >= 3"]
  assert v["value_per_seed"] == {"0": 4.0, "1": 2.0, "2": 8.0}
  assert v["value_on_mean"] == (19 / 3 - 5 / 3) and v["bound"] == ">= 3"
  assert v["per_seed"] == {"0": True, "1": False, "2": True} and v["holds"]


def test_every_binary_has_claims():
  assert seeds.BINARIES == ["cau_unlearn", "dro", "exsearch", "grpo", "moat"]
  assert seeds.claims_of("grpo", "smollm2") is seeds.CLAIMS["grpo:smollm2"]
  assert seeds.claims_of("grpo", "tiny") is seeds.CLAIMS["grpo"]


def test_pareto_margin_is_positive_iff_no_run_dominates():
  def summary(points):  # name -> (forget HR@10, retain NDCG@10); retrained at 0.1
    s = {"retrained/forget/hr@10": 0.1}
    for n, (f, r) in points.items():
      s[f"{n}/forget/hr@10"], s[f"{n}/retain/ndcg@10"] = f, r
    return s
  # a: as close to retraining as m (0.05 away) and better on retain: dominates m.
  s = summary({"m": (0.05, 0.60), "a": (0.15, 0.62), "b": (0.0, 0.70)})
  assert np.isclose(seeds._pareto_margin(s, "m", ("a", "b")), 0.0, atol=1e-12)
  # m closer to retraining than both, worse on retain than both: not dominated;
  # the margin is the smaller of its leads (0.1 - 0.05 over b, 0.3 - 0.05 over a).
  s = summary({"m": (0.05, 0.60), "a": (0.40, 0.62), "b": (0.2, 0.70)})
  assert np.isclose(seeds._pareto_margin(s, "m", ("a", "b")), 0.05)
  # a closer to retraining (0.05 vs 0.1 away) and better on retain: strictly
  # dominated, the margin is m's smaller deficit (0.01 on retain).
  s = summary({"m": (0.0, 0.66), "a": (0.05, 0.67)})
  assert np.isclose(seeds._pareto_margin(s, "m", ("a",)), -0.01)


def test_run_seed_passes_overrides_and_reads_the_summary(tmp_path, monkeypatch):
  calls = []

  def fake_run(cmd, check, cwd):
    del check, cwd
    calls.append(cmd)
    (tmp_path / "summary.json").write_text('{"eval": {"accuracy_after": 0.5}}')

  monkeypatch.setattr(seeds.subprocess, "run", fake_run)
  out = seeds.run_seed("grpo", "smollm2", 3, str(tmp_path), {"rollout.off_policy_steps": 1})
  assert calls[0][-3:] == ["--config.seed=3", f"--workdir={tmp_path}",
                           "--config.rollout.off_policy_steps=1"]
  assert calls[0][3].endswith("grpo.py:smollm2")
  assert out["eval/accuracy_after"] == 0.5
  seeds.run_seed("grpo", "smollm2", 3, str(tmp_path))  # finished: read, not run again
  assert len(calls) == 1
