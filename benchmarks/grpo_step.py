"""Wall time of one full GRPO step: alignax vs TRL's GRPOTrainer (torch, CPU).

One step = sample G completions for each of P prompts (temperature 1, no top-k /
top-p, no early stop) -> rewards -> group advantages -> policy loss (dapo,
epsilon 0.2, beta 0, with per-token entropies as TRL computes them) -> backward
-> clip to global norm 1 -> AdamW update. Defaults: randomly initialised Llama
(4 layers, hidden 256, intermediate 1024, 4 heads, vocab 32000), 8 prompts x
8 completions x 64 new tokens, prompts of 32 tokens, one optimiser step per
rollout batch (no gradient accumulation, num_iterations 1) on both sides.

Settings chosen for a like-for-like step: TRL's activation checkpointing (on by
default in TRL) is turned off, since alignax does not rematerialise
(`--trl-gradient-checkpointing` restores it); alignax's fused log-prob kernel
gets `token_chunk` = the whole batch (rows x completion tokens) and
`remat=False`, i.e. the full [64 x 64, 32000] logits are held from forward to
backward as TRL holds them (`--token-chunk 1024 --remat`, the library
defaults, save memory for one more LM-head matmul). alignax runs each group's
shared prompt once (`prompt_groups`, Prefix Grouper; `--no-shared-prompt` runs
it per row as TRL does); generation shares the prompt pass per group too.

Same weights: the alignax `Decoder` is written with `hf.save_pretrained` and the
TRL policy is `AutoModelForCausalLM.from_pretrained` of that folder. Same
prompts: token-id lists drawn once; TRL gets them as text through a word-level
tokenizer built locally (token `t<i>` <-> id i), so it tokenizes back to exactly
the same ids. No early stop: the tokenizer's eos is an extra id (= vocab size)
that the model has no logit for, so it can never be sampled and both sides
produce exactly P x G x N tokens, with no extra logits processor on TRL's side
(alignax: no stop token). Same reward: the fraction of even completion token ids
(computed on the host from the token ids on both sides).

Timing.
  alignax: each step is `alignax.rl.grpo_step`, the step the grpo binary runs
  (generate -> the tokens to the host -> numpy reward -> `make_group_batch`
  (`grpo_advantages`) -> jitted update), timed end to end in Python up to
  `block_until_ready`. The first step compiles; compile time = first step
  minus the median of the following `--steps` steps, reported separately.
  TRL: `trainer.train()` for `1 + --steps` optimizer steps; a `TrainerCallback`
  records `on_step_begin` -> `on_step_end` of each step (generation, reward,
  advantages, forward/backward, clipping and optimizer step all happen inside
  `training_step`/the optimizer step between these two callbacks). The first
  step is dropped as warm-up. The total `train()` wall time is also recorded.
  Per-step seconds are the median over the timed steps (all steps are in the
  JSON). Both sides run in the same process one after the other; by default
  the alignax block is run again after TRL and the two alignax blocks pooled,
  so a load change on a shared CPU shows up as spread rather than bias.

  python benchmarks/grpo_step.py [--quick] [--out benchmarks/results/grpo_step.json]
"""
import argparse
import json
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax
import numpy as np


def reward_from_ids(ids) -> float:
  """The shared reward: fraction of even token ids in a completion."""
  ids = np.asarray(ids)
  return float((ids % 2 == 0).mean()) if ids.size else 0.0


def make_prompts(a, count, seed):
  rng = np.random.RandomState(seed)
  return [[int(t) for t in rng.randint(0, a.vocab, a.prompt)] for _ in range(count)]


def bench_alignax(a, model, prompt_sets):
  """Returns (per-step seconds list, first-step seconds, last metrics)."""
  from alignax import objectives, rl
  from alignax.framework import train

  optimizer = train.make_optimizer(a.lr, max_grad_norm=1.0)
  graphdef, state = train.init_train_state(model, optimizer)
  update = train.make_grpo_update(
      graphdef, optimizer, temperature=1.0, token_chunk=a.token_chunk,
      prompt_groups=1 if a.no_shared_prompt else a.generations, remat=a.remat,
      loss=objectives.PolicyLossConfig(loss_type="dapo", epsilon_low=0.2, epsilon_high=0.2,
                                       beta=0.0, max_completion_length=a.new))

  def score(tokens, mask):
    return np.array([reward_from_ids(t[m]) for t, m in zip(tokens, mask)], np.float32)

  def step(state, prompts, i):
    # The library's GRPO step, as alignax.experiments.grpo runs it.
    out = rl.grpo_step(update, graphdef, state, prompts, score,
                       num_generations=a.generations, max_new_tokens=a.new,
                       temperature=1.0, seed=i, pad_token_id=0, advantage="grpo",
                       advantage_options={"scale": "group"})
    jax.block_until_ready((out.state, out.metrics))
    mask = out.rollout.generation.mask
    assert int(mask.sum()) == len(prompts) * a.generations * a.new, "early stop?"
    return out.state, dict(out.metrics, reward=float(np.nanmean(out.rollout.rewards.total)))

  times = []
  for i, prompts in enumerate(prompt_sets):
    t0 = time.perf_counter()
    state, metrics = step(state, prompts, i)
    times.append(time.perf_counter() - t0)
  return times, {k: float(v) for k, v in metrics.items()}, (graphdef, state, step)


