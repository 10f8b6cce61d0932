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
Rollout speed options (configs/grpo.py): `rollout.compact` (finished rows
leave the decode), `train.pack` (the update on packed rows) and
`rollout.off_policy_steps=1` (the next batch is sampled by the previous
parameters while the current one trains, with the truncated importance-
sampling correction; its checkpoints also hold that sampled batch, so a
resumed run trains on the same one).

Under --workdir: metrics.jsonl, TensorBoard events (scalars and sample text),
samples.jsonl, reward.png, summary.json, checkpoints/ (Orbax), and at the end
final_model/ (a Hugging Face directory with tokenizer, chat template and
generation config). Running the same command again resumes from the last
checkpoint and ends with the same parameters as an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import json
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
from alignax.agents.scoring import rewards as rewards_lib
from alignax.experiments import common
from alignax.framework import (attention, checkpoint, hf, lora, packing, run_records, sampling,
                               sharding, train)
from alignax.framework.config import ModelConfig
from alignax.framework.model import Decoder

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "grpo.py")


def _pad_right(rows, length, pad):
  ids = np.full((len(rows), length), pad, np.int32)
  mask = np.zeros((len(rows), length), bool)
  for i, r in enumerate(rows):
    if len(r) > length:
      raise ValueError(f"Answer of {len(r)} tokens exceeds max_new_tokens={length}.")
    ids[i, :len(r)], mask[i, :len(r)] = r, True
  return ids, mask


def sft_batch(tokenizer, problems, max_new_tokens):
  """Teacher-forcing batch (prompt left-padded, answer + eos right-padded); the
  prompts are encoded as the RL data are (`prompt_data.PromptEncoder`)."""
  prompts = prompt_data.PromptEncoder(tokenizer).encode([p.prompt for p in problems])
  p_len = sampling.bucket_length(max(map(len, prompts)), 1 << 30)
  p_ids, p_mask = sampling.pad_prompts(prompts, p_len, tokenizer.pad_token_id)
  c_ids, c_mask = _pad_right(tasks.encode_answers(tokenizer, problems),
                             max_new_tokens, tokenizer.pad_token_id)
  return dict(sequences=np.concatenate([p_ids, c_ids], 1),
              attention_mask=np.concatenate([p_mask, c_mask], 1),
              completion_tokens=c_ids, completion_mask=c_mask)


def demonstrations(task, index, count, flawed_fraction):
  """Warm-start demonstrations, a `flawed_fraction` of them written by a flawed
  demonstrator (`task.flawed_answer`): the imitation policy then mixes the right
  and the flawed behaviour, and only the verifiable reward can tell them apart."""
  problems = task.problems("train", index, count)
  rng = np.random.RandomState(index)
  flawed = rng.rand(count) < flawed_fraction
  return [tasks.Problem(p.prompt, task.flawed_answer(p)) if f else p
          for p, f in zip(problems, flawed)]


def warm_start(model, tokenizer, task, config):
  """A short supervised warm-start so the policy starts with non-zero reward."""
  w = config.warmup
  optimizer = train.make_optimizer(w.learning_rate, warmup_steps=10, total_steps=w.steps)
  graphdef, state = train.init_train_state(model, optimizer)
  update = train.make_sft_update(graphdef, optimizer)
  for i in tqdm.trange(w.steps, desc="warm-start SFT", leave=False):
    batch = sft_batch(tokenizer, demonstrations(task, 10**6 + i, w.batch_size,
                                                w.flawed_fraction),
                      config.rollout.max_new_tokens)
    state, _ = update(state, batch)
  return nnx.merge(graphdef, state.params)


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


def build_policy(config, workdir, task):
  """Loads `model_path`, or builds + warm-starts the built-in model once.

  The built-in model is saved to `<workdir>/init_model` with its tokenizer (the
  same format `--config.model_path` takes, by `common.build_or_load_hf`) and
  re-loaded from there, so a resumed run starts from exactly the same
  weights. Returns (model, tokenizer, model directory).
  """
  path = _model_dir(config, workdir)
  options = common.model_options(config)
  if config.model_path:
    model = hf.from_pretrained(path, **options)
    return model, hf.load_tokenizer(path, model.config), path

  def build():
    tokenizer = tasks.train_tokenizer(task)
    model_config = ModelConfig(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        **config.model.to_dict())
    model = warm_start(Decoder(model_config, seed=config.seed), tokenizer, task, config)
    return {"policy": model}, tokenizer
  models, tokenizer = common.build_or_load_hf({"policy": path}, build, options)
  return models["policy"], tokenizer, path


