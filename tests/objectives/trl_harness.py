"""Calls TRL 1.16's own GRPO / DPO loss code on given tensors.

`GRPOTrainer._compute_loss` and `DPOTrainer._compute_loss` normally run a model
forward. We build the trainer with `object.__new__` (no model, no datasets),
set only the attributes those methods read, and replace the forward by one
that returns the caller's log-prob tensor, so everything after the forward is
TRL's code, unmodified. GRPO advantages live inside the 300-line
`_generate_and_score_completions`; we execute TRL's own source lines for the
advantage block (extracted with `inspect`, not re-typed) with TRL's `nanstd`.
"""
import collections
import inspect
import textwrap
import types

import numpy as np
import torch
import trl
from trl.trainer import grpo_trainer as trl_grpo
from trl.trainer import dpo_trainer as trl_dpo
from trl.trainer import rloo_trainer as trl_rloo
from trl.trainer.utils import nanstd

assert trl.__version__ == "1.16.0", trl.__version__


class _Accelerator:
  """Single-process stand-in for accelerate: gather/reduce are identities."""
  num_processes = 1
  process_index = 0
  device = torch.device("cpu")

  def gather(self, x):
    return x

  gather_for_metrics = gather

  def reduce(self, x, reduction="sum"):
    return x


def _grpo_trainer(loss_type, *, epsilon_low, epsilon_high, delta,
                  importance_sampling_level, beta, use_bias_correction_kl,
                  max_completion_length, logps, entropies,
                  off_policy_mask_threshold=None):
  t = object.__new__(trl_grpo.GRPOTrainer)
  args = types.SimpleNamespace(
      use_bias_correction_kl=use_bias_correction_kl, delta=delta,
      sapo_temperature_pos=1.0, sapo_temperature_neg=1.05,
      vespo_k_pos=2.0, vespo_lambda_pos=3.0, vespo_k_neg=3.0,
      vespo_lambda_neg=2.0, steps_per_generation=1)
  attrs = dict(
      args=args, loss_type=loss_type, epsilon_low=epsilon_low,
      epsilon_high=epsilon_high, importance_sampling_level=importance_sampling_level,
      beta=beta, max_completion_length=max_completion_length,
      top_entropy_quantile=1.0,
      off_policy_mask_threshold=off_policy_mask_threshold, use_vllm=False,
      vllm_importance_sampling_correction=False, aux_loss_enabled=False,
      _entropy_bonus_enabled=False, current_gradient_accumulation_steps=1,
      accelerator=_Accelerator(), model=types.SimpleNamespace(training=True),
      _metrics={"train": collections.defaultdict(list),
                "eval": collections.defaultdict(list)})
  for k, v in attrs.items():
    object.__setattr__(t, k, v)
  # The model forward: return the caller's log-probs (TRL's signature).
  object.__setattr__(t, "_get_per_token_logps_and_entropies",
                     lambda *a, **kw: (logps, entropies, None))
  return t


def trl_grpo_loss(logprobs, old_logprobs, advantages, mask, *,
                  loss_type, epsilon_low=0.2, epsilon_high=0.2, delta=None,
                  importance_sampling_level="token", beta=0.0,
                  ref_logprobs=None, use_bias_correction_kl=True,
                  max_completion_length=None, off_policy_mask_threshold=None):
  """Runs `GRPOTrainer._compute_loss`; returns (loss, d loss / d logprobs, metrics)."""
  logps = torch.tensor(np.asarray(logprobs), dtype=torch.float64,
                       requires_grad=True)
  n, t = logps.shape
  mask_t = torch.tensor(np.asarray(mask), dtype=torch.float64)
  trainer = _grpo_trainer(
      loss_type, epsilon_low=epsilon_low, epsilon_high=epsilon_high,
      delta=delta, importance_sampling_level=importance_sampling_level,
      beta=beta, use_bias_correction_kl=use_bias_correction_kl,
      max_completion_length=max_completion_length, logps=logps,
      entropies=torch.zeros(n, t, dtype=torch.float64),
      off_policy_mask_threshold=off_policy_mask_threshold)
  inputs = {
      "prompt_ids": torch.zeros(n, 1, dtype=torch.long),
      "prompt_mask": torch.ones(n, 1, dtype=torch.long),
      "completion_ids": torch.zeros(n, t, dtype=torch.long),
      "completion_mask": mask_t,
      "advantages": torch.tensor(np.asarray(advantages), dtype=torch.float64),
      "num_items_in_batch": mask_t.sum(),
  }
  if old_logprobs is not None:
    inputs["old_per_token_logps"] = torch.tensor(np.asarray(old_logprobs),
                                                 dtype=torch.float64)
  if ref_logprobs is not None:
    inputs["ref_per_token_logps"] = torch.tensor(np.asarray(ref_logprobs),
                                                 dtype=torch.float64)
  loss = trainer._compute_loss(None, inputs)
  (grad,) = torch.autograd.grad(loss, logps)
  metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
  return loss.item(), grad.numpy(), metrics


