r"""GRPO on SmolLM2-135M-Instruct: alignax against TRL's GRPOTrainer, same work.

  python -m alignax.tools.fetch_smollm2 runs/smollm2     # once
  python benchmarks/real_model_vs_trl.py                  # 40 steps each, ~30 min on 2 cores
  python benchmarks/real_model_vs_trl.py --workload=word_problems --steps=2 --segment=2 \
      --eval_size=16 --out=benchmarks/results/real_model_vs_trl_words.json   # issue 34's workload

`--workload` (WORKLOADS) picks the task and batch: `addition` (the default:
examples/addition_*.jsonl, the model's default system prompt, 4 prompts x 8,
16 new tokens) or `word_problems` (examples/word_problems_*.jsonl with a
step-by-step system prompt, 8 prompts x 8, 256 new tokens, the update in one
micro-batch per prompt group: `train.micro_batches` for alignax,
`gradient_accumulation_steps` for TRL; the workload of
benchmarks/rollout_step.py). Both sides train the same HF folder on the same
data, chat-templated alike, with the same reward
function (examples/arithmetic_rewards.py:last_number_correct, one plain
function in TRL's signature, used unchanged by both), group size, prompts per
step, max new tokens, sampling temperature, learning rate and schedule (AdamW,
2 warm-up steps, cosine to 0.1x), clipping, loss type (dapo, beta 0).

Steps are interleaved: the sides run in alternating segments of `--segment`
steps, each a fresh process resuming from the previous segment's checkpoint
(alignax: its own resume; TRL: `resume_from_checkpoint`), so both see the
same machine load. Every segment boundary is an evaluation: greedy accuracy on
the held-out prompts and mean@k (k = the workload's eval_k; the sampled
accuracy at temperature 1, the check that both sample from the same
distribution). A segment's first step
holds compilation (alignax) or warm-up, so it is reported apart.

After each pair of segments the step's dense-matmul floor is timed too, so
the alignax/floor ratio compares timings taken under the same load (one floor
timing at the end moved 35% between two runs).

Writes benchmarks/results/real_model_vs_trl.json (per-step seconds with the
split into generation / update, evaluations, peak memory per side, the floor
of each round) and
real_model_vs_trl.png (held-out accuracy and mean reward against step and
against training seconds), and prints a table.
"""
import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
RESULTS = os.path.join(ROOT, "benchmarks", "results")
CONFIG = os.path.join(ROOT, "alignax", "experiments", "configs", "grpo.py")
LR = 1e-5
STEP_BY_STEP = ("Solve the problem step by step, showing each calculation, then give the"
                " final answer as a number on the last line.")


@dataclasses.dataclass(frozen=True)
class Workload:
  """A comparison's task and batch, the same for every side."""
  title: str
  preset: str              # the grpo config preset the alignax side starts from
  data: str                # examples/<data>_{train,eval}.jsonl
  prompts: int             # prompts per step
  group: int               # completions per prompt
  new_tokens: int
  system_prompt: str = ""  # "": the chat template's default
  micro_batches: int = 1   # update micro-batches (TRL: gradient_accumulation_steps)
  eval_k: int = 4          # k of the evaluations' mean@k

  def file(self, split: str) -> str:
    return os.path.join(EXAMPLES, f"{self.data}_{split}.jsonl")

  def messages(self, prompt: str) -> list:
    """The conversation both sides render with the chat template."""
    system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
    return system + [{"role": "user", "content": prompt}]


WORKLOADS = {
    "addition": Workload("two-digit addition (4 prompts x 8, 16 tokens)", "smollm2",
                         "addition", prompts=4, group=8, new_tokens=16),
    # Issue 34's workload (benchmarks/rollout_step.py): long completions of varying length.
    "word_problems": Workload(
        "word problems, step by step (8 prompts x 8, 256 tokens)", "smollm2_words",
        "word_problems", prompts=8, group=8, new_tokens=256, system_prompt=STEP_BY_STEP,
        micro_batches=8, eval_k=0),  # greedy only: each sampled token costs a decode step
}


def _peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _rows(path):
  with open(path) as f:
    return [json.loads(l) for l in f]


def _rewards():
  sys.path.insert(0, EXAMPLES)
  import arithmetic_rewards  # pylint: disable=g-import-not-at-top
  return arithmetic_rewards


# --- alignax side -------------------------------------------------------------


