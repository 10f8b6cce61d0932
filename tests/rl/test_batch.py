"""alignax.rl: `make_group_batch` against a NumPy re-derivation, the `GroupBatch`
pytree through jit and the update, and one `grpo_step` on a tiny model."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alignax import objectives, rl
from alignax.agents.scoring import rewards as rewards_lib
from alignax.framework import train
from alignax.framework.config import ModelConfig
from alignax.framework.model import Decoder

G = 4


# ------------------------------------------------ NumPy re-derivation (the rules)
def np_combine(per, weights):
  """r[n] = sum over the functions that scored n of w_k R[n, k]; NaN if none did."""
  out = np.empty(per.shape[0], np.float64)
  for n, row in enumerate(per):
    scored = [w * v for v, w in zip(row, weights) if not np.isnan(v)]
    out[n] = sum(scored) if scored else np.nan
  return out


def np_grpo(r, g, scale="group", eps=1e-4):
  """TRL 1.16: unscorable (NaN) rows are left out of the group mean and the
  ddof-1 std (and of the batch std); NaN advantages (unscorable rows, groups
  with one scorable row) become 0."""
  adv = np.full_like(r, np.nan)
  for s in range(0, len(r), g):
    group = r[s:s + g]
    ok = group[~np.isnan(group)]
    if not len(ok):
      continue
    adv[s:s + g] = group - ok.mean()
    if scale == "group":
      adv[s:s + g] /= (ok.std(ddof=1) if len(ok) > 1 else np.nan) + eps
  if scale == "batch":
    ok = r[~np.isnan(r)]
    adv /= ok.std(ddof=1) + eps
  return np.nan_to_num(adv, nan=0.0)


def np_rloo(r, g):
  """Leave-one-out baseline over the other scorable rows of the group."""
  adv = np.zeros_like(r)
  for s in range(0, len(r), g):
    group = r[s:s + g]
    ok = group[~np.isnan(group)]
    for i, v in enumerate(group):
      if not np.isnan(v) and len(ok) > 1:
        adv[s + i] = v - (ok.sum() - v) / (len(ok) - 1)
  return adv


def np_advantages(per, weights, g, estimator, options):
  r = np_combine(per, weights)
  unscorable = np.isnan(r)
  if estimator == "grpo":
    adv = np_grpo(r, g, **options)
  elif estimator == "dr_grpo":
    adv = np_grpo(r, g, scale="none")
  elif estimator == "rloo":
    adv = np_rloo(r, g)
  return np.where(unscorable, 0.0, adv), r


def _rewards():
  """3 groups of 4 completions, 2 reward functions, every None pattern: a
  function's None (row 1), a row no function scored (rows 2, 6), a group with
  one scorable row (rows 8-11: 3 unscorable), a constant group (4-7 scorable part)."""
  nan = np.nan
  return np.array([
      [1.0, 0.5], [nan, 1.0], [nan, nan], [0.0, 0.0],
      [1.0, 1.0], [1.0, 1.0], [nan, nan], [1.0, 1.0],
      [nan, nan], [0.5, nan], [nan, nan], [nan, nan],
  ], np.float32)


class _Gen:
  """What `make_group_batch` reads of a `sampling.Generation`."""

  def __init__(self, n, p=3, c=5, seed=0):
    rng = np.random.RandomState(seed)
    self.prompt_tokens = rng.randint(0, 50, (n, p)).astype(np.int32)
    self.prompt_mask = np.ones((n, p), bool)
    self.tokens = rng.randint(0, 50, (n, c)).astype(np.int32)
    self.mask = np.arange(c)[None] < rng.randint(1, c + 1, n)[:, None]
    self.logprobs = np.where(self.mask, -rng.rand(n, c), 0.0).astype(np.float32)
    self.sequences = np.concatenate([self.prompt_tokens, self.tokens], 1)
    self.attention_mask = np.concatenate([self.prompt_mask, self.mask], 1)


@pytest.mark.parametrize("estimator,options", [
    ("grpo", {"scale": "group"}), ("grpo", {"scale": "batch"}), ("grpo", {"scale": "none"}),
    ("dr_grpo", {"scale": "group"}),  # an option the estimator does not take is dropped
    ("rloo", {}),
])
def test_make_group_batch_matches_numpy(estimator, options):
  per, weights = _rewards(), [1.0, 0.1]
  gen = _Gen(len(per))
  batch = rl.make_group_batch(gen, per, group_size=G, weights=weights, advantage=estimator,
                              advantage_options=options)
  want, total = np_advantages(per.astype(np.float64), weights, G, estimator, options)
  np.testing.assert_allclose(np.asarray(batch.advantages), want, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(batch.advantages)[np.isnan(total)] == 0.0)
  np.testing.assert_array_equal(np.asarray(batch.rewards), per)  # per function, NaN kept
  r = rl.group_rewards(per, weights, group_size=G)
  np.testing.assert_allclose(r.total, total, rtol=1e-6)
  np.testing.assert_array_equal(r.unscorable, np.isnan(total))
  # The tokens, masks and log-probs are the sampler's, unchanged.
  for field, value in [("sequences", gen.sequences), ("attention_mask", gen.attention_mask),
                       ("completion_tokens", gen.tokens), ("completion_mask", gen.mask),
                       ("old_logprobs", gen.logprobs)]:
    np.testing.assert_array_equal(np.asarray(getattr(batch, field)), value)
  assert batch.ref_logprobs is None


def test_one_reward_function_and_default_weights():
  r = np.array([1.0, 0.0, np.nan, 1.0, 0.0, 0.0, 0.0, 0.0], np.float32)
  batch = rl.make_group_batch(_Gen(8), r, group_size=G)
  want, _ = np_advantages(r[:, None].astype(np.float64), [1.0], G, "grpo", {})
  np.testing.assert_allclose(np.asarray(batch.advantages), want, rtol=1e-5, atol=1e-5)
  assert batch.rewards.shape == (8, 1)


def reward_a(prompts, **_):
  return [None if np.isnan(v) else float(v) for v in _rewards()[:, 0]]


def reward_b(prompts, **_):
  return [None if np.isnan(v) else float(v) for v in _rewards()[:, 1]]


def test_combine_rewards_is_the_reward_sets_total():
  # One rule for training batches and for evaluation's totals (RewardSet).
  per, weights = _rewards(), [1.0, 0.1]
  rs = rewards_lib.RewardSet([f"{__name__}:reward_a", f"{__name__}:reward_b"], weights)
  n = len(per)
  result = rs(["p"] * n, ["c"] * n, [[1]] * n, {})
  np.testing.assert_array_equal(result.per_function, per)
  np.testing.assert_array_equal(result.total, rl.combine_rewards(per, weights))
  np.testing.assert_array_equal(result.total, rl.group_rewards(per, weights, group_size=G).total)


def test_bad_inputs():
  with pytest.raises(ValueError, match="3 reward weights for 2 reward functions"):
    rl.combine_rewards(_rewards(), [1.0, 1.0, 1.0])
  with pytest.raises(ValueError, match="not whole groups"):
    rl.make_group_batch(_Gen(12), _rewards(), group_size=5)
  with pytest.raises(ValueError, match="12 rewards for 8 completions"):
    rl.make_group_batch(_Gen(8), _rewards(), group_size=G)
  with pytest.raises(KeyError, match="unknown advantage estimator"):
    rl.make_group_batch(_Gen(12), _rewards(), group_size=G, advantage="nope")
  with pytest.raises(KeyError, match="unknown group batch key"):
    rl.GroupBatch.from_mapping({"sequences": 0, "tokens": 1})


def test_group_batch_is_a_pytree_through_jit():
  batch = rl.make_group_batch(_Gen(12), _rewards(), group_size=G)
  leaves, treedef = jax.tree.flatten(batch)
  assert len(leaves) == 7  # ref_logprobs None: no leaf
  out = jax.jit(lambda b: b.replace(advantages=2 * b.advantages))(batch)
  assert isinstance(out, rl.GroupBatch) and out.ref_logprobs is None
  np.testing.assert_allclose(out.advantages, 2 * batch.advantages)
  assert jax.tree.structure(out) == treedef
  with pytest.raises(dataclasses.FrozenInstanceError):
    batch.advantages = None


def test_group_metrics():
  r = rl.group_rewards(_rewards(), [1.0, 0.1], group_size=G)
  total = np_combine(_rewards().astype(np.float64), [1.0, 0.1])
  stds = [np.std(grp[~np.isnan(grp)]) for grp in total.reshape(-1, G)]
  assert r.group_metrics() == {"reward_std_in_group": pytest.approx(np.mean(stds)),
                               "solved_groups": pytest.approx(1.0)}
  # A group no function scored is left out of the std and is not solved.
  r = rl.group_rewards(np.array([1.0, 0.0, np.nan, np.nan], np.float32), group_size=2)
  assert r.group_metrics() == {"reward_std_in_group": pytest.approx(0.5),
                               "solved_groups": pytest.approx(0.5)}


def test_unscorable_rows_do_not_shrink_the_group_std():
  # One group: rewards 1, 0 and two rows no function scored. TRL: mean 0.5,
  # std (ddof 1) of (1, 0) = 0.7071; filling the NaNs with 0.5 would give 0.4082.
  batch = rl.make_group_batch(_Gen(4), np.array([1.0, 0.0, np.nan, np.nan], np.float32),
                              group_size=4)
  np.testing.assert_allclose(np.asarray(batch.advantages),
                             [0.5 / (0.5 ** 0.5 + 1e-4), -0.5 / (0.5 ** 0.5 + 1e-4), 0, 0],
                             rtol=1e-5)


# ------------------------------------------------------------ update and step
_CONFIG = ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=1,
                      num_heads=2, num_kv_heads=1, max_position_embeddings=64)


def test_update_takes_a_group_batch_and_the_older_mapping_alike():
  gen = _Gen(8, c=4)
  gen.sequences, gen.tokens = gen.sequences % 32, gen.tokens % 32
  batch = rl.make_group_batch(gen, np.arange(8.0) % 3, group_size=G,
                              ref_logprobs=jnp.asarray(gen.logprobs) - 0.1)
  optimizer = optax.sgd(0.1)
  loss = objectives.PolicyLossConfig(loss_type="dapo", beta=0.04)
  out = []
  for b in (batch, {k: v for k, v in dataclasses.asdict(batch).items()
                    if k != "rewards"}):
    graphdef, state = train.init_train_state(Decoder(_CONFIG, seed=0), optimizer)
    update = train.make_grpo_update(graphdef, optimizer, loss=loss, micro_batches=2,
                                    prompt_groups=G // 2)
    state, metrics = update(state, b)
    out.append((jax.tree.leaves(state.params), {k: float(v) for k, v in metrics.items()}))
  assert out[0][1] == out[1][1]
  for a, b in zip(out[0][0], out[1][0]):
    np.testing.assert_array_equal(a, b)


def test_grpo_step_samples_scores_batches_and_updates():
  optimizer = optax.sgd(0.1)
  graphdef, state = train.init_train_state(Decoder(_CONFIG, seed=0), optimizer)
  update = train.make_grpo_update(graphdef, optimizer, prompt_groups=G,
                                  loss=objectives.PolicyLossConfig(loss_type="grpo"))
  seen = []

  def score(tokens, mask):  # two functions: even-token share, and None on odd rows
    seen.append((tokens, mask))
    even = np.array([(t[m] % 2 == 0).mean() for t, m in zip(tokens, mask)])
    return np.stack([even, np.where(np.arange(len(even)) % 2, np.nan, 1.0)], 1)

  prompts = [[1, 2, 3], [4, 5]]
  out = rl.grpo_step(update, graphdef, state, prompts, score, num_iterations=2,
                     num_generations=G, max_new_tokens=5, temperature=1.0, seed=3,
                     pad_token_id=0, weights=[1.0, 0.5])
  tokens, mask = seen[0]
  assert isinstance(tokens, np.ndarray) and tokens.shape == mask.shape == (8, 5)
  b = out.rollout.batch
  assert isinstance(b, rl.GroupBatch) and b.sequences.shape[0] == 8
  np.testing.assert_array_equal(np.asarray(b.completion_tokens), tokens)
  want = rl.make_group_batch(out.rollout.generation, score(tokens, mask), group_size=G,
                             weights=[1.0, 0.5])
  np.testing.assert_array_equal(np.asarray(b.advantages), np.asarray(want.advantages))
  assert int(out.state.step) == 2 and np.isfinite(float(out.metrics["loss"]))
  assert out.rollout_seconds > 0 and out.rollout.host_seconds >= 0
