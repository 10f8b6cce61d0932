r"""GRPO (and its family) on a built-in verifiable task: the main job.

  python -m alignax.experiments.grpo                       # default preset, runs/grpo
  python -m alignax.experiments.grpo --config=experiments/configs/grpo.py:tiny \
      --workdir=runs/tiny --config.loss.loss_type=grpo --config.mesh.fsdp=8

Each step: draw prompts -> sample `num_generations` completions per prompt ->
exact-match rewards -> group-relative advantages -> `num_iterations` policy
updates with the sampler's log-probs as `old_logprobs`. Held-out accuracy is
evaluated (greedy) before training, every `eval_every` steps and at the end.

Under --workdir: metrics.jsonl, TensorBoard events, reward.png, summary.json,
checkpoints/ (Orbax). Running the same command again resumes from the last
checkpoint and ends with the same parameters as an uninterrupted run.
"""
from __future__ import annotations

import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import logging
from flax import nnx

from alignax import objectives
from alignax.agents import tasks
from alignax.experiments import common
from alignax.framework import checkpoint, experiment, hf, lora, sampling, sharding, train
from alignax.framework.config import ModelConfig
from alignax.framework.model import Decoder

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "grpo.py")

# Advantage estimators a config can name, each as f(rewards [N], group_size, cfg).
ADVANTAGES = {
    "grpo": lambda r, g, c: objectives.grpo_advantages(r, g, scale=c.scale_rewards),
    "dr_grpo": lambda r, g, c: objectives.dr_grpo_advantages(r, g),
    "rloo": lambda r, g, c: objectives.rloo_advantages(r, g),
    "f_grpo": lambda r, g, c: objectives.focal_grpo_advantages(r, g, scale=c.scale_rewards),
}


def _pad_right(rows, length, pad):
  ids = np.full((len(rows), length), pad, np.int32)
  mask = np.zeros((len(rows), length), bool)
  for i, r in enumerate(rows):
    if len(r) > length:
      raise ValueError(f"Answer of {len(r)} tokens exceeds max_new_tokens={length}.")
    ids[i, :len(r)], mask[i, :len(r)] = r, True
  return ids, mask


def sft_batch(tokenizer, problems, max_new_tokens):
  """Teacher-forcing batch (prompt left-padded, answer + eos right-padded)."""
  prompts = tasks.encode_prompts(tokenizer, problems)
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


def build_policy(config, workdir, task):
  """Loads `model_path`, or builds + warm-starts the built-in model once.

  The built-in model is saved to `<workdir>/init_model` with its tokenizer (the
  same format `--config.model_path` takes) and re-loaded from there, so a
  resumed run starts from exactly the same weights.
  """
  path = config.model_path
  if path:
    if not os.path.isdir(path):
      raise FileNotFoundError(
          f"--config.model_path={path!r} is not a directory; give a folder written by"
          " save_pretrained (config.json, *.safetensors and the tokenizer files).")
  else:
    path = os.path.join(workdir, "init_model")
    if not os.path.exists(os.path.join(path, "model.safetensors")):
      tmp = path + ".tmp"
      shutil.rmtree(tmp, ignore_errors=True)
      tokenizer = tasks.train_tokenizer(task, tmp)
      model_config = ModelConfig(
          vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
          **config.model.to_dict())
      model = warm_start(Decoder(model_config, seed=config.seed), tokenizer, task, config)
      hf.save_pretrained(model, tmp)
      shutil.rmtree(path, ignore_errors=True)
      os.replace(tmp, path)
  model = hf.from_pretrained(path)
  tokenizer = hf.load_tokenizer(path, model.config)
  return model, tokenizer


def evaluate(model, tokenizer, task, config, mesh):
  """Greedy held-out accuracy (= mean exact-match reward)."""
  problems = task.problems("eval", 0, config.task.eval_size)
  gen = sampling.generate(model, tasks.encode_prompts(tokenizer, problems),
                          max_new_tokens=config.rollout.max_new_tokens,
                          eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, mesh=mesh)
  rewards = tasks.score_completions(tokenizer, gen.tokens, gen.mask, problems)
  return {"eval/accuracy": float(rewards.mean()), "eval/reward": float(rewards.mean())}