def build_tokenizer(vocab):
  """Word-level tokenizer 't<i>' <-> i, plus an eos (id = vocab) the model cannot emit."""
  import tokenizers
  import transformers
  from tokenizers import models, pre_tokenizers, decoders

  table = {f"t{i}": i for i in range(vocab)}
  table["<eos>"] = vocab
  tok = tokenizers.Tokenizer(models.WordLevel(table, unk_token="t0"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, eos_token="<eos>", pad_token="t0", unk_token="t0")


def bench_trl(a, model_dir, prompt_sets, workdir):
  import datasets
  import torch
  import transformers
  import trl

  tokenizer = build_tokenizer(a.vocab)
  texts = [" ".join(f"t{t}" for t in p) for prompts in prompt_sets for p in prompts]
  assert tokenizer(texts[0])["input_ids"] == prompt_sets[0][0]
  dataset = datasets.Dataset.from_dict({"prompt": texts})

  def reward_even(completion_ids, **kwargs):
    return [reward_from_ids(ids) for ids in completion_ids]

  torch.manual_seed(0)
  policy = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
  policy.generation_config.eos_token_id = None
  policy.generation_config.pad_token_id = tokenizer.pad_token_id
  steps = len(prompt_sets)
  config = trl.GRPOConfig(
      output_dir=workdir, use_cpu=True, report_to="none", logging_strategy="no",
      save_strategy="no", disable_tqdm=True, max_steps=steps, seed=0,
      per_device_train_batch_size=a.prompts_per_step * a.generations,
      num_generations=a.generations, gradient_accumulation_steps=1,
      steps_per_generation=1, num_iterations=1, max_completion_length=a.new,
      temperature=1.0, top_p=1.0, top_k=0, beta=0.0, loss_type="dapo", epsilon=0.2,
      learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
      max_grad_norm=1.0, use_vllm=False, shuffle_dataset=False, log_completions=False,
      bf16=False, fp16=False, dataloader_num_workers=0,
      # TRL defaults to activation checkpointing (recomputes the forward in the
      # backward); alignax does not rematerialise, so it is off for a like-for-like step.
      gradient_checkpointing=a.trl_gradient_checkpointing)

  class StepTimer(transformers.TrainerCallback):
    def __init__(self):
      self.begin, self.times = None, []

    def on_step_begin(self, args, state, control, **kw):
      self.begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
      self.times.append(time.perf_counter() - self.begin)

  timer = StepTimer()
  trainer = trl.GRPOTrainer(model=policy, reward_funcs=reward_even, args=config,
                            train_dataset=dataset, processing_class=tokenizer,
                            callbacks=[timer])
  seen = []
  orig = trainer._generate_and_score_completions

  def check(inputs):  # confirm: 8 prompts x 8 completions x N tokens each, no early stop
    out = orig(inputs)
    seen.append((tuple(out["completion_ids"].shape), int(out["completion_mask"].sum())))
    return out

  trainer._generate_and_score_completions = check
  t0 = time.perf_counter()
  trainer.train()
  total = time.perf_counter() - t0
  rows = a.prompts_per_step * a.generations
  assert all(s == ((rows, a.new), rows * a.new) for s in seen), seen
  return timer.times, total, torch, transformers, trl


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--layers", type=int, default=4)
  ap.add_argument("--hidden", type=int, default=256)
  ap.add_argument("--intermediate", type=int, default=1024)
  ap.add_argument("--heads", type=int, default=4)
  ap.add_argument("--vocab", type=int, default=32000)
  ap.add_argument("--prompts-per-step", type=int, default=8)
  ap.add_argument("--generations", type=int, default=8)
  ap.add_argument("--prompt", type=int, default=32)
  ap.add_argument("--new", type=int, default=64)
  ap.add_argument("--steps", type=int, default=3, help="timed steps per side (after warm-up)")
  ap.add_argument("--lr", type=float, default=1e-6)
  ap.add_argument("--token-chunk", type=int, default=0,
                  help="alignax log-prob chunk (rows x tokens per LM-head chunk); 0: the"
                       " whole batch, i.e. full logits like TRL")
  ap.add_argument("--remat", action="store_true",
                  help="alignax recomputes the LM-head logits in backward (default: keeps"
                       " them, as TRL does)")
  ap.add_argument("--no-shared-prompt", action="store_true",
                  help="alignax runs every row's prompt (default: once per group)")
  ap.add_argument("--trl-gradient-checkpointing", action="store_true",
                  help="keep TRL's default activation checkpointing (off by default here)")
  ap.add_argument("--no-repeat-alignax", action="store_true",
                  help="do not run the alignax block again after TRL")
  ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
  ap.add_argument("--skip-trl", action="store_true")
  ap.add_argument("--out", default="benchmarks/results/grpo_step.json")
  a = ap.parse_args()
  if a.quick:
    (a.layers, a.hidden, a.intermediate, a.heads, a.vocab, a.prompts_per_step,
     a.generations, a.prompt, a.new, a.steps) = 1, 64, 128, 2, 512, 2, 2, 8, 8, 1
  if a.token_chunk <= 0:
    a.token_chunk = a.prompts_per_step * a.generations * a.new

  from alignax.framework import hf
  from alignax.framework.config import ModelConfig
  from alignax.framework.model import Decoder

  config = ModelConfig(vocab_size=a.vocab, hidden_size=a.hidden,
                       intermediate_size=a.intermediate, num_layers=a.layers,
                       num_heads=a.heads, num_kv_heads=a.heads,
                       max_position_embeddings=max(256, a.prompt + a.new))
  model = Decoder(config, seed=0)
  prompt_sets = [make_prompts(a, a.prompts_per_step, seed=s) for s in range(1 + a.steps)]

  with tempfile.TemporaryDirectory() as d:
    model_dir = os.path.join(d, "model")
    hf.save_pretrained(model, model_dir)  # before any update: the update donates the params

    times, metrics, (graphdef, state, step) = bench_alignax(a, model, prompt_sets)
    first_ax, ax_times = times[0], times[1:]

    trl_info = None
    if not a.skip_trl:
      trl_times, trl_total, torch, transformers, trl = bench_trl(
          a, model_dir, prompt_sets, os.path.join(d, "trl"))
      trl_info = dict(all_steps_s=trl_times, train_total_s=trl_total,
                      torch_threads=torch.get_num_threads(), torch=torch.__version__,
                      transformers=transformers.__version__, trl=trl.__version__)
      if not a.no_repeat_alignax:  # second alignax block (already compiled)
        for i, prompts in enumerate(prompt_sets[1:], start=1 + a.steps):
          t0 = time.perf_counter()
          state, _ = step(state, prompts, i)
          ax_times.append(time.perf_counter() - t0)

  ours = statistics.median(ax_times)
  rows = [dict(impl=f"alignax (jax {jax.__version__})",
               device=str(jax.devices()[0].device_kind), seconds_per_step=ours,
               min_s=min(ax_times), max_s=max(ax_times), steps_s=ax_times,
               first_step_s=first_ax, compile_s=max(first_ax - ours, 0.0),
               last_metrics=metrics)]
  ratio = None
  if trl_info:
    timed = trl_info["all_steps_s"][1:]
    theirs = statistics.median(timed)
    ratio = theirs / ours
    rows.append(dict(impl=f"TRL {trl_info['trl']} GRPOTrainer (torch {trl_info['torch']})",
                     device="cpu", seconds_per_step=theirs, min_s=min(timed), max_s=max(timed),
                     steps_s=timed, first_step_s=trl_info["all_steps_s"][0], compile_s=0.0,
                     train_total_s=trl_info["train_total_s"],
                     torch_threads=trl_info["torch_threads"]))
    rows[0]["speedup_vs_trl"] = ratio

  tokens = a.prompts_per_step * a.generations * a.new
  machine = dict(processor=platform.processor() or platform.machine(),
                 platform=platform.platform(), cpu_count=os.cpu_count(),
                 affinity=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                 python=platform.python_version())
  print(f"\nGRPO step: {a.prompts_per_step} prompts x {a.generations} completions x {a.new}"
        f" new tokens (prompt {a.prompt}); Llama {a.layers} layers, hidden {a.hidden},"
        f" intermediate {a.intermediate}, {a.heads} heads, vocab {a.vocab}"
        f" ({machine['processor']}, {machine['cpu_count']} cores)")
  print(f"{'impl':44s} {'s/step':>8s} {'min':>7s} {'max':>7s} {'n':>3s} {'gen tok/s':>10s}"
        f" {'compile s':>10s}")
  for r in rows:
    print(f"{r['impl']:44s} {r['seconds_per_step']:8.2f} {r['min_s']:7.2f} {r['max_s']:7.2f}"
          f" {len(r['steps_s']):3d} {tokens / r['seconds_per_step']:10.1f} {r['compile_s']:10.2f}")
  if ratio is not None:
    print(f"alignax speed-up over TRL per step (median, after compilation): {ratio:.2f}x"
          f" (target >= 5x)")
  os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
  with open(a.out, "w") as f:
    json.dump(dict(args=vars(a), machine=machine, results=rows, speedup_vs_trl=ratio,
                   target_speedup=5.0,
                   versions=dict(jax=jax.__version__, **({k: trl_info[k] for k in
                                 ("torch", "transformers", "trl")} if trl_info else {}))),
              f, indent=2)


if __name__ == "__main__":
  main()
