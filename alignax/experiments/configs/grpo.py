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
"""
import ml_collections
from ml_collections import config_dict

from alignax.experiments.runtime import config_schema, model_setup
from alignax.experiments.runtime.config_schema import (boolean, integer, number, one_of,
                                                       optional, string)
from alignax.experiments.runtime.model_setup import lora_config, lora_schema


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # A directory written by save_pretrained (+ its tokenizer); empty: the built-in
  # model, warm-started on the task and saved under <workdir>/init_model.
  c.model_path = ""

  # Prompt data (alignax.agents.data.prompt_data). `train`: a .jsonl/.json/.parquet
  # file, a glob of them or a datasets save_to_disk directory; empty: the
  # built-in task below. `eval`: same; empty: `eval_fraction` of train, split
  # by a hash of the prompt. `format`: auto | prompt_answer | messages | gsm8k
  # | math | verl. Every other column reaches the reward functions.
  c.data = ml_collections.ConfigDict(dict(
      train="", eval="", eval_fraction=0.05, format="auto", prompt_field="prompt",
      answer_field="answer", chat_template="auto", system_prompt="",
      drop_long_prompts=False))

  # Reward functions (alignax.agents.scoring.rewards): comma-separated registered names
  # (exact_match, math_accuracy, think_format, boxed_format, overlong_penalty),
  # path/to/file.py:fn or package.module:fn, called as TRL calls them.
  # `weights`: comma-separated, empty = all 1. `overlong_buffer`: the soft
  # zone of overlong_penalty in tokens (0: a quarter of max_new_tokens).
  c.reward = ml_collections.ConfigDict(dict(
      functions="exact_match", weights="", overlong_buffer=0))

  # Evaluation every train.eval_every steps and at the end, on the eval split:
  # greedy reward and accuracy (the share of prompts whose `accuracy_reward`,
  # default the first reward function, is >= 1), plus pass@k / mean@k with
  # k = num_samples samples at the rollout temperature (0: skip). `size`: at
  # most this many eval prompts (0: all); `log_samples` greedy samples go to
  # samples.jsonl and TensorBoard.
  c.eval = ml_collections.ConfigDict(dict(
      size=256, batch_size=256, num_samples=4, accuracy_reward="", log_samples=4))

  # The built-in task, used when data.train is empty: config.task.name picks a
  # task of alignax.agents.data.tasks.TASKS; its settings are the sub-config of the
  # same name. `train_size` training problems are generated.
  c.task = ml_collections.ConfigDict(dict(
      name="reverse", train_size=8192,
      reverse=dict(min_len=3, max_len=7, eval_fraction=0.1),
      addition=dict(num_digits=2, reverse_answer=True, eval_fraction=0.1)))

  # The built-in model (ignored when model_path is set), except param_dtype
  # (weights and Adam moments) and dtype (matmuls), which apply to any model:
  # float32/float32, bfloat16 compute with float32 master weights
  # (float32/bfloat16), or bfloat16 throughout.
  c.model = ml_collections.ConfigDict(dict(
      hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4, num_kv_heads=2,
      max_position_embeddings=64, tie_word_embeddings=True, **model_setup.PRECISION))
  # Supervised warm-start of the built-in model on demonstrations, a
  # `flawed_fraction` of which come from a flawed demonstrator (the task's
  # typical error): the policy starts with a non-zero reward, and RL with the
  # verifiable reward has something to fix that imitation cannot.
  c.warmup = ml_collections.ConfigDict(dict(steps=400, batch_size=64, learning_rate=3e-3,
                                            flawed_fraction=0.6))

  # `compact`: drop finished rows from the decode as they stop
  # (sampling.generate(compact=True): the decode runs in halving row buckets,
  # token for token the same output). It pays when completion lengths vary
  # and the decode is long (the word problems: 256 new tokens, rows stopping
  # from ~30 tokens on); each bucket compiles its own decode step, which
  # costs more than it saves for a few new tokens (the tiny preset: 5), hence
  # off by default. See benchmarks/rollout_step.py.
  # `off_policy_steps`: 0, on-policy; 1, the batch of step k is sampled by
  # the parameters of step k - 1, its sampling dispatched before the update
  # of step k - 1 so that the host scores it while the device trains
  # (alignax.rl.grpo_step); the loss then re-weights each token by the
  # truncated importance weight between the trainer's log-probs before the
  # update and the sampler's (config.loss.sampling_is_*).
  c.rollout = ml_collections.ConfigDict(dict(
      prompts_per_step=16, num_generations=8, max_new_tokens=8, max_prompt_length=512,
      temperature=1.0,
      top_k=0, top_p=1.0,  # top_k=0 / top_p=1: no filtering
      compact=False, off_policy_steps=0))

  c.loss = ml_collections.ConfigDict(dict(
      loss_type="dapo",             # any key of alignax.objectives.POLICY_LOSSES
      advantage="grpo",             # "grpo" | "dr_grpo" | "rloo" | "f_grpo"
      scale_rewards="group",        # for "grpo": group | batch | none
      epsilon_low=0.2, epsilon_high=0.28,
      delta=config_dict.placeholder(float),
      importance_sampling_level="token",  # "sequence" = GSPO
      beta=0.0, use_bias_correction_kl=True,
      # Off-policy rollouts only (rollout.off_policy_steps=1): the weight of
      # each token, min(exp(logp_trainer_old - logp_sampler), clip_max) in the
      # default "token_truncate" mode, as TRL's vllm_importance_sampling_*
      # options (objectives.sampling_importance_weights: token_truncate |
      # token_mask | sequence_truncate | sequence_mask | none = no correction).
      sampling_is_mode="token_truncate", sampling_is_clip_max=3.0,
      sampling_is_clip_min=config_dict.placeholder(float)))

  # `pack`: the update runs on packed rows (alignax.framework.packing: each
  # prompt + completion's real tokens one segment of a row of
  # max_prompt_length + max_new_tokens slots, first-fit decreasing), so it
  # pays for the real tokens instead of N x (P + C) padded slots; same loss
  # and gradients to float rounding. It pays for long completions of varying
  # length (the padding it removes is large) and costs for short, even ones:
  # packed rows run each completion's prompt with it, whereas the unpacked
  # update runs a group's shared prompt once (`share_prompt`); the two cannot
  # combine. `pack_buckets`: rows and completion targets per micro-batch are
  # each rounded up to one of this many sizes, so the update compiles for at
  # most pack_buckets**2 shapes (perf/update_compiles counts them).
  # `share_prompt`: None (auto) = True unless pack; True with pack is an error.
  c.train = ml_collections.ConfigDict(dict(
      steps=200, num_iterations=1, micro_batches=1, learning_rate=5e-4, warmup_steps=5,
      max_grad_norm=1.0, eval_every=25, checkpoint_every=25, keep_checkpoints=3,
      pack=False, pack_buckets=4, share_prompt=config_dict.placeholder(bool),
      # Decoder-layer rematerialisation in the update (model_setup.REMAT: none |
      # full | dots_saveable | dots_with_no_batch_dims_saveable).
      **model_setup.REMAT))

  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1))

  # LoRA adapters (alignax.framework.lora), rank 0 = off; with rank > 0 the run
  # ends with final_adapter/ (PEFT format) and final_model/ (merged).
  c.lora = lora_config()

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
  elif preset in ("smollm2", "smollm2_words"):
    task = "addition" if preset == "smollm2" else "word_problems"
    c.model_path = "runs/smollm2"
    rewards = "examples/arithmetic_rewards.py"
    c.data.update(train=f"examples/{task}_train.jsonl", eval=f"examples/{task}_eval.jsonl")
    c.reward.update(functions=f"{rewards}:last_number_correct,{rewards}:has_number",
                    weights="1.0,0.0")
    c.eval.update(size=256, batch_size=128, num_samples=4, log_samples=4)
    c.rollout.update(prompts_per_step=4, num_generations=8, max_prompt_length=128,
                     max_new_tokens=16 if task == "addition" else 128)
    # Addition: 90 steps, sized to the 10-minute training budget on 2 cores
    # (docs/results.md, "Tuning notes", grpo; held-out figures per seed: its
    # claims table).
    c.train.update(steps=90 if task == "addition" else 150, learning_rate=2e-5,
                   warmup_steps=2, eval_every=30 if task == "addition" else 25,
                   checkpoint_every=30 if task == "addition" else 25)
  elif preset != "default":
    raise ValueError(f"Unknown preset {preset!r}; use 'default', 'tiny', 'smollm2' or"
                     " 'smollm2_words'.")
  return c


# What each key may hold, checked before any work (`config_schema.validate_config`).
_POS, _NONNEG = config_schema.POSITIVE, config_schema.NON_NEGATIVE
SCHEMA = {
    "seed": _NONNEG,
    "model_path": config_schema.model_dir_or_empty(),
    "task.name": one_of("alignax.agents.data.tasks:TASKS"),
    "task.train_size": _POS,
    # Paths, formats and reward names are checked when the data and reward
    # functions are loaded (alignax.agents.data.prompt_data / rewards), still
    # before any compilation; here only their types.
    "data.train": string(), "data.eval": string(),
    "data.eval_fraction": number(0, 1, hi_open=True),
    "data.format": one_of(("auto", "prompt_answer", "messages", "gsm8k", "math", "verl")),
    "data.prompt_field": string(), "data.answer_field": string(),
    "data.chat_template": one_of(("auto", "none")), "data.system_prompt": string(),
    "data.drop_long_prompts": boolean(),
    "reward.functions": string(), "reward.weights": string(),
    "reward.overlong_buffer": _NONNEG,
    "eval.size": _NONNEG, "eval.batch_size": _POS, "eval.num_samples": _NONNEG,
    "eval.accuracy_reward": string(), "eval.log_samples": _NONNEG,
    "task.reverse.min_len": _POS, "task.reverse.max_len": _POS,
    "task.reverse.eval_fraction": number(0, 1, lo_open=True, hi_open=True),
    "task.addition.num_digits": _POS, "task.addition.reverse_answer": boolean(),
    "task.addition.eval_fraction": number(0, 1, lo_open=True, hi_open=True),
    **model_setup.builtin_model_rules(),
    "warmup.steps": _NONNEG, "warmup.batch_size": _POS,
    "warmup.learning_rate": number(0, lo_open=True),
    "warmup.flawed_fraction": number(0, 1),
    "rollout.prompts_per_step": _POS,
    "rollout.num_generations": integer(2),
    "rollout.max_new_tokens": _POS, "rollout.max_prompt_length": _POS,
    "rollout.temperature": number(0, lo_open=True),
    "rollout.top_k": _NONNEG,
    "rollout.top_p": number(0, 1, lo_open=True),
    "rollout.compact": boolean(), "rollout.off_policy_steps": integer(0, 1),
    "loss.loss_type": one_of("alignax.objectives:POLICY_LOSSES"),
    "loss.advantage": one_of("alignax.objectives:ADVANTAGE_ESTIMATORS"),
    "loss.scale_rewards": one_of(("group", "batch", "none")),
    "loss.epsilon_low": number(0), "loss.epsilon_high": number(0),
    "loss.delta": optional(number(1)),
    "loss.importance_sampling_level": one_of(("token", "sequence")),
    "loss.beta": number(0), "loss.use_bias_correction_kl": boolean(),
    "loss.sampling_is_mode": one_of(("token_truncate", "token_mask", "sequence_truncate",
                                     "sequence_mask", "none")),
    "loss.sampling_is_clip_max": optional(number(0, lo_open=True)),
    "loss.sampling_is_clip_min": optional(number(0)),
    "train.steps": _POS, "train.num_iterations": _POS, "train.micro_batches": _POS,
    "train.learning_rate": number(0, lo_open=True), "train.warmup_steps": _NONNEG,
    "train.max_grad_norm": number(0, lo_open=True),
    "train.eval_every": _POS, "train.checkpoint_every": _POS,
    "train.keep_checkpoints": _POS,
    "train.pack": boolean(), "train.pack_buckets": _POS,
    "train.share_prompt": optional(boolean()),
    **model_setup.precision_schema(),
    "mesh.data": _POS, "mesh.fsdp": _POS, "mesh.tensor": _POS,
    **lora_schema(),
}


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


CHECKS = (_check_micro_batches, _check_lengths, _check_pack, _check_off_policy)
