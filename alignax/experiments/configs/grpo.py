r"""GRPO on your data and rewards, or on a built-in verifiable task (digit reversal).

  python -m alignax.experiments.grpo --config=alignax/experiments/configs/grpo.py:tiny
  python -m alignax.experiments.grpo --config.model_path=DIR \
      --config.data.train=train.jsonl --config.reward.functions=math_accuracy,think_format

Presets: `default` (the main job: a few minutes on a laptop CPU), `tiny`
(seconds; tests and the notebook), and the real pretrained model
SmolLM2-135M-Instruct (first `python -m alignax.tools.fetch_smollm2
runs/smollm2`, which writes the model folder these presets read):
`smollm2` (two-digit addition, examples/addition_*.jsonl) and `smollm2_words`
(multi-step word problems, examples/word_problems_*.jsonl); both full
fine-tuning (135M parameters fit a CPU's memory; `--config.lora.rank=16` for
LoRA) with the reward `examples/arithmetic_rewards.py:last_number_correct`
and, at weight 0 (logged, not trained on), `has_number`: the well-formed share.

Every option is declared once below (`Config`: type, default, rule, help);
`CHECKS` are the rules that involve several options.
"""
import dataclasses
from typing import Optional

import ml_collections

from alignax.experiments.runtime.config_schema import (FRACTION, LEARNING_RATE,
                                                       NON_NEGATIVE, POSITIVE, Section,
                                                       config_dict, integer,
                                                       model_dir_or_empty, not_applicable,
                                                       number, one_of, option, optional)
from alignax.experiments.runtime.model_setup import (BuiltinModel, LoraConfig, MeshConfig,
                                                     Remat)

frozen = dataclasses.dataclass(frozen=True)


@frozen
class DataConfig(Section):
  """Prompt data (alignax.agents.data.prompt_data). Every column other than the
  prompt reaches the reward functions. Paths, formats and fields are checked
  when the data is loaded, still before any compilation; here their types."""

  train: str = option("", help="a .jsonl/.json/.parquet file, a glob of them or a datasets"
                      " save_to_disk directory; empty: the built-in task (`task`)")
  eval: str = option("", help="same; empty: `eval_fraction` of train, split by a hash of"
                     " the prompt")
  eval_fraction: float = option(0.05, number(0, 1, hi_open=True))
  format: str = option("auto", one_of(("auto", "prompt_answer", "messages", "gsm8k",
                                       "math", "verl")))
  prompt_field: str = option("prompt")
  answer_field: str = option("answer")
  chat_template: str = option("auto", one_of(("auto", "none")))
  system_prompt: str = option("")
  drop_long_prompts: bool = option(False, help="drop prompts longer than"
                                   " rollout.max_prompt_length (else an error)")


@frozen
class RewardConfig(Section):
  """Reward functions (alignax.agents.scoring.rewards), called as TRL calls
  them; names are resolved when loaded, before any compilation."""

  functions: str = option("exact_match", help="comma-separated registered names"
                          " (exact_match, math_accuracy, think_format, boxed_format,"
                          " overlong_penalty), path/to/file.py:fn or package.module:fn")
  weights: str = option("", help="comma-separated, empty = all 1")
  overlong_buffer: int = option(0, NON_NEGATIVE, "the soft zone of overlong_penalty in"
                                " tokens (0: a quarter of max_new_tokens)")


@frozen
class EvalConfig(Section):
  """Evaluation every train.eval_every steps and at the end, on the eval split:
  greedy reward and accuracy (the share of prompts whose `accuracy_reward`,
  default the first reward function, is >= 1), plus pass@k / mean@k with k =
  num_samples samples at the rollout temperature."""

  size: int = option(256, NON_NEGATIVE, "at most this many eval prompts (0: all)")
  batch_size: int = option(256, POSITIVE)
  num_samples: int = option(4, NON_NEGATIVE, "k of pass@k / mean@k (0: skip)")
  accuracy_reward: str = option("", help="the reward function accuracy reads")
  log_samples: int = option(4, NON_NEGATIVE, "greedy samples to samples.jsonl and"
                            " TensorBoard")


