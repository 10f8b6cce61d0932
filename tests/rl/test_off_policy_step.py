"""`grpo_step(off_policy_steps=1)`: the next batch is sampled by the parameters
before the update (token for token what an on-policy rollout from them gives),
the trained batch carries the sampler's log-probs for the importance-sampling
correction, and the update sees exactly that batch."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from alignax import objectives, rl
from alignax.framework import train
from alignax.framework.config import ModelConfig
from alignax.framework.model import Decoder

CONFIG = ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=1,
                     num_heads=2, num_kv_heads=1, max_position_embeddings=64)
G = 4
OPTIONS = dict(num_generations=G, max_new_tokens=6, temperature=1.0, pad_token_id=0,
               eos_token_id=[5])


def score(tokens, mask):
  return np.array([(t[m] % 2 == 0).mean() for t, m in zip(tokens, mask)], np.float32)


def _setup(num_iterations=1):
  optimizer = optax.sgd(0.5)
  graphdef, state = train.init_train_state(Decoder(CONFIG, seed=0), optimizer)
  loss = objectives.PolicyLossConfig(loss_type="dapo", sampling_is_mode="token_truncate")
  seen = []
  plain = train.make_grpo_update(graphdef, optimizer, loss=loss, prompt_groups=G)

  def update(state, batch):
    seen.append(batch)
    return plain(state, batch)
  return graphdef, state, update, seen


@pytest.mark.parametrize("num_iterations", [1, 2])
def test_next_batch_comes_from_the_parameters_before_the_update(num_iterations):
  graphdef, state, update, seen = _setup()
  prompts, next_prompts = [[1, 2, 3], [4, 6]], [[7, 8], [9, 10, 11]]
  before = jax.tree.map(jnp.copy, state.params)
  out = rl.grpo_step(update, graphdef, state, prompts, score, num_iterations=num_iterations,
                     off_policy_steps=1, next_prompts=next_prompts, next_score=score,
                     next_seed=11, seed=3, **OPTIONS)
  assert int(out.state.step) == num_iterations
  # The trained batch: sampled from the same parameters (first step), marked
  # off-policy: the sampler's log-probs kept, old = the trainer's.
  b = seen[0]
  np.testing.assert_array_equal(np.asarray(b.sampling_logprobs),
                                np.asarray(out.rollout.generation.logprobs))
  if num_iterations == 1:
    assert b.old_logprobs is None  # the update's own, without gradient
  else:
    want = train.reference_logprobs(graphdef, before, b.sequences, b.attention_mask,
                                    b.completion_tokens, temperature=1.0)
    np.testing.assert_array_equal(np.asarray(b.old_logprobs), np.asarray(want))
  assert all(s is b for s in seen)
  assert "sampling/importance_sampling_ratio/mean" in out.metrics
  # The next rollout: sampled by the parameters before the update, token for
  # token an on-policy rollout of them with the same seed (the update donated
  # them after the sampling was dispatched).
  ref = rl.rollout(nnx.merge(graphdef, before), next_prompts, score, seed=11, **OPTIONS)
  nxt = out.next_rollout
  for f in ("tokens", "mask", "logprobs"):
    np.testing.assert_array_equal(np.asarray(getattr(nxt.generation, f)),
                                  np.asarray(getattr(ref.generation, f)), err_msg=f)
  np.testing.assert_array_equal(np.asarray(nxt.batch.advantages),
                                np.asarray(ref.batch.advantages))
  changed = any(not np.array_equal(np.asarray(a), np.asarray(c)) for a, c in
                zip(jax.tree.leaves(before), jax.tree.leaves(out.state.params)))
  assert changed


def test_pending_batch_is_trained_and_the_last_step_samples_nothing():
  graphdef, state, update, seen = _setup()
  first = rl.grpo_step(update, graphdef, state, [[1, 2]], score, off_policy_steps=1,
                       next_prompts=[[3, 4]], next_score=score, next_seed=1, seed=0,
                       **OPTIONS)
  second = rl.grpo_step(update, graphdef, first.state, [[3, 4]], score, off_policy_steps=1,
                        pending=first.next_rollout, seed=1, **OPTIONS)
  assert second.next_rollout is None
  np.testing.assert_array_equal(np.asarray(seen[1].completion_tokens),
                                np.asarray(first.next_rollout.generation.tokens))
  np.testing.assert_array_equal(np.asarray(seen[1].sampling_logprobs),
                                np.asarray(first.next_rollout.generation.logprobs))
  with pytest.raises(ValueError, match="off_policy_steps=2"):
    rl.grpo_step(update, graphdef, second.state, [[1]], score, off_policy_steps=2, **OPTIONS)
  with pytest.raises(ValueError, match="for off_policy_steps=1"):
    rl.grpo_step(update, graphdef, second.state, [[1]], score, next_prompts=[[1]], **OPTIONS)


def test_off_policy_batch():
  batch = rl.GroupBatch(*(jnp.zeros((2, 3)),) * 5, jnp.zeros(2))
  marked = rl.off_policy_batch(batch.replace(old_logprobs=jnp.full((2, 3), -1.0)))
  assert marked.old_logprobs is None and float(marked.sampling_logprobs[0, 0]) == -1.0
  again = rl.off_policy_batch(marked, jnp.ones((2, 3)))  # keeps the sampler's
  assert float(again.sampling_logprobs[0, 0]) == -1.0 and float(again.old_logprobs[0, 0]) == 1