def builtin_rows(task, config):
  """(train rows, eval rows) of the built-in task, as prompt/answer records."""
  return (tasks.records(task.problems("train", 0, config.task.train_size)),
          tasks.records(task.problems("eval", 0, config.eval.size or 256)))


def _split_list(value, cast=str):
  """A config list given as "a,b" (command line) or a sequence (Python)."""
  items = value.split(",") if isinstance(value, str) else list(value or ())
  return [cast(x.strip() if isinstance(x, str) else x) for x in items
          if not (isinstance(x, str) and not x.strip())]


def make_rewards(config) -> rewards_lib.RewardSet:
  """The `config.reward` functions (unknown names, files, weights fail here)."""
  try:
    weights = _split_list(config.reward.weights, float)
  except ValueError:
    raise ValueError(f"config.reward.weights={config.reward.weights!r}: give numbers"
                     " separated by commas, e.g. 1.0,0.1.") from None
  max_len = config.rollout.max_new_tokens
  settings = {"overlong_penalty": dict(
      max_completion_length=max_len,
      overlong_buffer=config.reward.overlong_buffer or max(1, max_len // 4))}
  return rewards_lib.RewardSet(_split_list(config.reward.functions), weights, settings)


@dataclasses.dataclass
class Policy:
  """What the loop needs to sample from and score the policy (host side)."""

  tokenizer: Any
  stop_ids: tuple[int, ...]
  pad_id: int
  rewards: rewards_lib.RewardSet
  mesh: Any


def _generate_options(config, temperature, policy: Policy) -> dict:
  """`sampling.generate` options of the rollout config (no top-k/top-p when greedy)."""
  r = config.rollout
  return dict(max_new_tokens=r.max_new_tokens, temperature=temperature,
              top_k=(r.top_k or None) if temperature else None,
              top_p=(r.top_p if r.top_p < 1.0 else None) if temperature else None,
              eos_token_id=policy.stop_ids, pad_token_id=policy.pad_id, mesh=policy.mesh,
              compact=r.compact)


def _score(policy: Policy, data, rows, num_generations, tokens, mask):
  """(RewardResult, texts) of host `tokens`/`mask` [N, C], completion i of
  `data.examples[rows[i // num_generations]]`."""
  ids = [row[m].tolist() for row, m in zip(tokens, mask)]
  texts = policy.tokenizer.batch_decode(ids, skip_special_tokens=True)
  examples = [data.examples[i] for i in rows for _ in range(num_generations)]
  return policy.rewards.score(examples, ids, texts), texts


def _sample(model, policy: Policy, data, rows, config, *, temperature, num_generations, seed):
  """Samples and scores completions of `rows` of `data` (evaluation):
  (RewardResult, texts)."""
  gen = sampling.generate(model, [data.prompt_ids[i] for i in rows],
                          num_generations=num_generations, seed=seed,
                          **_generate_options(config, temperature, policy))
  # Whole batch on every process (gathered across processes when sharded).
  tokens, mask = run_records.to_host((gen.tokens, gen.mask))
  return _score(policy, data, rows, num_generations, tokens, mask)


def _accuracy_index(config, rewards) -> int:
  name = config.eval.accuracy_reward
  if not name:
    return 0
  if name not in rewards.names:
    raise ValueError(f"config.eval.accuracy_reward={name!r} is not one of the reward"
                     f" functions {list(rewards.names)}.")
  return rewards.names.index(name)


def evaluate(model, policy: Policy, data, config, step: int):
  """Greedy reward/accuracy and pass@k / mean@k on the eval split.

  Returns (metrics, samples): `eval/reward`, `eval/reward/<name>`,
  `eval/accuracy`, `eval/pass@k`, `eval/mean@k`; and the first
  `config.eval.log_samples` greedy (prompt, completion, rewards) records.
  """
  e = config.eval
  n = len(data) if not e.size else min(e.size, len(data))
  acc = _accuracy_index(config, policy.rewards)
  greedy, per_k, samples = [], [], []
  for lo in range(0, n, e.batch_size):
    rows = np.arange(lo, min(n, lo + e.batch_size))
    result, texts = _sample(model, policy, data, rows, config, temperature=0.0,
                            num_generations=1, seed=0)
    greedy.append(result)
    for j in range(min(len(rows), e.log_samples - len(samples))):
      ex = data.examples[rows[j]]
      samples.append({"prompt": prompt_data.prompt_key(ex.prompt), "completion": texts[j],
                      "ground_truth": ex.ground_truth, "reward": result.total[j],
                      **{f"reward/{k}": result.per_function[j, i]
                         for i, k in enumerate(result.names)}})
    if e.num_samples:
      key = jax.random.fold_in(jax.random.key(config.seed + 1), step * 100003 + lo)
      result_k, _ = _sample(model, policy, data, rows, config,
                            temperature=config.rollout.temperature,
                            num_generations=e.num_samples, seed=key)
      per_k.append(result_k.per_function[:, acc].reshape(len(rows), e.num_samples))
  result = rewards_lib.RewardResult(
      np.concatenate([g.per_function for g in greedy]),
      np.concatenate([g.total for g in greedy]), greedy[0].names)
  metrics = result.metrics("eval/")
  metrics["eval/accuracy"] = float(np.mean(np.nan_to_num(result.per_function[:, acc]) >= 1.0))
  if per_k:
    correct = np.nan_to_num(np.concatenate(per_k)) >= 1.0
    k = e.num_samples
    metrics[f"eval/pass@{k}"] = float(correct.any(axis=1).mean())
    metrics[f"eval/mean@{k}"] = float(correct.mean())
  return metrics, samples


def train_step(update, graphdef, state, policy: Policy, data, config, step, reference,
               pending=None):
  """One GRPO step (`alignax.rl.grpo_step`): draws the prompts of `step` (a
  deterministic function of (seed, step)), samples `num_generations`
  completions each, scores them with the reward functions, builds the
  `GroupBatch` (`alignax.rl.make_group_batch`: weights, unscorable samples,
  `config.loss.advantage`) and runs `num_iterations` updates.

  reference: (graphdef, params) of the KL reference policy, or None.
  pending: with `rollout.off_policy_steps=1`, the `Rollout` of `step` that the
  step before sampled (None: sampled now); the rollout of step + 1 is then
  sampled from the parameters before this step's update (none after the
  last step) and returned.
  Returns (state, update metrics, rollout metrics, seconds, next rollout or
  None): seconds has `rollout` (waiting for rollouts) and `host` (drawing
  rows, decoding completions, calling the reward functions, None handling;
  timed for the overhead figure, benchmarks/grpo_host_overhead.py).
  """
  r = config.rollout
  t0 = time.perf_counter()
  rows = data.indices(config.seed, step, r.prompts_per_step)
  next_options = {}
  if r.off_policy_steps and step + 1 < config.train.steps:
    next_rows = data.indices(config.seed, step + 1, r.prompts_per_step)
    next_options = dict(next_prompts=[data.prompt_ids[i] for i in next_rows],
                        next_score=_scorer(policy, data, next_rows, r.num_generations),
                        next_seed=jax.random.fold_in(jax.random.key(config.seed), step + 1))
  draw_seconds = time.perf_counter() - t0

  out = rl.grpo_step(
      update, graphdef, state, [data.prompt_ids[i] for i in rows],
      _scorer(policy, data, rows, r.num_generations),
      num_iterations=config.train.num_iterations, num_generations=r.num_generations,
      off_policy_steps=r.off_policy_steps, pending=pending,
      seed=jax.random.fold_in(jax.random.key(config.seed), step),
      weights=policy.rewards.weights, advantage=config.loss.advantage,
      advantage_options={"scale": config.loss.scale_rewards}, reference=reference,
      **next_options, **_generate_options(config, r.temperature, policy))
  rewards = out.rollout.rewards
  metrics = rewards_lib.RewardResult(rewards.per_function, rewards.total,
                                     policy.rewards.names).metrics("train/")
  metrics.update({f"train/{k}": v for k, v in rewards.group_metrics().items()})
  gen = out.rollout.generation
  lengths, row_steps = run_records.to_host((gen.mask.sum(1), gen.row_steps))
  metrics["train/completion_length"] = float(lengths.mean())
  if row_steps is not None:
    # Rows the decode ran, summed over its steps (compaction lowers it).
    metrics["perf/decode_row_steps"] = float(row_steps)
  host = draw_seconds + (out.rollout.host_seconds if pending is None else 0.0)
  if out.next_rollout is not None:
    host += out.next_rollout.host_seconds
  seconds = {"rollout": draw_seconds + out.rollout_seconds, "host": host}
  return out.state, out.metrics, metrics, seconds, out.next_rollout


def _scorer(policy: Policy, data, rows, num_generations):
  """score(tokens, mask) -> rewards per function [N, F] of the completions of `rows`."""
  def score(tokens, mask):
    return _score(policy, data, rows, num_generations, tokens, mask)[0].per_function
  return score


# ------------------------------------------- off-policy: the pending rollout
# A checkpoint of an off-policy run also holds the rollout sampled for the
# next step (by parameters no checkpoint keeps): its prompt rows left-padded
# to a fixed width, completions, the sampler's log-probs and the rewards per
# function, all fixed shapes; the prompt length in use is in the extras.


def _pending_width(config, model_config) -> int:
  """The widest prompt bucket the sampler can use (prompts <= max_prompt_length)."""
  limit = model_config.max_position_embeddings - config.rollout.max_new_tokens
  return sampling.bucket_length(config.rollout.max_prompt_length, limit)


def _pending_template(config, model_config, num_functions: int) -> dict:
  n = config.rollout.prompts_per_step * config.rollout.num_generations
  c, w = config.rollout.max_new_tokens, _pending_width(config, model_config)
  return dict(prompt_tokens=np.zeros((n, w), np.int32), prompt_mask=np.zeros((n, w), bool),
              tokens=np.zeros((n, c), np.int32), mask=np.zeros((n, c), bool),
              logprobs=np.zeros((n, c), np.float32),
              rewards=np.zeros((n, num_functions), np.float32))


def _pending_to_host(pending, config, model_config, num_functions: int):
  """(fixed-shape NumPy arrays, prompt length or None) of a pending rollout."""
  out = _pending_template(config, model_config, num_functions)
  if pending is None:
    return out, None
  gen = pending.generation
  p_tokens, p_mask, tokens, mask, logprobs = run_records.to_host(
      (gen.prompt_tokens, gen.prompt_mask, gen.tokens, gen.mask, gen.logprobs))
  width, plen = out["prompt_tokens"].shape[1], p_tokens.shape[1]
  if plen > width:
    raise ValueError(f"prompt bucket {plen} exceeds the checkpoint's width {width}")
  out["prompt_tokens"][:, width - plen:] = p_tokens
  out["prompt_mask"][:, width - plen:] = p_mask
  out.update(tokens=tokens, mask=mask, logprobs=logprobs,
             rewards=np.asarray(pending.rewards.per_function, np.float32))
  return out, plen


def _pending_from_host(arrays, plen, config, policy: Policy, reference):
  """The `Rollout` saved by `_pending_to_host` (None if none was pending)."""
  if plen is None:
    return None
  a = {k: np.asarray(v) for k, v in arrays.items()}
  width = a["prompt_tokens"].shape[1]
  gen = sampling.Generation(
      tokens=jnp.asarray(a["tokens"]), mask=jnp.asarray(a["mask"]),
      logprobs=jnp.asarray(a["logprobs"]),
      prompt_tokens=jnp.asarray(a["prompt_tokens"][:, width - plen:]),
      prompt_mask=jnp.asarray(a["prompt_mask"][:, width - plen:]))
  return rl.build_rollout(
      gen, a["rewards"], num_generations=config.rollout.num_generations,
      temperature=config.rollout.temperature, weights=policy.rewards.weights,
      advantage=config.loss.advantage,
      advantage_options={"scale": config.loss.scale_rewards}, reference=reference,
      mesh=policy.mesh)


# ------------------------------------------------------------- the update
def make_update(config, graphdef, state, optimizer, model_config):
  """The update of `config.train`: `train.make_grpo_update` (with the group's
  prompt shared unless `share_prompt=False`), or `packing.PackedGroupUpdate`
  with `pack=True`. Both count the input shapes they were called with
  (`.shapes`: one compile each)."""
  t, r, lc = config.train, config.rollout, config.loss
  loss = objectives.PolicyLossConfig.from_mapping(
      lc, max_completion_length=r.max_new_tokens,
      sampling_is_mode=lc.sampling_is_mode if r.off_policy_steps else None)
  graphdef = lora.training(graphdef, state.params)
  if t.pack:
    if not attention.reads_only_mask(model_config.attention_impl):
      raise ValueError(f"config.train.pack=True needs an attention implementation that reads"
                       f" only the mask; the model has attention_impl="
                       f"{model_config.attention_impl!r}. Set config.train.pack=False.")
    limit = model_config.max_position_embeddings - r.max_new_tokens
    row_length = min(r.max_prompt_length, limit) + r.max_new_tokens
    return packing.PackedGroupUpdate(graphdef, optimizer, loss=loss, row_length=row_length,
                                     temperature=r.temperature, micro_batches=t.micro_batches,
                                     buckets=t.pack_buckets)
  share = t.share_prompt is None or t.share_prompt
  return _ShapeCounter(train.make_grpo_update(
      graphdef, optimizer, loss=loss, temperature=r.temperature,
      micro_batches=t.micro_batches, prompt_groups=r.num_generations if share else 1))


class _ShapeCounter:
  """An update that records the shapes of the batches it was called with."""

  def __init__(self, update):
    self.update, self.shapes = update, set()

  def __call__(self, state, batch):
    self.shapes.add(tuple(np.shape(x) for x in jax.tree.leaves(batch)))
    return self.update(state, batch)


def prepare(config, workdir: str):
  """Everything that can fail on bad input, checked before any compilation:
  config, reward functions, tokenizer and data. Returns (task, rewards,
  (train data, eval data or None))."""
  common.validate_config(config, DEFAULT_CONFIG)
  task = tasks.make_task(config.task.name, seed=config.seed,
                         **config.task.get(config.task.name, {}))
  rewards = make_rewards(config)
  _accuracy_index(config, rewards)
  tokenizer = load_tokenizer(config, workdir, task)
  data = prompt_data.load_prompt_data(
      config.data, tokenizer, max_prompt_length=config.rollout.max_prompt_length,
      builtin=None if config.data.train else builtin_rows(task, config))
  return task, rewards, data


def run(config, workdir: str, *, stop_after: int | None = None, progress: bool = True):
  """Trains per `config` in `workdir` (resuming) and returns the summary dict.

  `stop_after` ends the loop after that many steps without a final checkpoint,
  as a kill would (tests use it); a re-run resumes from the last periodic one.
  """
  task, rewards, (train_data, eval_data) = prepare(config, workdir)
  mesh = common.setup_mesh(config)
  common.make_workdir(workdir)
  run_records.check_or_store_config(workdir, config)

  model, tokenizer, model_dir = build_policy(config, workdir, task)
  model = common.apply_lora(model, config.lora, seed=config.seed)
  if mesh is not None:
    sharding.shard_model(model, mesh)
  stop_ids = hf.stop_token_ids(model_dir, tokenizer, model.config)
  policy = Policy(tokenizer, stop_ids, hf.pad_token_id(tokenizer, stop_ids), rewards, mesh)
  t = config.train
  optimizer = train.make_optimizer(t.learning_rate, warmup_steps=t.warmup_steps,
                                   total_steps=t.steps * t.num_iterations,
                                   max_grad_norm=t.max_grad_norm)
  graphdef, state = train.init_train_state(model, optimizer)
  lc = config.loss
  use_lora = lora.has_adapters(state.params)
  # The KL reference: the initial weights; under LoRA the base with the
  # adapters disabled (the same arrays, no copy).
  ref_params = (jax.tree.map(jnp.copy, state.params) if lc.beta > 0 and not use_lora
                else None)

  def reference(params):
    if lc.beta <= 0:
      return None
    return lora.disable(graphdef, params) if use_lora else (graphdef, ref_params)
  update = make_update(config, graphdef, state, optimizer, model.config)
  off_policy = config.rollout.off_policy_steps > 0

  def run_eval(params, step):
    if eval_data is None:
      return {}
    metrics, samples = evaluate(nnx.merge(graphdef, params), policy, eval_data, config, step)
    common.write_samples(workdir, step, samples, writer)
    return metrics

  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 max_to_keep=t.keep_checkpoints)
  # Under LoRA a checkpoint holds the adapters and their optimiser state only.
  template = train.checkpoint_state(state)
  if off_policy:  # and the rollout sampled ahead for the next step
    template = {"train": template, "pending": _pending_template(
        config, model.config, len(rewards.names))}
  restored = ckpt.restore_latest(template)
  start = 0 if restored is None else restored[0]
  pending = None
  common.truncate_metrics(workdir, start)  # before the writer opens the file
  common.truncate_samples(workdir, start if restored is not None else -1)
  writer = run_records.MetricWriter(workdir)
  if restored is None:
    before = run_eval(state.params, 0)
    extras = {"eval_before": before, "seconds": 0.0, "last_eval": before}
    writer.write(0, before)
  else:
    _, saved, extras = restored
    if off_policy:
      saved, saved_pending = saved["train"], saved["pending"]
    state = train.from_checkpoint_state(state, saved)
    if off_policy:
      pending = _pending_from_host(saved_pending, extras.get("pending_prompt_length"),
                                   config, policy, reference(state.params))
    logging.info("Resumed from step %d in %s", start, workdir)
  model_config = model.config
  del model  # its buffers are donated to the first update

  end = t.steps if stop_after is None else min(t.steps, start + stop_after)
  bar = tqdm.tqdm(range(start, end), initial=start, total=t.steps, desc="GRPO",
                  disable=not progress)
  last_saved = start
  for step in bar:
    t0 = time.perf_counter()
    state, update_metrics, metrics, seconds, pending = train_step(
        update, graphdef, state, policy, train_data, config, step, reference(state.params),
        pending)
    update_metrics = {f"train/{k}": float(v) for k, v in update_metrics.items()}
    if not np.isfinite(update_metrics["train/loss"]):
      raise FloatingPointError(
          f"Non-finite loss ({update_metrics['train/loss']}) at step {step + 1}. The last"
          f" good checkpoint (step {last_saved}) is kept in {workdir}/checkpoints; lower"
          " config.train.learning_rate or check the rewards, then re-run to resume.")
    step_seconds = time.perf_counter() - t0
    extras["seconds"] += step_seconds
    metrics.update(update_metrics)
    # Host-side data + reward work vs the whole step (rollout + update).
    metrics.update({"perf/step_seconds": step_seconds, "perf/host_seconds": seconds["host"],
                    "perf/rollout_seconds": seconds["rollout"],
                    "perf/update_seconds": step_seconds - seconds["rollout"],
                    # distinct update input shapes so far in this process (one compile each)
                    "perf/update_compiles": len(update.shapes)})
    if getattr(update, "last_stats", None):
      metrics["perf/pack_fill"] = update.last_stats["fill"]
    if (step + 1) % t.eval_every == 0 or step + 1 == t.steps:
      extras["last_eval"] = run_eval(state.params, step + 1)
      metrics.update(extras["last_eval"])
    writer.write(step + 1, metrics)
    bar.set_postfix(reward=f"{metrics['train/reward']:.2f}",
                    acc=f"{extras['last_eval'].get('eval/accuracy', float('nan')):.2f}")
    if (step + 1) % t.checkpoint_every == 0 or step + 1 == t.steps:
      saved = train.checkpoint_state(state)
      if off_policy:
        arrays, extras["pending_prompt_length"] = _pending_to_host(
            pending, config, model_config, len(rewards.names))
        saved = {"train": saved, "pending": arrays}
      ckpt.save(step + 1, saved, extras)
      last_saved = step + 1
  writer.close()
  ckpt.close()
  done = last_saved == t.steps
  data_name = config.data.train or f"the {config.task.name} task"
  common.plot_curves(workdir, "reward.png", {
      "reward": ["train/reward", "eval/reward"],
      "held-out accuracy": ["eval/accuracy"],
  }, title=f"GRPO ({config.loss.loss_type}) on {os.path.basename(data_name) or data_name}")
  summary = {f"{k}_before": v for k, v in extras["eval_before"].items()}
  summary.update({f"{k}_after": v for k, v in extras["last_eval"].items()})
  summary.update({"train/steps": last_saved, "train/seconds": extras["seconds"],
                  "train/finished": done})
  if done:
    # final_model/ (under LoRA merged, and the adapters alone in final_adapter/).
    summary.update(common.export_models(workdir, {"model": nnx.merge(graphdef, state.params)},
                                        tokenizer, {"model": model_dir}, adapters=True))
    run_records.write_summary(workdir, summary)
  return summary, state


if __name__ == "__main__":
  common.run_binary(lambda config, workdir: run(config, workdir)[0], DEFAULT_CONFIG, "runs/grpo")
