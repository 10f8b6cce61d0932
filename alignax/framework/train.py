"""Train state, every jitted update and the minibatch loop, with exact gradient accumulation.

Updates: `make_grpo_update` (GRPO family), `make_sft_update` (token-mean NLL),
`make_weighted_update` (re-weighted EM M-step), `make_dpo_update` (DPO / RPO).
Scoring under a frozen model: `reference_logprobs`, `answer_logliks`,
`sequence_logps`. `train_minibatches` runs any update over shuffled batches.

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
from typing import Any, Callable, Iterator, Mapping

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx

from alignax import objectives
from alignax.framework import lora, sharding
from alignax.framework.logprobs import fused_logprobs_and_entropy
from alignax.framework.model import Decoder, KVCache
from alignax.rl.batch import GroupBatch, as_group_batch


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
  any (`alignax/framework/lora.py`; the base stays frozen), else all of them."""
  return lora.partition(params)[0] if lora.has_adapters(params) else params


def _is_state(x) -> bool:
  return isinstance(x, TrainState)


def checkpoint_state(state):
  """What a checkpoint must hold of a `TrainState` (or a pytree of them, e.g.
  {name: TrainState}): under LoRA the frozen base is left out (it is read
  again from the model directory; see `from_checkpoint_state`)."""
  def one(s):
    return dataclasses.replace(s, params=trainable_params(s.params)) if _is_state(s) else s
  return jax.tree.map(one, state, is_leaf=_is_state)


def from_checkpoint_state(state, saved):
  """`saved` (a restored `checkpoint_state(state)`) with the frozen parts of `state`."""
  def one(s, v):
    if not (_is_state(s) and lora.has_adapters(s.params)):
      return v
    return dataclasses.replace(v, params=lora.combine(v.params, lora.partition(s.params)[1]))
  return jax.tree.map(one, state, saved, is_leaf=_is_state)


