r"""GRPO (and its family) on your checkpoint, data and reward functions: the main job.

  python -m alignax.experiments.grpo                       # built-in task, runs/grpo
  python -m alignax.experiments.grpo --config=alignax/experiments/configs/grpo.py:tiny \
      --workdir=runs/tiny --config.loss.loss_type=grpo --config.mesh.fsdp=8
  python -m alignax.experiments.grpo --config.model_path=DIR \
      --config.data.train=train.jsonl --config.reward.functions=math_accuracy,think_format \
      --config.reward.weights=1.0,0.1 --workdir=runs/mine

Each step: draw prompts (a deterministic function of (seed, step)) -> sample
`num_generations` completions per prompt -> reward functions (TRL's calling
convention, `agents.scoring.rewards`) -> group-relative advantages -> `num_iterations`
policy updates with the sampler's log-probs as `old_logprobs`. The eval split is
evaluated (greedy reward and accuracy, pass@k / mean@k) before training, every
`eval_every` steps and at the end. Without `data.train`, the built-in task's
prompt/answer rows go through the same data and reward path (`exact_match`).
Rollout speed options (configs/grpo.py): `rollout.compact`, `train.pack` and
`rollout.off_policy_steps=1` (`alignax.rl.step`; its checkpoints also hold the
batch sampled ahead, `alignax.rl.pending`, so a resumed run trains on it).

Under --workdir: metrics.jsonl, TensorBoard events (scalars and sample text),
samples.jsonl, reward.png, summary.json, checkpoints/ (Orbax), and at the end
final_model/ (a Hugging Face directory with tokenizer, chat template and
generation config). Running the same command again resumes from the last
checkpoint and ends with the same parameters as an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import logging
from flax import nnx

from alignax import objectives, rl
from alignax.agents.data import prompt_data, tasks
from alignax.experiments.runtime import launch, model_setup, outputs, pretrained
from alignax.framework import checkpoint, hf, lora, run_records, sharding, train
from alignax.rl import evaluation, pending as pending_lib
from alignax.rl import update as update_lib
from alignax.rl import warm_start
from alignax.rl.evaluation import Policy, SamplingOptions

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "grpo.py")


# ------------------------------------------------------------------- main
def run(config, workdir: str, *, stop_after: int | None = None, progress: bool = True):
  """Trains per `config` in `workdir` (resuming); returns (summary, train state).

  `stop_after` ends the loop after that many steps without a final checkpoint,
  as a kill would (tests use it); a re-run resumes from the last periodic one.
  """
  config, mesh, (task, rewards, (train_data, eval_data)) = launch.start_run(
      config, workdir, DEFAULT_CONFIG, prepare=lambda c: prepare(c, workdir))
  trainee, state = make_trainee(config, workdir, task, rewards, mesh)
  return train_loop(trainee, state, config, workdir, train_data, eval_data,
                    stop_after=stop_after, progress=progress)


# ----------------------------------------------------------------- config
def prepare(config, workdir: str):
  """What can fail on bad input beyond the config (checked first, by
  `launch.start_run`), before anything is written or compiled: reward
  functions, tokenizer and data. Returns (task, rewards, (train data, eval
  data or None))."""
  task = tasks.make_task(config.task.name, seed=config.seed,
                         **config.task.get(config.task.name, {}))
  r = config.reward
  rewards = evaluation.reward_set(r.functions, r.weights, overlong_buffer=r.overlong_buffer,
                                  max_completion_length=config.rollout.max_new_tokens)
  evaluation.accuracy_index(config.eval.accuracy_reward, rewards)
  tokenizer = load_tokenizer(config, workdir, task)
  data = prompt_data.load_prompt_data(
      config.data, tokenizer, max_prompt_length=config.rollout.max_prompt_length,
      builtin=None if config.data.train else builtin_rows(task, config))
  return task, rewards, data


def builtin_rows(task, config):
  """(train rows, eval rows) of the built-in task, as prompt/answer records."""
  return (tasks.records(task.problems("train", 0, config.task.train_size)),
          tasks.records(task.problems("eval", 0, config.eval.size or 256)))


def _model_dir(config, workdir):
  """`model_path`, checked, or `<workdir>/init_model` for the built-in model.
  A `.gguf` file is converted once by `alignax.framework.hf`."""
  path = config.model_path
  if not path:
    return os.path.join(workdir, "init_model")
  if not os.path.isdir(path) and not (path.lower().endswith(".gguf") and os.path.isfile(path)):
    raise FileNotFoundError(
        f"--config.model_path={path!r} is not a directory; give a folder written by"
        " save_pretrained (config.json, *.safetensors and the tokenizer files) or a"
        " .gguf file.")
  return path


def load_tokenizer(config, workdir, task):
  """The policy's tokenizer, without building the model (so data errors come
  before any compilation): the model directory's, or the built-in one."""
  if config.model_path:
    return hf.load_tokenizer(_model_dir(config, workdir))
  return tasks.train_tokenizer(task)  # deterministic: the one init_model gets


