"""EXSEARCH binary on the `tiny` preset: outputs, summary keys, resume; the
gold-answer rewrite and the M-step loss's accumulation."""
import json
import os

import jax
import numpy as np
import optax
import pytest

from alignax.agents.rollouts import multi_turn as rollout_lib
from alignax.experiments import exsearch
from alignax.experiments.runtime.config_files import load_config_file
from alignax.framework import train
from tests.experiments.em_fixtures import assert_transformers_loads
from tests.experiments.resume import assert_killed_run_resumes_identically

TINY = os.path.join(os.path.dirname(exsearch.__file__), "configs", "exsearch.py") + ":tiny"
KEYS = ("eval/em_before", "eval/em_after", "eval/f1_before", "eval/f1_after",
        "eval/em_per_iteration")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("exsearch"))
  summary = exsearch.run(load_config_file(TINY), workdir, progress=False)
  return workdir, summary


def test_outputs_and_summary_keys(tiny_run):
  workdir, summary = tiny_run
  with open(os.path.join(workdir, "summary.json")) as f:
    written = json.load(f)
  for prefix in ("", "uniform/", "rejection_sft/"):
    for key in KEYS:
      assert prefix + key in written, prefix + key
    assert len(written[prefix + "eval/em_per_iteration"]) == 2
  assert written["train/seconds"] > 0
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == list(range(7))  # warm-up + 3 methods x 2 iterations
  assert os.path.getsize(os.path.join(workdir, "em.png")) > 1000
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  for f in ("init_model/tokenizer.json", "bm25/corpus.jsonl", "bm25/corpus.sha256"):
    assert os.path.exists(os.path.join(workdir, f))
  assert_transformers_loads(os.path.join(workdir, "final_model"), ("<SEARCH>", "<FINAL>"))


def test_rerun_resumes_without_work(tiny_run):
  workdir, summary = tiny_run
  again = exsearch.run(load_config_file(TINY), workdir, progress=False)
  assert again == summary


def test_with_gold_answer_and_oracle_rows(tiny_run):
  workdir, _ = tiny_run
  config = load_config_file(TINY)
  from alignax.agents.data import qa_data
  from alignax.agents.worlds import retrieval
  dataset = qa_data.load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed,
                                 world=config.world)
  retriever = retrieval.BM25Retriever.build_or_load(dataset.corpus,
                                                    os.path.join(workdir, "bm25"))
  _, agent = exsearch.build_policy(config, workdir, dataset, retriever)
  ex = dataset.train[0]
  f = agent.fmt
  prompt = agent.prompt(ex)
  q = agent.encode("<QUERY> x born <SEARCH>")
  wrong = agent.encode("<FINAL> nowhere")
  traj = rollout_lib.Trajectory(
      np.asarray(prompt + q + [7, 8] + wrong + [f.eos_id], np.int32),
      np.asarray([0] * len(prompt) + [1] * len(q) + [0, 0] + [1] * (len(wrong) + 1), bool),
      np.zeros(len(prompt) + len(q) + len(wrong) + 3, np.float32), len(prompt))
  toks, mask, answer = agent.with_gold_answer(traj, ex)
  gold = agent.gold_ids(ex)
  assert toks == prompt + q + [7, 8, f.final_id] + gold + [f.eos_id]
  assert mask == [False] * len(prompt) + [True] * len(q) + [False, False] + [True] * (len(gold) + 2)
  assert answer == [False] * (len(toks) - len(gold) - 1) + [True] * (len(gold) + 1)
  toks, mask, answer = agent.oracle_row(ex)
  assert agent.tokenizer.decode(np.asarray(toks)[np.asarray(answer)]) == ex.answers[0] + " </s>"
  # Tool outputs are not trained on; queries and facts are.
  text = agent.tokenizer.convert_ids_to_tokens(np.asarray(toks)[np.asarray(mask)].tolist())
  assert "<DOC>" not in text and "<QUERY>" in text and "<FACT>" in text


def test_weighted_update_accumulation_is_exact(tiny_run):
  workdir, _ = tiny_run
  from alignax.framework import hf
  model = hf.from_pretrained(os.path.join(workdir, "init_model"))
  # SGD with lr 1: the update is the accumulated gradient itself (Adam would
  # turn float noise on near-zero gradients into full-size steps).
  opt = optax.sgd(1.0)
  rng = np.random.RandomState(0)
  n, length = 4, 12
  seq = rng.randint(4, model.config.vocab_size, (n, length)).astype(np.int32)
  batch = dict(sequences=seq, attention_mask=np.ones((n, length), bool),
               loss_mask=(rng.rand(n, length - 1) < 0.5).astype(np.float32),
               weights=np.asarray([0.7, 0.3, 0.0, 1.0], np.float32))
  outs = []
  for micro in (1, 2):
    graphdef, state = train.init_train_state(model, opt)
    update = train.make_weighted_update(graphdef, opt, micro)
    outs.append(update(state, batch)[0])
  for a, b in zip(jax.tree.leaves(outs[0].params), jax.tree.leaves(outs[1].params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_trimmed_chunked_answer_logliks_equal_full_length(tiny_run):
  """Scoring shortest-first in chunks, each trimmed to its rows' length, gives
  the log-likelihoods of one full-length pass, in the input order."""
  workdir, _ = tiny_run
  from alignax.framework import hf
  model = hf.from_pretrained(os.path.join(workdir, "init_model"))
  graphdef, state = train.init_train_state(model, optax.sgd(1.0))
  rng = np.random.RandomState(1)
  n, full = 7, 70
  lengths = np.asarray([39, 6, 25, 12, 33, 8, 20])
  seq = np.zeros((n, full), np.int32)
  attn = np.arange(full)[None] < lengths[:, None]
  seq[attn] = rng.randint(4, model.config.vocab_size, int(attn.sum()))
  answer = (attn[:, 1:] & (np.arange(1, full)[None] >= lengths[:, None] - 3)).astype(np.float32)
  batch = dict(sequences=seq, attention_mask=attn, loss_mask=answer, answer_mask=answer,
               weights=np.ones(n, np.float32))
  trimmed = train.trim_padding(batch)
  assert trimmed["sequences"].shape == (n, 64) and trimmed["answer_mask"].shape == (n, 63)
  want = np.asarray(train._answer_logliks(graphdef, state.params, batch))  # pylint: disable=protected-access
  got = train.answer_logliks(graphdef, state.params, batch, chunk=3)
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert np.all(np.isfinite(got)) and len(set(np.round(got, 4))) > 1


def test_killed_run_resumes_identically(tiny_run, tmp_path):
  # Killed inside the second method (uniform), after its first iteration.
  # Killed after Orbax finished the third checkpoint, before its manifest.
  assert_killed_run_resumes_identically(exsearch.run, lambda: load_config_file(TINY),
                                        str(tmp_path / "killed"), tiny_run[0], stop_after=3,
                                        kill="before_manifest")