def alignax_config(args):
  """The grpo binary's config for `args.workload` (its preset, then the shared settings)."""
  from alignax.experiments.runtime import config_files  # pylint: disable=g-import-not-at-top
  w = WORKLOADS[args.workload]
  config = config_files.load_config_file(f"{CONFIG}:{w.preset}")
  config.update_from_flattened_dict({
      "model_path": args.model, "seed": args.seed, "train.steps": args.steps,
      "train.learning_rate": LR, "rollout.num_generations": w.group,
      "rollout.prompts_per_step": w.prompts, "rollout.max_new_tokens": w.new_tokens,
      "data.system_prompt": w.system_prompt, "train.micro_batches": w.micro_batches,
      "train.eval_every": args.segment, "train.checkpoint_every": args.segment,
      "eval.size": args.eval_size, "eval.num_samples": w.eval_k})
  return config


def run_alignax(args, until: int) -> dict:
  from alignax.experiments import grpo  # pylint: disable=g-import-not-at-top
  from alignax.experiments.runtime import outputs  # pylint: disable=g-import-not-at-top
  config = alignax_config(args)
  workdir = os.path.join(args.workdir, "alignax")
  start = until - args.segment  # resumes from the checkpoint the last segment wrote
  grpo.run(config, workdir, stop_after=args.segment, progress=False)
  rows = outputs.read_metrics(workdir)
  steps = [{"step": r["step"], "seconds": r["perf/step_seconds"],
            "generation": r["perf/rollout_seconds"], "update": r["perf/update_seconds"],
            "reward": r["train/reward"]} for r in rows if start < r["step"] <= until]
  k = WORKLOADS[args.workload].eval_k
  evals = [{"step": r["step"], "accuracy": r["eval/accuracy"],
            **({f"mean@{k}": r[f"eval/mean@{k}"]} if k else {})} for r in rows
           if "eval/accuracy" in r and (start < r["step"] <= until or r["step"] == start == 0)]
  return {"steps": steps, "evals": evals}


# --- TRL side -----------------------------------------------------------------


