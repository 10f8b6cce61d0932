"""Rollout sampler: one jitted prefill and a `lax.while_loop` decode over a KV cache.

Log-prob convention (as TRL): `Generation.logprobs[b, t]` is
`log_softmax(logits / temperature)[token]` of the sampled token, with the
temperature applied but *before* top-k / top-p filtering, so a trainer can use
them as `old_logprobs` without a second forward pass. With `temperature=0`
(greedy) it is the plain `log_softmax(logits)[token]`.

Layout (TRL): with `num_generations=G`, row `p * G + g` is completion `g` of
prompt `p`; groups are contiguous.

Compaction (`SamplingParams.compact`, opt-in): the decode runs in stages over
shrinking row buckets (B, then about B/2, B/4, ... down to `compact_min_rows`).
A stage ends when the live rows fit the next bucket; the live rows' cache,
logits, positions and budgets are then gathered into it and the stage after
runs on fewer rows, writing tokens back to the rows they belong to. Finished
rows thus stop costing decode FLOPs. Each step still draws the uniforms of
the *whole* batch from the step's key and gathers the live rows' ones, so a
row sees the same random numbers as without compaction: the output is the
same token for token (`Generation.row_steps` counts the rows computed).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignax.framework import sharding as sharding_lib
from alignax.framework.model import Decoder, KVCache

_MIN_BUCKET = 16


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Generation:
  """Sampler output. B = prompts x num_generations, N = max_new_tokens.

  tokens:        int32 [B, N], `pad_token_id` after a stop token.
  mask:          bool [B, N], True up to and including the stop token.
  logprobs:      float32 [B, N], log-prob of each sampled token (0 where masked).
  prompt_tokens: int32 [B, P], left-padded prompts (P is the bucketed length).
  prompt_mask:   bool [B, P].
  row_steps:     int32 scalar, decode rows computed (the cost the decode paid).
  """

  tokens: jax.Array
  mask: jax.Array
  logprobs: jax.Array
  prompt_tokens: jax.Array
  prompt_mask: jax.Array
  # int32 scalar: batch rows run through the model by the decode, summed over
  # its steps (bucket sizes when compacting; steps x B otherwise).
  row_steps: jax.Array | None = None

  @property
  def sequences(self) -> jax.Array:
    """Prompt + completion token ids [B, P + N], ready for the loss."""
    return jnp.concatenate([self.prompt_tokens, self.tokens], axis=1)

  @property
  def attention_mask(self) -> jax.Array:
    """[B, P + N] mask of real tokens of `sequences`."""
    return jnp.concatenate([self.prompt_mask, self.mask], axis=1)

  @property
  def lengths(self) -> jax.Array:
    """Completion lengths [B] (stop token included)."""
    return self.mask.sum(axis=1)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """Static (hashable) sampling settings; changing one recompiles."""

  max_new_tokens: int
  temperature: float = 0.0
  top_k: int | None = None
  top_p: float | None = None
  stop_token_ids: tuple[int, ...] = ()
  pad_token_id: int = 0
  # Ids a row may write at most once per decode (e.g. the candidate ids of a
  # ranking): once written, their logits are masked for that row.
  no_repeat_token_ids: tuple[int, ...] = ()
  # Compaction of finished rows (see the module docstring): same output, fewer
  # row-steps; each bucket adds one compiled copy of the decode step.
  compact: bool = False
  # Smallest bucket, and the multiple every bucket is rounded up to (a mesh's
  # batch shard count must divide it). Below ~8 rows a step costs little less.
  compact_min_rows: int = 8

  def validate(self, vocab_size: int) -> None:
    if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}.")
    if not (_is_number(self.temperature) and self.temperature >= 0.0):
      raise ValueError(
          f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}.")
    if self.top_k is not None and not (_is_int(self.top_k) and self.top_k >= 1):
      raise ValueError(f"top_k must be a positive integer or None (no top-k filtering),"
                       f" got {self.top_k!r}.")
    if self.top_p is not None and not (_is_number(self.top_p) and 0.0 < self.top_p <= 1.0):
      raise ValueError(f"top_p must be in (0, 1] or None (no nucleus filtering), got"
                       f" {self.top_p!r}.")
    if not _is_int(self.compact_min_rows) or self.compact_min_rows < 1:
      raise ValueError(f"compact_min_rows must be an integer >= 1, got"
                       f" {self.compact_min_rows!r}.")
    for t in self.stop_token_ids + (self.pad_token_id,) + self.no_repeat_token_ids:
      if not 0 <= t < vocab_size:
        raise ValueError(f"Token id {t} (stop, pad or no-repeat) is outside the vocabulary"
                         f" [0, {vocab_size}).")


def _is_int(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_number(x) -> bool:
  return (_is_int(x) or isinstance(x, (float, np.floating))) and bool(np.isfinite(x))


def _check_prompts(prompts, vocab_size: int) -> list[list[int]]:
  """`prompts` (token-id lists, or an int array [B, P]) as lists of ints, with
  one error naming the prompt and token for each way they can be wrong."""
  if isinstance(prompts, (str, bytes)) or not hasattr(prompts, "__len__"):
    raise TypeError(f"prompts must be a list of token-id lists, got {type(prompts).__name__}.")
  if len(prompts) == 0:
    raise ValueError("prompts is empty (an empty prompt list); generate() needs at least one"
                     " prompt.")
  rows = []
  for i, p in enumerate(prompts):
    if isinstance(p, (str, bytes)):
      raise TypeError(f"prompts[{i}] is a string; encode it with the tokenizer first.")
    arr = np.asarray(p)
    if arr.ndim != 1:
      raise ValueError(f"prompts[{i}] has shape {arr.shape}; each prompt is a 1-D list of"
                       " token ids.")
    if arr.size == 0:
      raise ValueError(f"prompts[{i}] is empty; every prompt needs at least one token"
                       " (e.g. the BOS token).")
    if arr.dtype.kind not in "iu":
      raise TypeError(f"prompts[{i}] holds {arr.dtype} values; token ids are integers.")
    bad = (arr < 0) | (arr >= vocab_size)
    if bad.any():
      j = int(bad.argmax())
      raise ValueError(f"prompts[{i}][{j}] = {int(arr[j])} is outside the vocabulary"
                       f" [0, {vocab_size}); was it encoded with another tokenizer?")
    rows.append(arr.astype(np.int64).tolist())
  return rows


def filter_logits(logits: jax.Array, top_k: int | None, top_p: float | None) -> jax.Array:
  """Top-k then top-p (nucleus) filtering of [B, V] logits, as transformers.

  Removed entries become -inf; at least one token is always kept.
  """
  neg_inf = jnp.finfo(logits.dtype).min
  if top_k is not None and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, neg_inf, logits)
  if top_p is not None and top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = mass_before < top_p
    keep_sorted = keep_sorted.at[..., 0].set(True)
    keep = jnp.zeros_like(keep_sorted).at[
        jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    logits = jnp.where(keep, logits, neg_inf)
  return logits


def sample_inverse_cdf(key, logits, block: int = 256):
  """Draws one token per row of [B, V] logits by inverting the CDF.

  Exact in distribution like `jax.random.categorical`, but needs one uniform
  per row instead of V Gumbel draws (`categorical` measured 130 ms per
  [64, 32000] call on CPU, most of a GRPO rollout; this, 2-level, a few ms).
  Zero-probability (filtered, -inf) tokens are never drawn.
  """
  logits = logits.astype(jnp.float32)
  weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
  return _draw_from_weights(key, weights, block)


def _draw_from_weights(key, weights, block: int = 256, batch_rows=None, batch_size=None):
  """Token [B] drawn with probability proportional to weights [B, V] >= 0.

  Two levels keep the cumulative sums short: first over blocks of `block`
  tokens, then inside the chosen block. The weights need not be normalised
  (the uniform is scaled by their total); the CDF does not rise at zero
  weights, so those tokens are never drawn.

  batch_rows, batch_size: the B rows are rows `batch_rows` (int32 [B]) of a
  batch of `batch_size`: the uniforms of that whole batch are drawn and these
  rows' taken, so a row's draw does not depend on which other rows are present.
  """
  b, v = weights.shape
  w = jnp.pad(weights, ((0, 0), (0, -v % block))).reshape(b, -1, block)
  block_mass = w.sum(-1)                                       # [B, nb]
  block_cdf = jnp.cumsum(block_mass, axis=-1)
  u = jax.random.uniform(key, (b if batch_rows is None else batch_size, 1),
                         minval=jnp.finfo(jnp.float32).tiny)
  if batch_rows is not None:
    u = u[batch_rows]
  u = u * block_cdf[:, -1:]
  blk = jnp.minimum(jnp.sum(block_cdf < u, axis=-1), block_cdf.shape[1] - 1)
  # Only blocks with mass can be chosen (rounding could land past the last one).
  last_live = jnp.max(jnp.where(block_mass > 0, jnp.arange(block_mass.shape[1]), 0), axis=-1)
  blk = jnp.minimum(blk, last_live)
  rows = jnp.arange(b)
  inner = w[rows, blk]                                         # [B, block]
  rest = u[:, 0] - (block_cdf[rows, blk] - block_mass[rows, blk])
  idx = jnp.sum(jnp.cumsum(inner, axis=-1) < rest[:, None], axis=-1)
  last_nz = jnp.max(jnp.where(inner > 0, jnp.arange(block), 0), axis=-1)
  return (blk * block + jnp.minimum(idx, last_nz)).astype(jnp.int32)


def sample_next(key, logits, sampling_params: SamplingParams, *, batch_rows=None,
                batch_size=None):
  """Samples tokens [B] from float32 logits [B, V]; returns (tokens, logprobs).

  One exp pass over [B, V] serves both the draw and the log-prob when nothing
  is filtered (the row max survives any filtering, so it is shared).
  batch_rows, batch_size: the logits are rows `batch_rows` (int32 [B]) of a
  batch of `batch_size` (a compacted decode); each row gets the random number
  it would get in that whole batch.
  """
  rows = jnp.arange(logits.shape[0])
  if sampling_params.temperature == 0.0:
    tokens = jnp.argmax(logits, axis=-1)
    return tokens.astype(jnp.int32), logits[rows, tokens] - jax.nn.logsumexp(logits, axis=-1)
  scaled = logits / sampling_params.temperature
  filtered = filter_logits(scaled, sampling_params.top_k, sampling_params.top_p)
  top = jnp.max(scaled, axis=-1, keepdims=True)
  weights = jnp.exp(filtered - top)
  tokens = _draw_from_weights(key, weights, batch_rows=batch_rows, batch_size=batch_size)
  if filtered is scaled:
    lse = top[:, 0] + jnp.log(jnp.sum(weights, axis=-1))
  else:
    lse = jax.nn.logsumexp(scaled, axis=-1)
  return tokens, scaled[rows, tokens] - lse


@functools.partial(jax.jit, static_argnames=("graphdef", "slots", "repeats"))
def prefill(graphdef, state, ids, mask, *, slots, repeats=1):
  """Runs the prompts [U, P] into a fresh cache of `slots` slots.

  Returns (cache, logits of the last prompt position), each row repeated
  `repeats` times (batch U * repeats): a group of completions of one prompt
  shares one prompt pass.
  """
  model = nnx.merge(graphdef, state)
  cache = KVCache.zeros(model.config, ids.shape[0], slots)
  hidden, cache = model.forward(ids, attention_mask=mask, cache=cache, cache_index=0)
  out = cache, model.logits(hidden[:, -1])
  if repeats > 1:
    out = jax.tree.map(lambda x: jnp.repeat(x, repeats, axis=0), out)
  return out


def compaction_buckets(rows: int, min_rows: int) -> tuple[int, ...]:
  """Row buckets of a compacted decode of `rows` rows: `rows`, then each about
  half the one before, rounded up to a multiple of `min_rows`, while that is
  smaller (64, 8 -> (64, 32, 16, 8); 12, 8 -> (12, 8); 5, 1 -> (5, 3, 2, 1))."""
  sizes = [rows]
  while True:
    half = -(-sizes[-1] // 2)
    nxt = -(-half // min_rows) * min_rows
    if nxt >= sizes[-1]:
      return tuple(sizes)
    sizes.append(nxt)


def decode_loop(model, cache, logits, positions, start, key, done, budget,
                sampling_params):
  """The decode `while_loop`, shared by `decode` and multi-turn rollouts.

  Args:
    model: a `Decoder` (already merged; call inside jit).
    cache: `KVCache` holding each row's history in slots [0, start).
    logits: float32 [B, V] predicting each row's next token.
    positions: int32 [B], the position of each row's next token.
    start: int32 scalar, the first free cache slot (shared by all rows).
    key: PRNG key.
    done: bool [B], rows that write nothing (their slots stay holes).
    budget: int32 [B], the most tokens row b may write.
  Returns (tokens [B, N], mask [B, N], logprobs [B, N], steps, cache), N =
  `sampling_params.max_new_tokens`; `steps` is the number of slots used. Stops early
  when every row is done (stop token, budget, or done from the start). With
  `sampling_params.compact` the rows are compacted as they finish and the
  cache is put back together at the end (rows dropped early hold nothing,
  masked, in the slots written after they left).
  """
  out = _staged_decode(model, cache, logits, positions, start, key, done, budget,
                       sampling_params)
  return out[:5]


def _staged_decode(model, cache, logits, positions, start, key, done, budget,
                   sampling_params):
  """`decode_loop`, plus the row-steps computed [int32 scalar] as a 6th output.

  One `while_loop` per bucket of `compaction_buckets` (one bucket, the plain
  loop, without `sampling_params.compact`); stage s runs while more rows are
  live than bucket s + 1 holds. The cache is put back together by scattering
  each bucket's rows into the one before, in place (the returned cache then
  reuses a donated input's buffers); the buckets' caches live side by side,
  so a compacted decode holds up to ~2x the cache memory.
  """
  b, n = logits.shape[0], sampling_params.max_new_tokens
  pad = sampling_params.pad_token_id
  stop = jnp.asarray(sampling_params.stop_token_ids or (-1,), jnp.int32)
  done = done | (budget <= 0)
  buckets = (compaction_buckets(b, sampling_params.compact_min_rows)
             if sampling_params.compact else (b,))

  def run_stage(carry, rows, positions, budget, next_size):
    """Decodes the rows `rows` [b_s] of the batch (None: all of it, in order)."""

    def cond(carry):
      i, _, _, done, *_ = carry
      return (i < n) & (jnp.sum(~done) > next_size)

    def body(carry):
      i, cache, logits, done, key, tokens, mask, logps, row_steps = carry
      if sampling_params.no_repeat_token_ids:  # mask the no-repeat ids this row already wrote
        ids = jnp.asarray(sampling_params.no_repeat_token_ids, jnp.int32)
        own_tokens, own_mask = (tokens, mask) if rows is None else (tokens[rows], mask[rows])
        seen = jnp.any((own_tokens[:, :, None] == ids) & own_mask[:, :, None], axis=1)  # [b, R]
        logits = logits.at[:, ids].set(
            jnp.where(seen, jnp.finfo(logits.dtype).min, logits[:, ids]))
      key, sub = jax.random.split(key)
      tok, logp = sample_next(sub, logits, sampling_params, batch_rows=rows, batch_size=b)
      live = ~done
      tok = jnp.where(live, tok, pad)
      at = slice(None) if rows is None else rows
      tokens = tokens.at[at, i].set(tok)
      mask = mask.at[at, i].set(live)
      logps = logps.at[at, i].set(jnp.where(live, logp, 0.0))
      done = done | jnp.isin(tok, stop) | (i + 1 >= budget)
      hidden, cache = model.forward(
          tok[:, None], attention_mask=live[:, None], positions=(positions + i)[:, None],
          cache=cache, cache_index=start + i)
      return (i + 1, cache, model.logits(hidden[:, 0]), done, key, tokens, mask, logps,
              row_steps + tok.shape[0])

    return jax.lax.while_loop(cond, body, carry)

  carry = (jnp.int32(0), cache, logits, done, key,
           jnp.full((b, n), pad, jnp.int32), jnp.zeros((b, n), bool),
           jnp.zeros((b, n), jnp.float32), jnp.int32(0))
  rows, left = None, []  # left: (cache before a gather, rows gathered)
  for s, size in enumerate(buckets):
    if s > 0:
      # Live rows first (a stable sort keeps them in order), then finished
      # ones fill the bucket; their state follows them.
      i, cache, logits, done, *rest = carry
      order = jnp.argsort(done.astype(jnp.int8), stable=True)[:size]
      left.append((cache, order))
      cache, logits, done, positions, budget = jax.tree.map(
          lambda x: x[order], (cache, logits, done, positions, budget))
      rows = order if rows is None else rows[order]
      carry = (i, cache, logits, done, *rest)
    next_size = buckets[s + 1] if s + 1 < len(buckets) else 0
    carry = run_stage(carry, rows, positions, budget, next_size)
  steps, cache, _, _, _, tokens, mask, logps, row_steps = carry
  for before, order in reversed(left):
    cache = jax.tree.map(lambda x, y: x.at[order].set(y), before, cache)
  return tokens, mask, logps, steps, cache, row_steps


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling_params"),
                   donate_argnames=("cache",))
def decode(graphdef, state, cache, logits, positions, start, key, *, sampling_params):
  """Samples up to `sampling_params.max_new_tokens` tokens per row with a while_loop.

  Args:
    cache: `KVCache` holding the prompts in slots [0, start); donated.
    logits: float32 [B, V] predicting the first new token.
    positions: int32 [B], the position of the first new token of each row.
    start: int32 scalar, the first free cache slot.
    key: PRNG key.
  Returns (tokens [B, N], mask [B, N], logprobs [B, N], cache, row_steps).
  Stops early when every row has emitted a stop token. The returned cache
  (which reuses the donated buffers) holds every token fed so far, for
  multi-turn rollouts. row_steps: int32 scalar, rows computed summed over steps.
  """
  b = logits.shape[0]
  tokens, mask, logps, _, cache, row_steps = _staged_decode(
      nnx.merge(graphdef, state), cache, logits, positions, start, key,
      jnp.zeros((b,), bool), jnp.full((b,), sampling_params.max_new_tokens, jnp.int32),
      sampling_params)
  return tokens, mask, logps, cache, row_steps


def bucket_length(n: int, limit: int) -> int:
  """Rounds a prompt length up to its bucket, capped at `limit`.

  Buckets: multiples of an eighth of the next power of two, at least 8 and
  16 at least: 16, 24, 32, 40, 48, 56, 64, 80, 96, ..., four per doubling.
  Each bucket compiles its own prefill and update, hence buckets at all;
  eighths rather than powers of two because padding is paid in every step:
  SmolLM2's chat-templated additions (40 tokens + 16 new) padded to 64 gave
  the GRPO update 80 tokens per row instead of 56.
  """
  n = max(n, 1)
  step = max(8, (1 << (n - 1).bit_length()) // 8)
  return min(max(_MIN_BUCKET, -(-n // step) * step), limit)


def pad_prompts(prompts: Sequence[Sequence[int]], length: int, pad_token_id: int | None):
  """Left-pads token lists to `length`: (ids int32 [B, length], mask bool).

  `pad_token_id=None` (tokenizers without a pad token, e.g. Llama 3) pads with
  0: padded positions are masked, so the id is never seen.
  """
  ids = np.full((len(prompts), length), 0 if pad_token_id is None else pad_token_id, np.int32)
  mask = np.zeros((len(prompts), length), bool)
  for i, p in enumerate(prompts):
    if len(p):
      ids[i, length - len(p):] = p
      mask[i, length - len(p):] = True
  return ids, mask


def _as_tuple(ids) -> tuple[int, ...]:
  if ids is None:
    return ()
  return tuple(int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids]))


def generate(model: Decoder, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, eos_token_id=None, seed=0,
             num_generations: int = 1, stop_token_ids=None,
             pad_token_id: int | None = None, mesh=None,
             no_repeat_token_ids=None, compact: bool = False,
             compact_min_rows: int = 8) -> Generation:
  """Samples completions for ragged prompts.

  Args:
    model: a `Decoder`.
    prompts: list of token-id lists (different lengths allowed).
    max_new_tokens: completion budget N.
    temperature: 0 is greedy (matches transformers' greedy generate).
    top_k, top_p: optional filtering, applied after the temperature.
    eos_token_id: an id or a list of ids that end a completion.
    seed: an int or a PRNG key.
    num_generations: completions per prompt, contiguous per prompt (TRL layout).
    stop_token_ids: more ids that end a completion.
    pad_token_id: fills prompts' left padding and finished completions
      (default: the config's pad id, else 0).
    mesh: optional `Mesh`; the batch is sharded over its data and fsdp axes
      (padded with empty rows to a multiple of their size).
    no_repeat_token_ids: optional ids each completion may write at most once
      (constrained decoding: a written one's logit is masked from then on; the
      returned log-probs are those of the masked distribution).
    compact: compact finished rows out of the decode (same output, fewer
      row-steps; see the module docstring). Pays off when completion lengths
      vary; every bucket compiles its own copy of the decode step.
    compact_min_rows: the smallest bucket; with a mesh, rounded up to a
      multiple of its batch shards.
  """
  config = model.config
  prompts = _check_prompts(prompts, config.vocab_size)
  if not _is_int(num_generations) or num_generations < 1:
    raise ValueError(f"num_generations must be an integer >= 1, got {num_generations!r}.")
  if not _is_int(max_new_tokens) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}.")
  if not (_is_int(seed) or isinstance(seed, jax.Array)):
    raise TypeError(f"seed must be an int or a PRNG key, got {type(seed).__name__}.")
  if temperature is None or not _is_number(temperature):
    raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got"
                     f" {temperature!r}.")
  limit = config.max_position_embeddings - max_new_tokens
  longest = max(len(p) for p in prompts)
  if longest > limit:
    raise ValueError(
        f"A prompt has {longest} tokens but the model's maximum length"
        f" ({config.max_position_embeddings}) minus max_new_tokens ({max_new_tokens})"
        f" leaves room for {limit}. Shorten the prompt or max_new_tokens.")
  if pad_token_id is None:
    pad_token_id = config.pad_token_id if config.pad_token_id is not None else 0
  if not _is_int(compact_min_rows) or compact_min_rows < 1:
    raise ValueError(f"compact_min_rows must be an integer >= 1, got {compact_min_rows!r}.")
  shards = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
  sampling_params = SamplingParams(
      max_new_tokens=max_new_tokens, temperature=float(temperature), top_k=top_k,
      top_p=top_p, pad_token_id=int(pad_token_id),
      stop_token_ids=tuple(sorted(set(_as_tuple(eos_token_id) + _as_tuple(stop_token_ids)))),
      no_repeat_token_ids=tuple(sorted(set(_as_tuple(no_repeat_token_ids)))),
      compact=bool(compact), compact_min_rows=-(-int(compact_min_rows) // shards) * shards)
  sampling_params.validate(config.vocab_size)

  # The prompt pass runs once per prompt; its cache is repeated per completion.
  rows = list(prompts)
  num_rows = len(rows) * num_generations
  if mesh is not None:
    rows += [[sampling_params.pad_token_id]] * (-len(rows) % shards)
  length = bucket_length(longest, limit)
  host_ids, host_mask = pad_prompts(rows, length, sampling_params.pad_token_id)
  ids, mask = host_ids, host_mask
  if mesh is not None:
    ids, mask = (jax.device_put(a, sharding_lib.batch_sharding(mesh)) for a in (ids, mask))
  key = jax.random.key(seed) if isinstance(seed, (int, np.integer)) else seed

  graphdef, state = nnx.split(model)
  cache, logits = prefill(graphdef, state, ids, mask, slots=length + max_new_tokens,
                          repeats=num_generations)
  ids, mask = (np.repeat(a, num_generations, axis=0) for a in (host_ids, host_mask))
  positions = jnp.asarray(mask.sum(axis=1), jnp.int32)
  tokens, out_mask, logprobs, _, row_steps = decode(
      graphdef, state, cache, logits, positions, jnp.int32(length), key,
      sampling_params=sampling_params)
  return Generation(tokens[:num_rows], out_mask[:num_rows], logprobs[:num_rows],
                    jnp.asarray(ids[:num_rows]), jnp.asarray(mask[:num_rows]), row_steps)


def generate_from_state(graphdef, state, prompts: Sequence[Sequence[int]],
                        **kwargs) -> Generation:
  """`generate` for the model handle the rest of alignax passes around:
  `(graphdef, state)` as split by `nnx.split` / held by a `TrainState`
  (`state` may be `TrainState.params`). Keyword arguments as `generate`."""
  return generate(nnx.merge(graphdef, state), prompts, **kwargs)
