"""Mixed precision and rematerialisation of the decoder layers.

Remat changes what the backward pass stores, never the values: every policy
gives the loss and gradients of `remat="none"` (tight tolerance, both the
plain and the shared-prompt training forward). bf16 compute (f32 master
weights) and bf16 throughout run the whole GRPO update and stay close to f32.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from alignax import objectives
from alignax.framework import train
from alignax.framework.config import REMAT_POLICIES, ModelConfig
from alignax.framework.model import Decoder
from tests.framework.test_train import _batch

_CONFIG = dict(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=2,
               num_heads=4, num_kv_heads=2)
_LOSS = dict(loss_type="dapo", beta=0.04, max_completion_length=4)


def _loss_and_grads(config, batch, prompt_groups):
  model = Decoder(config, seed=0)
  graphdef, params = nnx.split(model)

  def loss(params):
    logp, _ = train.completion_logprobs(
        graphdef, params, batch["sequences"], batch["attention_mask"],
        batch["completion_tokens"], prompt_groups=prompt_groups)
    return jnp.sum(logp * batch["completion_mask"])

  return jax.jit(jax.value_and_grad(loss))(params)


def _grouped_batch():
  batch = _batch(n=8, p=5, c=4, seed=1)
  # Rows of a group of 2 share the prompt (tokens and mask).
  p = 5
  for key in ("sequences", "attention_mask"):
    x = batch[key].copy()
    x[1::2, :p] = x[0::2, :p]
    batch[key] = x
  return batch


@functools.lru_cache(maxsize=None)
def _reference(prompt_groups):
  return _loss_and_grads(ModelConfig(**_CONFIG), _grouped_batch(),
                         prompt_groups)


@pytest.mark.parametrize("policy,prompt_groups", [
    ("full", 1), ("full", 2), ("dots_saveable", 2),
    ("dots_with_no_batch_dims_saveable", 1)])
def test_remat_gives_the_same_loss_and_gradients(policy, prompt_groups):
  assert policy in REMAT_POLICIES
  ref_loss, ref_grads = _reference(prompt_groups)
  loss, grads = _loss_and_grads(ModelConfig(**_CONFIG, remat=policy),
                                _grouped_batch(), prompt_groups)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6,
                               rtol=1e-5)


def test_remat_is_in_the_training_jaxpr_only():
  """The training forward carries a checkpoint per layer; the plain call
  (sampler, evaluation) does not."""
  graphdef, params = nnx.split(
      Decoder(ModelConfig(**_CONFIG, remat="dots_saveable"), seed=0))
  ids = jnp.ones((2, 6), jnp.int32)
  train_jaxpr = str(jax.make_jaxpr(
      lambda p: nnx.merge(graphdef, p).forward(ids, train=True)[0])(params))
  plain_jaxpr = str(jax.make_jaxpr(
      lambda p: nnx.merge(graphdef, p)(ids))(params))
  assert train_jaxpr.count("checkpoint[") + train_jaxpr.count("remat") >= 2
  assert "checkpoint[" not in plain_jaxpr and "remat" not in plain_jaxpr


def test_unknown_remat_policy_is_rejected():
  with pytest.raises(ValueError, match="remat='sometimes'"):
    ModelConfig(**_CONFIG, remat="sometimes")


@functools.lru_cache(maxsize=None)
def _f32_update_metrics():
  return _update(ModelConfig(**_CONFIG), _grouped_batch())[1]


def _update(config, batch):
  optimizer = optax.adamw(1e-3)
  graphdef, state = train.init_train_state(Decoder(config, seed=0), optimizer)
  update = train.make_grpo_update(graphdef, optimizer, loss=objectives.PolicyLossConfig(**_LOSS),
                                  prompt_groups=2)
  state, metrics = update(state, batch)
  return state, metrics


@pytest.mark.parametrize("param_dtype,dtype", [("float32", "bfloat16"),
                                               ("bfloat16", "bfloat16")])
def test_bf16_update_runs_and_is_close_to_f32(param_dtype, dtype):
  batch = _grouped_batch()
  ref = _f32_update_metrics()
  state, metrics = _update(
      ModelConfig(**_CONFIG, param_dtype=param_dtype, dtype=dtype,
                  remat="full"), batch)
  leaves = jax.tree.leaves(state.params)
  assert all(x.dtype == jnp.dtype(param_dtype) for x in leaves)
  # Master weights and Adam moments stay in the parameter dtype.
  moments = [x for x in jax.tree.leaves(state.opt_state)
             if getattr(x, "ndim", 0) > 0]
  assert all(x.dtype == jnp.dtype(param_dtype) for x in moments)
  for key in ("loss", "grad_norm", "entropy"):
    got, want = float(metrics[key]), float(ref[key])
    assert np.isfinite(got)
    assert abs(got - want) <= 0.05 * abs(want) + 1e-3, (key, got, want)