def _trl_eval(model, tokenizer, prompts, answers, reward_fn, seed, w: Workload):
  """Greedy accuracy and mean@k at temperature 1 with `transformers.generate`."""
  import torch  # pylint: disable=g-import-not-at-top
  tokenizer.padding_side = "left"
  greedy, sampled = [], []
  for lo in range(0, len(prompts), 64):
    texts = [tokenizer.apply_chat_template(w.messages(p), tokenize=False,
                                           add_generation_prompt=True)
             for p in prompts[lo:lo + 64]]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    gold = answers[lo:lo + 64]
    with torch.no_grad():
      out = model.generate(**enc, max_new_tokens=w.new_tokens, do_sample=False)
      dec = tokenizer.batch_decode(out[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
      greedy += reward_fn(None, dec, answer=gold)
      if not w.eval_k:
        continue
      torch.manual_seed(seed + lo)
      out = model.generate(**enc, max_new_tokens=w.new_tokens, do_sample=True, temperature=1.0,
                           top_k=0, top_p=1.0, num_return_sequences=w.eval_k)
      dec = tokenizer.batch_decode(out[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
      sampled += reward_fn(None, dec, answer=[a for a in gold for _ in range(w.eval_k)])
  return sum(greedy) / len(greedy), (sum(sampled) / len(sampled) if sampled else None)


def trl_config(args, out_dir: str):
  """TRL's GRPOConfig for `args.workload`: one optimizer step per batch of
  prompts x group completions, generated at once and, with micro-batches,
  split into gradient-accumulation steps (one step's generation)."""
  import trl  # pylint: disable=g-import-not-at-top
  w = WORKLOADS[args.workload]
  rows = w.group * w.prompts
  if rows % w.micro_batches:
    raise ValueError(f"{args.workload}: micro_batches={w.micro_batches} does not divide"
                     f" {rows} rows.")
  return trl.GRPOConfig(
      output_dir=out_dir, max_steps=args.steps,
      per_device_train_batch_size=rows // w.micro_batches,
      gradient_accumulation_steps=w.micro_batches, steps_per_generation=w.micro_batches,
      num_generations=w.group, max_completion_length=w.new_tokens, temperature=1.0,
      top_p=1.0, top_k=0, learning_rate=LR, lr_scheduler_type="cosine_with_min_lr",
      lr_scheduler_kwargs={"min_lr_rate": 0.1}, warmup_steps=2, weight_decay=0.0,
      adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0,
      loss_type="dapo", beta=0.0, epsilon=0.2, epsilon_high=0.28, scale_rewards="group",
      reward_weights=[1.0, 0.0], logging_steps=1, save_strategy="steps",
      save_steps=args.segment, save_only_model=False, report_to="none", seed=args.seed,
      use_cpu=True, bf16=False, disable_tqdm=True, dataloader_num_workers=0)


def run_trl(args, until: int) -> dict:
  import datasets  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  import trl  # pylint: disable=g-import-not-at-top

  torch.manual_seed(args.seed)
  rewards = _rewards()
  w = WORKLOADS[args.workload]
  train = _rows(w.file("train"))
  held_out = _rows(w.file("eval"))[:args.eval_size]
  dataset = datasets.Dataset.from_list(
      [{"prompt": w.messages(r["prompt"]), "answer": r["answer"]} for r in train])
  out_dir = os.path.join(args.workdir, "trl")
  cfg = trl_config(args, out_dir)
  model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
  tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
  trainer = trl.GRPOTrainer(model=model, args=cfg, train_dataset=dataset,
                            processing_class=tokenizer,
                            reward_funcs=[rewards.last_number_correct, rewards.has_number])
  timers = {"generation": 0.0}
  generate = trainer._generate_single_turn  # pylint: disable=protected-access

  def timed_generate(*a, **k):
    t0 = time.perf_counter()
    try:
      return generate(*a, **k)
    finally:
      timers["generation"] += time.perf_counter() - t0
  trainer._generate_single_turn = timed_generate  # pylint: disable=protected-access
  steps, evals = [], []

  class Segment(transformers.TrainerCallback):
    """Times steps, evaluates at the segment's ends, stops at `until`."""

    def on_step_begin(self, a, state, control, **kw):
      timers.update(generation=0.0, start=time.perf_counter())

    def on_step_end(self, a, state, control, **kw):
      seconds = time.perf_counter() - timers["start"]
      reward = None
      for h in reversed(state.log_history):
        if "reward" in h:
          reward = h["reward"]
          break
      steps.append({"step": state.global_step, "seconds": seconds,
                    "generation": timers["generation"],
                    "update": seconds - timers["generation"], "reward": reward})
      if state.global_step >= until:
        control.should_training_stop = True
        control.should_save = True

  def evaluate(step):
    model.eval()
    acc, mean_k = _trl_eval(model, tokenizer, [r["prompt"] for r in held_out],
                            [r["answer"] for r in held_out], rewards.last_number_correct,
                            args.seed + step, w)
    model.train()
    evals.append({"step": step, "accuracy": acc, **({f"mean@{w.eval_k}": mean_k} if w.eval_k
                                                     else {})})

  trainer.add_callback(Segment())
  ckpts = sorted((int(d.split("-")[1]) for d in os.listdir(out_dir)
                  if d.startswith("checkpoint-")) if os.path.isdir(out_dir) else [])
  if not ckpts:
    evaluate(0)
  trainer.train(resume_from_checkpoint=(os.path.join(out_dir, f"checkpoint-{ckpts[-1]}")
                                        if ckpts else None))
  # The rewards of the steps (TRL logs them after on_step_end).
  logged = {h["step"]: h["reward"] for h in trainer.state.log_history if "reward" in h}
  for s in steps:
    s["reward"] = logged.get(s["step"], s["reward"])
  evaluate(trainer.state.global_step)
  return {"steps": steps, "evals": evals}


# --- same inputs, and the floor -----------------------------------------------------


def same_rendered_prompts(args, count: int = 256) -> dict:
  """alignax's prompt token ids against TRL's rendering of the same rows.

  TRL renders a conversational prompt with `apply_chat_template(...,
  add_generation_prompt=True)` (the default system prompt comes from the
  template) and tokenises without special tokens; alignax with
  `prompt_data.PromptEncoder`. Returns the count of rows that differ and the
  prompt bucket alignax pads a step's prompts to.
  """
  import transformers  # pylint: disable=g-import-not-at-top
  from alignax.agents.data import prompt_data  # pylint: disable=g-import-not-at-top
  from alignax.framework import hf, sampling  # pylint: disable=g-import-not-at-top
  w = WORKLOADS[args.workload]
  prompts = [r["prompt"] for r in _rows(w.file("train"))[:count]]
  ours = prompt_data.PromptEncoder(hf.load_tokenizer(args.model),
                                   system_prompt=w.system_prompt).encode(prompts)
  tok = transformers.AutoTokenizer.from_pretrained(args.model)
  theirs = [tok(tok.apply_chat_template(w.messages(p), tokenize=False,
                                        add_generation_prompt=True),
                add_special_tokens=False)["input_ids"] for p in prompts]
  lengths = [len(x) for x in ours]
  return {"rows": len(prompts), "differing_rows": sum(list(a) != list(b)
                                                      for a, b in zip(ours, theirs)),
          "prompt_tokens_min_max": [min(lengths), max(lengths)],
          "prompt_bucket": sampling.bucket_length(max(lengths), 1 << 30),
          "first_rendered": tok.decode(theirs[0])}


def matmul_floor(args, prompt_len: int) -> dict:
  """The dense-matmul floor of one alignax step (benchmarks/matmul_floor.py's plan).

  Every matmul of the step (generation: prefill of each prompt once, then
  new_tokens decode steps at prompts x group rows; update: forward of the
  prompts once per group and of the completions, LM head on the completion
  rows, and two backward matmuls per forward one), each shape timed alone, jitted.
  """
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "matmul_floor", os.path.join(ROOT, "benchmarks", "matmul_floor.py"))
  floor = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(floor)
  with open(os.path.join(args.model, "config.json")) as f:
    cfg = json.load(f)
  w = WORKLOADS[args.workload]
  shape = argparse.Namespace(
      layers=cfg["num_hidden_layers"], hidden=cfg["hidden_size"],
      intermediate=cfg["intermediate_size"], vocab=cfg["vocab_size"],
      kv_width=cfg["num_key_value_heads"] * cfg["hidden_size"] // cfg["num_attention_heads"],
      prompts_per_step=w.prompts, generations=w.group, prompt=prompt_len, new=w.new_tokens,
      repeats=3)
  phases, _ = floor.measure(floor.grpo_plan(shape), shape, with_torch=False)
  gen = [r for r in phases if r["phase"].startswith("generate")]
  upd = [r for r in phases if r["phase"].startswith("update")]
  return {"shape": vars(shape), "phases": phases,
          "gflop": sum(r["gflop"] for r in phases),
          "seconds": sum(r["xla_s"] for r in phases),
          "generation_seconds": sum(r["xla_s"] for r in gen),
          "update_seconds": sum(r["xla_s"] for r in upd)}


# --- orchestration --------------------------------------------------------------


def run_floor(args, until: int) -> dict:
  """One timing of the floor (a side of its own, so it runs in a fresh process)."""
  del until
  return matmul_floor(args, same_rendered_prompts(args)["prompt_bucket"])


def _segment(args, side, until):
  cmd = [sys.executable, os.path.abspath(__file__), "--side", side, "--until", str(until),
         *(f"--{k}={v}" for k, v in vars(args).items() if k not in ("side", "until", "out"))]
  t0 = time.perf_counter()
  # alignax compiles in every segment's new process; the persistent cache
  # makes that a load after the first segment (reported apart either way).
  env = dict(os.environ, JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false",
             JAX_COMPILATION_CACHE_DIR=os.path.join(args.workdir, "jax_cache"))
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
  if proc.returncode:
    sys.exit(f"{side} segment to step {until} failed:\n{proc.stderr[-4000:]}")
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  result["wall"] = time.perf_counter() - t0
  return result


def _median(xs):
  xs = sorted(xs)
  return xs[len(xs) // 2] if xs else float("nan")


def _summary(segments):
  steps = [s for seg in segments for s in seg["steps"]]
  # A segment's first step holds compilation / warm-up; the rest are steady.
  steady = [s for seg in segments for s in seg["steps"][1:]]
  firsts = [seg["steps"][0]["seconds"] for seg in segments if seg["steps"]]
  return {
      "steps": steps, "evals": [e for seg in segments for e in seg["evals"]],
      "median_step_seconds": _median([s["seconds"] for s in steady]),
      "median_generation_seconds": _median([s["generation"] for s in steady]),
      "median_update_seconds": _median([s["update"] for s in steady]),
      "first_step_of_segment_seconds": firsts,
      "peak_rss_gib": max(seg["peak_rss_gib"] for seg in segments),
      "segment_wall_seconds": [seg["wall"] for seg in segments]}


def _plot(result, path, title):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for side, style in (("alignax", "-o"), ("trl", "--s"), ("tunix", ":^")):
    if side not in result:
      continue
    r = result[side]
    ev = sorted(r["evals"], key=lambda e: e["step"])
    secs, clock = {0: 0.0}, 0.0
    for s in sorted(r["steps"], key=lambda s: s["step"]):
      clock += s["seconds"]
      secs[s["step"]] = clock
    axes[0].plot([e["step"] for e in ev], [e["accuracy"] for e in ev], style, label=side)
    axes[1].plot([secs.get(e["step"], float("nan")) for e in ev],
                 [e["accuracy"] for e in ev], style, label=side)
    st = sorted(r["steps"], key=lambda s: s["step"])
    axes[2].plot([s["step"] for s in st], [s["reward"] for s in st], style, label=side,
                 markersize=3)
  axes[0].set(xlabel="step", ylabel="held-out greedy accuracy", title="accuracy vs step")
  axes[1].set(xlabel="training seconds (compile included)", ylabel="held-out greedy accuracy",
              title="accuracy vs time")
  axes[2].set(xlabel="step", ylabel="mean sampled reward", title="train reward")
  for ax in axes:
    ax.legend()
    ax.grid(alpha=0.3)
  fig.suptitle(f"GRPO on SmolLM2-135M-Instruct, {title}")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def _tunix_side():
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import tunix_side  # pylint: disable=g-import-not-at-top
  return tunix_side


def run_tunix(args, until: int) -> dict:
  """tunix (benchmarks/tunix_side.py, its own venv): steps 0..until in one process."""
  return _tunix_side().run_tunix(args, until)


SIDES = {"alignax": run_alignax, "trl": run_trl, "floor": run_floor, "tunix": run_tunix}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default=os.path.join(ROOT, "runs", "smollm2"))
  p.add_argument("--steps", type=int, default=40)
  p.add_argument("--segment", type=int, default=10)
  p.add_argument("--eval_size", type=int, default=256)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--workload", default="addition", choices=tuple(WORKLOADS))
  p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "real_model_vs_trl"))
  p.add_argument("--out", default=os.path.join(RESULTS, "real_model_vs_trl.json"))
  p.add_argument("--sides", default="alignax,trl",
                 help="alignax,trl or alignax,trl,tunix (tunix: benchmarks/tunix_side.py)")
  p.add_argument("--side", choices=tuple(SIDES), help=argparse.SUPPRESS)
  p.add_argument("--until", type=int, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.side:  # one segment, in its own process
    result = SIDES[args.side](args, args.until)
    result.setdefault("peak_rss_gib", _peak_rss_gib())  # tunix: its subprocess's
    print(json.dumps(result))
    return
  if not os.path.isfile(os.path.join(args.model, "config.json")):
    sys.exit(f"--model={args.model} is not a model folder; run"
             f" `python -m alignax.tools.fetch_smollm2 {args.model}` first.")
  sides = args.sides.split(",")
  if not {"alignax", "trl"} <= set(sides) <= {"alignax", "trl", "tunix"}:
    sys.exit(f"--sides={args.sides}: give alignax,trl or alignax,trl,tunix.")
  if "tunix" in sides and args.workload != "addition":
    sys.exit(f"--sides=...,tunix: benchmarks/tunix_side.py runs the addition workload"
             f" only, not --workload={args.workload}.")
  if "tunix" in sides:  # checked now, not after the other sides' half hour
    tunix_python = _tunix_side().TUNIX_PYTHON
    if not os.path.exists(tunix_python):
      sys.exit(f"--sides=...,tunix: no {tunix_python}; make tunix's venv as"
               " benchmarks/tunix_side.py's docstring says, or set TUNIX_PYTHON.")
  if os.path.exists(args.workdir):
    sys.exit(f"--workdir={args.workdir} exists: remove it or pass another (both sides"
             " resume from it, and a fresh comparison must start from step 0).")
  segments, floors = {"alignax": [], "trl": []}, []
  for until in range(args.segment, args.steps + 1, args.segment):
    for side in ("alignax", "trl"):
      segments[side].append(_segment(args, side, until))
      seg = segments[side][-1]
      print(f"{side:8s} to step {until:3d}: {seg['wall']:6.1f} s wall,"
            f" accuracy {seg['evals'][-1]['accuracy']:.3f}", flush=True)
    floors.append(_segment(args, "floor", until))
    print(f"floor    at step {until:3d}: {floors[-1]['seconds']:.2f} s", flush=True)
  if "tunix" in sides:  # no resume: one run, evaluating every --segment steps
    segments["tunix"] = [_segment(args, "tunix", args.steps)]
    print(f"tunix    to step {args.steps:3d}: {segments['tunix'][0]['wall']:6.1f} s wall,"
          f" accuracy {segments['tunix'][0]['evals'][-1]['accuracy']:.3f}", flush=True)
  result = {side: _summary(segs) for side, segs in segments.items()}
  w = WORKLOADS[args.workload]
  if "tunix" in result:
    result["tunix"]["differences"] = segments["tunix"][0]["differences"]
    x = result["tunix"]
    print(f"tunix: {x['median_step_seconds']:.2f} s/step (generation"
          f" {x['median_generation_seconds']:.2f}, update {x['median_update_seconds']:.2f}),"
          f" first step {x['first_step_of_segment_seconds'][0]:.1f} s, peak RSS"
          f" {x['peak_rss_gib']:.2f} GiB; evals {x['evals']}", flush=True)
  result["config"] = {"model": args.model, "steps": args.steps, "segment": args.segment,
                      "workload": args.workload, **dataclasses.asdict(w),
                      "learning_rate": LR, "loss_type": "dapo", "beta": 0.0, "seed": args.seed,
                      "eval_size": args.eval_size, "machine": os.uname().machine,
                      "cpus": os.cpu_count()}
  a, t = result["alignax"], result["trl"]
  result["step_time_ratio_trl_over_alignax"] = t["median_step_seconds"] / a["median_step_seconds"]
  result["prompts"] = same_rendered_prompts(args)
  print(f"rendered prompts: {result['prompts']['differing_rows']} of"
        f" {result['prompts']['rows']} differ between alignax and TRL", flush=True)
  # The floor of the median round; each round's ratio: its alignax segment's
  # steady median over the floor timed right after it.
  result["floor"] = sorted(floors, key=lambda f: f["seconds"])[len(floors) // 2]
  result["floor_seconds_per_round"] = [f["seconds"] for f in floors]
  result["alignax_over_floor"] = a["median_step_seconds"] / result["floor"]["seconds"]
  result["alignax_over_floor_per_round"] = [
      _median([s["seconds"] for s in seg["steps"][1:]]) / f["seconds"]
      for seg, f in zip(segments["alignax"], floors)]
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  _plot(result, os.path.splitext(args.out)[0] + ".png", w.title)
  print(f"\n| | alignax | TRL {__import__('trl').__version__} |\n|---|---|---|")
  for key, name in (("median_step_seconds", "s / step (median, steady)"),
                    ("median_generation_seconds", "  generation"),
                    ("median_update_seconds", "  update (log-probs + backward + step)"),
                    ("peak_rss_gib", "peak RSS (GiB)")):
    print(f"| {name} | {a[key]:.2f} | {t[key]:.2f} |")
  fl = result["floor"]
  print(f"| alignax's dense-matmul floor ({fl['gflop']:.0f} GFLOP) | {fl['seconds']:.2f}"
        f" (generation {fl['generation_seconds']:.2f}, update {fl['update_seconds']:.2f})"
        f" = step / {result['alignax_over_floor']:.2f} | |")
  print(f"| floor per round (s) | {', '.join(f'{x:.2f}' for x in result['floor_seconds_per_round'])}"
        f" (step / floor per round: {', '.join(f'{x:.2f}' for x in result['alignax_over_floor_per_round'])}) | |")
  print(f"| first step of each segment (s) | {', '.join(f'{x:.1f}' for x in a['first_step_of_segment_seconds'])}"
        f" | {', '.join(f'{x:.1f}' for x in t['first_step_of_segment_seconds'])} |")
  keys = ["accuracy"] + [f"mean@{w.eval_k}"] * bool(w.eval_k)
  for e_a, e_t in zip(sorted(a["evals"], key=lambda e: e["step"]),
                      sorted(t["evals"], key=lambda e: e["step"])):
    print(f"| step {e_a['step']} {' / '.join(keys)} | {' / '.join(f'{e_a[k]:.3f}' for k in keys)}"
          f" | {' / '.join(f'{e_t[k]:.3f}' for k in keys)} |")
  print(f"\nTRL / alignax seconds per step: {result['step_time_ratio_trl_over_alignax']:.2f}x;"
        f" wrote {args.out}")


if __name__ == "__main__":
  main()
