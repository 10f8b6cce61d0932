"""Advantage estimators: TRL 1.16 parity, docs/algorithms.md examples, properties."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import alignax.objectives as O
from tests.objectives import trl_harness

NAN = np.nan


def _rewards(seed=0, n=24):
  rng = np.random.default_rng(seed)
  r = rng.normal(size=n).round(2)
  r[4:8] = 0.5  # a zero-std group
  r[9] = NAN  # an unscorable row
  r[13:16] = NAN  # a group with one scorable row (c <= 1 -> std NaN -> 0)
  return r


@pytest.mark.parametrize("scale", ["group", "batch", "none", True, False])
@pytest.mark.parametrize("group_size", [4, 1])
def test_grpo_advantages_match_trl(scale, group_size):
  r = _rewards()
  expected = trl_harness.trl_grpo_advantages(r, group_size, scale_rewards={
      True: "group", False: "none"}.get(scale, scale))
  with jax.enable_x64(True):
    ours = np.asarray(O.grpo_advantages(jnp.asarray(r), group_size,
                                        scale=scale))
  assert np.isfinite(ours).all()
  # TRL rounds its c/(c-1) factor to float32: docs/algorithms.md §2.4 says ~3e-8.
  np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)
  if group_size > 1:  # G == 1: every row is its own group mean -> all 0
    assert np.abs(expected).max() > 0.1


@pytest.mark.parametrize("aggregation",
                         ["sum_then_normalize", "normalize_then_sum"])
def test_grpo_advantages_multi_match_trl(aggregation):
  rng = np.random.default_rng(3)
  R = rng.normal(size=(12, 3)).round(2)
  R[2, 1] = NAN  # a reward function that skipped one row
  R[7] = NAN  # unscorable row
  w = np.array([1.0, 0.5, 2.0])
  expected = trl_harness.trl_grpo_advantages(
      R, 4, multi_objective_aggregation=aggregation, reward_weights=w)
  with jax.enable_x64(True):
    ours = O.grpo_advantages_multi(jnp.asarray(R), jnp.asarray(w), 4,
                                   aggregation=aggregation)
  np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("group_size", [2, 4, 1])
def test_rloo_advantages_match_trl(normalize, group_size):
  r = _rewards()
  expected = trl_harness.trl_rloo_advantages(r, group_size, normalize=normalize)
  with jax.enable_x64(True):
    ours = O.rloo_advantages(jnp.asarray(r), group_size, normalize=normalize)
  np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)


def test_spec_worked_examples():
  r = jnp.array([1.0, 0.0, 0.5, 0.5])
  np.testing.assert_allclose(O.grpo_advantages(r, 2),
                             [0.7070068, -0.7070068, 0, 0], rtol=1e-6)
  np.testing.assert_allclose(O.rloo_advantages(r, 2), [1, -1, 0, 0])
  np.testing.assert_allclose(O.dr_grpo_advantages(r, 2), [0.5, -0.5, 0, 0])
  # "batch": group mean, batch std (ddof=1 of [1,0,.5,.5] = 0.408248)
  np.testing.assert_allclose(O.grpo_advantages(r, 2, scale="batch"),
                             [0.5 / 0.4083483, -0.5 / 0.4083483, 0, 0],
                             rtol=1e-5)


def test_registry_picks_estimators_by_name():
  r = jnp.array([1.0, 0.0, 0.5, 0.5])
  for name in ("grpo", "dr_grpo", "rloo", "f_grpo"):
    assert O.get_advantage_fn(name)(r, 2).shape == (4,)
  np.testing.assert_allclose(O.get_advantage_fn("rloo")(r, 2),
                             O.rloo_advantages(r, 2))
  with pytest.raises(ValueError, match="unknown advantage estimator"):
    O.get_advantage_fn("ppo_gae")


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "f_grpo"])
def test_properties_sum_zero_equal_groups_zero_no_nan(name):
  fn = jax.jit(O.get_advantage_fn(name), static_argnums=1)
  rng = np.random.default_rng(0)
  r = jnp.asarray(rng.integers(0, 2, 32), jnp.float32)
  r = r.at[:8].set(1.0).at[8:16].set(0.0)  # all-equal groups
  a = np.asarray(fn(r, 8))
  assert np.isfinite(a).all()
  np.testing.assert_allclose(a.reshape(4, 8).sum(1), 0, atol=1e-5)
  # rloo's leave-one-out mean (sum - r)/(G-1) is rounded in float32
  np.testing.assert_allclose(a[:16], 0.0, atol=1e-6)
  if name != "rloo":  # std-normalised: 0 / (0 + eps) is exactly 0
    np.testing.assert_array_equal(a[:16], 0.0)
  assert np.abs(a[16:]).max() > 0.1


def test_dapo_dynamic_sampling_filter():
  r = jnp.array([1, 1, 1, 0, 0, 0, 1, 0, NAN, 1, NAN, 1.0])
  np.testing.assert_array_equal(O.dynamic_sampling_filter(r, 3),
                                [False, False, True, False])


def test_dapo_overlong_penalty_hand_values():
  # L_max = 20, L_cache = 4: soft zone (16, 20]
  lengths = jnp.array([0, 16, 17, 18, 20, 21, 100])
  np.testing.assert_allclose(O.overlong_reward_penalty(lengths, 20, 4),
                             [0, 0, -0.25, -0.5, -1.0, -1.0, -1.0])


def test_kl_penalized_rewards():
  old = jnp.array([[-1.0, -2.0, -3.0]])
  ref = jnp.array([[-1.5, -1.0, -9.0]])
  mask = jnp.array([[1.0, 1.0, 0.0]])
  # k1 summed over the active tokens: 0.5 - 1.0 = -0.5
  np.testing.assert_allclose(
      O.kl_penalized_rewards(jnp.array([2.0]), old, ref, mask, 0.1), [2.05])


def test_reinforce_pp_hand_example():
  outcome = jnp.array([1.0, 0.0])
  kl = jnp.array([[0.1, 0.2, 0.0], [0.3, 0.0, 0.0]])
  mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
  # rho: row0 [-0.1, -0.2 + 1] ; row1 [-0.3]; returns row0 [0.7, 0.8], row1 [-0.3]
  g = np.array([0.7, 0.8, -0.3])
  white = (g - g.mean()) / np.sqrt(g.var() + 1e-8)
  out = O.reinforce_pp_advantages(outcome, kl, mask)
  np.testing.assert_allclose(out, [[white[0], white[1], 0], [white[2], 0, 0]],
                             rtol=1e-5)
  base = O.reinforce_pp_advantages(outcome, kl, mask, baseline="group",
                                   group_size=2)
  # group baseline 0.5: returns row0 [0.2, 0.3], row1 [-0.8]
  g = np.array([0.2, 0.3, -0.8])
  white = (g - g.mean()) / np.sqrt(g.var() + 1e-8)
  np.testing.assert_allclose(base[mask > 0], white, rtol=1e-5)


def test_discounted_returns_resets_between_trajectories():
  r = jnp.array([0.0, 1.0, 2.0, 0.0, 3.0])
  ids = jnp.array([0, 0, 0, 1, 1])
  np.testing.assert_allclose(O.discounted_returns(r, ids, 0.5),
                             [0.5 + 0.5, 1.0 + 1.0, 2.0, 1.5, 3.0])


def test_gigpo_hand_example():
  # group 0: trajectory A = 2 steps (rewards 0, 1), B = 1 step (reward 0).
  # A's first step and B's step share the initial anchor state.
  E = jnp.array([1.0, 1.0, 0.0])
  R = O.discounted_returns(jnp.array([0.0, 1.0, 0.0]), jnp.array([0, 0, 1]),
                           0.5)
  np.testing.assert_allclose(R, [0.5, 1.0, 0.0])
  a = O.gigpo_advantages(E, R, jnp.array([0, 0, 0]), jnp.array([0, 1, 0]),
                         omega=1.0)
  std_e = np.sqrt(1 / 3)
  a_e = np.array([1 / 3, 1 / 3, -2 / 3]) / (std_e + 1e-6)
  a_s = np.array([0.25, 0.0, -0.25]) / (np.sqrt(0.125) + 1e-6)
  np.testing.assert_allclose(a, a_e + a_s, rtol=1e-5)
  # mean_norm, omega 0.5, singleton episode group -> mean 0 (A_E = E)
  b = O.gigpo_advantages(E, R, jnp.array([0, 0, 1]), jnp.array([0, 1, 2]),
                         omega=0.5, mode="mean_norm")
  np.testing.assert_allclose(b, [0.0, 0.0, 0.0])
  # per-trajectory episode statistics: mean over trajectories 0.5, std 0.7071
  c = O.gigpo_advantages(E, R, jnp.array([0, 0, 0]), jnp.array([0, 1, 2]),
                         omega=0.0, episode_stats="trajectories",
                         traj_ids=jnp.array([0, 0, 1]))
  np.testing.assert_allclose(c, np.array([0.5, 0.5, -0.5]) / (np.sqrt(0.5) + 1e-6),
                             rtol=1e-5)


def test_focal_scale():
  r = jnp.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0.0])
  s = O.focal_advantage_scale(r, 4, 2.0)
  np.testing.assert_allclose(s, [0] * 4 + [0.5625] * 4 + [1] * 4)
  a = O.focal_grpo_advantages(r, 4, gamma_f=2.0)
  np.testing.assert_allclose(a, O.grpo_advantages(r, 4) * s)


def test_tree_node_values_and_sibling_advantages():
  # root(0) -> a(1), b(2); a -> leaves 0,1; b -> leaf 2
  anc = jnp.array([[1, 1, 0], [1, 1, 0], [1, 0, 1]], bool)
  v = O.tree_node_values(jnp.array([1.0, 0.0, 1.0]), anc)
  np.testing.assert_allclose(v, [2 / 3, 0.5, 1.0])
  adv = O.sibling_advantages(v, jnp.array([0, 1, 1]), 2, eps=0.0)
  s = np.std([0.5, 1.0], ddof=1)
  np.testing.assert_allclose(adv, [0.0, -0.25 / s, 0.25 / s], rtol=1e-5)


def test_empg_mean_zero_and_modulation():
  adv = jnp.array([1.0, 1.0, -1.0, -1.0])
  h = jnp.array([0.0, 2.0, 0.0, 2.0])
  nxt = jnp.array([2.0, NAN, 2.0, NAN])
  out = O.empg_advantages(adv, h, nxt, k=1.0, k_future=1.0, zeta=0.0)
  g = np.exp(-np.array([0, 1, 0, 1.0]))
  g = g / g.mean()
  np.testing.assert_allclose(out, g * np.array(adv) - np.mean(g * np.array(adv)),
                             rtol=1e-5)
  # confident steps weigh more than uncertain ones
  assert out[0] > out[1]
  assert np.isfinite(O.empg_advantages(adv, h, nxt, zeta=0.05)).all()


def test_copo_blend_weights():
  # c = 0.5 -> w = 1 (local only); c = 1 -> w = 0 (global only)
  out = O.copo_blend(jnp.array([1.0, 1.0]), jnp.array([3.0, 3.0]),
                     jnp.array([0.5, 1.0]))
  np.testing.assert_allclose(out, (1.0 + 3.0) / 2, rtol=1e-6)


def test_segment_stats_and_group_stats():
  x = jnp.array([1.0, 3.0, 5.0, 2.0])
  mean, std, count = O.segment_mean_std(x, jnp.array([0, 0, 1, 0]), 3)
  np.testing.assert_allclose(mean, [2.0, 5.0, 0.0])
  np.testing.assert_allclose(std, [1.0, 0.0, 0.0])
  np.testing.assert_allclose(count, [3, 1, 0])
  np.testing.assert_allclose(O.group_std(x, 2), [np.sqrt(2)] * 2 + [np.sqrt(4.5)] * 2,
                             rtol=1e-6)
  np.testing.assert_allclose(O.group_mean(x, 2), [2, 2, 3.5, 3.5])
  with pytest.raises(ValueError, match="multiple"):
    O.group_mean(x, 3)
