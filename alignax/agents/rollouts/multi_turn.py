"""Batched multi-turn tool rollouts over one KV cache (EXSEARCH / DRO agents).

Token format: see `agents.worlds.qa_world` (model turns end at `<SEARCH>` = a tool call,
or at EOS = the trajectory is over; the answer is the text after `<FINAL>`).

How a batch of B trajectories runs, with no Python loop over rows and no
re-encoding of a prefix:

  1. prefill the left-padded prompts into a cache of
     `S = P + max_turns * (max_turn_tokens + max_tool_tokens)` slots;
  2. per turn, one jitted `lax.while_loop` decodes every unfinished row
     together until each has emitted a stop token or used its budget; all rows
     write at the same slot cursor, and a row that is already done writes a
     *hole* (its slot's `KVCache.mask` is False, so no later query sees it);
  3. the rows that called the tool get their query's BM25 results (one batched
     search), encoded and fed in one forward pass at the next `max_tool_tokens`
     slots (right-padded with holes); the logits at each row's last tool token
     start the next turn.

Each row keeps its own position counter (the number of real tokens so far),
so a trajectory's positions are 0..L-1 exactly as in a fresh forward pass over
its token array, whatever holes its cache rows contain.

Shapes: B rows, P bucketed prompt length, S cache slots, V vocabulary.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignax.agents.worlds import qa_world
from alignax.framework import sampling


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  """Limits and sampling settings of a multi-turn rollout (hashable)."""

  max_turns: int = 3           # model turns per trajectory
  max_turn_tokens: int = 12    # tokens the model may write in one turn
  max_tool_tokens: int = 40    # tool-output tokens kept per call (longer: cut)
  max_total_tokens: int = 192  # prompt + everything after it, per trajectory
  temperature: float = 1.0     # 0: greedy
  top_k: int | None = None
  top_p: float | None = None


@dataclasses.dataclass(frozen=True)
class TokenFormat:
  """Ids of the markers the rollout acts on."""

  search_id: int   # ends a turn with a tool call
  eos_id: int      # ends the trajectory
  query_id: int    # the tool's query is the text after the last <QUERY>
  final_id: int    # the answer is the text after <FINAL>
  pad_id: int

  @classmethod
  def from_tokenizer(cls, tokenizer) -> "TokenFormat":
    ids = tokenizer.convert_tokens_to_ids
    return cls(ids(qa_world.SEARCH), tokenizer.eos_token_id, ids(qa_world.QUERY),
               ids(qa_world.FINAL), tokenizer.pad_token_id)


@dataclasses.dataclass
class Trajectory:
  """One finished trajectory (host NumPy arrays, all of length L).

  tokens:    int32 [L], prompt + model turns + tool outputs, in order.
  loss_mask: bool [L], True on model-written tokens.
  logprobs:  float32 [L], behaviour log-prob of each model-written token (the
             sampler's convention: temperature applied, before top-k/top-p),
             0 elsewhere.
  prompt_len: number of prompt tokens.
  tool_calls: the query of each tool call, in order.
  tool_info:  what the tool returned for each call (e.g. passage ids).
  truncated: a limit (turn tokens, turns, total length) ended it early.
  finished:  it ended with EOS.
  """

  tokens: np.ndarray
  loss_mask: np.ndarray
  logprobs: np.ndarray
  prompt_len: int
  tool_calls: list = dataclasses.field(default_factory=list)
  tool_info: list = dataclasses.field(default_factory=list)
  truncated: bool = False
  finished: bool = False

  def answer_ids(self, fmt: TokenFormat) -> list[int]:
    """Model tokens after the last `<FINAL>` (EOS dropped); [] if none."""
    toks = self.tokens[self.prompt_len:].tolist()
    if fmt.final_id not in toks:
      return []
    after = toks[len(toks) - toks[::-1].index(fmt.final_id):]
    return [t for t in after if t not in (fmt.eos_id, fmt.pad_id)]


# A tool maps B query strings to B (token ids, info) pairs.
Tool = Callable[[Sequence[str]], Sequence[tuple[Sequence[int], Any]]]


class SearchTool:
  """BM25 search as a rollout tool: query -> `<DOC> ... </SEARCH>` tokens."""

  def __init__(self, retriever, tokenizer, k: int):
    self.retriever, self.tokenizer, self.k = retriever, tokenizer, k
    self._cache: dict[str, tuple[list[int], list[str]]] = {}

  def __call__(self, queries):
    from alignax.agents.worlds.retrieval import render_results  # pylint: disable=g-import-not-at-top
    new = sorted({q for q in queries if q not in self._cache})
    for q, docs in zip(new, self.retriever.search(new, self.k) if new else []):
      ids = self.tokenizer.encode(render_results(docs), add_special_tokens=False)
      self._cache[q] = (ids, [d.id for d in docs])
    return [self._cache[q] for q in queries]

  def text(self, query: str) -> str:
    """The tool output as text (for oracle trajectories)."""
    return self.tokenizer.decode(self([query])[0][0])


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling_params"),
                   donate_argnames=("cache",))
def decode_turn(graphdef, state, cache, logits, positions, start, key, done, budget, *,
                sampling_params: sampling.SamplingParams):
  """Decodes one turn for every row not `done`, from cache slot `start`.

  Like `sampling.decode`, but rows that are already done (finished
  trajectories) start done, and row b stops after `budget[b]` tokens.

  Args:
    cache: `KVCache` with every row's history in slots [0, start); donated.
    logits: float32 [B, V] predicting each row's next token.
    positions: int32 [B], position of each row's next token.
    start: int32 scalar, the shared slot cursor.
    key: PRNG key.
    done: bool [B], rows that write nothing (holes) this turn.
    budget: int32 [B], most tokens row b may write this turn.
  Returns:
    tokens int32 [B, N], mask bool [B, N] (real tokens), logprobs float32
    [B, N], steps (int32 scalar, slots used), cache.
  """
  return sampling.decode_loop(nnx.merge(graphdef, state), cache, logits, positions,
                              start, key, done, budget, sampling_params)


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("cache",))
def extend(graphdef, state, cache, ids, mask, positions, start):
  """Feeds right-padded tokens ids [B, T] (mask [B, T]) at slots [start, start+T).

  Returns (logits [B, V] at each row's last real token, cache). Rows with no
  real token get holes and meaningless logits.
  """
  model = nnx.merge(graphdef, state)
  pos = positions[:, None] + jnp.arange(ids.shape[1])[None]
  hidden, cache = model.forward(ids, attention_mask=mask, positions=pos, cache=cache,
                                cache_index=start)
  last = jnp.maximum(mask.sum(axis=1) - 1, 0)
  return model.logits(hidden[jnp.arange(ids.shape[0]), last]), cache


def rollout(graphdef, state, prompts: Sequence[Sequence[int]], tool: Tool,
            fmt: TokenFormat, config: RolloutConfig, key,
            decode_query: Callable[[Sequence[int]], str]) -> list[Trajectory]:
  """Runs B multi-turn trajectories together (see the module docstring).

  Args:
    graphdef, state: `nnx.split(model)`.
    prompts: B token-id lists (ragged).
    tool: batched tool, `tool(queries) -> [(token ids, info)]`.
    fmt: marker ids.
    config: limits and sampling.
    key: PRNG key (ignored when greedy).
    decode_query: token ids -> query string (e.g. `tokenizer.decode`).
  Returns:
    B `Trajectory`s, in prompt order.
  """
  c = config
  b = len(prompts)
  lens = np.asarray([len(p) for p in prompts], np.int32)
  if lens.min() < 1:
    raise ValueError("rollout() got an empty prompt.")
  if lens.max() >= c.max_total_tokens:
    raise ValueError(f"A prompt has {lens.max()} tokens; max_total_tokens="
                     f"{c.max_total_tokens} leaves no room to write.")
  p_len = sampling.bucket_length(int(lens.max()), 1 << 30)
  slots = p_len + c.max_turns * (c.max_turn_tokens + c.max_tool_tokens)
  ids, mask = sampling.pad_prompts(prompts, p_len, fmt.pad_id)
  cache, logits = sampling.prefill(graphdef, state, ids, mask, slots=slots)
  sampling_params = sampling.SamplingParams(
      max_new_tokens=c.max_turn_tokens, temperature=float(c.temperature), top_k=c.top_k,
      top_p=c.top_p, stop_token_ids=tuple(sorted({fmt.search_id, fmt.eos_id})),
      pad_token_id=fmt.pad_id)

  trajs = [Trajectory(np.asarray(p, np.int32), np.zeros(len(p), bool),
                      np.zeros(len(p), np.float32), len(p)) for p in prompts]
  pieces = [[(t.tokens, t.loss_mask, t.logprobs)] for t in trajs]
  pos = lens.copy()
  active = np.ones(b, bool)
  cursor = p_len
  for turn in range(c.max_turns):
    if not active.any():
      break
    key, sub = jax.random.split(key)
    budget = np.where(active, np.minimum(c.max_turn_tokens, c.max_total_tokens - pos), 0)
    toks, tmask, tlogp, steps, cache = decode_turn(
        graphdef, state, cache, logits, jnp.asarray(pos), jnp.int32(cursor), sub,
        jnp.asarray(~active), jnp.asarray(budget, jnp.int32), sampling_params=sampling_params)
    toks, tmask, tlogp = np.asarray(toks), np.asarray(tmask), np.asarray(tlogp)
    cursor += int(steps)
    callers, queries = [], []
    for r in np.flatnonzero(active):
      n = int(tmask[r].sum())
      written = toks[r, :n]
      pieces[r].append((written, np.ones(n, bool), tlogp[r, :n]))
      pos[r] += n
      last = int(written[-1]) if n else -1
      if last == fmt.eos_id:
        trajs[r].finished, active[r] = True, False
      elif last == fmt.search_id and turn + 1 < c.max_turns:
        turn_toks = written.tolist()
        q_start = (len(turn_toks) - turn_toks[::-1].index(fmt.query_id)
                   if fmt.query_id in turn_toks else 0)
        callers.append(r)
        queries.append(decode_query(turn_toks[q_start:-1]))
      else:  # out of turn tokens, total length, or turns
        trajs[r].truncated, active[r] = True, False
    if not callers:
      continue
    outputs = tool(queries)
    tool_ids = np.full((b, c.max_tool_tokens), fmt.pad_id, np.int32)
    tool_mask = np.zeros((b, c.max_tool_tokens), bool)
    for r, q, (out, info) in zip(callers, queries, outputs):
      out = list(out)[:c.max_tool_tokens]
      trajs[r].tool_calls.append(q)
      trajs[r].tool_info.append(info)
      if pos[r] + len(out) >= c.max_total_tokens:
        # No room to write after the tool output: flag, keep what fits.
        out = out[:max(c.max_total_tokens - pos[r], 0)]
        trajs[r].truncated, active[r] = True, False
      n = len(out)
      tool_ids[r, :n], tool_mask[r, :n] = out, True
      pieces[r].append((np.asarray(out, np.int32), np.zeros(n, bool), np.zeros(n, np.float32)))
    new_logits, cache = extend(graphdef, state, cache, jnp.asarray(tool_ids),
                               jnp.asarray(tool_mask), jnp.asarray(pos), jnp.int32(cursor))
    pos += tool_mask.sum(axis=1).astype(np.int32)
    cursor += c.max_tool_tokens
    logits = new_logits  # rows that made no call are done: their logits are unused
  for t, ps in zip(trajs, pieces):
    t.tokens, t.loss_mask, t.logprobs = (np.concatenate([p[i] for p in ps]) for i in range(3))
  return trajs


def pad_trajectories(token_lists: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                     length: int, pad_id: int):
  """Right-pads ragged rows to `length`: (tokens int32 [N, length], attention
  bool [N, length], masks stacked as float32 [N, length] per input list)."""
  n = len(token_lists)
  tokens = np.full((n, length), pad_id, np.int32)
  attn = np.zeros((n, length), bool)
  out = [np.zeros((n, length), np.float32) for _ in masks]
  for i, t in enumerate(token_lists):
    if len(t) > length:
      raise ValueError(f"A row of {len(t)} tokens exceeds the padded length {length}.")
    tokens[i, :len(t)], attn[i, :len(t)] = t, True
    for o, m in zip(out, masks):
      o[i, :len(t)] = m[i]
  return tokens, attn, out
