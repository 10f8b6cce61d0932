"""Train step: gradient accumulation is exact."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from alignax import objectives
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
        loss=objectives.PolicyLossConfig(loss_type=loss_type, beta=beta,
                                         max_completion_length=6))
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


def _grouped_batch(groups, prompts=2, p=6, c=5, vocab=32, seed=1):
  """A batch in the sampler's layout: each prompt (left-padded) repeated `groups`
  times, ragged completions (tokens after the stop are padding)."""
  b = _batch(n=prompts * groups, p=p, c=c, vocab=vocab, seed=seed)
  for key in ("sequences", "attention_mask"):
    b[key][:, :p] = np.repeat(b[key][::groups, :p], groups, axis=0)
  return b


@pytest.mark.parametrize("c", [5, 1])
def test_shared_prompt_forward_matches_full_rows(c):
  """Prefix Grouper (docs/algorithms.md §4.5): one prompt run per group gives
  the per-row forward's log-probs, entropies and parameter gradients (1e-5)."""
  config = ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=2,
                       num_heads=4, num_kv_heads=2, qkv_bias=True)
  graphdef, params = nnx.split(Decoder(config, seed=3))
  b = _grouped_batch(groups=3, c=c)
  weights = jnp.asarray(np.random.RandomState(0).randn(*b["completion_tokens"].shape),
                        jnp.float32)

  def f(params, groups):
    lp, ent = train.completion_logprobs(
        graphdef, params, b["sequences"], b["attention_mask"], b["completion_tokens"],
        temperature=0.8, with_entropy=True, prompt_groups=groups)
    mask = jnp.asarray(b["completion_mask"])
    return jnp.sum(jnp.where(mask, weights * lp + 0.1 * ent, 0.0)), (lp, ent)

  (v1, (lp1, ent1)), g1 = jax.value_and_grad(f, has_aux=True)(params, 1)
  (v3, (lp3, ent3)), g3 = jax.jit(jax.value_and_grad(f, has_aux=True),
                                  static_argnums=1)(params, 3)
  m = b["completion_mask"]
  np.testing.assert_allclose(np.asarray(lp3)[m], np.asarray(lp1)[m], atol=1e-5)
  np.testing.assert_allclose(np.asarray(ent3)[m], np.asarray(ent1)[m], atol=1e-5)
  np.testing.assert_allclose(float(v3), float(v1), rtol=1e-5)
  for a, b_ in zip(jax.tree.leaves(g3), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b_), atol=1e-5)


def test_grpo_update_with_shared_prompts_and_kept_logits_matches_plain():
  config = ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=1,
                       num_heads=2, num_kv_heads=1)
  optimizer = optax.sgd(1.0)
  batch = _grouped_batch(groups=4)
  out = []
  for kw in (dict(), dict(prompt_groups=4, remat=False, micro_batches=2)):
    graphdef, state = train.init_train_state(Decoder(config, seed=0), optimizer)
    loss = objectives.PolicyLossConfig(max_completion_length=5)
    update = train.make_grpo_update(graphdef, optimizer, temperature=0.9, loss=loss, **kw)
    state, metrics = update(state, batch)
    out.append((jax.tree.leaves(state.params), float(metrics["loss"])))
  assert abs(out[0][1] - out[1][1]) < 1e-6
  for a, b in zip(out[0][0], out[1][0]):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_shared_prompt_groups_must_divide_rows():
  config = ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=1,
                       num_heads=2, num_kv_heads=1)
  graphdef, params = nnx.split(Decoder(config, seed=0))
  b = _grouped_batch(groups=2)
  with pytest.raises(ValueError, match="prompt_groups=3"):
    train.completion_logprobs(graphdef, params, b["sequences"], b["attention_mask"],
                              b["completion_tokens"], prompt_groups=3)


