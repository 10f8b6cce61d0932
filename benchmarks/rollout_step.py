"""Where a GRPO step's time goes on the workload of issue 34, and what the
rollout-speed options change: baseline / +compact / +pack / +off-policy.

Workload: SmolLM2-135M-Instruct (`runs/smollm2`, made by `python -m
alignax.tools.fetch_smollm2 runs/smollm2`) on the arithmetic word problems
(examples/word_problems_train.jsonl, the `smollm2_words` preset's data and
reward `examples/arithmetic_rewards.py:last_number_correct`) with a system
prompt asking for step-by-step working, so completions are long and of
varying length; `--new_tokens` (256) new tokens, `--prompts` (8) prompts x
`--generations` (8) completions, temperature 1, full fine-tuning, dapo, one
prompt group per update micro-batch (`--micro_batches`; the same gradient).

Each variant is the grpo binary's config with one option on top of the
baseline (the binary's defaults: plain decode, unpacked update sharing each
group's prompt, on-policy):

  baseline     rollout.compact=False, train.pack=False, off_policy_steps=0
  compact      rollout.compact=True (finished rows leave the decode)
  pack         train.pack=True (the update on packed rows, no prompt sharing)
  off_policy   rollout.off_policy_steps=1 (the next batch sampled before the
               update, scored on the host while the device trains)

Every step is the binary's own `alignax.experiments.grpo.train_step`, with
its update (`grpo.make_update`), on the same prompts (seed, step) for every
variant; each variant trains its own copy of the model. Steps are
interleaved: round r runs step r of each variant in turn, so a load change
on a shared machine is spread over all of them. Round 0 compiles and is
reported apart (`compile_seconds` = its wall time minus the median step).

Split of a step (median over the timed rounds):
  prefill, decode  the sampler's two jitted calls, each timed to completion
                   (timers wrap `sampling.prefill` / `sampling.decode`);
  logprobs         forward-only log-prob passes inside the step
                   (`train.reference_logprobs`: the KL reference with beta > 0,
                   the trainer's old log-probs with off-policy and
                   num_iterations > 1; 0 here: the sampler's are reused);
  host             drawing the rows, detokenising, the reward functions and
                   the reward/advantage bookkeeping (the binary's perf/host);
  update           the rest of the step: the update (and packing on the host).
For off_policy the timers are not installed (they would wait for the device
inside the pipeline): its step has wall, rollout wait, host and update only.

Also per variant: completion tokens per second of the whole step and of the
decode, decode row-steps (rows the decode ran, summed over its steps) and the
share of them spent on rows that had already finished,
`1 - sum(completion lengths) / row_steps`, packed fill, update compiles.

  python benchmarks/rollout_step.py                                   # the full run
  python benchmarks/rollout_step.py --new_tokens 32 --steps 2 \\
      --prompts 2 --generations 4 --out /tmp/rollout_smoke.json      # a smoke test
  ... --random_tiny   # the script's every path in seconds: a random 2-layer model
                      # with SmolLM2's tokenizer and vocabulary instead of its weights
"""
import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The workload, as benchmarks/real_model_vs_trl.py --workload=word_problems runs it against TRL.
from real_model_vs_trl import WORKLOADS  # noqa: E402  pylint: disable=g-import-not-at-top

WORKLOAD = WORKLOADS["word_problems"]
VARIANTS = {
    "baseline": {},
    "compact": {"rollout.compact": True},
    "pack": {"train.pack": True},
    "off_policy": {"rollout.off_policy_steps": 1},
}
PHASES = ("prefill", "decode", "logprobs", "host", "update")


class Timers:
  """Blocking timers around the sampler's prefill/decode and the log-prob pass."""

  def __init__(self):
    from alignax.framework import sampling, train
    self.modules = {"prefill": (sampling, "prefill"), "decode": (sampling, "decode"),
                    "logprobs": (train, "reference_logprobs")}
    self.originals = {k: getattr(m, n) for k, (m, n) in self.modules.items()}
    self.seconds = dict.fromkeys(self.modules, 0.0)

  def reset(self):
    self.seconds = dict.fromkeys(self.modules, 0.0)

  def install(self, on: bool):
    for name, (module, attr) in self.modules.items():
      setattr(module, attr, self._timed(name) if on else self.originals[name])

  def _timed(self, name):
    fn = self.originals[name]

    def wrapped(*args, **kwargs):
      t0 = time.perf_counter()
      out = jax.block_until_ready(fn(*args, **kwargs))
      self.seconds[name] += time.perf_counter() - t0
      return out
    return wrapped