@frozen
class ReverseTask(Section):
  min_len: int = option(3, POSITIVE)
  max_len: int = option(7, POSITIVE)
  eval_fraction: float = option(0.1, FRACTION)


@frozen
class AdditionTask(Section):
  num_digits: int = option(2, POSITIVE)
  reverse_answer: bool = option(True)
  eval_fraction: float = option(0.1, FRACTION)


@frozen
class TaskConfig(Section):
  """The built-in task, used when data.train is empty: `name` picks a task of
  alignax.agents.data.tasks.TASKS; its settings are the section of that name."""

  name: str = option("reverse", one_of("alignax.agents.data.tasks:TASKS"))
  train_size: int = option(8192, POSITIVE, "training problems generated")
  reverse: ReverseTask = option(ReverseTask())
  addition: AdditionTask = option(AdditionTask())


@frozen
class WarmupConfig(Section):
  """Supervised warm-start of the built-in model on demonstrations, a
  `flawed_fraction` of which come from a flawed demonstrator (the task's
  typical error): the policy starts with a non-zero reward, and RL with the
  verifiable reward has something to fix that imitation cannot."""

  steps: int = option(400, NON_NEGATIVE)
  batch_size: int = option(64, POSITIVE)
  learning_rate: float = option(3e-3, LEARNING_RATE)
  flawed_fraction: float = option(0.6, number(0, 1))


@frozen
class RolloutConfig(Section):
  """How completions are sampled."""

  prompts_per_step: int = option(16, POSITIVE)
  num_generations: int = option(8, integer(2), "completions per prompt (the group)")
  max_new_tokens: int = option(8, POSITIVE)
  max_prompt_length: int = option(512, POSITIVE)
  temperature: float = option(1.0, number(0, lo_open=True))
  top_k: int = option(0, NON_NEGATIVE, "0: no filtering")
  top_p: float = option(1.0, number(0, 1, lo_open=True), "1: no filtering")
  compact: bool = option(
      False, help="drop finished rows from the decode as they stop"
      " (sampling.generate(compact=True): halving row buckets, token for token the same"
      " output). It pays when completion lengths vary and the decode is long; each"
      " bucket compiles its own decode step, which costs more than it saves for a few"
      " new tokens, hence off by default. See benchmarks/rollout_step.py.")
  off_policy_steps: int = option(
      0, integer(0, 1), "0: on-policy; 1: the batch of step k is sampled by the"
      " parameters of step k - 1, its sampling dispatched before the update of step"
      " k - 1 so that the host scores it while the device trains (alignax.rl.grpo_step);"
      " the loss then re-weights each token by the truncated importance weight between"
      " the trainer's log-probs before the update and the sampler's"
      " (loss.sampling_is_*)")


_SAMPLING_IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask",
                      "none")


@frozen
class LossConfig(Section):
  """The policy loss (alignax.objectives.PolicyLossConfig) and advantages."""

  loss_type: str = option("dapo", one_of("alignax.objectives:POLICY_LOSSES"))
  advantage: str = option("grpo", one_of("alignax.objectives:ADVANTAGE_ESTIMATORS"))
  scale_rewards: str = option("group", one_of(("group", "batch", "none")),
                              "the advantage's std scale (estimators that take `scale`)")
  epsilon_low: float = option(0.2, number(0), "clip range [1 - low, 1 + high]")
  epsilon_high: float = option(0.28, number(0))
  delta: Optional[float] = option(None, optional(number(1)),
                                  "upper bound on the ratio (two-sided clip)")
  importance_sampling_level: str = option("token", one_of(("token", "sequence")),
                                          "sequence = GSPO")
  beta: float = option(0.0, number(0), "k3 KL to the initial policy (0: none)")
  use_bias_correction_kl: bool = option(True, help="KL times the importance ratio")
  sampling_is_mode: str = option(
      "token_truncate", one_of(_SAMPLING_IS_MODES), "off-policy rollouts only"
      " (rollout.off_policy_steps=1): each token's weight, min(exp(logp_trainer_old -"
      " logp_sampler), clip_max) in token_truncate, as TRL's vllm_importance_sampling_*"
      " options (objectives.sampling_importance_weights; none = no correction)")
  sampling_is_clip_max: Optional[float] = option(3.0, optional(number(0, lo_open=True)))
  sampling_is_clip_min: Optional[float] = option(None, optional(number(0)))