def _old_epochs(n, batch_size, epochs, seed):
  """The loop the EM binaries and MOAT stages used (NumPy re-statement)."""
  rng = np.random.RandomState(seed)
  out = []
  for _ in range(epochs):
    order = np.resize(rng.permutation(n), -(-n // batch_size) * batch_size)
    out += [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
  return out


def _old_steps(n, batch_size, steps, seed):
  order = np.resize(np.random.RandomState(seed).permutation(n), max(steps, 1) * batch_size)
  return [order[s * batch_size:(s + 1) * batch_size] for s in range(steps)]


@pytest.mark.parametrize("n,batch_size,count", [(10, 4, 3), (8, 4, 2), (3, 5, 1), (7, 2, 0)])
def test_minibatch_indices_epochs_and_steps(n, batch_size, count):
  got = list(train.minibatch_indices(n, batch_size, 5, epochs=count))
  want = _old_epochs(n, batch_size, count, 5)
  assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
  assert all(len(i) == batch_size for i in got)
  got = list(train.minibatch_indices(n, batch_size, 5, steps=count))
  want = _old_steps(n, batch_size, count, 5)
  assert len(got) == count and all(np.array_equal(a, b) for a, b in zip(got, want))
  # Every pass visits every row.
  if count:
    per_pass = -(-n // batch_size)
    first = np.concatenate(list(train.minibatch_indices(n, batch_size, 5, epochs=1)))
    assert len(first) == per_pass * batch_size and set(first) == set(range(n))
  assert list(train.minibatch_indices(0, batch_size, 5, epochs=2)) == []
  with pytest.raises(ValueError, match="exactly one"):
    list(train.minibatch_indices(n, batch_size, 5, epochs=1, steps=1))


def test_train_minibatches_counts_updates_and_returns_last_metrics():
  batch = {"x": np.arange(10.0), "y": np.arange(10.0) * 2}
  seen = []

  def update(state, mb):
    assert np.array_equal(mb["y"], mb["x"] * 2)  # rows stay aligned across keys
    seen.append(mb["x"])
    return state + 1, {"last": mb["x"][0]}

  state, count, metrics = train.train_minibatches(update, 0, batch, 4, 1, epochs=2)
  assert state == count == 6 and metrics == {"last": seen[-1][0]}
  state, count, metrics = train.train_minibatches(update, 0, {"x": np.zeros(0)}, 4, 1,
                                                  steps=3)
  assert (state, count, metrics) == (0, 0, {})


def test_train_minibatches_progress_bar_shows_each_update_and_its_loss(capsys):
  batch = {"x": np.arange(10.0)}
  update = lambda state, mb: (state + mb["x"].sum(), {"loss": np.float32(mb["x"][0])})
  plain = train.train_minibatches(update, 0.0, batch, 4, 3, epochs=2)
  shown = train.train_minibatches(update, 0.0, batch, 4, 3, epochs=2, desc="warm-up")
  assert plain[:2] == shown[:2] and plain[2] == shown[2]  # the bar changes nothing
  err = capsys.readouterr().err
  assert "warm-up" in err and "/6 [" in err and f"loss={float(plain[2]['loss']):.3f}" in err


def test_policy_loss_config_checks_and_rejects_a_plain_dict():
  cfg = objectives.PolicyLossConfig.from_mapping(
      {"loss_type": "grpo", "beta": 0.04, "advantage": "rloo"}, max_completion_length=8)
  assert cfg.loss_type == "grpo" and cfg.beta == 0.04 and hash(cfg)
  with pytest.raises(ValueError, match="unknown policy loss 'nope'"):
    objectives.PolicyLossConfig(loss_type="nope")
  with pytest.raises(ValueError, match="importance_sampling_level"):
    objectives.PolicyLossConfig(importance_sampling_level="seq")
  with pytest.raises(ValueError, match="dr_grpo.*max_completion_length"):
    objectives.PolicyLossConfig(loss_type="dr_grpo")
  with pytest.raises(TypeError, match="PolicyLossConfig"):
    train.make_grpo_update(None, optax.sgd(1.0), loss={"loss_type": "dapo"})