# ----------------------------------------------------------------- make_*
def build_policy(config, workdir, task):
  """Loads `model_path`, or builds + warm-starts the built-in model once.

  The built-in model is saved to `<workdir>/init_model` with its tokenizer (the
  same format `--config.model_path` takes, by `pretrained.build_or_load_hf`) and
  re-loaded from there, so a resumed run starts from exactly the same
  weights. Returns (model, tokenizer, model directory).
  """
  path = _model_dir(config, workdir)
  options = model_setup.model_options(config)
  if config.model_path:
    model = hf.from_pretrained(path, **options)
    return model, hf.load_tokenizer(path, model.config), path

  models, tokenizer = pretrained.build_or_load_hf(
      {"policy": path}, functools.partial(build_builtin, config, task), options)
  return models["policy"], tokenizer, path


def build_builtin(config, task):
  """The built-in model of `config.model`, warm-started on `task`'s
  demonstrations (`alignax.rl.warm_start`): ({"policy": model}, tokenizer)."""
  tokenizer, w = tasks.train_tokenizer(task), config.warmup
  model = warm_start.warm_start(
      model_setup.new_decoder(tokenizer, config.model, config.seed), tokenizer, task,
      steps=w.steps, batch_size=w.batch_size, learning_rate=w.learning_rate,
      flawed_fraction=w.flawed_fraction, max_new_tokens=config.rollout.max_new_tokens)
  return {"policy": model}, tokenizer


@dataclasses.dataclass(frozen=True)
class Trainee:
  """The policy being trained as the loop sees it (the train state apart)."""

  graphdef: Any
  policy: Policy
  update: Any
  model_config: Any
  model_dir: str
  beta: float
  use_lora: bool
  ref_params: Any = None

  def reference(self, params):
    """(graphdef, params) of the KL reference (None when beta = 0): the initial
    weights; under LoRA the base, adapters disabled (the same arrays)."""
    if self.beta <= 0:
      return None
    if self.use_lora:
      return lora.disable(self.graphdef, params)
    return self.graphdef, self.ref_params


def make_trainee(config, workdir, task, rewards, mesh):
  """The policy (LoRA adapters, sharding), its optimiser, train state and
  update. Returns (Trainee, train state)."""
  model, tokenizer, model_dir = build_policy(config, workdir, task)
  model = model_setup.apply_lora(model, config.lora, seed=config.seed)
  if mesh is not None:
    sharding.shard_model(model, mesh)
  stop_ids = hf.stop_token_ids(model_dir, tokenizer, model.config)
  policy = Policy(tokenizer, stop_ids, hf.pad_token_id(tokenizer, stop_ids), rewards, mesh)
  t = config.train
  optimizer = train.make_optimizer(t.learning_rate, warmup_steps=t.warmup_steps,
                                   total_steps=t.steps * t.num_iterations,
                                   max_grad_norm=t.max_grad_norm)
  graphdef, state = train.init_train_state(model, optimizer)
  beta, use_lora = config.loss.beta, lora.has_adapters(state.params)
  ref_params = jax.tree.map(jnp.copy, state.params) if beta > 0 and not use_lora else None
  update = make_update(config, graphdef, state, optimizer, model.config)
  # (`model` ends here: its buffers are donated to the first update.)
  return Trainee(graphdef, policy, update, model.config, model_dir, beta, use_lora,
                 ref_params), state


def make_update(config, graphdef, state, optimizer, model_config):
  """The update of `config.train` (`alignax.rl.update.make_update`): the
  group's prompt shared unless `share_prompt=False`; packed rows with
  `pack=True`. It counts the input shapes it was called with (`.shapes`)."""
  t, r, lc = config.train, config.rollout, config.loss
  loss = objectives.PolicyLossConfig.from_mapping(
      lc, max_completion_length=r.max_new_tokens,
      sampling_is_mode=lc.sampling_is_mode if r.off_policy_steps else None)
  limit = model_config.max_position_embeddings - r.max_new_tokens
  share = t.share_prompt is None or t.share_prompt
  return update_lib.make_update(
      graphdef, state.params, optimizer, loss=loss, temperature=r.temperature,
      micro_batches=t.micro_batches, prompt_groups=r.num_generations if share else 1,
      pack=t.pack, row_length=min(r.max_prompt_length, limit) + r.max_new_tokens,
      pack_buckets=t.pack_buckets, attention_impl=model_config.attention_impl)


