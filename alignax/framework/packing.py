"""Sequence packing for the update: several (prompt + completion) rows per row.

A GRPO batch is N rows of L = P + C slots (prompt left-padded, completion
right-padded), so the update pays for N x L token slots whatever the real
lengths. Packing places the real tokens of each row, in order, into rows of
`row_length` slots (first-fit decreasing, `first_fit_decreasing`), each
sequence a *segment*: positions restart at 0 in each segment and attention
is masked per segment (`Decoder.forward(segment_ids=...)`), so every token
sees exactly the tokens it saw in its own row. The forward then costs about
the real tokens, and the log-prob of completion token (n, t) is read from
the hidden state of the token before it and put back at [n, t]: the policy
losses see the usual [N, C] layout and give the same loss and gradients (up
to float rounding) as the unpacked update.

Host side (NumPy): `first_fit_decreasing`, `pack_grpo_batch`. Device side:
`packed_completion_logprobs`, `make_packed_grpo_update`.

Micro-batches: `pack_grpo_batch(micro_batches=M)` packs the rows of each
micro-batch (the same contiguous row slices `train.accumulate_and_apply`
takes) into their own packed rows, so each micro-batch's arrays, split on
their leading axis, still belong together.

Shapes: N sequences (rows of the unpacked batch), C completion slots, R packed
rows of length Lr, K completion-token targets (all per micro-batch inside
the update, the totals M times that in the packed batch).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from alignax import objectives
from alignax.framework import train
from alignax.framework.logprobs import fused_logprobs_and_entropy
from alignax.rl.batch import as_group_batch

# The packed arrays `pack_grpo_batch` makes (besides the [N, ...] per-sequence
# ones it keeps): they replace sequences / attention_mask / completion_tokens.
PACKED_KEYS = ("input_ids", "segment_ids", "positions", "target_slots", "target_tokens",
               "target_index")
_PER_SEQUENCE_KEYS = ("completion_mask", "old_logprobs", "advantages", "ref_logprobs",
                      "sampling_logprobs")


@dataclasses.dataclass(frozen=True)
class PackPlan:
  """Where each sequence goes: row[s], offset[s] (int64 [S]); num_rows rows."""

  row: np.ndarray
  offset: np.ndarray
  num_rows: int
  row_length: int

  def row_fill(self, lengths) -> np.ndarray:
    """Real tokens per packed row [num_rows]."""
    return np.bincount(self.row, weights=np.asarray(lengths),
                       minlength=self.num_rows).astype(np.int64)


def first_fit_decreasing(lengths, row_length: int, *, num_rows: int | None = None) -> PackPlan:
  """Packs sequences of `lengths` [S] into rows of `row_length` slots.

  First-fit decreasing: longest first (ties in input order), each into the
  first row with room, a new row when none has: at most 11/9 OPT + 6/9 rows
  (Dósa 2007). Host side, O(S x rows) NumPy work.

  Args:
    lengths: int [S] >= 0, tokens of each sequence.
    row_length: slots per packed row.
    num_rows: pad the plan to exactly this many rows (fixed shapes, so the
      update compiles once); a ValueError if the sequences need more.
  Returns:
    a `PackPlan` (segments in a row are laid out in placement order).
  """
  lengths = np.asarray(lengths)
  if lengths.ndim != 1 or (lengths.size and lengths.dtype.kind not in "iu"):
    raise ValueError(f"lengths must be a 1-D int array, got shape {lengths.shape},"
                     f" dtype {lengths.dtype}.")
  if not isinstance(row_length, (int, np.integer)) or row_length < 1:
    raise ValueError(f"row_length must be an integer >= 1, got {row_length!r}.")
  if lengths.size and lengths.min() < 0:
    i = int(lengths.argmin())
    raise ValueError(f"lengths[{i}] = {int(lengths[i])} is negative.")
  if lengths.size and lengths.max() > row_length:
    i = int(lengths.argmax())
    raise ValueError(f"lengths[{i}] = {int(lengths[i])} is longer than row_length ="
                     f" {row_length}; a sequence cannot be split across rows (raise"
                     f" row_length to at least the longest sequence).")
  order = np.argsort(-lengths, kind="stable")
  room = np.zeros(0, np.int64)  # free slots of each open row
  row = np.zeros(lengths.size, np.int64)
  offset = np.zeros(lengths.size, np.int64)
  for s in order:
    fits = np.flatnonzero(room >= lengths[s])
    if fits.size:
      r = int(fits[0])
    else:
      r = room.size
      room = np.append(room, row_length)
    row[s], offset[s] = r, row_length - room[r]
    room[r] -= lengths[s]
  used = max(room.size, 1)
  if num_rows is not None:
    if used > num_rows:
      raise ValueError(f"num_rows={num_rows} packed rows of {row_length} slots cannot hold"
                       f" these sequences ({int(lengths.sum())} tokens need {used} rows);"
                       " raise num_rows or row_length.")
    used = num_rows
  return PackPlan(row, offset, used, int(row_length))


def _field(batch, name):
  if isinstance(batch, Mapping):
    return batch.get(name)
  return getattr(batch, name, None)  # e.g. a dataclass batch with these fields


def pack_grpo_batch(batch, row_length: int, *, micro_batches: int = 1,
                    rows_per_micro_batch: int | None = None,
                    targets_per_micro_batch: int | None = None,
                    target_multiple: int = 64) -> dict[str, np.ndarray]:
  """The packed form of a GRPO batch (host side, NumPy).

  Args:
    batch: a mapping (or an object with these attributes) of the unpacked
      batch: `sequences` [N, P + C], `attention_mask` [N, P + C],
      `completion_tokens` [N, C], `completion_mask` [N, C], and the
      per-sequence `old_logprobs` [N, C] (or None: the trainer's own),
      `advantages` [N], (beta > 0) `ref_logprobs` [N, C] and (off-policy
      rollouts) `sampling_logprobs` [N, C]. Each row's real tokens (attention_mask) become one
      segment; every completion token in `completion_mask` must be real and
      follow a real token (as the sampler's layout always has).
    row_length: slots per packed row (at least the longest real row).
    micro_batches: M; rows [m N/M, (m+1) N/M) are packed among themselves.
    rows_per_micro_batch: R_m, fixed (else the most any micro-batch needs).
    targets_per_micro_batch: K_m, fixed (else the most completion tokens of
      any micro-batch, rounded up to `target_multiple`).
    Each new (R_m, K_m) compiles the update again: a training loop fixes them
    or rounds them to a few buckets (on a mesh, R_m a multiple of its batch
    shards).
  Returns:
    dict of NumPy arrays: `input_ids`, `segment_ids` (1, 2, ... per row, 0 on
    padding), `positions` int32 [M R_m, row_length]; `target_slots` (flat slot
    r * row_length + j, within its micro-batch, of the token predicting each
    target), `target_tokens` int32 [M K_m]; `target_index` int32 [N, C] (the
    target of completion token (n, t); 0 where masked); and the per-sequence
    arrays as given (`completion_mask`, `advantages`, and `old_logprobs`,
    `ref_logprobs`, `sampling_logprobs` when present).
  """
  seq = np.asarray(_field(batch, "sequences"))
  att = np.asarray(_field(batch, "attention_mask")).astype(bool)
  ctok = np.asarray(_field(batch, "completion_tokens"))
  cmask = np.asarray(_field(batch, "completion_mask")).astype(bool)
  if seq.ndim != 2 or att.shape != seq.shape:
    raise ValueError(f"sequences {seq.shape} and attention_mask {att.shape} must be one"
                     " [N, P + C] shape.")
  n, c = cmask.shape
  if ctok.shape != (n, c) or seq.shape[0] != n or seq.shape[1] <= c:
    raise ValueError(f"completion_tokens {ctok.shape} and completion_mask {cmask.shape}"
                     f" must be [N, C] with N = {seq.shape[0]} rows of sequences and C <"
                     f" its length {seq.shape[1]}.")
  if not isinstance(micro_batches, (int, np.integer)) or micro_batches < 1 or n % micro_batches:
    raise ValueError(f"micro_batches={micro_batches!r} must be an integer >= 1 dividing the"
                     f" {n} rows.")
  p = seq.shape[1] - c
  comp_att = att[:, p:]
  if (cmask & ~comp_att).any():
    i, t = np.argwhere(cmask & ~comp_att)[0]
    raise ValueError(f"completion_mask[{i}, {t}] is set but attention_mask[{i}, {p + t}] is"
                     " not: a completion token must be a real token.")
  before = np.concatenate([att[:, p - 1:p], comp_att[:, :-1]], axis=1)
  if (cmask & ~before).any():
    i, t = np.argwhere(cmask & ~before)[0]
    raise ValueError(f"completion token [{i}, {t}] follows a padding slot; packing needs the"
                     " token before each completion token to be real (its hidden state"
                     " predicts it), as in the sampler's layout.")

  lengths = att.sum(1)
  real_index = np.cumsum(att, axis=1) - 1  # index of each real token within its row
  per_micro = n // micro_batches
  plans = [first_fit_decreasing(lengths[m * per_micro:(m + 1) * per_micro], row_length,
                                num_rows=rows_per_micro_batch)
           for m in range(micro_batches)]
  rows = max(pl.num_rows for pl in plans)
  plans = [dataclasses.replace(pl, num_rows=rows) for pl in plans]  # pad to one R_m
  counts = [int(cmask[m * per_micro:(m + 1) * per_micro].sum()) for m in range(micro_batches)]
  k = targets_per_micro_batch
  if k is None:
    k = max(target_multiple, -(-max(counts) // target_multiple) * target_multiple)
  elif max(counts) > k:
    raise ValueError(f"targets_per_micro_batch={k} is less than the {max(counts)} completion"
                     " tokens of a micro-batch; raise it.")

  ids = np.zeros((micro_batches * rows, row_length), np.int32)
  segs = np.zeros_like(ids)
  pos = np.zeros_like(ids)
  t_slots = np.zeros(micro_batches * k, np.int32)
  t_tokens = np.zeros(micro_batches * k, np.int32)
  t_index = np.zeros((n, c), np.int32)
  for m, plan in enumerate(plans):
    next_seg = np.ones(rows, np.int64)
    targets = 0
    for j in range(per_micro):
      s = m * per_micro + j
      r, o, length = plan.row[j], plan.offset[j], lengths[s]
      gr = m * rows + r
      ids[gr, o:o + length] = seq[s][att[s]]
      segs[gr, o:o + length] = next_seg[r]
      pos[gr, o:o + length] = np.arange(length)
      next_seg[r] += 1
      ts = np.flatnonzero(cmask[s])
      # Completion token t is real token real_index[p + t] of the row; the one
      # before it (offset + that - 1 in the packed row) predicts it.
      slots = r * row_length + o + real_index[s, p + ts] - 1
      t_slots[m * k + targets:m * k + targets + ts.size] = slots
      t_tokens[m * k + targets:m * k + targets + ts.size] = ctok[s, ts]
      t_index[s, ts] = targets + np.arange(ts.size)
      targets += ts.size
  out = dict(input_ids=ids, segment_ids=segs, positions=pos, target_slots=t_slots,
             target_tokens=t_tokens, target_index=t_index)
  for key in _PER_SEQUENCE_KEYS:
    value = _field(batch, key)
    if value is not None:
      out[key] = np.asarray(value)
  return out


def packed_completion_logprobs(graphdef, params, packed: Mapping[str, jax.Array], *,
                               temperature: float = 1.0, with_entropy: bool = False,
                               token_chunk: int = 1024, remat: bool = True):
  """Per-token log-probs (and entropies) [N, C] of a packed (micro-)batch.

  The packed rows `input_ids` [R, Lr] run through the model with their
  `segment_ids` and `positions`; the hidden states at `target_slots` [K]
  predict `target_tokens` [K] (LM head on K targets, not N x C slots); then
  `target_index` [N, C] puts each back at its completion slot, 0 where
  `completion_mask` is False. Equals `train.completion_logprobs` of the
  unpacked batch wherever `completion_mask` is set (`remat`: see there).
  """
  model = nnx.merge(graphdef, params)
  segments = packed["segment_ids"]
  hidden, _ = model.forward(packed["input_ids"], attention_mask=segments > 0,
                            positions=packed["positions"], segment_ids=segments, train=True)
  h = hidden.reshape(-1, hidden.shape[-1])[packed["target_slots"]]
  logp, ent = fused_logprobs_and_entropy(
      h[None], model.unembedding(), packed["target_tokens"][None], temperature=temperature,
      token_chunk=token_chunk, entropy=with_entropy, remat=remat)
  mask = packed["completion_mask"].astype(bool)
  unpack = lambda x: jnp.where(mask, x[0][packed["target_index"]], 0.0)  # noqa: E731
  return unpack(logp), unpack(ent)


def make_packed_grpo_update(graphdef, optimizer: optax.GradientTransformation, *,
                            loss: objectives.PolicyLossConfig, temperature: float = 1.0,
                            micro_batches: int = 1, token_chunk: int = 1024,
                            remat: bool = True):
  """`train.make_grpo_update` for batches from `pack_grpo_batch`.

  `update(state, packed) -> (state, metrics)`, `packed` made with the same
  `micro_batches`. Same loss, gradients and metrics as the unpacked update
  of the same rows (to float rounding); the prompt is run per completion
  (no `prompt_groups` sharing inside packed rows).
  """
  if not isinstance(loss, objectives.PolicyLossConfig):
    raise TypeError(f"make_packed_grpo_update(loss=...) takes an objectives.PolicyLossConfig,"
                    f" got {type(loss).__name__}; build one with PolicyLossConfig(**options).")
  loss_kwargs = loss.kwargs()

  def terms(params, mb):
    logp, ent = packed_completion_logprobs(graphdef, params, mb, temperature=temperature,
                                           with_entropy=True, token_chunk=token_chunk,
                                           remat=remat)
    num, den, metrics = objectives.policy_loss_terms(
        logp, mb.get("old_logprobs"), mb["advantages"], mb["completion_mask"],
        ref_logprobs=mb.get("ref_logprobs"), sampling_logprobs=mb.get("sampling_logprobs"),
        **loss_kwargs)
    metrics = dict(metrics, entropy=objectives.masked_mean(
        jax.lax.stop_gradient(ent), mb["completion_mask"]))
    return num, (den, metrics)

  @train.jit_donating_state
  def update(state, packed):
    missing = [k for k in PACKED_KEYS + ("completion_mask", "advantages") if k not in packed]
    if missing:
      raise KeyError(f"packed batch lacks {missing}; make it with pack_grpo_batch.")
    return train.accumulate_and_apply(state, dict(packed), terms, optimizer, micro_batches)

  return update


def packing_stats(packed: Mapping[str, Any], num_sequences: int, sequence_length: int) -> dict:
  """Token slots of the packed batch against the unpacked one (host side)."""
  slots = int(np.size(packed["input_ids"]))
  real = int((np.asarray(packed["segment_ids"]) > 0).sum())
  return dict(packed_slots=slots, unpacked_slots=num_sequences * sequence_length,
              real_tokens=real, fill=real / max(slots, 1))


def bucket_size(n: int, maximum: int, buckets: int, multiple: int = 1) -> int:
  """The smallest of `buckets` evenly spaced sizes `ceil(maximum * i / buckets)`
  (i = 1 .. buckets, each rounded up to a multiple of `multiple`) that holds
  `n`; `n` rounded up to `multiple` if it exceeds them all.

  >>> [bucket_size(n, 64, 4) for n in (1, 16, 17, 40, 64)]
  [16, 16, 32, 48, 64]
  """
  if buckets < 1 or multiple < 1:
    raise ValueError(f"buckets={buckets} and multiple={multiple} must be >= 1.")
  for i in range(1, buckets + 1):
    size = -(-(-(-maximum * i // buckets)) // multiple) * multiple
    if size >= n:
      return size
  return -(-n // multiple) * multiple


class PackedGroupUpdate:
  """`update(state, batch) -> (state, metrics)` for unpacked `GroupBatch`es,
  packing each one on the host with bucketed shapes: a drop-in for
  `train.make_grpo_update`'s update (same loss, gradients and metrics to
  float rounding).

  Each batch is packed (`pack_grpo_batch`) into rows of `row_length` slots
  (at least the longest prompt + completion the loop can produce); its rows
  and completion targets per micro-batch are rounded up with `bucket_size`
  to one of `buckets` sizes each (up to rows per micro-batch, resp. rows x
  completion slots), so the jitted update compiles for at most `buckets`**2
  shapes, in practice a few since both grow with the completion lengths.
  `shapes` holds the (rows, targets) per micro-batch seen so far (each one
  compile), `last_stats` the `packing_stats` of the last batch. Calling it
  again with the same batch object (num_iterations > 1) packs once.

  Packing runs each completion's prompt with it (no `prompt_groups`
  sharing): it pays when completions are long and of varying length, so that
  the padding it removes outweighs the G - 1 extra prompt passes per group.
  """

  def __init__(self, graphdef, optimizer: optax.GradientTransformation, *,
               loss: objectives.PolicyLossConfig, row_length: int,
               temperature: float = 1.0, micro_batches: int = 1, buckets: int = 4,
               target_multiple: int = 64, token_chunk: int = 1024, remat: bool = True):
    if not isinstance(row_length, (int, np.integer)) or row_length < 1:
      raise ValueError(f"row_length must be an integer >= 1, got {row_length!r}.")
    if not isinstance(buckets, (int, np.integer)) or buckets < 1:
      raise ValueError(f"buckets must be an integer >= 1, got {buckets!r}.")
    self.row_length, self.micro_batches, self.buckets = int(row_length), micro_batches, buckets
    self.target_multiple = target_multiple
    self._update = make_packed_grpo_update(graphdef, optimizer, loss=loss,
                                           temperature=temperature,
                                           micro_batches=micro_batches,
                                           token_chunk=token_chunk, remat=remat)
    self.shapes: set[tuple[int, int]] = set()
    self.last_stats: dict | None = None
    self._last = (None, None)

  def pack(self, batch) -> dict[str, np.ndarray]:
    """The packed, bucketed form of `batch` (a `GroupBatch` or a mapping with
    its keys; host side)."""
    batch = as_group_batch(batch)
    host = {f.name: np.asarray(getattr(batch, f.name)) for f in dataclasses.fields(batch)
            if getattr(batch, f.name) is not None}
    att, cmask = host["attention_mask"].astype(bool), host["completion_mask"].astype(bool)
    n, c = cmask.shape
    m = self.micro_batches
    if n % m:
      raise ValueError(f"{n} rows are not divisible into {m} micro-batches.")
    per = n // m
    lengths = att.sum(1)
    rows = max(first_fit_decreasing(lengths[i * per:(i + 1) * per], self.row_length).num_rows
               for i in range(m))
    targets = max(int(cmask[i * per:(i + 1) * per].sum()) for i in range(m))
    r = bucket_size(rows, per, self.buckets)
    k = bucket_size(max(targets, 1), per * c, self.buckets, self.target_multiple)
    packed = pack_grpo_batch(host, self.row_length, micro_batches=m, rows_per_micro_batch=r,
                             targets_per_micro_batch=k)
    self.shapes.add((r, k))
    self.last_stats = packing_stats(packed, n, att.shape[1])
    return packed

  def __call__(self, state, batch):
    if self._last[0] is not batch:
      self._last = (batch, self.pack(batch))
    return self._update(state, self._last[1])