def _source_block(fn, first, last):
  """The lines of TRL function `fn` from the one containing `first` to the
  one containing `last`, verbatim (dedented), compiled."""
  lines = textwrap.dedent(inspect.getsource(fn)).splitlines()
  start = next(i for i, l in enumerate(lines) if first in l)
  end = next(i for i, l in enumerate(lines) if i > start and last in l)
  return compile(textwrap.dedent("\n".join(lines[start:end + 1])),
                 f"<trl {fn.__qualname__}>", "exec")


_ADV_CODE = _source_block(
    trl_grpo.GRPOTrainer._generate_and_score_completions,
    "unscorable_mask = torch.isnan(rewards_per_func)",
    "advantages = torch.nan_to_num(advantages")
_RLOO_CODE = _source_block(
    trl_rloo.RLOOTrainer._generate_and_score_completions,
    "grouped_rewards = rewards.view(-1, num_generations)",
    "advantages = torch.nan_to_num(advantages")


def trl_rloo_advantages(rewards, num_generations, *, normalize=False):
  """Executes TRL 1.16's RLOO advantage block on `[N]` rewards."""
  ns = {"self": types.SimpleNamespace(normalize_advantages=normalize),
        "rewards": torch.tensor(np.asarray(rewards), dtype=torch.float32),
        "num_generations": num_generations, "torch": torch, "nanstd": nanstd}
  exec(_RLOO_CODE, ns)  # pylint: disable=exec-used
  return ns["advantages"].numpy()


def trl_grpo_advantages(rewards_per_func, num_generations, *,
                        scale_rewards="group",
                        multi_objective_aggregation="sum_then_normalize",
                        reward_weights=None):
  """Executes TRL 1.16's advantage block on `[N, F]` rewards; returns `[N]`."""
  r = torch.tensor(np.asarray(rewards_per_func), dtype=torch.float32)
  if r.ndim == 1:
    r = r[:, None]
  w = torch.ones(r.shape[1]) if reward_weights is None else torch.tensor(
      np.asarray(reward_weights), dtype=torch.float32)
  self = types.SimpleNamespace(
      multi_objective_aggregation=multi_objective_aggregation,
      reward_weights=w, scale_rewards=scale_rewards,
      reward_funcs=[None] * r.shape[1])
  ns = {"self": self, "rewards_per_func": r, "num_generations": num_generations,
        "device": "cpu", "torch": torch, "nanstd": nanstd}
  exec(_ADV_CODE, ns)  # pylint: disable=exec-used
  return ns["advantages"].numpy()


class _FakeLM(torch.nn.Module):
  """Returns the caller's per-token log-probs as TRL's fused LM head would."""

  def __init__(self, log_probs):
    super().__init__()
    self.log_probs = log_probs

  def forward(self, **kwargs):
    b, l = self.log_probs.shape
    return types.SimpleNamespace(
        log_probs=self.log_probs, entropy=torch.zeros(b, l),
        mean_logits=torch.zeros(b, l), is_top1=torch.zeros(b, l, dtype=bool))


def trl_dpo_loss(per_token_logps, completion_mask, ref_chosen, ref_rejected, *,
                 beta=0.1, loss_type="sigmoid", label_smoothing=0.0):
  """Runs `DPOTrainer._compute_loss` on per-token log-probs.

  Args:
    per_token_logps: `[2B, L-1]` shifted log-probs, rows `[chosen; rejected]`.
    completion_mask: `[2B, L]` (TRL shifts it by one inside).
    ref_chosen, ref_rejected: `[B]` precomputed reference sequence log-probs.

  Returns:
    (loss, d loss / d per_token_logps, metrics)
  """
  logps = torch.tensor(np.asarray(per_token_logps), dtype=torch.float64,
                       requires_grad=True)
  mask = torch.tensor(np.asarray(completion_mask), dtype=torch.long)
  t = object.__new__(trl_dpo.DPOTrainer)
  attrs = dict(
      beta=beta, loss_types=[loss_type], loss_weights=[1.0], ld_alpha=None,
      f_divergence_type="reverse_kl", label_smoothing=label_smoothing,
      use_weighting=False, precompute_ref_logps=True, aux_loss_enabled=False,
      accelerator=_Accelerator(), model=types.SimpleNamespace(training=True),
      _total_train_tokens=0, _tp_size=1,
      _metrics={"train": collections.defaultdict(list),
                "eval": collections.defaultdict(list)})
  for k, v in attrs.items():
    object.__setattr__(t, k, v)
  inputs = {
      "input_ids": torch.zeros_like(mask), "attention_mask": torch.ones_like(mask),
      "completion_mask": mask,
      "ref_chosen_logps": torch.tensor(np.asarray(ref_chosen), dtype=torch.float64),
      "ref_rejected_logps": torch.tensor(np.asarray(ref_rejected), dtype=torch.float64),
  }
  loss = t._compute_loss(_FakeLM(logps), inputs, return_outputs=False)
  (grad,) = torch.autograd.grad(loss, logps)
  metrics = {k: v[-1] for k, v in t._metrics["train"].items()}
  return loss.item(), grad.numpy(), metrics
