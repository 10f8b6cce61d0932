"""The policy update a GRPO step calls: `make_update` builds it.

`train.make_grpo_update` (the group's prompt shared by its completions
unless `prompt_groups=1`), or, with `pack=True`, `packing.PackedGroupUpdate`
(the update on packed rows). Both count the input shapes they were called
with (`.shapes`: one compile each).
"""
from __future__ import annotations

import numpy as np
import jax

from alignax import objectives
from alignax.framework import attention, lora, packing, train


class ShapeCounter:
  """An update that records the shapes of the batches it was called with."""

  def __init__(self, update):
    self.update, self.shapes = update, set()

  def __call__(self, state, batch):
    self.shapes.add(tuple(np.shape(x) for x in jax.tree.leaves(batch)))
    return self.update(state, batch)


def make_update(graphdef, params, optimizer, *, loss: objectives.PolicyLossConfig,
                temperature: float, micro_batches: int, prompt_groups: int = 1,
                pack: bool = False, row_length: int = 0, pack_buckets: int = 4,
                attention_impl: str = ""):
  """`update(state, batch) -> (state, metrics)` of the policy `graphdef`
  (its LoRA adapters, if `params` has any, in training mode).

  prompt_groups: rows that share one prompt (the group size G; 1: none).
  pack: train on packed rows of `row_length` tokens (prompt + completion),
  in `pack_buckets` row-count buckets; needs an `attention_impl` that reads
  only the mask.
  """
  graphdef = lora.training(graphdef, params)
  if pack:
    if not attention.reads_only_mask(attention_impl):
      raise ValueError(f"config.train.pack=True needs an attention implementation that reads"
                       f" only the mask; the model has attention_impl="
                       f"{attention_impl!r}. Set config.train.pack=False.")
    return packing.PackedGroupUpdate(graphdef, optimizer, loss=loss, row_length=row_length,
                                     temperature=temperature, micro_batches=micro_batches,
                                     buckets=pack_buckets)
  return ShapeCounter(train.make_grpo_update(
      graphdef, optimizer, loss=loss, temperature=temperature,
      micro_batches=micro_batches, prompt_groups=prompt_groups))
