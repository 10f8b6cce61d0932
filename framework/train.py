"""Train state and jitted updates (GRPO family, SFT) with exact gradient accumulation.

Everything compiled is a pure function: `update(state, batch) -> (state, metrics)`
with `state = TrainState(params, opt_state, step)`. A batch of N rows is split into
M micro-batches that are scanned inside the jit; each micro-batch returns the
*numerator* of its loss and the loss's normaliser (the objectives expose both),
so the accumulated gradient `sum_m grad(num_m) / max(sum_m den_m, 1)` is exactly
the full-batch gradient whatever M is.

Shapes: N rows, L = P + C sequence length (P prompt, C completion tokens).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import chex
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from alignax import objectives
from alignax.framework import lora
from alignax.framework.logprobs import fused_logprobs_and_entropy
from alignax.framework.model import Decoder, KVCache


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
  params: Any     # nnx.State of the model's parameters (LoRA: base + adapters)
  opt_state: Any  # optax state (of the trainable parameters only)
  step: jax.Array  # int32 scalar, optimiser updates done


def make_optimizer(learning_rate: float, *, warmup_steps: int = 0,
                   total_steps: int | None = None, max_grad_norm: float | None = 1.0,
                   weight_decay: float = 0.0, b2: float = 0.999) -> optax.GradientTransformation:
  """AdamW with optional linear warm-up + cosine decay and global-norm clipping."""
  if total_steps:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0 if warmup_steps else learning_rate, learning_rate, max(warmup_steps, 1),
        max(total_steps, warmup_steps + 1), end_value=0.1 * learning_rate)
  else:
    schedule = learning_rate
  chain = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm else []
  chain.append(optax.adamw(schedule, b2=b2, weight_decay=weight_decay))
  return optax.chain(*chain)


def trainable_params(params: nnx.State) -> nnx.State:
  """The parameters an update trains: the LoRA adapters if the model has
  any (`framework/lora.py`; the base stays frozen), else all of them."""
  return lora.partition(params)[0] if lora.has_adapters(params) else params


def init_train_state(model: Decoder, optimizer: optax.GradientTransformation):
  """Returns (graphdef, TrainState) for `model` (optimiser state of `trainable_params`)."""
  graphdef, params = nnx.split(model)
  return graphdef, TrainState(params, optimizer.init(trainable_params(params)), jnp.int32(0))


def completion_logprobs(graphdef, params, sequences, attention_mask, completion_tokens, *,
                        temperature: float = 1.0, with_entropy: bool = False,
                        token_chunk: int = 1024, prompt_groups: int = 1,
                        remat: bool = True):
  """Per-token log-probs (and entropies) [N, C] of the completion tokens.

  `sequences` [N, P + C] = prompt + completion; the hidden state at position
  P + t - 1 predicts completion token t. Log-probs go through the fused chunked
  kernel, so [N, C, V] logits are never held (`remat=False`: kept, faster).

  prompt_groups: G > 1 declares that rows g*G .. g*G + G - 1 share one prompt
    (tokens and mask; the sampler's `num_generations` layout). The prompt is
    then run once per group and its keys/values shared by the G completions
    (Prefix Grouper, algorithms.md §4.5): same values and gradients, with the
    prompt's share of the compute divided by G.
  """
  model = nnx.merge(graphdef, params)
  c = completion_tokens.shape[1]
  if prompt_groups > 1:
    hidden = _shared_prompt_hidden(model, sequences, attention_mask, c, prompt_groups)
  else:
    hidden, _ = model.forward(sequences, attention_mask=attention_mask)
    hidden = hidden[:, -c - 1:-1]
  return fused_logprobs_and_entropy(
      hidden, model.unembedding(), completion_tokens, temperature=temperature,
      token_chunk=token_chunk, entropy=with_entropy, remat=remat)


def _shared_prompt_hidden(model: Decoder, sequences, attention_mask, c: int, groups: int):
  """Hidden states [N, C, H] predicting the completions, one prompt pass per group."""
  n, length = sequences.shape
  if n % groups:
    raise ValueError(f"{n} rows (per micro-batch) are not whole groups of"
                     f" prompt_groups={groups}; make rows per micro-batch a multiple of it.")
  p = length - c
  attention_mask = attention_mask.astype(bool)
  prompt_mask = attention_mask[::groups, :p]
  cache = KVCache.zeros(model.config, n // groups, length - 1)
  prompt_hidden, cache = model.forward(sequences[::groups, :p], attention_mask=prompt_mask,
                                       cache=cache, cache_index=0)
  first = jnp.repeat(prompt_hidden[:, -1:], groups, axis=0)  # predicts completion token 0
  if c == 1:
    return first
  cache = jax.tree.map(lambda x: jnp.repeat(x, groups, axis=0), cache)
  mask = attention_mask[:, p:-1]
  # Positions continue each row's prompt, as positions_from_mask on the full row.
  prompt_len = jnp.repeat(prompt_mask.sum(axis=1), groups)
  positions = jnp.where(mask, prompt_len[:, None] + jnp.cumsum(mask, axis=1) - 1, 0)
  rest, _ = model.forward(sequences[:, p:-1], attention_mask=mask, positions=positions,
                          cache=cache, cache_index=p)
  return jnp.concatenate([first, rest], axis=1)


def _split_micro(batch: Mapping[str, jax.Array], micro_batches: int):
  def split(x):
    if x.shape[0] % micro_batches:
      raise ValueError(
          f"Batch of {x.shape[0]} rows is not divisible into {micro_batches} micro-batches.")
    return x.reshape(micro_batches, x.shape[0] // micro_batches, *x.shape[1:])
  return jax.tree.map(split, dict(batch))


def accumulate_and_apply(state: TrainState, batch, terms_fn: Callable, optimizer,
                         micro_batches: int):
  """Scans `terms_fn(params, micro_batch) -> (numerator, (normaliser, metrics))`.

  Applies `sum grad(numerator) / max(sum normaliser, 1)` with the optimiser and
  returns (new state, metrics averaged over micro-batches, plus loss and
  grad_norm). With LoRA adapters only they are differentiated and updated; the
  base is passed through (adapter dropout keys folded with step and micro-batch).
  """
  if lora.has_adapters(state.params):
    trainable, frozen = lora.partition(state.params)
    def loss_fn(p, mb, i):
      return terms_fn(lora.combine(p, lora.fold_dropout_keys(frozen, state.step, i)), mb)
  else:
    trainable, frozen = state.params, None
    loss_fn = lambda p, mb, i: terms_fn(p, mb)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def body(acc, indexed_mb):
    (num, (den, metrics)), grads = grad_fn(trainable, indexed_mb[1], indexed_mb[0])
    g_acc, num_acc, den_acc, m_acc = acc
    return (jax.tree.map(jnp.add, g_acc, grads), num_acc + num, den_acc + den,
            jax.tree.map(jnp.add, m_acc, metrics)), None

  micro = _split_micro(batch, micro_batches)
  first = jax.tree.map(lambda x: x[0], micro)
  (_, (_, metrics_shape)) = jax.eval_shape(loss_fn, trainable, first, 0)
  zeros = jax.tree.map(jnp.zeros_like, trainable)
  init = (zeros, jnp.float32(0), jnp.float32(0),
          jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape))
  (grads, num, den, metrics), _ = jax.lax.scan(
      body, init, (jnp.arange(micro_batches, dtype=jnp.int32), micro))
  scale = 1.0 / jnp.maximum(den, 1.0)
  grads = jax.tree.map(lambda g: g * scale, grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
  params = optax.apply_updates(trainable, updates)
  if frozen is not None:
    params = lora.combine(params, frozen)
  metrics = jax.tree.map(lambda m: m / micro_batches, metrics)
  metrics.update(loss=num * scale, grad_norm=optax.global_norm(grads))
  return TrainState(params, opt_state, state.step + 1), metrics


def make_grpo_update(graphdef, optimizer: optax.GradientTransformation, *,
                     loss_kwargs: Mapping[str, Any], temperature: float = 1.0,
                     micro_batches: int = 1, token_chunk: int = 1024,
                     prompt_groups: int = 1, remat: bool = True):
  """Jitted `update(state, batch) -> (state, metrics)` for a GRPO-family loss.

  batch (N rows): `sequences` int32 [N, L], `attention_mask` [N, L],
  `completion_tokens` int32 [N, C], `completion_mask` [N, C],
  `old_logprobs` [N, C] (the sampler's), `advantages` [N], and `ref_logprobs`
  [N, C] when `loss_kwargs["beta"] > 0`. `loss_kwargs` are `policy_loss_terms`
  keyword arguments (loss_type, epsilon_low/high, delta, beta, ...).
  `prompt_groups` (rows of a group share the prompt, run once) and `remat`:
  see `completion_logprobs`.
  """
  loss_kwargs = dict(loss_kwargs)

  def terms(params, mb):
    logp, ent = completion_logprobs(
        graphdef, params, mb["sequences"], mb["attention_mask"], mb["completion_tokens"],
        temperature=temperature, with_entropy=True, token_chunk=token_chunk,
        prompt_groups=prompt_groups, remat=remat)
    num, den, metrics = objectives.policy_loss_terms(
        logp, mb["old_logprobs"], mb["advantages"], mb["completion_mask"],
        ref_logprobs=mb.get("ref_logprobs"), **loss_kwargs)
    metrics = dict(metrics, entropy=objectives.masked_mean(
        jax.lax.stop_gradient(ent), mb["completion_mask"]))
    return num, (den, metrics)

  @functools.partial(jax.jit, donate_argnums=0)
  def update(state, batch):
    return accumulate_and_apply(state, batch, terms, optimizer, micro_batches)

  return update


def make_sft_update(graphdef, optimizer: optax.GradientTransformation, *,
                    micro_batches: int = 1):
  """Jitted `update(state, batch)` minimising token-mean NLL of the completion.

  batch: `sequences`, `attention_mask`, `completion_tokens`, `completion_mask`
  as for GRPO.
  """

  def terms(params, mb):
    logp, _ = completion_logprobs(graphdef, params, mb["sequences"], mb["attention_mask"],
                                  mb["completion_tokens"])
    mask = mb["completion_mask"].astype(jnp.float32)
    return -jnp.sum(logp * mask), (jnp.sum(mask), {})

  @functools.partial(jax.jit, donate_argnums=0)
  def update(state, batch):
    return accumulate_and_apply(state, batch, terms, optimizer, micro_batches)

  return update


@functools.partial(jax.jit, static_argnames=("graphdef", "temperature"))
def reference_logprobs(graphdef, params, sequences, attention_mask, completion_tokens, *,
                       temperature: float = 1.0):
  """Log-probs [N, C] of the completion under frozen `params` (no gradient)."""
  chex.assert_rank(sequences, 2)
  return completion_logprobs(graphdef, params, sequences, attention_mask, completion_tokens,
                             temperature=temperature)[0]