def init_train_state(model: Decoder, optimizer: optax.GradientTransformation):
  """Returns (graphdef, TrainState) for `model` (optimiser state of `trainable_params`)."""
  graphdef, params = nnx.split(model)
  state = TrainState(params, optimizer.init(trainable_params(params)), jnp.int32(0))
  return graphdef, sharding.replicate_unplaced(state)


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
    (Prefix Grouper, docs/algorithms.md §4.5): same values and grads, with the
    prompt's share of the compute divided by G.
  """
  model = nnx.merge(graphdef, params)
  c = completion_tokens.shape[1]
  if prompt_groups > 1:
    hidden = _shared_prompt_hidden(model, sequences, attention_mask, c, prompt_groups)
  else:
    hidden, _ = model.forward(sequences, attention_mask=attention_mask,
                              train=True)
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
                                       cache=cache, cache_index=0, train=True)
  first = jnp.repeat(prompt_hidden[:, -1:], groups, axis=0)  # predicts completion token 0
  if c == 1:
    return first
  cache = jax.tree.map(lambda x: jnp.repeat(x, groups, axis=0), cache)
  mask = attention_mask[:, p:-1]
  # Positions continue each row's prompt, as positions_from_mask on the full row.
  prompt_len = jnp.repeat(prompt_mask.sum(axis=1), groups)
  positions = jnp.where(mask, prompt_len[:, None] + jnp.cumsum(mask, axis=1) - 1, 0)
  rest, _ = model.forward(sequences[:, p:-1], attention_mask=mask, positions=positions,
                          cache=cache, cache_index=p, train=True)
  return jnp.concatenate([first, rest], axis=1)


def _split_micro(batch: Mapping[str, jax.Array], micro_batches: int):
  def split(x):
    if x.shape[0] % micro_batches:
      raise ValueError(
          f"Batch of {x.shape[0]} rows is not divisible into {micro_batches} micro-batches.")
    return x.reshape(micro_batches, x.shape[0] // micro_batches, *x.shape[1:])
  return jax.tree.map(split, dict(batch) if isinstance(batch, Mapping) else batch)


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
    g_acc = jax.tree.map(lambda a, g: a + g.astype(a.dtype), g_acc, grads)
    return (g_acc, num_acc + num, den_acc + den,
            jax.tree.map(jnp.add, m_acc, metrics)), None

  micro = _split_micro(batch, micro_batches)
  first = jax.tree.map(lambda x: x[0], micro)
  (_, (_, metrics_shape)) = jax.eval_shape(loss_fn, trainable, first, 0)
  # Gradients accumulate in f32 whatever the parameter dtype, and are cast
  # back to it, so bf16 parameters keep bf16 optimiser moments.
  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), trainable)
  init = (zeros, jnp.float32(0), jnp.float32(0),
          jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape))
  (grads, num, den, metrics), _ = jax.lax.scan(
      body, init, (jnp.arange(micro_batches, dtype=jnp.int32), micro))
  scale = 1.0 / jnp.maximum(den, 1.0)
  grads = jax.tree.map(lambda g, p: (g * scale).astype(p.dtype), grads, trainable)
  updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
  params = optax.apply_updates(trainable, updates)
  if frozen is not None:
    params = lora.combine(params, frozen)
  metrics = jax.tree.map(lambda m: m / micro_batches, metrics)
  metrics.update(loss=num * scale, grad_norm=optax.global_norm(grads))
  return TrainState(params, opt_state, state.step + 1), metrics


def jit_donating_state(update_fn: Callable) -> Callable:
  """`jax.jit(update_fn, donate_argnums=0)` for `update_fn(state, batch)`, except
  that a LoRA model's frozen base is passed in undonated (and returned as is):
  other holders of the same arrays (a fresh state kept to restart from, the
  sampler's model) stay valid, and no second copy of the base is needed.

  The returned state keeps the shardings of the state given (jit would
  otherwise choose some outputs' placement itself, e.g. shard a replicated
  norm scale, and the next call would compile again for those).
  """
  plain = jax.jit(update_fn, donate_argnums=0)
  compiled = {}

  def full(state, batch):
    leaves = jax.tree.leaves(state)
    if not all(isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)
               for x in leaves):
      return plain(state, batch)  # traced (e.g. jax.export): no placement to keep
    shardings = jax.tree.map(lambda x: x.sharding, state)
    key = (jax.tree.structure(shardings), tuple(jax.tree.leaves(shardings)))
    if key not in compiled:
      compiled[key] = jax.jit(update_fn, donate_argnums=0, out_shardings=(shardings, None))
    return compiled[key](state, batch)

  @functools.partial(jax.jit, donate_argnums=0)
  def adapters_only(saved, frozen, batch):
    state = dataclasses.replace(saved, params=lora.combine(saved.params, frozen))
    new_state, metrics = update_fn(state, batch)
    return checkpoint_state(new_state), metrics

  @functools.wraps(update_fn)
  def update(state, batch):
    if not lora.has_adapters(state.params):
      return full(state, batch)
    saved, metrics = adapters_only(checkpoint_state(state),
                                   lora.partition(state.params)[1], batch)
    return from_checkpoint_state(state, saved), metrics

  return update


def make_grpo_update(graphdef, optimizer: optax.GradientTransformation, *,
                     loss: objectives.PolicyLossConfig, temperature: float = 1.0,
                     micro_batches: int = 1, token_chunk: int = 1024,
                     prompt_groups: int = 1, remat: bool = True):
  """Jitted `update(state, batch) -> (state, metrics)` for a GRPO-family loss.

  batch: an `alignax.rl.GroupBatch` of N rows (`alignax.rl.make_group_batch`),
  with `ref_logprobs` when `loss.beta > 0`; a mapping with the same keys is
  still taken. `loss`: the loss's options (loss_type, epsilon_low/high, delta,
  beta, ...; `sampling_is_mode` weights the tokens of a batch that carries
  `sampling_logprobs`, an off-policy rollout). `prompt_groups` (rows of a group share the prompt, run once) and
  `remat`: see `completion_logprobs`.
  """
  if not isinstance(loss, objectives.PolicyLossConfig):
    raise TypeError(f"make_grpo_update(loss=...) takes an objectives.PolicyLossConfig, got"
                    f" {type(loss).__name__}; build one with PolicyLossConfig(**options).")
  loss_kwargs = loss.kwargs()

  def terms(params, mb: GroupBatch):
    logp, ent = completion_logprobs(
        graphdef, params, mb.sequences, mb.attention_mask, mb.completion_tokens,
        temperature=temperature, with_entropy=True, token_chunk=token_chunk,
        prompt_groups=prompt_groups, remat=remat)
    num, den, metrics = objectives.policy_loss_terms(
        logp, mb.old_logprobs, mb.advantages, mb.completion_mask,
        ref_logprobs=mb.ref_logprobs, sampling_logprobs=mb.sampling_logprobs,
        **loss_kwargs)
    metrics = dict(metrics, entropy=objectives.masked_mean(
        jax.lax.stop_gradient(ent), mb.completion_mask))
    return num, (den, metrics)

  @jit_donating_state
  def update(state, batch):
    return accumulate_and_apply(state, as_group_batch(batch), terms, optimizer, micro_batches)

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

  @jit_donating_state
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


# ------------------------------------------------------ re-weighted EM (M-step)
def next_token_logprobs(graphdef, params, batch):
  """log p(token_t | tokens_<t) [N, L-1] of the padded `batch["sequences"]` [N, L]."""
  seq = batch["sequences"]
  logp, _ = completion_logprobs(graphdef, params, seq, batch["attention_mask"], seq[:, 1:])
  return logp


def trim_padding(batch, multiple: int = 32):
  """`batch` without the right-padding columns that no row uses.

  Rows are right-padded to one fixed length; their longest real length,
  rounded up to `multiple` (so that few shapes compile), is kept. Causal
  attention makes the dropped columns irrelevant to the kept ones, so the
  losses are unchanged; the cost follows the rows' real lengths.
  """
  full = batch["sequences"].shape[1]
  used = int(np.asarray(batch["attention_mask"]).sum(axis=1).max(initial=1))
  keep = min(full, -(-used // multiple) * multiple)
  # [N, L] and [N, L-1] arrays lose the same columns; weights [N] are kept.
  return {k: (v[:, :keep - (full - v.shape[1])] if np.ndim(v) == 2 else v)
          for k, v in batch.items()}


def make_weighted_update(graphdef, optimizer, micro_batches: int = 1):
  """`update(state, batch)` minimising `weighted_sequence_nll`, the EM M-step
  (docs/algorithms.md §6.3, §7.2).

  batch: sequences [N, L], attention_mask [N, L], loss_mask [N, L-1]
  (trainable next tokens), weights [N]. Each batch is first cut to its
  longest row (`trim_padding`), so every caller pays for real lengths only.
  Accumulates the numerator `sum_n w_n nll_n` and normaliser `sum_n w_n`
  exactly over micro-batches.
  """

  def terms(params, mb):
    logp = next_token_logprobs(graphdef, params, mb)
    value, total = objectives.weighted_sequence_nll(logp, mb["loss_mask"], mb["weights"])
    return value * total, (total, {})

  @jax.jit
  def step(state, batch):
    return accumulate_and_apply(state, batch, terms, optimizer, micro_batches)

  def update(state, batch):
    return step(state, trim_padding(batch))

  return update


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _answer_logliks(graphdef, params, batch):
  return objectives.answer_loglik(next_token_logprobs(graphdef, params, batch),
                                  batch["answer_mask"])


def answer_logliks(graphdef, params, batch, chunk: int = 512) -> np.ndarray:
  """Token-mean gold-answer log-likelihood [N] (`answer_loglik`, §6.2).

  batch: sequences, attention_mask [N, L], answer_mask [N, L-1]. Rows are
  scored shortest first, `chunk` at a time, each chunk trimmed to its own
  length (`trim_padding`); the last chunk is filled up with repeated rows,
  so every call has `chunk` rows.
  """
  n = len(batch["sequences"])
  order = np.argsort(np.asarray(batch["attention_mask"]).sum(axis=1), kind="stable")
  out = np.empty(n, np.float32)
  for s in range(0, n, chunk):
    idx = order[s:s + chunk]
    rows = np.resize(idx, min(chunk, n))  # pads a short last chunk
    part = trim_padding({k: np.asarray(v)[rows] for k, v in batch.items()})
    out[idx] = np.asarray(_answer_logliks(graphdef, params, part))[:len(idx)]
  return out


# ------------------------------------------------------------------------ DPO
_ROW_KEYS = ("sequences", "attention_mask", "completion_tokens", "completion_mask")


@functools.partial(jax.jit, static_argnames=("graphdef",))
def sequence_logps(graphdef, params, batch):
  """Summed completion log-probs [N] of a completion batch (the DPO reference)."""
  logp, _ = completion_logprobs(graphdef, params, batch["sequences"],
                                batch["attention_mask"], batch["completion_tokens"])
  return objectives.sequence_logprobs(logp, batch["completion_mask"].astype(logp.dtype))


def make_dpo_update(graphdef, optimizer, *, beta: float, loss_type: str = "sigmoid",
                    rpo_alpha: float = 0.0, micro_batches: int = 1):
  """Jitted DPO update. batch (B pairs): `chosen_*` and `rejected_*` rows
  (sequences, attention_mask, completion_tokens, completion_mask) and
  `ref_chosen`, `ref_rejected` [B] (`sequence_logps` under the frozen reference).

  `rpo_alpha` > 0 adds `rpo_alpha *` the token-mean NLL of the chosen rows
  (TRL's `rpo_alpha`; Pang et al. 2024, arXiv:2404.19733), which keeps the
  chosen completions' likelihood from falling with the rejected ones'. The
  metric `nll` is that NLL (logged whatever `rpo_alpha`).
  """

  def terms(params, mb):
    b = mb["ref_chosen"].shape[0]
    both = {k: jnp.concatenate([mb["chosen_" + k], mb["rejected_" + k]]) for k in _ROW_KEYS}
    logp, _ = completion_logprobs(graphdef, params, both["sequences"],
                                  both["attention_mask"], both["completion_tokens"])
    seq = objectives.sequence_logprobs(logp, both["completion_mask"].astype(logp.dtype))
    loss, metrics = objectives.dpo_loss(seq[:b], seq[b:], mb["ref_chosen"],
                                        mb["ref_rejected"], beta=beta, loss_type=loss_type)
    mask = both["completion_mask"][:b].astype(logp.dtype)
    nll = -jnp.sum(logp[:b] * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    if rpo_alpha:
      loss = loss + rpo_alpha * nll
    return loss * b, (jnp.float32(b), {**metrics, "nll": nll})

  @jit_donating_state
  def update(state, batch):
    return accumulate_and_apply(state, batch, terms, optimizer, micro_batches)

  return update


def dpo_batch(rows, chosen, rejected, ref_logps):
  """DPO pairs from a completion batch `rows` (one row per sample), the
  indices [B] of each pair's chosen and rejected rows, and the rows'
  reference log-probs [N]."""
  out = {}
  for k, v in rows.items():
    out["chosen_" + k] = np.asarray(v)[chosen]
    out["rejected_" + k] = np.asarray(v)[rejected]
  ref = np.asarray(ref_logps)
  out["ref_chosen"], out["ref_rejected"] = ref[chosen], ref[rejected]
  return out


# ------------------------------------------------------------- minibatch loop
def minibatch_indices(num_rows: int, batch_size: int, seed: int, *,
                      epochs: int | None = None,
                      steps: int | None = None) -> Iterator[np.ndarray]:
  """Row indices [batch_size] of shuffled minibatches; give `epochs` or `steps`.

  epochs=E: E passes, each over a fresh permutation wrapped round to whole
    batches (the last batch of a pass takes rows from the pass's start).
  steps=S: exactly S batches cycling over ONE permutation (a fixed update
    budget, e.g. a baseline matched to another method's number of updates).
  Nothing is yielded when `num_rows` is 0.
  """
  if (epochs is None) == (steps is None):
    raise ValueError(f"give exactly one of epochs ({epochs}) and steps ({steps}).")
  if num_rows == 0:
    return
  rng = np.random.RandomState(seed)
  if steps is not None:
    order = np.resize(rng.permutation(num_rows), max(steps, 1) * batch_size)
    for s in range(steps):
      yield order[s * batch_size:(s + 1) * batch_size]
    return
  for _ in range(epochs):
    order = np.resize(rng.permutation(num_rows), -(-num_rows // batch_size) * batch_size)
    for s in range(0, len(order), batch_size):
      yield order[s:s + batch_size]


def show_loss(bar, metrics) -> None:
  """Shows an update's loss on its progress bar. Reading the loss waits for the
  update, so the bar counts finished steps, not dispatched ones."""
  bar.set_postfix(loss=f"{float(metrics['loss']):.3f}")


def train_minibatches(update, state, batch: Mapping[str, np.ndarray], batch_size: int,
                      seed: int, *, epochs: int | None = None, steps: int | None = None,
                      desc: str | None = None):
  """Runs `update(state, minibatch)` over `minibatch_indices` of the rows of `batch`.

  desc: show a progress bar with this label and each update's loss (each
    update is then waited for, so the bar shows real steps, not dispatches).
  Returns (state, number of updates, the last update's metrics or {}).
  """
  num_rows = len(next(iter(batch.values())))
  count, metrics = 0, {}
  indices = minibatch_indices(num_rows, batch_size, seed, epochs=epochs, steps=steps)
  if desc is not None:
    total = steps if steps is not None else epochs * -(-num_rows // batch_size)
    indices = tqdm.tqdm(indices, total=total if num_rows else 0, desc=desc, leave=False)
  for idx in indices:
    state, metrics = update(state, {k: v[idx] for k, v in batch.items()})
    count += 1
    if desc is not None and "loss" in metrics:
      show_loss(indices, metrics)
  return state, count, metrics
