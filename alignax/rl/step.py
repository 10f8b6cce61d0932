"""One GRPO step: rollout -> rewards -> `GroupBatch` -> policy update(s).

`rollout` samples `num_generations` completions per prompt, scores them on the
host with a caller's `score` function, and builds the batch with
`make_group_batch` (plus the KL reference's log-probs when asked); `grpo_step`
runs it and then the update. `alignax.experiments.grpo` and
`benchmarks/grpo_step.py` both call `grpo_step`, so the benchmark times the
step that users run. `rollout` is `start_rollout` (dispatch the sampling,
returns at once) then `finish_rollout` (wait for the tokens, score, batch).

One-step off-policy (`grpo_step(off_policy_steps=1)`): the batch trained at
step k was sampled by the parameters of step k - 1, and the sampling of the
batch of step k + 1 is dispatched, from the parameters of step k, before the
update of step k: with JAX's asynchronous dispatch the host then scores the
next batch (reward functions, detokenisation) while the device runs the
update, and on a mesh whose sampler and trainer used different devices the
two would overlap on the devices too. The trained batch is re-weighted by
the truncated importance weight between the trainer's log-probs before the
update and the sampler's (`off_policy_batch`, TRL's
`vllm_importance_sampling_correction`, docs/algorithms.md §2.3).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import numpy as np
from flax import nnx

from alignax.framework import run_records, sampling, sharding, train
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


def start_rollout(model, prompts: Sequence[Sequence[int]], *, num_generations: int,
                  max_new_tokens: int, temperature: float = 1.0, mesh=None,
                  **generate_options) -> sampling.Generation:
  """Dispatches the sampling of `num_generations` completions per prompt and
  returns at once: the `Generation`'s arrays are computed asynchronously
  (JAX dispatch), so the caller may dispatch more device work (an update)
  before `finish_rollout` waits for the tokens. Arguments as `rollout`."""
  return sampling.generate(model, prompts, max_new_tokens=max_new_tokens,
                           temperature=temperature, num_generations=num_generations,
                           mesh=mesh, **generate_options)


def finish_rollout(gen: sampling.Generation, score: ScoreFn, *, num_generations: int,
                   temperature: float = 1.0, weights=None, advantage: str = "grpo",
                   advantage_options: Optional[Mapping[str, Any]] = None,
                   reference=None, mesh=None) -> Rollout:
  """Waits for `gen`'s tokens, scores them on the host and builds the batch
  (`build_rollout`). Arguments as `rollout`."""
  # Whole batch on every process (gathered when sharded); waits for the device.
  tokens, mask = run_records.to_host((gen.tokens, gen.mask))
  t0 = time.perf_counter()
  rewards = score(tokens, mask)
  score_seconds = time.perf_counter() - t0
  out = build_rollout(gen, rewards, num_generations=num_generations, temperature=temperature,
                      weights=weights, advantage=advantage,
                      advantage_options=advantage_options, reference=reference, mesh=mesh)
  return dataclasses.replace(out, host_seconds=score_seconds + out.host_seconds)


def build_rollout(gen: sampling.Generation, rewards, *, num_generations: int,
                  temperature: float = 1.0, weights=None, advantage: str = "grpo",
                  advantage_options: Optional[Mapping[str, Any]] = None,
                  reference=None, mesh=None) -> Rollout:
  """The `Rollout` of a generation and its rewards per function [N, F] (or
  [N]; NaN = None), already computed: combines them, adds the reference's
  log-probs and places the batch (a rollout restored from a checkpoint is
  rebuilt with this). host_seconds: time spent combining the rewards."""
  t0 = time.perf_counter()
  rewards = group_rewards(rewards, weights, group_size=num_generations)
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


# rollout's options that finish_rollout takes; those not in _SCORING_OPTIONS
# also go to start_rollout.
_FINISH_OPTIONS = ("num_generations", "temperature", "weights", "advantage",
                   "advantage_options", "reference", "mesh")
_SCORING_OPTIONS = ("weights", "advantage", "advantage_options", "reference")


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
      `sampling.generate` (top_k, top_p, eos_token_id, pad_token_id, seed,
      compact, ...).
    weights, advantage, advantage_options: see `make_group_batch`.
    reference: `(graphdef, params)` of the KL reference policy, or None; its
      log-probs of the completions (at `temperature`) become `ref_logprobs`.

  Returns:
    A `Rollout`.
  """
  gen = start_rollout(model, prompts, num_generations=num_generations,
                      max_new_tokens=max_new_tokens, temperature=temperature, mesh=mesh,
                      **generate_options)
  return finish_rollout(gen, score, num_generations=num_generations, temperature=temperature,
                        weights=weights, advantage=advantage,
                        advantage_options=advantage_options, reference=reference, mesh=mesh)