# ------------------------------------------------------------------- loop
def train_loop(trainee: Trainee, state, config, workdir, data, eval_data, *,
               stop_after=None, progress=True):
  """Resumes from the last checkpoint, runs the steps, evaluates every
  `eval_every`, checkpoints every `checkpoint_every`; at the end the plot, the
  summary and (once every step is done) final_model/. Returns (summary, state)."""
  t = config.train
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 max_to_keep=t.keep_checkpoints)
  restored = ckpt.restore_latest(checkpoint_tree(trainee, state, None, config)[0])
  start = 0 if restored is None else restored[0]
  outputs.truncate_metrics(workdir, start)  # before the writer opens the file
  outputs.truncate_samples(workdir, start if restored is not None else -1)
  writer = run_records.MetricWriter(workdir)
  evaluator = Evaluator(trainee, config, eval_data, workdir, writer)
  if restored is None:
    before = evaluator(state.params, 0)
    pending, extras = None, {"eval_before": before, "seconds": 0.0, "last_eval": before}
    writer.write(0, before)
  else:
    state, pending, extras = restore(trainee, state, restored, config)
    logging.info("Resumed from step %d in %s", start, workdir)
  end = t.steps if stop_after is None else min(t.steps, start + stop_after)
  bar = tqdm.tqdm(range(start, end), initial=start, total=t.steps, desc="GRPO",
                  disable=not progress)
  last_saved = start
  for step in bar:
    kept = f"(step {last_saved}) is kept in {workdir}"
    state, metrics, pending = logged_step(trainee, state, data, config, step, pending,
                                          extras, kept)
    if (step + 1) % t.eval_every == 0 or step + 1 == t.steps:
      extras["last_eval"] = evaluator(state.params, step + 1)
      metrics.update(extras["last_eval"])
    writer.write(step + 1, metrics)
    bar.set_postfix(reward=f"{metrics['train/reward']:.2f}",
                    acc=f"{extras['last_eval'].get('eval/accuracy', float('nan')):.2f}")
    if (step + 1) % t.checkpoint_every == 0 or step + 1 == t.steps:
      saved, more = checkpoint_tree(trainee, state, pending, config)
      extras.update(more)
      ckpt.save(step + 1, saved, extras)
      last_saved = step + 1
  writer.close()
  ckpt.close()
  return finish(trainee, state, config, workdir, extras, last_saved), state


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """`evaluator(params, step)`: held-out metrics ({} without eval data), samples logged."""

  trainee: Trainee
  config: Any
  data: Any
  workdir: str
  writer: Any

  def __call__(self, params, step):
    if self.data is None:
      return {}
    e, c = self.config.eval, self.config
    metrics, samples = evaluation.evaluate(
        nnx.merge(self.trainee.graphdef, params), self.trainee.policy, self.data,
        SamplingOptions.from_mapping(c.rollout), size=e.size, batch_size=e.batch_size,
        log_samples=e.log_samples, num_samples=e.num_samples,
        accuracy=evaluation.accuracy_index(e.accuracy_reward, self.trainee.policy.rewards),
        seed=c.seed, step=step)
    outputs.write_samples(self.workdir, step, samples, self.writer)
    return metrics


def logged_step(trainee: Trainee, state, data, config, step, pending, extras, kept):
  """`train_step` with its metrics (rewards, update, timings; the seconds also
  added to extras); stops on a non-finite loss. Returns (state, metrics, pending)."""
  t0 = time.perf_counter()
  state, update_metrics, metrics, seconds, pending = train_step(
      trainee.update, trainee.graphdef, state, trainee.policy, data, config, step,
      trainee.reference(state.params), pending)
  update_metrics = {f"train/{k}": float(v) for k, v in update_metrics.items()}
  if not np.isfinite(update_metrics["train/loss"]):
    raise FloatingPointError(
        f"Non-finite loss ({update_metrics['train/loss']}) at step {step + 1}. The last"
        f" good checkpoint {kept}/checkpoints; lower"
        " config.train.learning_rate or check the rewards, then re-run to resume.")
  step_seconds = time.perf_counter() - t0
  extras["seconds"] += step_seconds
  metrics.update(update_metrics)
  # Host-side data + reward work vs the whole step (rollout + update).
  metrics.update({"perf/step_seconds": step_seconds, "perf/host_seconds": seconds["host"],
                  "perf/rollout_seconds": seconds["rollout"],
                  "perf/update_seconds": step_seconds - seconds["rollout"],
                  # distinct update input shapes so far in this process (one compile each)
                  "perf/update_compiles": len(trainee.update.shapes)})
  if getattr(trainee.update, "last_stats", None):
    metrics["perf/pack_fill"] = trainee.update.last_stats["fill"]
  return state, metrics, pending


