"""The GRPO binary on a user's checkpoint, data and reward functions, end to end.

A tiny random Qwen2.5-shaped model (JSONL data, hash eval split) and a
Llama-3.2-shaped one (conversational parquet train data, save_to_disk eval
data, TRL's own reward function), each with a custom reward file: the run
resumes bit-exactly and exports a final_model/ that transformers loads with
the same logits and greedy tokens.
"""
import json
import os
import subprocess
import sys

import datasets
import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file

from alignax.experiments import grpo
from alignax.framework import hf, sampling
from tests.experiments import user_fixtures
from tests.experiments.test_grpo import TINY, tiny

STEPS = 4


def _overrides(model_dir, reward_file, **more):
  return {"model_path": model_dir, "rollout.max_new_tokens": 6,
          "rollout.prompts_per_step": 4, "rollout.num_generations": 4,
          "train.steps": STEPS, "train.checkpoint_every": 2, "train.eval_every": 2,
          "eval.size": 4, "eval.num_samples": 2, "eval.log_samples": 2,
          "reward.functions": f"exact_match,{reward_file}:short_and_numeric",
          "reward.weights": "1.0,0.5", **more}


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(state.params)]


def _check_export(workdir, model_dir, state=None):
  """final_model/ loads in transformers with alignax's logits and greedy tokens."""
  out = os.path.join(workdir, "final_model")
  tok = transformers.AutoTokenizer.from_pretrained(out)
  src_tok = transformers.AutoTokenizer.from_pretrained(model_dir)
  assert tok.chat_template == src_tok.chat_template and len(tok) == len(src_tok)
  with open(os.path.join(out, "generation_config.json")) as f, \
       open(os.path.join(model_dir, "generation_config.json")) as g:
    assert json.load(f)["eos_token_id"] == json.load(g)["eos_token_id"]
  ours = hf.from_pretrained(out)
  if state is not None:  # the exported weights are the trained ones
    graphdef, _ = nnx.split(ours)
    for a, b in zip(jax.tree.leaves(nnx.state(ours)), _leaves(state)):
      np.testing.assert_array_equal(np.asarray(a), b)
  theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  prompt = tok.apply_chat_template([{"role": "user", "content": "What is 12+7?"}],
                                   tokenize=False, add_generation_prompt=True)
  ids = tok(prompt, add_special_tokens=False)["input_ids"]
  with torch.no_grad():
    want = theirs(torch.tensor([ids])).logits.numpy()
  got = np.asarray(ours(np.asarray([ids], np.int32)))
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  stop = hf.stop_token_ids(out, tok, ours.config)
  gen = sampling.generate(ours, [ids], max_new_tokens=8, eos_token_id=stop)
  n = int(np.asarray(gen.mask).sum())
  with torch.no_grad():
    hf_out = theirs.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                             pad_token_id=hf.pad_token_id(tok, stop))[0, len(ids):].tolist()
  assert np.asarray(gen.tokens)[0, :n].tolist() == hf_out[:n]
  return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp("user")
  rows = user_fixtures.arithmetic_rows(64)
  conv = [{"prompt": [{"role": "user", "content": r["question"]}], "solution": r["value"],
           "level": r["level"]} for r in rows]
  pq.write_table(pa.Table.from_pylist(conv), str(root / "train.parquet"))
  datasets.Dataset.from_list(conv[:6]).save_to_disk(str(root / "eval_saved"))
  return dict(
      qwen=user_fixtures.make_qwen25_dir(root / "qwen"),
      llama=user_fixtures.make_llama32_dir(root / "llama"),
      jsonl=user_fixtures.write_jsonl(root / "train.jsonl", rows),
      parquet=str(root / "train.parquet"), saved=str(root / "eval_saved"),
      reward=user_fixtures.write_reward_file(root))