def off_policy_batch(batch: GroupBatch, old_logprobs=None) -> GroupBatch:
  """`batch` (sampled by another policy than the one trained) marked off-policy:
  the sampler's log-probs move to `sampling_logprobs`, and `old_logprobs`
  becomes the trainer's before the update: `old_logprobs` if given (needed
  for several updates on the batch), else None (the update's own log-probs
  without gradient, exact for one update). The loss then weights each token
  by `objectives.sampling_importance_weights(old, sampling)`."""
  if batch.sampling_logprobs is not None:
    return batch.replace(old_logprobs=old_logprobs)
  return batch.replace(sampling_logprobs=batch.old_logprobs, old_logprobs=old_logprobs)


class GroupStep(NamedTuple):
  """What `grpo_step` returns: the new train state, the `Rollout` trained on,
  the last update's metrics (device scalars) and the seconds the step spent
  waiting for rollouts (sampling, scoring, batching). Off-policy:
  `next_rollout` is the batch sampled during this step for the next one."""
  state: train.TrainState
  rollout: Rollout
  metrics: dict
  rollout_seconds: float
  next_rollout: Optional[Rollout] = None


def grpo_step(update: Callable, graphdef, state: train.TrainState,
              prompts: Sequence[Sequence[int]], score: ScoreFn, *,
              num_iterations: int = 1, off_policy_steps: int = 0,
              pending: Optional[Rollout] = None,
              next_prompts: Optional[Sequence[Sequence[int]]] = None,
              next_score: Optional[ScoreFn] = None, next_seed=None,
              **rollout_options) -> GroupStep:
  """One GRPO step: `rollout` from the current policy, then `num_iterations`
  calls of `update(state, batch)` (e.g. `train.make_grpo_update`'s) on the
  same batch, whose `old_logprobs` are the sampler's.

  graphdef, state: the policy (`train.init_train_state`). rollout_options:
  the keyword arguments of `rollout` (num_generations, max_new_tokens, ...).

  off_policy_steps=1: train on `pending` (the batch the previous step
  sampled from the parameters before its update; None at the first step:
  sampled now from `state`), marked with `off_policy_batch` (for
  num_iterations > 1 the trainer's log-probs are computed first); before
  the update is dispatched, start sampling `next_prompts` (scored with
  `next_score`, seeded with `next_seed`) from `state`; after it, finish that
  rollout (the host scores while the device updates). It is returned as
  `next_rollout`: pass it as `pending` to the next step. No `next_prompts`
  (the last step): nothing is sampled ahead.
  """
  if off_policy_steps not in (0, 1):
    raise ValueError(f"off_policy_steps={off_policy_steps}; 0 (on-policy) and 1 are"
                     " supported.")
  if not off_policy_steps and (pending is not None or next_prompts is not None):
    raise ValueError("pending and next_prompts are for off_policy_steps=1.")
  t0 = time.perf_counter()
  if pending is None:
    out = rollout(nnx.merge(graphdef, state.params), prompts, score, **rollout_options)
  else:
    out = pending
  rollout_seconds = time.perf_counter() - t0
  if not off_policy_steps:
    metrics = {}
    for _ in range(num_iterations):
      state, metrics = update(state, out.batch)
    return GroupStep(state, out, metrics, rollout_seconds)

  started = None
  if next_prompts is not None:
    t0 = time.perf_counter()
    options = dict(rollout_options)
    if next_seed is not None:
      options["seed"] = next_seed
    generate_options = {k: v for k, v in options.items() if k not in _SCORING_OPTIONS}
    # Dispatched before the update, which donates these parameters: the
    # runtime lets the sampling read them first.
    started = start_rollout(nnx.merge(graphdef, state.params), next_prompts,
                            **generate_options)
    rollout_seconds += time.perf_counter() - t0
  old = None
  if num_iterations > 1:
    b = out.batch
    old = train.reference_logprobs(graphdef, state.params, b.sequences, b.attention_mask,
                                   b.completion_tokens,
                                   temperature=rollout_options.get("temperature", 1.0))
  batch = off_policy_batch(out.batch, old)
  metrics = {}
  for _ in range(num_iterations):
    state, metrics = update(state, batch)
  next_out = None
  if started is not None:
    t0 = time.perf_counter()
    next_out = finish_rollout(started, next_score or score,
                              **{k: rollout_options[k] for k in _FINISH_OPTIONS
                                 if k in rollout_options})
    rollout_seconds += time.perf_counter() - t0
  return GroupStep(state, dataclasses.replace(out, batch=batch), metrics, rollout_seconds,
                   next_out)
