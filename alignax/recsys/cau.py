"""CAU unlearning steps over a functional recommender (docs/algorithms.md §9).

Wires the pure objectives (`alignax.objectives.unlearning`, `.mgda`) to an NNX
recommender split into `(graphdef, params)`. One jitted step takes a batch of
unlearning samples and returns new params: the three objective gradients come
from a single `jax.jacrev` of the loss vector (one forward pass, K backward
passes), then a combiner from `COMBINERS` turns them into one update:

- "mgda": Pareto-stationary weights `min_norm_weights(G G^T)` (§9.2);
- "fixed": constant weights (the fixed-weight sum and gradient-ascent baselines).

Batch layout (all leading dim B, rows with `row_mask` False are padding):
  prefixes [B, L] int32, targets [B], next_items [B], has_next [B] bool,
  orig_logits [B, I] (the frozen original model's scores), row_mask [B] bool;
  optionally kl_drop [I] bool, items left out of L_KL on every row (see
  `loss_vector`).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx
import optax

from alignax.objectives import curriculum as curricula
from alignax.objectives import mgda
from alignax.objectives import unlearning

OBJECTIVES = ("unlearn", "normal", "kl")


def _drop_target(logits, targets):
  """Sets the forgotten item's logit to a very low value: [B, I], [B]."""
  return jnp.asarray(logits).at[jnp.arange(logits.shape[0]), targets].set(-1e9)


def _drop_items(logits, items):
  """Sets the logits of the items marked in `items` [I] to a very low value."""
  return jnp.where(jnp.asarray(items)[None, :], -1e9, logits)


def loss_vector(graphdef: nnx.GraphDef, params, batch,
                return_logits: bool = False, kl_exclude_target: bool = False):
  """[3] = (L_unlearn, L_normal, L_KL) on one unlearning batch (§9.1).

  With `kl_exclude_target`, L_KL compares the two models' distributions over
  every item except the forgotten one (both renormalised) instead of the full
  distributions of §9.1. [DEVIATION, option] The full KL asks the model to keep
  P_theta0(v_t | prefix), which is exactly what L_unlearn removes; MGDA then
  stops at a Pareto-stationary point before the item is forgotten (observed on
  the synthetic default: forget HR@10 stays near 0.1).

  With `batch["kl_drop"]` ([I] bool, e.g. every item of the unlearning set),
  those items are also left out of L_KL, on every row. [DEVIATION, option]
  The original model's distribution after a prefix holds every forgotten item
  memorised there, not only the row's own: when two forget requests share a
  context (sessions ...a, b1 and ...a, b2), the KL of the b2 rows pulls b1 back
  up after b1's batch was unlearned (observed: the default's seed 1, docs/results.md).
  """
  logits = nnx.merge(graphdef, params)(batch["prefixes"])
  mask = batch["row_mask"]
  kl_logits, kl_orig = logits, batch["orig_logits"]
  if kl_exclude_target:
    kl_logits = _drop_target(logits, batch["targets"])
    kl_orig = _drop_target(kl_orig, batch["targets"])
  if "kl_drop" in batch:
    kl_logits = _drop_items(kl_logits, batch["kl_drop"])
    kl_orig = _drop_items(kl_orig, batch["kl_drop"])
  losses = jnp.stack([
      unlearning.cau_unlearn_loss(logits, batch["targets"], mask),
      unlearning.cau_normal_loss(logits, batch["next_items"],
                                 batch["has_next"] & mask),
      unlearning.kl_to_original(kl_logits, kl_orig, mask),
  ])
  return (losses, logits) if return_logits else losses


def _mgda_weights(grads_list, *, weights):
  del weights
  return mgda.min_norm_weights(mgda.gram_from_grads(grads_list))


def _fixed_weights(grads_list, *, weights):
  del grads_list
  return jnp.asarray(weights, jnp.float32)


# name -> (normalised grads_list, weights=[K]) -> weights [K]
COMBINERS: dict[str, Callable] = {"mgda": _mgda_weights, "fixed": _fixed_weights}


@functools.partial(jax.jit, static_argnames=(
    "graphdef", "tx", "combiner", "normalization", "topk", "kl_exclude_target"))
