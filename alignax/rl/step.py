"""One GRPO step: rollout -> rewards -> `GroupBatch` -> policy update(s).

`rollout` samples `num_generations` completions per prompt, scores them on the
host with a caller's `score` function, and builds the batch with
`make_group_batch` (plus the KL reference's log-probs when asked); `grpo_step`
runs it and then the update. `alignax.experiments.grpo` and
`benchmarks/grpo_step.py` both call `grpo_step`, so the benchmark times the
step that users run.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import numpy as np
from flax import nnx

from alignax.framework import experiment, sampling, sharding, train
from alignax.rl.batch import GroupBatch, GroupRewards, group_rewards, make_group_batch

# score(tokens int32 [N, C], mask bool [N, C]) -> rewards [N] or [N, F] (NaN = None),
# NumPy on the host; row i is completion i % G of prompt i // G.
ScoreFn = Callable[[np.ndarray, np.ndarray], Any]


@dataclasses.dataclass(frozen=True)
class Rollout:
  """A sampled and scored group batch.

  batch: the `GroupBatch` (placed on the mesh's batch sharding when a mesh is
    given). generation: the sampler's output. rewards: `GroupRewards` (host).
  host_seconds: time spent in `score` and in combining the rewards.
  """
  batch: GroupBatch
  generation: sampling.Generation
  rewards: GroupRewards
  host_seconds: float


def shard_batch(batch: GroupBatch, mesh) -> GroupBatch:
  """Each array of `batch` with its leading (row) dimension on the mesh's
  batch axes (`sharding.batch_sharding`)."""
  return jax.tree.map(lambda v: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim)),
                      batch)


def rollout(model, prompts: Sequence[Sequence[int]], score: ScoreFn, *,
            num_generations: int, max_new_tokens: int, temperature: float = 1.0,
            weights=None, advantage: str = "grpo",
            advantage_options: Optional[Mapping[str, Any]] = None,
            reference=None, mesh=None, **generate_options) -> Rollout:
  """Samples, scores and batches `num_generations` completions of each prompt.

  Args:
    model: the policy (a `Decoder`).
    prompts: P token-id lists.
    score: `score(tokens, mask) -> rewards` on the host, tokens/mask NumPy
      [N, C] (N = P x num_generations, prompt-major), rewards [N] or [N, F]
      per function (NaN where a function returned None).
    num_generations: G.
    max_new_tokens, temperature, mesh, **generate_options: passed to
      `sampling.generate` (top_k, top_p, eos_token_id, pad_token_id, seed, ...).
    weights, advantage, advantage_options: see `make_group_batch`.
    reference: `(graphdef, params)` of the KL reference policy, or None; its
      log-probs of the completions (at `temperature`) become `ref_logprobs`.

  Returns:
    A `Rollout`.
  """
  gen = sampling.generate(model, prompts, max_new_tokens=max_new_tokens,
                          temperature=temperature, num_generations=num_generations,
                          mesh=mesh, **generate_options)
  # Whole batch on every process (gathered when sharded); waits for the device.
  tokens, mask = experiment.to_host((gen.tokens, gen.mask))
  t0 = time.perf_counter()
  rewards = group_rewards(score(tokens, mask), weights, group_size=num_generations)
  host_seconds = time.perf_counter() - t0
  ref_logprobs = None
  if reference is not None:
    ref_logprobs = train.reference_logprobs(*reference, gen.sequences, gen.attention_mask,
                                            gen.tokens, temperature=temperature)
  batch = make_group_batch(gen, rewards, group_size=num_generations, advantage=advantage,
                           advantage_options=advantage_options, ref_logprobs=ref_logprobs)
  if mesh is not None:
    batch = shard_batch(batch, mesh)
  return Rollout(batch, gen, rewards, host_seconds)


class GroupStep(NamedTuple):
  """What `grpo_step` returns: the new train state, the `Rollout` trained on,
  the last update's metrics (device scalars) and the seconds until the
  rollout was ready (sampling, scoring, batching)."""
  state: train.TrainState
  rollout: Rollout
  metrics: dict
  rollout_seconds: float


def grpo_step(update: Callable, graphdef, state: train.TrainState,
              prompts: Sequence[Sequence[int]], score: ScoreFn, *,
              num_iterations: int = 1, **rollout_options) -> GroupStep:
  """One GRPO step: `rollout` from the current policy, then `num_iterations`
  calls of `update(state, batch)` (e.g. `train.make_grpo_update`'s) on the
  same batch, whose `old_logprobs` are the sampler's.

  graphdef, state: the policy (`train.init_train_state`). rollout_options:
  the keyword arguments of `rollout` (num_generations, max_new_tokens, ...).
  """
  t0 = time.perf_counter()
  out = rollout(nnx.merge(graphdef, state.params), prompts, score, **rollout_options)
  rollout_seconds = time.perf_counter() - t0
  metrics = {}
  for _ in range(num_iterations):
    state, metrics = update(state, out.batch)
  return GroupStep(state, out, metrics, rollout_seconds)
