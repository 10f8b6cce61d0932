"""benchmarks/real_model_vs_trl.py: both sides get the same batch, task and
chat conversation for every workload."""
import argparse
import json

import pytest

from tests.benchmarks import scripts

vs_trl = scripts.load("real_model_vs_trl")


def _args(workload, tmp_path):
  return argparse.Namespace(model="runs/smollm2", seed=3, steps=4, segment=2, eval_size=16,
                            workload=workload, workdir=str(tmp_path))


@pytest.mark.parametrize("workload", sorted(vs_trl.WORKLOADS))
def test_sides_share_the_batch(workload, tmp_path):
  w = vs_trl.WORKLOADS[workload]
  ours = vs_trl.alignax_config(_args(workload, tmp_path))
  theirs = vs_trl.trl_config(_args(workload, tmp_path), str(tmp_path / "trl"))
  rows = w.prompts * w.group
  # TRL: one optimizer step per generated batch, split into micro-batches as ours.
  assert theirs.per_device_train_batch_size * theirs.gradient_accumulation_steps == rows
  assert theirs.steps_per_generation == theirs.gradient_accumulation_steps == w.micro_batches
  assert (theirs.num_generations, theirs.max_completion_length) == (w.group, w.new_tokens)
  assert (ours.rollout.num_generations, ours.rollout.prompts_per_step) == (w.group, w.prompts)
  assert (ours.rollout.max_new_tokens, ours.train.micro_batches) == (w.new_tokens,
                                                                     w.micro_batches)
  assert ours.train.learning_rate == theirs.learning_rate == vs_trl.LR
  assert (ours.loss.loss_type, ours.loss.beta) == (theirs.loss_type, theirs.beta)
  assert ours.data.system_prompt == w.system_prompt
  assert ours.data.train == f"examples/{w.data}_train.jsonl"
  assert ours.eval.num_samples == w.eval_k


@pytest.mark.parametrize("workload", sorted(vs_trl.WORKLOADS))
def test_workload_data_and_messages(workload):
  w = vs_trl.WORKLOADS[workload]
  for split in ("train", "eval"):
    with open(w.file(split)) as f:
      rows = [json.loads(line) for line in f]
    assert len(rows) >= 200 and {"prompt", "answer"} <= set(rows[0])
  messages = w.messages("What is 2 + 3?")
  assert messages[-1] == {"role": "user", "content": "What is 2 + 3?"}
  # A system prompt is sent by both sides; none leaves the template's default.
  assert (messages[0] == {"role": "system", "content": w.system_prompt}) == bool(
      w.system_prompt)
  assert len(messages) == 1 + bool(w.system_prompt)