def unlearn_step(params, opt_state, batch, weights, *, graphdef: nnx.GraphDef,
                 tx: optax.GradientTransformation, combiner: str = "mgda",
                 normalization: str = "none", topk: int = 10,
                 kl_exclude_target: bool = False):
  """One CAU update -> (params, opt_state, metrics).

  `weights` [3] are a runtime argument (used by "fixed", ignored by "mgda"), so
  that one compilation serves every fixed-weight baseline. The keyword
  arguments are static: one compilation per distinct set (and `tx` object).

  Args:
    params, opt_state: the recommender's state and the optimiser's.
    batch: the unlearning batch (see the module docstring).
    weights: [3] fixed objective weights.
    graphdef: the recommender's graph definition.
    tx: optimiser for the combined update.
    combiner: key of `COMBINERS`.
    normalization: gradient normalisation applied before any combiner (see
      `mgda.normalize_gradients`), so that methods differ only in weighting.
    topk: K of the `batch/hr@K` metric (pre-update hit rate of the forgotten
      items), which callers use to stop once a batch is forgotten.
    kl_exclude_target: see `loss_vector`.
  """
  combine = COMBINERS[combiner]

  # One forward pass, three backward passes; has_aux returns the values.
  def f(p):
    losses, logits = loss_vector(graphdef, p, batch, return_logits=True,
                                 kl_exclude_target=kl_exclude_target)
    return losses, (losses, logits)

  jac, (losses, logits) = jax.jacrev(f, has_aux=True)(params)
  grads_list = [jax.tree.map(lambda g, i=i: g[i], jac) for i in range(3)]
  grads_list = mgda.normalize_gradients(grads_list, losses, normalization)
  alpha = jax.lax.stop_gradient(combine(grads_list, weights=weights))
  update = mgda.mgda_combine(grads_list, alpha)
  updates, opt_state = tx.update(update, opt_state, params)
  metrics = {f"loss/{n}": losses[i] for i, n in enumerate(OBJECTIVES)}
  metrics.update({f"alpha/{n}": alpha[i] for i, n in enumerate(OBJECTIVES)})
  metrics[f"batch/hr@{topk}"] = unlearning.hit_rate_at_k(
      logits, batch["targets"], topk, batch["row_mask"])
  return optax.apply_updates(params, updates), opt_state, metrics


def make_unlearn_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                      **options) -> Callable:
  """(params, opt_state, batch, weights) -> (params, opt_state, metrics).

  `unlearn_step` with its static arguments bound; `options` are its keyword
  arguments (`combiner`, `normalization`, `topk`, `kl_exclude_target`).
  """
  return functools.partial(unlearn_step, graphdef=graphdef, tx=tx, **options)


def _per_sample_grad_norms(graphdef, params, prefixes, targets):
  def one(prefix, target):
    g = jax.grad(lambda p: unlearning.cau_unlearn_loss(
        nnx.merge(graphdef, p)(prefix[None]), target[None]))(params)
    return jnp.concatenate([x.ravel() for x in jax.tree.leaves(g)])
  # Chunked through lax.map so memory stays [chunk, P], not [U, P].
  flat = jax.lax.map(lambda a: one(*a), (prefixes, targets), batch_size=64)
  return unlearning.gradient_difficulty(flat)


def _embedding_similarity(graphdef, params, prefixes, targets):
  model = nnx.merge(graphdef, params)
  return unlearning.embedding_difficulty(
      model.encode(prefixes), model.item_embeddings()[targets])


# kind -> (graphdef, params, prefixes [U, L], targets [U]) -> [U].
DIFFICULTIES: dict[str, Callable] = {
    "gradient": _per_sample_grad_norms,  # per-sample |grad L_unlearn|
    "embedding": _embedding_similarity,  # cos(session repr, forgotten item)
}


@functools.partial(jax.jit, static_argnames=("graphdef", "kind"))
def difficulty(params, prefixes, targets, *, graphdef: nnx.GraphDef,
               kind: str) -> jax.Array:
  """[U] difficulty of each unlearning sample (docs/algorithms.md §9.3).

  kind: a key of `DIFFICULTIES`, "gradient" (per-sample |grad L_unlearn|, via
  vmap of grad) or "embedding" (cosine of session representation and
  forgotten item).
  """
  return DIFFICULTIES[kind](graphdef, params, prefixes, targets)


def make_difficulty_fn(graphdef: nnx.GraphDef, kind: str) -> Callable:
  """(params, prefixes [U, L], targets [U]) -> [U]: `difficulty`, bound."""
  return functools.partial(difficulty, graphdef=graphdef, kind=kind)


@functools.partial(jax.jit, static_argnames=("curriculum", "batch_size", "tau"))
def schedule(key, difficulty_scores, *, curriculum: str, batch_size: int,
             tau: float) -> jax.Array:
  """Batches of unlearning-sample indices, [nb, batch_size] with -1 padding.

  curriculum: a key of `objectives.curriculum.CURRICULA` (docs/algorithms.md
  §9.4); `difficulty_scores` [U] (ignored by "none").
  """
  return curricula.CURRICULA[curriculum](key, difficulty_scores, batch_size,
                                         tau)