def rollout(graphdef, params, tokenizer, task, config, step, mesh, reference):
  """Samples a group batch for `step` and returns (batch, metrics).

  reference: (graphdef, params) of the KL reference policy, or None.
  """
  r = config.rollout
  problems = task.problems("train", step, r.prompts_per_step)
  gen = sampling.generate(
      nnx.merge(graphdef, params), tasks.encode_prompts(tokenizer, problems),
      max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_k=r.top_k or None,
      top_p=r.top_p if r.top_p < 1.0 else None, eos_token_id=tokenizer.eos_token_id,
      pad_token_id=tokenizer.pad_token_id, num_generations=r.num_generations,
      seed=jax.random.fold_in(jax.random.key(config.seed), step), mesh=mesh)
  rewards = tasks.score_completions(tokenizer, gen.tokens, gen.mask, problems,
                                         r.num_generations)
  advantages = ADVANTAGES[config.loss.advantage](jnp.asarray(rewards), r.num_generations,
                                                 config.loss)
  batch = dict(sequences=gen.sequences, attention_mask=gen.attention_mask,
               completion_tokens=gen.tokens, completion_mask=gen.mask,
               old_logprobs=gen.logprobs, advantages=advantages)
  if reference is not None:
    batch["ref_logprobs"] = train.reference_logprobs(
        *reference, gen.sequences, gen.attention_mask, gen.tokens,
        temperature=r.temperature)
  if mesh is not None:
    batch = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim))
             for k, v in batch.items()}
  grouped = rewards.reshape(-1, r.num_generations)
  metrics = {"train/reward": float(rewards.mean()),
             "train/reward_std_in_group": float(grouped.std(axis=1).mean()),
             "train/solved_groups": float((grouped.max(axis=1) > 0).mean()),
             "train/completion_length": float(np.asarray(gen.mask).sum(1).mean())}
  return batch, metrics


def _check_config(config):
  if config.loss.advantage not in ADVANTAGES:
    raise ValueError(f"config.loss.advantage={config.loss.advantage!r}; choose one of"
                     f" {sorted(ADVANTAGES)}.")
  objectives.get_policy_loss(config.loss.loss_type)  # raises, listing the valid names
  if config.rollout.num_generations < 2:
    raise ValueError("config.rollout.num_generations must be >= 2 for group advantages.")
  # A micro-batch holds whole groups: each group's prompt is run once.
  if config.rollout.prompts_per_step % config.train.micro_batches:
    raise ValueError(f"config.rollout.prompts_per_step={config.rollout.prompts_per_step}"
                     " is not divisible by config.train.micro_batches="
                     f"{config.train.micro_batches} (micro-batches hold whole groups).")