@frozen
class TrainConfig(Remat):
  """The updates, evaluation and checkpoints."""

  steps: int = option(200, POSITIVE)
  num_iterations: int = option(1, POSITIVE, "updates per batch")
  micro_batches: int = option(1, POSITIVE)
  learning_rate: float = option(5e-4, LEARNING_RATE)
  warmup_steps: int = option(5, NON_NEGATIVE)
  max_grad_norm: float = option(1.0, number(0, lo_open=True))
  eval_every: int = option(25, POSITIVE)
  checkpoint_every: int = option(25, POSITIVE)
  keep_checkpoints: int = option(3, POSITIVE)
  pack: bool = option(
      False, help="the update runs on packed rows (alignax.framework.packing: each"
      " prompt + completion's real tokens one segment of a row of max_prompt_length +"
      " max_new_tokens slots, first-fit decreasing): it pays for the real tokens"
      " instead of N x (P + C) padded slots; same loss and gradients to float rounding."
      " It pays for long completions of varying length and costs for short, even ones"
      " (packed rows run each completion's prompt with it; the unpacked update runs a"
      " group's shared prompt once)")
  pack_buckets: int = option(4, POSITIVE, "packed rows and completion targets per"
                             " micro-batch are each rounded up to one of this many"
                             " sizes (at most pack_buckets**2 compiled shapes)")
  share_prompt: Optional[bool] = option(None, help="run a group's prompt once; None:"
                                        " True unless pack (True with pack is an error)")


@frozen
class Config(Section):
  """The GRPO binary's options (`alignax.experiments.grpo`)."""

  seed: int = option(0, NON_NEGATIVE)
  model_path: str = option("", model_dir_or_empty(), "a directory written by"
                           " save_pretrained (+ its tokenizer), or a .gguf file; empty:"
                           " the built-in model, warm-started on the task and saved under"
                           " <workdir>/init_model")
  data: DataConfig = option(DataConfig())
  reward: RewardConfig = option(RewardConfig())
  eval: EvalConfig = option(EvalConfig())
  task: TaskConfig = option(TaskConfig())
  model: BuiltinModel = option(BuiltinModel(max_position_embeddings=64),
                               help="the built-in model (ignored with model_path) and"
                               " the precision (any model)")
  warmup: WarmupConfig = option(WarmupConfig())
  rollout: RolloutConfig = option(RolloutConfig())
  loss: LossConfig = option(LossConfig())
  train: TrainConfig = option(TrainConfig())
  mesh: MeshConfig = option(MeshConfig())
  lora: LoraConfig = option(LoraConfig(), help="LoRA adapters (alignax.framework.lora);"
                            " with rank > 0 the run ends with final_adapter/ (PEFT"
                            " format) and final_model/ (merged)")


# SmolLM2-135M-Instruct presets (README, "A real model"): preset -> (task of
# examples/make_arithmetic.py, max new tokens, steps, evaluation and checkpoint
# interval).
SMOLLM2_TASKS = {
    "smollm2": ("addition", 16, 90, 30),
    "smollm2_two_ops": ("two_ops", 32, 120, 40),
    "smollm2_words": ("word_problems", 128, 150, 25),
}


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
  c = config_dict(Config())
  if preset == "tiny":
    # Seconds on a laptop CPU, and still learning: reward and held-out accuracy
    # rise over the 12 steps (figures: docs/results.md, "Tuning notes", grpo).
    c.eval.update(size=32, num_samples=2)
    c.task.update(train_size=1024)
    c.task.reverse.max_len = 4
    c.rollout.max_new_tokens = 5
    c.model.update(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                   num_kv_heads=2)
    c.warmup.update(steps=400, batch_size=32)
    c.rollout.update(prompts_per_step=8, num_generations=8)
    c.train.update(steps=12, eval_every=4, checkpoint_every=4, warmup_steps=1)
  elif preset in SMOLLM2_TASKS:
    task, new_tokens, steps, every = SMOLLM2_TASKS[preset]
    c.model_path = "runs/smollm2"
    rewards = "examples/arithmetic_rewards.py"
    c.data.update(train=f"examples/{task}_train.jsonl", eval=f"examples/{task}_eval.jsonl")
    c.reward.update(functions=f"{rewards}:last_number_correct,{rewards}:has_number",
                    weights="1.0,0.0")
    c.eval.update(size=256, batch_size=128, num_samples=4, log_samples=4)
    c.rollout.update(prompts_per_step=4, num_generations=8, max_prompt_length=128,
                     max_new_tokens=new_tokens)
    # Steps sized to the training budget on 2 cores (docs/results.md, "Tuning
    # notes", grpo; held-out figures per seed: its claims table).
    c.train.update(steps=steps, learning_rate=1e-5, warmup_steps=2, eval_every=every,
                   checkpoint_every=every)
  elif preset != "default":
    raise ValueError(f"Unknown preset {preset!r}; use one of"
                     f" {['default', 'tiny', *SMOLLM2_TASKS]}.")
  return c