def train_step(update, graphdef, state, policy: Policy, data, config, step, reference,
               pending=None):
  """One GRPO step (`alignax.rl.grpo_step`) on the prompts of `step` (a
  deterministic function of (seed, step)). reference: (graphdef, params) of
  the KL reference, or None. pending: off-policy, the `Rollout` of `step`
  sampled by the step before (None: sampled now); the one of step + 1 is
  returned. Returns (state, update metrics, rollout metrics, seconds, next
  rollout or None); seconds: `rollout` (waiting for rollouts) and `host`
  (drawing rows, decoding, reward functions; benchmarks/grpo_host_overhead.py).
  """
  r = config.rollout
  t0 = time.perf_counter()
  rows = data.indices(config.seed, step, r.prompts_per_step)
  next_options = {}
  if r.off_policy_steps and step + 1 < config.train.steps:
    next_rows = data.indices(config.seed, step + 1, r.prompts_per_step)
    next_options = dict(next_prompts=[data.prompt_ids[i] for i in next_rows],
                        next_score=policy.scorer(data, next_rows, r.num_generations),
                        next_seed=jax.random.fold_in(jax.random.key(config.seed), step + 1))
  draw_seconds = time.perf_counter() - t0

  out = rl.grpo_step(
      update, graphdef, state, [data.prompt_ids[i] for i in rows],
      policy.scorer(data, rows, r.num_generations),
      num_iterations=config.train.num_iterations, num_generations=r.num_generations,
      off_policy_steps=r.off_policy_steps, pending=pending,
      seed=jax.random.fold_in(jax.random.key(config.seed), step),
      weights=policy.rewards.weights, advantage=config.loss.advantage,
      advantage_options={"scale": config.loss.scale_rewards}, reference=reference,
      **next_options, **SamplingOptions.from_mapping(config.rollout).generate_options(policy))
  metrics = evaluation.rollout_metrics(out.rollout, policy.rewards.names)
  host = draw_seconds + (out.rollout.host_seconds if pending is None else 0.0)
  if out.next_rollout is not None:
    host += out.next_rollout.host_seconds
  seconds = {"rollout": draw_seconds + out.rollout_seconds, "host": host}
  return out.state, out.metrics, metrics, seconds, out.next_rollout


def checkpoint_tree(trainee: Trainee, state, pending, config):
  """(what a checkpoint holds, extras to save beside it): the train state
  (under LoRA the adapters and their optimiser state only) and, off-policy,
  the rollout sampled ahead for the next step (`alignax.rl.pending`)."""
  saved = train.checkpoint_state(state)
  if not config.rollout.off_policy_steps:
    return saved, {}
  r = config.rollout
  width = pending_lib.width(r.max_prompt_length, r.max_new_tokens,
                            trainee.model_config.max_position_embeddings)
  arrays, plen = pending_lib.rollout_to_host(pending, pending_lib.template(
      r.prompts_per_step * r.num_generations, r.max_new_tokens, width,
      len(trainee.policy.rewards.names)))
  return {"train": saved, "pending": arrays}, {"pending_prompt_length": plen}


def restore(trainee: Trainee, state, restored, config):
  """(train state, pending rollout or None, extras) of a restored checkpoint."""
  _, saved, extras = restored
  if not config.rollout.off_policy_steps:
    return train.from_checkpoint_state(state, saved), None, extras
  state = train.from_checkpoint_state(state, saved["train"])
  r, lc = config.rollout, config.loss
  pending = pending_lib.rollout_from_host(
      saved["pending"], extras.get("pending_prompt_length"),
      num_generations=r.num_generations, temperature=r.temperature,
      weights=trainee.policy.rewards.weights, advantage=lc.advantage,
      advantage_options={"scale": lc.scale_rewards},
      reference=trainee.reference(state.params), mesh=trainee.policy.mesh)
  return state, pending, extras


def finish(trainee: Trainee, state, config, workdir, extras, last_saved):
  """reward.png and the summary; once every step is done, final_model/ (under
  LoRA merged, and the adapters alone in final_adapter/) and summary.json."""
  done = last_saved == config.train.steps
  data_name = config.data.train or f"the {config.task.name} task"
  outputs.plot_curves(workdir, "reward.png", {
      "reward": ["train/reward", "eval/reward"],
      "held-out accuracy": ["eval/accuracy"],
  }, title=f"GRPO ({config.loss.loss_type}) on {os.path.basename(data_name) or data_name}")
  summary = {f"{k}_before": v for k, v in extras["eval_before"].items()}
  summary.update({f"{k}_after": v for k, v in extras["last_eval"].items()})
  summary.update({"train/steps": last_saved, "train/seconds": extras["seconds"],
                  "train/finished": done})
  if done:
    summary.update(pretrained.export_models(
        workdir, {"model": nnx.merge(trainee.graphdef, state.params)},
        trainee.policy.tokenizer, {"model": trainee.model_dir}, adapters=True))
    run_records.write_summary(workdir, summary)
  return summary


if __name__ == "__main__":
  launch.run_binary(lambda c, workdir: run(c, workdir)[0], DEFAULT_CONFIG, "runs/grpo")