def run(config, workdir: str, *, stop_after: int | None = None, progress: bool = True):
  """Trains per `config` in `workdir` (resuming) and returns the summary dict.

  `stop_after` ends the loop after that many steps without a final checkpoint,
  as a kill would (tests use it); a re-run resumes from the last periodic one.
  """
  common.validate_config(config, DEFAULT_CONFIG)  # before any work
  _check_config(config)
  sharding.maybe_initialize_distributed()
  os.makedirs(workdir, exist_ok=True)
  experiment.check_or_store_config(workdir, config)
  mesh_sizes = config.mesh.to_dict()
  mesh = None if all(v == 1 for v in mesh_sizes.values()) else sharding.make_mesh(**mesh_sizes)

  task = tasks.make_task(config.task.name, seed=config.seed,
                         **config.task.get(config.task.name, {}))
  model, tokenizer = build_policy(config, workdir, task)
  model = common.apply_lora(model, config.lora, seed=config.seed)
  if mesh is not None:
    sharding.shard_model(model, mesh)
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
  loss_kwargs = dict(loss_type=lc.loss_type, epsilon_low=lc.epsilon_low,
                     epsilon_high=lc.epsilon_high, delta=lc.delta,
                     importance_sampling_level=lc.importance_sampling_level, beta=lc.beta,
                     use_bias_correction_kl=lc.use_bias_correction_kl,
                     max_completion_length=config.rollout.max_new_tokens)
  update = train.make_grpo_update(lora.training(graphdef, state.params), optimizer, loss_kwargs=loss_kwargs,
                                  temperature=config.rollout.temperature,
                                  micro_batches=t.micro_batches,
                                  prompt_groups=config.rollout.num_generations)

  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 max_to_keep=t.keep_checkpoints)
  restored = ckpt.restore_latest(train.checkpoint_state(state))
  if restored is None:
    start = 0
    before = evaluate(model, tokenizer, task, config, mesh)
    extras = {"eval_before": before, "seconds": 0.0, "last_eval": before}
  else:
    start, saved, extras = restored
    state = train.from_checkpoint_state(state, saved)
    logging.info("Resumed from step %d in %s", start, workdir)
  common.truncate_metrics(workdir, start)  # before the writer opens the file
  writer = experiment.MetricWriter(workdir)
  if restored is None:
    writer.write(0, before)
  del model  # its buffers are donated to the first update

  end = t.steps if stop_after is None else min(t.steps, start + stop_after)
  bar = tqdm.tqdm(range(start, end), initial=start, total=t.steps, desc="GRPO",
                  disable=not progress)
  last_saved = start
  for step in bar:
    t0 = time.perf_counter()
    batch, metrics = rollout(graphdef, state.params, tokenizer, task, config, step, mesh,
                             reference(state.params))
    for _ in range(t.num_iterations):
      state, update_metrics = update(state, batch)
    update_metrics = {f"train/{k}": float(v) for k, v in update_metrics.items()}
    if not np.isfinite(update_metrics["train/loss"]):
      raise FloatingPointError(
          f"Non-finite loss ({update_metrics['train/loss']}) at step {step + 1}. The last"
          f" good checkpoint (step {last_saved}) is kept in {workdir}/checkpoints; lower"
          " config.train.learning_rate or check the rewards, then re-run to resume.")
    extras["seconds"] += time.perf_counter() - t0
    metrics.update(update_metrics)
    if (step + 1) % t.eval_every == 0 or step + 1 == t.steps:
      extras["last_eval"] = evaluate(nnx.merge(graphdef, state.params), tokenizer, task,
                                     config, mesh)
      metrics.update(extras["last_eval"])
    writer.write(step + 1, metrics)
    bar.set_postfix(reward=f"{metrics['train/reward']:.2f}",
                    acc=f"{extras['last_eval']['eval/accuracy']:.2f}")
    if (step + 1) % t.checkpoint_every == 0 or step + 1 == t.steps:
      ckpt.save(step + 1, train.checkpoint_state(state), extras)
      last_saved = step + 1
  writer.close()
  ckpt.close()
  done = last_saved == t.steps
  common.plot_curves(workdir, "reward.png", {
      "reward": ["train/reward", "eval/reward"],
      "held-out accuracy": ["eval/accuracy"],
  }, title=f"GRPO ({config.loss.loss_type}) on the {config.task.name} task")
  summary = {
      "eval/accuracy_before": extras["eval_before"]["eval/accuracy"],
      "eval/reward_before": extras["eval_before"]["eval/reward"],
      "eval/accuracy_after": extras["last_eval"]["eval/accuracy"],
      "eval/reward_after": extras["last_eval"]["eval/reward"],
      "train/steps": last_saved,
      "train/seconds": extras["seconds"],
      "train/finished": done,
  }
  if done:
    if use_lora:
      _export_lora(nnx.merge(graphdef, state.params), tokenizer, workdir,
                   config.model_path or os.path.join(workdir, "init_model"))
    experiment.write_summary(workdir, summary)
  return summary, state


def _export_lora(model, tokenizer, workdir, base_path):
  """final_adapter/ (PEFT format, for `PeftModel.from_pretrained(base, dir)`)
  and final_model/ (adapters merged: a plain Hugging Face directory)."""
  lora.save_peft(model, os.path.join(workdir, "final_adapter"),
                 base_model_name_or_path=os.path.abspath(base_path))
  final = os.path.join(workdir, "final_model")
  hf.save_pretrained(lora.merge(model), final)
  tokenizer.save_pretrained(final)


if __name__ == "__main__":
  common.run_binary(lambda config, workdir: run(config, workdir)[0], DEFAULT_CONFIG, "runs/grpo")