# ---------------------------------------------------------------- CHECKS
def _check_micro_batches(c):
  if c.rollout.prompts_per_step % c.train.micro_batches:
    return (f"config.rollout.prompts_per_step={c.rollout.prompts_per_step} is not"
            f" divisible by config.train.micro_batches={c.train.micro_batches}"
            " (a micro-batch holds whole groups)")


def _check_lengths(c):
  if c.task.reverse.min_len > c.task.reverse.max_len:
    return (f"config.task.reverse.min_len={c.task.reverse.min_len} exceeds"
            f" config.task.reverse.max_len={c.task.reverse.max_len}")
  if c.model.num_heads % c.model.num_kv_heads:
    return (f"config.model.num_heads={c.model.num_heads} is not a multiple of"
            f" config.model.num_kv_heads={c.model.num_kv_heads}")


def _check_pack(c):
  if c.train.pack and c.train.share_prompt:
    return ("config.train.pack=True cannot combine with config.train.share_prompt=True:"
            " packed rows run each completion with its own prompt. Pick one (pack pays"
            " for long completions of varying length, prompt sharing for long prompts and"
            " short completions), or leave share_prompt unset (None: on unless pack).")
  shards = c.mesh.data * c.mesh.fsdp
  if c.train.pack and shards > 1:
    return (f"config.train.pack=True with config.mesh.data * config.mesh.fsdp = {shards}:"
            " packed rows are not split over batch shards yet; use train.pack=False on"
            " this mesh (mesh.tensor > 1 works with packing).")


def _check_off_policy(c):
  if (c.rollout.off_policy_steps and c.loss.loss_type == "vespo"
      and c.loss.sampling_is_mode != "none"):
    return ("config.rollout.off_policy_steps=1 with config.loss.loss_type='vespo': the"
            " sampler correction inside VESPO's weights is not implemented; set"
            " config.loss.sampling_is_mode=none or use another loss_type.")


def _check_applies(c):
  """Options set away from their default that the chosen algorithm ignores."""
  from alignax import objectives  # pylint: disable=g-import-not-at-top
  lc = c.loss
  estimator = objectives.get_advantage_fn(lc.advantage)
  loss_reads = objectives.get_policy_loss(lc.loss_type).reads
  checks = [
      ("loss.scale_rewards", bool(objectives.accepted_options(estimator, {"scale": 1})),
       f"config.loss.advantage={lc.advantage!r}"),
      *((f"loss.{k}", loss_reads is None or k in loss_reads,
         f"config.loss.loss_type={lc.loss_type!r}")
        for k in ("epsilon_low", "epsilon_high", "delta")),
      *((f"loss.{k}", bool(c.rollout.off_policy_steps),
         "on-policy rollouts (config.rollout.off_policy_steps=0)")
        for k in ("sampling_is_mode", "sampling_is_clip_max", "sampling_is_clip_min")),
      ("loss.use_bias_correction_kl", lc.beta > 0, "config.loss.beta=0.0 (no KL term)"),
      ("train.pack_buckets", c.train.pack, "unpacked updates (config.train.pack=False)"),
  ]
  return "\n  ".join(m for m in (not_applicable(c, *check) for check in checks) if m)


CHECKS = (_check_micro_batches, _check_lengths, _check_pack, _check_off_policy,
          _check_applies)