def random_tiny_model(source, path):
  """A random 2-layer decoder with `source`'s vocabulary, tokenizer and
  generation config, saved at `path` (for smoke tests of this script)."""
  from alignax.framework import hf
  from alignax.framework.model import Decoder
  config = hf.load_config(source, num_layers=2, hidden_size=64, intermediate_size=128,
                          num_heads=4, num_kv_heads=2, head_dim=None)
  hf.export_pretrained(Decoder(config, seed=0), path, tokenizer=hf.load_tokenizer(source),
                       source=source)
  return path


def build(a, workdir):
  """The binary's config, data, rewards and policy for this workload."""
  from alignax.experiments import grpo
  from alignax.experiments.runtime import config_files  # pylint: disable=g-import-not-at-top
  from alignax.framework import hf
  if a.random_tiny:
    a.model = random_tiny_model(a.model, os.path.join(workdir, "random_tiny"))
  config = config_files.load_config_file(f"{grpo.DEFAULT_CONFIG}:{WORKLOAD.preset}")
  config.update_from_flattened_dict({
      "model_path": a.model, "data.system_prompt": a.system_prompt,
      "rollout.max_new_tokens": a.new_tokens, "rollout.prompts_per_step": a.prompts,
      "rollout.num_generations": a.generations, "train.steps": 10**6,
      "train.micro_batches": a.micro_batches, "train.remat": a.remat,
      "train.learning_rate": a.lr, "seed": a.seed})
  task, rewards, (train_data, _) = grpo.prepare(config, workdir)
  model, tokenizer, model_dir = grpo.build_policy(config, workdir, task)
  stop_ids = hf.stop_token_ids(model_dir, tokenizer, model.config)
  policy = grpo.Policy(tokenizer, stop_ids, hf.pad_token_id(tokenizer, stop_ids), rewards, None)
  return config, model, policy, train_data


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--model", default="runs/smollm2")
  ap.add_argument("--new_tokens", type=int, default=WORKLOAD.new_tokens)
  ap.add_argument("--prompts", type=int, default=WORKLOAD.prompts)
  ap.add_argument("--generations", type=int, default=WORKLOAD.group)
  ap.add_argument("--steps", type=int, default=4, help="timed steps per variant (after one"
                  " compiling step)")
  ap.add_argument("--variants", default=",".join(VARIANTS))
  ap.add_argument("--micro_batches", type=int, default=0, help="update micro-batches (0: one"
                  " per prompt group, which bounds the update's activation memory)")
  ap.add_argument("--remat", default="none", help="train.remat of the update")
  ap.add_argument("--lr", type=float, default=1e-5)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--system_prompt", default=WORKLOAD.system_prompt)
  ap.add_argument("--random_tiny", action="store_true",
                  help="a random 2-layer model with --model's tokenizer (smoke tests only)")
  ap.add_argument("--out", default="benchmarks/results/rollout_step.json")
  a = ap.parse_args()
  a.micro_batches = a.micro_batches or a.prompts
  names = [v.strip() for v in a.variants.split(",") if v.strip()]
  unknown = sorted(set(names) - set(VARIANTS))
  if unknown:
    ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")

  from alignax.experiments import grpo
  from alignax.framework import train

  workdir = tempfile.mkdtemp(prefix="rollout_step_")
  t0 = time.perf_counter()
  base_config, model, policy, data = build(a, workdir)
  load_seconds = time.perf_counter() - t0
  model_config = model.config

  runs = {}
  for name in names:
    config = copy.deepcopy(base_config)
    config.update_from_flattened_dict(VARIANTS[name])
    t = config.train
    optimizer = train.make_optimizer(t.learning_rate, warmup_steps=t.warmup_steps,
                                     total_steps=1000, max_grad_norm=t.max_grad_norm)
    graphdef, state = train.init_train_state(model, optimizer)
    state = jax.tree.map(lambda x: x.copy(), state)  # each variant trains its own copy
    update = grpo.make_update(config, graphdef, state, optimizer, model_config)
    runs[name] = dict(config=config, graphdef=graphdef, state=state, update=update,
                      pending=None, steps=[])
  del model

  timers = Timers()
  n_rows = a.prompts * a.generations
  for step in range(1 + a.steps):
    for name in names:
      run = runs[name]
      timed = name != "off_policy"
      timers.install(timed)
      timers.reset()
      t0 = time.perf_counter()
      state, update_metrics, metrics, seconds, pending = grpo.train_step(
          run["update"], run["graphdef"], run["state"], policy, data, run["config"], step,
          None, run["pending"])
      update_metrics = {k: float(v) for k, v in update_metrics.items()}  # waits, as the binary
      wall = time.perf_counter() - t0
      timers.install(False)
      run.update(state=state, pending=pending)
      tokens = metrics["train/completion_length"] * n_rows
      row_steps = metrics.get("perf/decode_row_steps")
      rec = dict(step=step, wall=wall, rollout=seconds["rollout"], host=seconds["host"],
                 completion_tokens=tokens, mean_length=metrics["train/completion_length"],
                 reward=metrics["train/reward"], loss=update_metrics["loss"],
                 update_compiles=len(run["update"].shapes))
      if timed:
        rec.update({k: timers.seconds[k] for k in ("prefill", "decode", "logprobs")})
        rec["update"] = wall - seconds["rollout"] - rec["logprobs"]
      else:
        rec["update"] = wall - seconds["rollout"]
      if row_steps:
        rec.update(row_steps=row_steps, finished_row_share=1 - tokens / row_steps)
      stats = getattr(run["update"], "last_stats", None)
      if stats:
        rec["pack_fill"] = stats["fill"]
      for k, v in update_metrics.items():
        if k.startswith("sampling/importance_sampling_ratio/"):
          rec[k] = v
      run["steps"].append(rec)
      print(f"round {step} {name:10s} wall {wall:7.2f}s rollout {seconds['rollout']:7.2f}s"
            f" host {seconds['host']:6.3f}s tokens {tokens:6.0f} reward {rec['reward']:.3f}",
            flush=True)

  summary = {}
  for name in names:
    timed_steps = runs[name]["steps"][1:] or runs[name]["steps"]
    med = lambda k: (statistics.median(r[k] for r in timed_steps)  # noqa: E731
                     if all(k in r for r in timed_steps) else None)
    s = {k: med(k) for k in ("wall", "rollout", "host", "update", "prefill", "decode",
                             "logprobs", "completion_tokens", "mean_length", "row_steps",
                             "finished_row_share", "pack_fill")}
    s["compile_seconds"] = runs[name]["steps"][0]["wall"] - s["wall"]
    s["update_compiles"] = runs[name]["steps"][-1]["update_compiles"]
    s["tokens_per_second"] = s["completion_tokens"] / s["wall"]
    s["decode_tokens_per_second"] = (s["completion_tokens"] / s["decode"]
                                     if s["decode"] else None)
    summary[name] = s
  base = summary.get("baseline")
  for s in summary.values():
    s["speedup_vs_baseline"] = base["wall"] / s["wall"] if base else None

  def f(x, fmt="{:.2f}"):
    return "-" if x is None else fmt.format(x)
  print()
  model_name = ("a random 2-layer model with SmolLM2's tokenizer" if a.random_tiny
                else os.path.basename(os.path.normpath(a.model)))
  print(f"{model_name}, word problems, {a.prompts} x {a.generations},"
        f" {a.new_tokens} new tokens, median of {a.steps} step(s) after 1 compiling step")
  print("| variant | step s | prefill | decode | logprobs | host | update | compile s |"
        " tok/s step | tok/s decode | finished-row share | mean len | fill | compiles |"
        " speedup |")
  print("| --- " * 15 + "|")
  for name, s in summary.items():
    print(f"| {name} | {f(s['wall'])} | {f(s['prefill'])} | {f(s['decode'])} |"
          f" {f(s['logprobs'])} | {f(s['host'], '{:.3f}')} | {f(s['update'])} |"
          f" {f(s['compile_seconds'], '{:.1f}')} | {f(s['tokens_per_second'], '{:.1f}')} |"
          f" {f(s['decode_tokens_per_second'], '{:.1f}')} |"
          f" {f(s['finished_row_share'], '{:.1%}')} | {f(s['mean_length'], '{:.1f}')} |"
          f" {f(s['pack_fill'], '{:.2f}')} | {s['update_compiles']} |"
          f" {f(s['speedup_vs_baseline'], '{:.2f}x')} |")
  result = dict(
      settings=dict(vars(a), variants=names, variant_overrides={n: VARIANTS[n] for n in names}),
      machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores,"
              f" jax {jax.__version__} ({jax.default_backend()})",
      load_seconds=load_seconds, summary=summary,
      steps={name: runs[name]["steps"] for name in names},
      notes=("split: prefill/decode timed to completion by wrappers (not for off_policy, whose"
             " pipeline they would serialise); update = step - rollout - logprobs; host = the"
             " binary's perf/host (rows, detokenising, rewards); finished-row share = 1 -"
             " completion tokens / decode row-steps"))
  os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
  with open(a.out, "w") as fh:
    json.dump(result, fh, indent=1)
  print(f"wrote {a.out}")


if __name__ == "__main__":
  main()