def test_qwen25_jsonl_run_resume_and_export(files, tmp_path):
  ov = _overrides(files["qwen"], files["reward"], **{
      "data.train": files["jsonl"], "data.prompt_field": "question",
      "data.answer_field": "value", "data.eval_fraction": 0.2,
      "data.system_prompt": "Answer with a number."})
  full = str(tmp_path / "full")
  summary, state = grpo.run(tiny(**ov), full, progress=False)
  rows = [json.loads(l) for l in open(os.path.join(full, "metrics.jsonl"))]
  assert {"train/reward", "train/reward/exact_match", "train/reward/short_and_numeric",
          "eval/reward/short_and_numeric", "eval/pass@2", "eval/mean@2"} <= set(
              k for r in rows for k in r)
  assert summary["train/finished"]
  samples = [json.loads(l) for l in open(os.path.join(full, "samples.jsonl"))]
  assert len(samples) == 2 * 3 and "reward/short_and_numeric" in samples[0]
  # Unused config.json fields survive the export (Qwen2's default would be 28).
  with open(os.path.join(full, "final_model", "config.json")) as f:
    assert json.load(f)["max_window_layers"] == 1
  _check_export(full, files["qwen"], state)

  resumed = str(tmp_path / "resumed")
  grpo.run(tiny(**ov), resumed, stop_after=3, progress=False)  # last checkpoint: step 2
  assert not os.path.exists(os.path.join(resumed, "final_model"))
  _, state2 = grpo.run(tiny(**ov), resumed, progress=False)
  for a, b in zip(_leaves(state2), _leaves(state)):
    np.testing.assert_array_equal(a, b)


def test_llama32_cli_parquet_save_to_disk_trl_reward_resume_and_export(files, tmp_path):
  functions = f"math_accuracy,trl.rewards:think_format_reward,{files['reward']}:short_and_numeric"
  ov = _overrides(files["llama"], files["reward"], **{
      "data.train": files["parquet"], "data.eval": files["saved"],
      "reward.functions": functions, "reward.weights": "1.0,0.1,0.5"})
  cli = str(tmp_path / "cli")
  out = subprocess.run(
      [sys.executable, "-m", "alignax.experiments.grpo", f"--config={TINY}",
       f"--workdir={cli}"] + [f"--config.{k}={v}" for k, v in ov.items()],
      capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
          os.path.abspath(__file__)))))
  assert out.returncode == 0, out.stderr[-3000:]
  with open(os.path.join(cli, "summary.json")) as f:
    summary = json.load(f)
  assert summary["train/steps"] == STEPS
  for name in ("math_accuracy", "think_format_reward", "short_and_numeric"):
    assert f"eval/reward/{name}_after" in summary
  final = _check_export(cli, files["llama"])
  with open(os.path.join(final, "generation_config.json")) as f:
    assert len(json.load(f)["eos_token_id"]) == 3

  # The same run, killed after step 3 and resumed in-process, ends bit-exactly.
  resumed = str(tmp_path / "resumed")
  grpo.run(tiny(**ov), resumed, stop_after=3, progress=False)
  grpo.run(tiny(**ov), resumed, progress=False)
  a = load_file(os.path.join(final, "model.safetensors"))
  b = load_file(os.path.join(resumed, "final_model", "model.safetensors"))
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("overrides,error,match", [
    ({"data.train": "missing.jsonl"}, FileNotFoundError, "config.data.train='missing.jsonl'"),
    ({"data.format": "csv"}, Exception, "data.format='csv'"),
    ({"reward.functions": "exact_match,acuracy"}, Exception,
     r"unknown reward function 'acuracy'; registered: \['boxed_format', 'exact_match'"),
    ({"reward.functions": "nowhere.py:f"}, FileNotFoundError, "no file 'nowhere.py'"),
    ({"reward.weights": "1.0,2.0"}, ValueError, "weights has 2 values but .* 1 functions"),
    ({"eval.accuracy_reward": "think_format"}, ValueError, "accuracy_reward='think_format'"),
])
def test_bad_input_fails_before_any_compilation(files, tmp_path, overrides, error, match):
  ov = {"data.train": files["jsonl"], "data.prompt_field": "question",
        "data.answer_field": "value", "reward.functions": "exact_match", **overrides}
  with pytest.raises(error, match=match):
    grpo.run(tiny(**ov), str(tmp_path), progress=False)
  assert not os.path.exists(tmp_path / "init_model")  # nothing was built or compiled


def test_bad_rows_fail_before_any_compilation(files, tmp_path):
  path = user_fixtures.write_jsonl(tmp_path / "d.jsonl", [{"prompt": "1+1", "answer": "2"},
                                                          {"prompt": "2+2"}])
  with pytest.raises(ValueError, match=r"d.jsonl, row 1: field 'answer' is missing"):
    grpo.run(tiny(**{"data.train": path}), str(tmp_path / "w"), progress=False)
  (tmp_path / "empty.jsonl").write_text("")
  with pytest.raises(ValueError, match="holds no rows|could not be read"):
    grpo.run(tiny(**{"data.train": str(tmp_path / "empty.jsonl")}), str(tmp_path / "w"),
             progress=False)
  assert not os.path.exists(tmp_path / "w" / "init_model")
