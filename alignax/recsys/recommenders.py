"""Session-based recommenders (Flax NNX): GRU4Rec, SASRec, BERT4Rec.

Conventions shared by every model (docs/algorithms.md §9.5):
- item ids are 1..num_items, 0 is padding; sequences are LEFT-padded to a fixed
  length L so that the most recent item is always at position L-1;
- `encode(seqs)` [B, L] -> [B, D] is the session representation that predicts
  the item after the sequence, `item_embeddings()` -> [num_items + 1, D] the
  (tied) output embeddings, and `__call__(seqs)` -> [B, num_items + 1] the
  full-ranking scores with the padding item at a large negative value;
- `loss(seqs, key)` -> (sum of next-item cross-entropies, count) on full
  training sessions [B, L], so that micro-batches sum to the full-batch loss.

Models are used functionally: `graphdef, state = nnx.split(model)` once, then
jitted functions `nnx.merge(graphdef, state)` inside. Dropout keys are passed
explicitly (`key=None` means deterministic evaluation), so no RNG lives in the
state.

Default sizes follow the papers: GRU4Rec (Hidasi et al., 2016) one GRU layer of
100 units; SASRec (Kang & McAuley, 2018) d = 50, 2 blocks, 1 head, dropout 0.2;
BERT4Rec (Sun et al., 2019) d = 64, 2 layers, 2 heads, mask probability 0.2.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import chex
import jax
import jax.numpy as jnp
from flax import nnx
import optax

from alignax.objectives import unlearning

PAD = 0
_NEG = -1e9  # finite, so softmax/KL stay NaN-free on the padding item


def _dropout(x, rate, key):
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0)


def _split(key, n):
  return [None] * n if key is None else list(jax.random.split(key, n))


def _positions(seqs):
  """Position of each item counted from the session's first real item: [B, L].

  Counting from the start (not from the padded window) keeps a causal model's
  prediction after a prefix identical whether the prefix is scored on its own
  or inside a longer training session, and makes left padding irrelevant.
  """
  return jnp.maximum(jnp.cumsum(seqs != PAD, axis=1) - 1, 0)


def _mask_pad_logits(logits):
  return logits.at[..., PAD].set(_NEG)


class _Recommender(nnx.Module):
  """Shared scoring and causal next-item loss; subclasses define `hidden`."""

  num_items: int

  def item_embeddings(self) -> jax.Array:
    """[num_items + 1, D] tied output embeddings (row 0 = padding)."""
    return self.item_emb.embedding[...][: self.num_items + 1]

  def scores(self, h: jax.Array) -> jax.Array:
    """[..., D] representations -> [..., num_items + 1] item logits."""
    return _mask_pad_logits(h @ self.item_embeddings().T)

  def encode(self, seqs: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """[B, L] left-padded prefixes -> [B, D] representation after the last item."""
    return self.hidden(seqs, key)[:, -1]

  def __call__(self, seqs: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """[B, L] left-padded prefixes -> [B, num_items + 1] next-item logits."""
    chex.assert_rank(seqs, 2)
    return self.scores(self.encode(seqs, key))

  def loss(self, seqs: jax.Array, key: jax.Array | None = None):
    """Causal next-item CE at every position of [B, L] sessions -> (sum, count)."""
    inputs, targets = seqs[:, :-1], seqs[:, 1:]
    logits = self.scores(self.hidden(inputs, key))
    valid = (targets != PAD) & (inputs != PAD)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(jnp.where(valid, ce, 0.0)), jnp.sum(valid)


class GRU4Rec(_Recommender):
  """Embedding -> 1-layer GRU -> hidden state, scored against tied embeddings."""

  def __init__(self, num_items: int, *, hidden: int = 100, dropout: float = 0.0,
               max_len: int = 50, rngs: nnx.Rngs):
    del max_len  # recurrent: any length
    self.num_items = num_items
    self.dropout = dropout
    self.item_emb = nnx.Embed(num_items + 1, hidden, rngs=rngs)
    self.cell = nnx.GRUCell(hidden, hidden, rngs=rngs)

  def hidden(self, seqs, key=None):
    """[B, L] -> [B, L, D]; padding steps leave the state unchanged."""
    x = _dropout(self.item_emb(seqs), self.dropout, key)
    h0 = jnp.zeros((seqs.shape[0], x.shape[-1]), x.dtype)

    def step(h, inp):
      x_t, tok = inp
      h_new, _ = self.cell(h, x_t)
      h = jnp.where((tok != PAD)[:, None], h_new, h)
      return h, h

    _, hs = jax.lax.scan(step, h0, (x.swapaxes(0, 1), seqs.T))
    return hs.swapaxes(0, 1)


class _Block(nnx.Module):
  """Transformer block: multi-head self-attention + pointwise FFN."""

  def __init__(self, d, heads, ffn, act, pre_ln, dropout, *, rngs):
    self.heads, self.act, self.pre_ln, self.dropout = heads, act, pre_ln, dropout
    self.qkv = nnx.Linear(d, 3 * d, rngs=rngs)
    self.out = nnx.Linear(d, d, rngs=rngs)
    self.ff1 = nnx.Linear(d, ffn, rngs=rngs)
    self.ff2 = nnx.Linear(ffn, d, rngs=rngs)
    self.ln1 = nnx.LayerNorm(d, rngs=rngs)
    self.ln2 = nnx.LayerNorm(d, rngs=rngs)

  def __call__(self, x, mask, key):
    """x [B, L, D], mask [B, 1, L, L] bool (True = may attend)."""
    k1, k2, k3 = _split(key, 3)
    b, l, d = x.shape
    y = self.ln1(x) if self.pre_ln else x
    q, k, v = jnp.split(self.qkv(y).reshape(b, l, 3, self.heads, -1), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]
    att = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1])
    att = jax.nn.softmax(jnp.where(mask, att, _NEG), axis=-1)
    att = _dropout(att, self.dropout, k1)
    y = self.out(jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, l, d))
    x = x + _dropout(y, self.dropout, k2)
    if not self.pre_ln:
      x = self.ln1(x)
    y = self.ln2(x) if self.pre_ln else x
    y = self.ff2(_dropout(self.act(self.ff1(y)), self.dropout, k3))
    x = x + y
    return x if self.pre_ln else self.ln2(x)


class SASRec(_Recommender):
  """Causal self-attention recommender (pre-LN blocks, learned positions)."""

  def __init__(self, num_items: int, *, hidden: int = 50, num_blocks: int = 2,
               num_heads: int = 1, dropout: float = 0.2, max_len: int = 50,
               rngs: nnx.Rngs):
    self.num_items, self.dropout = num_items, dropout
    self.item_emb = nnx.Embed(num_items + 1, hidden, rngs=rngs)
    self.pos_emb = nnx.Embed(max_len, hidden, rngs=rngs)
    self.blocks = nnx.List([
        _Block(hidden, num_heads, hidden, jax.nn.relu, True, dropout, rngs=rngs)
        for _ in range(num_blocks)])
    self.final_ln = nnx.LayerNorm(hidden, rngs=rngs)

  def hidden(self, seqs, key=None):
    b, l = seqs.shape
    keys = _split(key, len(self.blocks) + 1)
    x = self.item_emb(seqs) * jnp.sqrt(self.item_emb.features)
    x = x + self.pos_emb(_positions(seqs))
    x = _dropout(x, self.dropout, keys[0]) * (seqs != PAD)[..., None]
    valid = seqs != PAD
    causal = jnp.tril(jnp.ones((l, l), bool))
    # Padding queries may see themselves so that no softmax row is empty.
    mask = (causal[None] & valid[:, None, :]) | jnp.eye(l, dtype=bool)[None]
    for blk, k in zip(self.blocks, keys[1:]):
      x = blk(x, mask[:, None], k) * valid[..., None]
    return self.final_ln(x)


class BERT4Rec(_Recommender):
  """Bidirectional Transformer trained by cloze; predicts by appending [MASK]."""

  def __init__(self, num_items: int, *, hidden: int = 64, num_blocks: int = 2,
               num_heads: int = 2, dropout: float = 0.1, max_len: int = 50,
               mask_prob: float = 0.2, rngs: nnx.Rngs):
    self.num_items, self.dropout, self.mask_prob = num_items, dropout, mask_prob
    self.mask_id = num_items + 1
    self.item_emb = nnx.Embed(num_items + 2, hidden, rngs=rngs)
    self.pos_emb = nnx.Embed(max_len, hidden, rngs=rngs)
    self.emb_ln = nnx.LayerNorm(hidden, rngs=rngs)
    self.blocks = nnx.List([
        _Block(hidden, num_heads, 4 * hidden, jax.nn.gelu, False, dropout,
               rngs=rngs) for _ in range(num_blocks)])
    self.head = nnx.Linear(hidden, hidden, rngs=rngs)
    self.head_ln = nnx.LayerNorm(hidden, rngs=rngs)

  def hidden(self, seqs, key=None):
    b, l = seqs.shape
    keys = _split(key, len(self.blocks) + 1)
    x = self.item_emb(seqs) + self.pos_emb(_positions(seqs))
    x = _dropout(self.emb_ln(x), self.dropout, keys[0])
    valid = seqs != PAD
    mask = valid[:, None, :] | jnp.eye(l, dtype=bool)[None]
    for blk, k in zip(self.blocks, keys[1:]):
      x = blk(x, mask[:, None], k)
    return self.head_ln(jax.nn.gelu(self.head(x)))

  def encode(self, seqs, key=None):
    # Drop the oldest item and append [MASK]; its output predicts the next item.
    masked = jnp.concatenate(
        [seqs[:, 1:], jnp.full((seqs.shape[0], 1), self.mask_id, seqs.dtype)], 1)
    return self.hidden(masked, key)[:, -1]

  def loss(self, seqs, key=None):
    """Cloze CE on randomly masked items (the last item always masked in half
    of the sessions, matching next-item use at test time) -> (sum, count)."""
    if key is None:
      key = jax.random.key(0)
    k_mask, k_last, k_drop = jax.random.split(key, 3)
    valid = seqs != PAD
    masked = jax.random.bernoulli(k_mask, self.mask_prob, seqs.shape) & valid
    last = jax.random.bernoulli(k_last, 0.5, (seqs.shape[0], 1))
    masked = masked | (last & (jnp.arange(seqs.shape[1]) == seqs.shape[1] - 1)
                       & valid)
    inputs = jnp.where(masked, self.mask_id, seqs)
    logits = self.scores(self.hidden(inputs, k_drop))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, seqs)
    return jnp.sum(jnp.where(masked, ce, 0.0)), jnp.sum(masked)


RECOMMENDERS: dict[str, type[_Recommender]] = {
    "gru4rec": GRU4Rec,
    "sasrec": SASRec,
    "bert4rec": BERT4Rec,
}


def make_recommender(name: str, num_items: int, *, seed: int = 0,
                     **kwargs) -> _Recommender:
  """Builds a recommender by registry name with keyword overrides of its sizes."""
  return RECOMMENDERS[name](num_items, rngs=nnx.Rngs(seed), **kwargs)


# ----------------------------------------------------------------------------
# Functional training and evaluation.


@functools.partial(jax.jit, static_argnames=("graphdef", "tx"))
def train_step(params, opt_state, seqs, key, *, graphdef: nnx.GraphDef,
               tx: optax.GradientTransformation):
  """One next-item training step -> (params, opt_state, loss).

  `seqs` [B, L] full training sessions, `key` the dropout key. `graphdef` and
  `tx` are static: one compilation per (model structure, optimiser object).
  """

  def loss_fn(p):
    total, count = nnx.merge(graphdef, p).loss(seqs, key)
    return total / jnp.maximum(count, 1)

  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


@dataclasses.dataclass(frozen=True)
class Trainer:
  """Jitted next-item training over NNX state.

  Attributes:
    graphdef: from `nnx.split(model)`.
    tx: optax transformation.
  """

  graphdef: nnx.GraphDef
  tx: optax.GradientTransformation

  def init(self, params: nnx.State):
    return params, self.tx.init(params)

  def make_train_step(self) -> Callable:
    """(params, opt_state, seqs [B, L], key) -> (params, opt_state, loss)."""
    return functools.partial(train_step, graphdef=self.graphdef, tx=self.tx)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def logits(params, seqs, *, graphdef: nnx.GraphDef) -> jax.Array:
  """(params, prefixes [B, L]) -> [B, num_items + 1] logits."""
  return nnx.merge(graphdef, params)(seqs)


def logits_fn(graphdef: nnx.GraphDef) -> Callable:
  """Jitted (params, prefixes [B, L]) -> [B, num_items + 1] logits."""
  return functools.partial(logits, graphdef=graphdef)


def evaluate(graphdef: nnx.GraphDef, params: nnx.State, prefixes, targets, *,
             ks=(5, 10, 20), batch_size: int = 512) -> dict[str, float]:
  """Full-ranking HR@K / NDCG@K of `targets` [N] after `prefixes` [N, L].

  Batches are padded to `batch_size` so that one compilation serves all.

  Returns:
    {"hr@K": float, "ndcg@K": float} for every K, averaged over the N rows.
  """
  ks = tuple(ks)
  sums: dict[str, float] = {}
  n = len(targets)
  for start in range(0, n, batch_size):
    rows = min(batch_size, n - start)
    pad = batch_size - rows
    p = jnp.pad(jnp.asarray(prefixes[start:start + rows]), ((0, pad), (0, 0)))
    t = jnp.pad(jnp.asarray(targets[start:start + rows]), (0, pad))
    out = _metric_sums(params, p, t, jnp.arange(batch_size) < rows,
                       graphdef=graphdef, ks=ks)
    for k, v in out.items():
      sums[k] = sums.get(k, 0.0) + float(v)
  return {k: v / max(n, 1) for k, v in sums.items()}


@functools.partial(jax.jit, static_argnames=("graphdef", "ks"))
def _metric_sums(params, prefixes, targets, row_mask, *, graphdef, ks):
  """Per-batch metric sums (not means, so that batches combine exactly)."""
  scores = nnx.merge(graphdef, params)(prefixes)
  count = jnp.sum(row_mask.astype(jnp.float32))
  out = {}
  for k in ks:
    out[f"hr@{k}"] = unlearning.hit_rate_at_k(
        scores, targets, k, row_mask) * count
    out[f"ndcg@{k}"] = unlearning.ndcg_at_k(
        scores, targets, k, row_mask) * count
  return out
