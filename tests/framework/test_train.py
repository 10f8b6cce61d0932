"""Train step: gradient accumulation is exact."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alignax.framework import train
from alignax.framework.config import ModelConfig
from alignax.framework.model import Decoder


def _batch(n=8, p=5, c=4, vocab=32, seed=0):
  rng = np.random.RandomState(seed)
  seq = rng.randint(0, vocab, (n, p + c)).astype(np.int32)
  attn = np.ones((n, p + c), bool)
  attn[:, :2] = rng.rand(n, 2) > 0.5  # some left padding
  cmask = np.ones((n, c), bool)
  lengths = rng.randint(1, c + 1, n)
  for i, l in enumerate(lengths):
    cmask[i, l:] = False
  attn[:, p:] = cmask
  return dict(sequences=seq, attention_mask=attn, completion_tokens=seq[:, p:],
              completion_mask=cmask,
              old_logprobs=(-2.0 + 0.3 * rng.randn(n, c)).astype(np.float32),
              advantages=rng.randn(n).astype(np.float32),
              ref_logprobs=(-2.0 + 0.3 * rng.randn(n, c)).astype(np.float32))


@pytest.mark.parametrize("loss_type,beta", [("grpo", 0.0), ("dapo", 0.04), ("dr_grpo", 0.0),
                                            ("bnpo", 0.0)])
def test_micro_batches_give_the_full_batch_update(loss_type, beta):
  config = ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=1,
                       num_heads=2, num_kv_heads=1)
  # Plain SGD: the update is the gradient itself (Adam's first step is ~sign(g)
  # and would magnify float reassociation noise in near-zero gradients).
  optimizer = optax.sgd(1.0)
  batch = _batch()
  results = []
  for micro in (1, 4):
    graphdef, state = train.init_train_state(Decoder(config, seed=0), optimizer)
    update = train.make_grpo_update(
        graphdef, optimizer, micro_batches=micro, temperature=0.9,
        loss_kwargs=dict(loss_type=loss_type, beta=beta, max_completion_length=6))
    state, metrics = update(state, batch)
    results.append((jax.tree.leaves(state.params), float(metrics["loss"]),
                    float(metrics["grad_norm"])))
  (p1, l1, g1), (p4, l4, g4) = results
  assert abs(l1 - l4) < 1e-6 and abs(g1 - g4) < 1e-6 * max(1, g1)
  for a, b in zip(p1, p4):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_sft_update_lowers_the_loss():
  config = ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=1,
                       num_heads=2, num_kv_heads=1)
  optimizer = train.make_optimizer(1e-2)
  graphdef, state = train.init_train_state(Decoder(config, seed=0), optimizer)
  update = train.make_sft_update(graphdef, optimizer, micro_batches=2)
  batch = {k: v for k, v in _batch().items()
           if k in ("sequences", "attention_mask", "completion_tokens", "completion_mask")}
  losses = []
  for _ in range(20):
    state, m = update(state, batch)
    losses.append(float(m["loss"]))
  assert losses[-1] < 0.5 * losses[0]
