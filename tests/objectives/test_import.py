"""`import alignax.objectives` loads no Flax (checked in a fresh process)."""
import subprocess
import sys

import alignax.objectives as O


def test_import_loads_no_flax_or_torch():
  code = ("import sys, alignax.objectives as O; "
          "bad = [m for m in sys.modules if m.split('.')[0] in "
          "('flax', 'torch', 'trl', 'transformers', 'alignax.framework')]; "
          "assert not bad, bad; assert O.policy_loss and O.min_norm_weights; "
          "print('ok')")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "ok"


def test_public_names_of_api_and_checklist():
  names = """token_logprobs token_entropy masked_sum masked_mean aggregate_loss
  kl_estimator group_mean group_std nan_group_mean nan_group_std
  segment_mean_std grpo_advantages grpo_advantages_multi importance_weights
  clipped_surrogate cispo_per_token sapo_per_token vespo_weights
  off_policy_sequence_mask policy_loss clip_fraction_metrics rloo_advantages
  rloo_sequence_loss kl_penalized_rewards reinforce_pp_advantages
  dynamic_sampling_filter overlong_reward_penalty discounted_returns
  gigpo_advantages focal_advantage_scale tree_node_values sibling_advantages
  empg_advantages copo_blend sequence_logprobs dpo_loss em_weights
  segment_em_weights answer_loglik weighted_sequence_nll perplexity_scores
  build_dpo_pairs min_norm_weights min_norm_two normalize_gradients
  gram_matrix mgda_combine policy_loss_terms get_advantage_fn
  get_policy_loss POLICY_LOSSES ADVANTAGE_ESTIMATORS""".split()
  missing = [n for n in names if not hasattr(O, n)]
  assert not missing, missing
