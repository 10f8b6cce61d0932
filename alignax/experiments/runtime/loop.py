"""The resumable method x iteration loop of the EM binaries (`run_phases`)
and what it needs: each iteration's slice of the pool, the finite-state check,
the per-method summary."""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from alignax.experiments.runtime.outputs import truncate_metrics
from alignax.framework import run_records


def iteration_slice(pool: Sequence, iteration: int, count: int) -> Sequence:
  """The `count` items of `pool` that EM iteration `iteration` (0-based) works on:
  a window moving by `count` per iteration, wrapping round at the pool's end."""
  start = (iteration * count) % max(len(pool) - count + 1, 1)
  return pool[start:start + count]


def check_finite(state, where: str, ckpt=None, workdir: str | None = None) -> None:
  """Stops the run if `state` holds a NaN/inf (a diverged update), before it is
  checkpointed, so the last good checkpoint of `ckpt` stays the newest."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  floats = [x for x in jax.tree.leaves(state) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  # One host sync for the whole state.
  if floats and not bool(jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in floats]))):
    if ckpt is None:
      kept = "Nothing was saved from it"
    else:
      last = ckpt.latest_step()
      kept = (f"The last good checkpoint ({'none' if last is None else f'step {last}'})"
              f" is kept in {workdir}/checkpoints")
    raise FloatingPointError(
        f"Non-finite values (NaN or inf) in the state after {where}. {kept}; lower the"
        " learning rates or check the weights, then re-run to resume.")


# phase(state, iteration, index, extras) -> (state, stats, scores)
Phase = Callable[[Any, int, int, dict], tuple]


@dataclasses.dataclass(frozen=True)
class Phases:
  """What `run_phases` runs: each method of `methods` {method: phase}, in
  order, for `iterations` phases, from a copy of the warm-up state.

  A phase is `phase(state, iteration, index, extras) -> (state, stats,
  scores)` (index = phase number over all methods; `scores` its held-out
  evaluation; `extras` the JSON-able dict checkpointed with the state, which
  the phases may update).

  start() -> extras: evaluates the warm-up on a fresh run (it holds
    "seconds", the time so far); `extras["curves"][method]` then collects
    each phase's scores.
  start_scores(extras, method): a method's iteration-0 scores (logged at
    step 0).
  summarize(extras) -> the summary dict; plot(extras): the run's plot.
  desc: the progress bar's label; postfix: {progress-bar label: score key}.
  on_method_end(method, state): runs after a method's last phase, before its
    checkpoint (so a run killed in between runs it again on resume); the
    binaries export their final models there.
  """
  methods: Mapping[str, Phase]
  iterations: int
  start: Callable[[], dict]
  start_scores: Callable[[dict, str], dict]
  summarize: Callable[[dict], dict]
  plot: Callable[[dict], Any]
  desc: str = "EM"
  postfix: Mapping[str, str] = dataclasses.field(default_factory=dict)
  on_method_end: Optional[Callable[[str, Any], None]] = None


def run_phases(workdir: str, fresh, phases: Phases, *, stop_after: int | None = None,
               progress: bool = True) -> dict:
  """The resumable loop of the EM binaries: runs `phases` (see `Phases`) from
  copies of the warm-up state `fresh` (a pytree).

  After every phase the state and `extras` are checkpointed under
  `workdir/checkpoints`, and the row `{"iteration", "<method>/<stat or
  score>"}` goes to metrics.jsonl at step index + 1; a re-run resumes after
  the last checkpoint. `stop_after` ends after that many phases, as a kill
  would. At the end: `phases.plot(extras)`, and `phases.summarize(extras)`
  is returned and, once every phase is done, written to
  `workdir/summary.json`.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import tqdm  # pylint: disable=g-import-not-at-top
  from alignax.framework import checkpoint, train  # pylint: disable=g-import-not-at-top

  methods, iterations = list(phases.methods), phases.iterations
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=2)
  # Under LoRA checkpoints hold the adapters and their optimiser state only.
  restored = ckpt.restore_latest(train.checkpoint_state(fresh))
  if restored is None:
    done, state, extras = 0, fresh, phases.start()
    extras.setdefault("curves", {m: [] for m in methods})
  else:
    done, saved, extras = restored
    state = train.from_checkpoint_state(fresh, saved)
  truncate_metrics(workdir, done)
  writer = run_records.MetricWriter(workdir)
  if restored is None:
    writer.write(0, {f"{m}/{k}": v for m in methods
                     for k, v in phases.start_scores(extras, m).items()})
  total = len(methods) * iterations
  end = total if stop_after is None else min(total, done + stop_after)
  bar = tqdm.tqdm(range(done, end), initial=done, total=total, desc=phases.desc,
                  disable=not progress)
  for index in bar:
    method, it = methods[index // iterations], index % iterations
    if it == 0:
      # Every method starts from the warm-up (under LoRA: fresh adapters, same base).
      state = train.from_checkpoint_state(
          fresh, jax.tree.map(jnp.copy, train.checkpoint_state(fresh)))
    t0 = time.perf_counter()
    state, stats, scores = phases.methods[method](state, it, index, extras)
    check_finite(state, f"{method} iteration {it + 1} (step {index + 1})", ckpt, workdir)
    extras["curves"][method].append(scores)
    extras["seconds"] += time.perf_counter() - t0
    writer.write(index + 1, {"iteration": it + 1,
                             **{f"{method}/{k}": v for k, v in {**stats, **scores}.items()}})
    bar.set_postfix(method=method,
                    **{k: f"{scores[v]:.1f}" for k, v in phases.postfix.items()})
    if phases.on_method_end is not None and it == iterations - 1:
      phases.on_method_end(method, state)
    ckpt.save(index + 1, train.checkpoint_state(state), extras)
  writer.close()
  ckpt.close()
  phases.plot(extras)
  summary = phases.summarize(extras)
  if end == total:
    run_records.write_summary(workdir, summary)
  return summary


def per_method_summary(extras: dict, methods: Sequence[str], main: str,
                       metrics: Mapping[str, str], start_scores: Callable) -> dict:
  """`<prefix>eval/<name>_{before,after,per_iteration}` for every method and
  `metrics` {name: score key}; the prefix is "" for `main`, "<method>/" else."""
  out = {}
  for m in methods:
    before, curve = start_scores(extras, m), extras["curves"][m]
    prefix = "" if m == main else f"{m}/"
    last = curve[-1] if curve else before
    for name, key in metrics.items():
      out[f"{prefix}eval/{name}_before"] = before[key]
      out[f"{prefix}eval/{name}_after"] = last[key]
      out[f"{prefix}eval/{name}_per_iteration"] = [c[key] for c in curve]
  return out
