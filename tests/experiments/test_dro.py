"""DRO binary on the `tiny` preset (outputs, summary keys, resume), its E-step
weighting (parse + dedup + segment softmax + dropping) against a NumPy
re-derivation of docs/algorithms.md §7.1, prompts, the world's candidates and
config errors."""
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignax import objectives
from alignax.agents.methods import dro_agents, dro_em
from alignax.agents.worlds import dro_world, retrieval
from alignax.experiments import dro
from alignax.experiments.runtime.config_files import load_config_file
from tests.experiments.em_fixtures import assert_transformers_loads
from tests.experiments.resume import assert_killed_run_resumes_identically

TINY = os.path.join(os.path.dirname(dro.__file__), "configs", "dro.py") + ":tiny"
KEYS = ("eval/em_before", "eval/em_after", "eval/f1_before", "eval/f1_after",
        "eval/em_per_iteration", "eval/f1_per_iteration")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("dro"))
  summary = dro.run(load_config_file(TINY), workdir, progress=False)
  return workdir, summary


def test_outputs_and_summary_keys(tiny_run):
  workdir, summary = tiny_run
  with open(os.path.join(workdir, "summary.json")) as f:
    written = json.load(f)
  assert written == summary
  for prefix in ("", "bm25_top5/", "rejection_sft/"):
    for key in KEYS:
      assert prefix + key in written, prefix + key
    assert len(written[prefix + "eval/em_per_iteration"]) == 2
    assert 0 <= written[prefix + "eval/em_after"] <= 100
    # A question counts in gold_recall only with all its gold passages.
    assert (written[prefix + "eval/gold_passage_recall_after"]
            >= written[prefix + "eval/gold_recall_after"])
  assert written["train/seconds"] > 0
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == list(range(7))  # warm-up + 3 methods x 2 iterations
  assert "dro/train/weight_max" in rows[1] and "rejection_sft/train/sample_em" in rows[5]
  assert os.path.getsize(os.path.join(workdir, "em.png")) > 1000
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  assert_transformers_loads(os.path.join(workdir, "final_model"), ("<DOC>", "[1]"))
  for f in ("init_model/tokenizer.json", "bm25/corpus.jsonl", "bm25/corpus.sha256"):
    assert os.path.exists(os.path.join(workdir, f))


def test_rerun_resumes_without_work(tiny_run):
  workdir, summary = tiny_run
  assert dro.run(load_config_file(TINY), workdir, progress=False) == summary


def test_killed_run_resumes_identically(tiny_run, tmp_path):
  # Killed inside the second method (bm25_top5), while writing the checkpoint
  # of its first iteration.
  assert_killed_run_resumes_identically(dro.run, lambda: load_config_file(TINY),
                                        str(tmp_path / "killed"), tiny_run[0], stop_after=3,
                                        kill="mid_write")


def _tiny_task(workdir):
  """(world, candidates, warm-up models, DroPrompts) of the tiny run in `workdir`."""
  config = load_config_file(TINY)
  world = dro.load_world(config)  # the run's world (every config.world size)
  retriever = retrieval.BM25Retriever.build_or_load(world.dataset.corpus,
                                                    os.path.join(workdir, "bm25"))
  cand = dro.build_candidates(config, world, retriever)
  return (world, cand) + dro.build_policies(config, workdir, world, cand)


def test_two_models(tmp_path):
  # shared_model=False: a selector and a generator model, each warmed up,
  # saved, trained by its own M-step and checkpointed.
  config = load_config_file(TINY)
  config.shared_model = False
  config.methods = ("dro",)
  config.em.num_iterations = 1
  workdir = str(tmp_path / "two")
  summary = dro.run(config, workdir, progress=False)
  assert len(summary["eval/em_per_iteration"]) == 1
  for role in dro_agents.ROLES:
    assert os.path.exists(os.path.join(workdir, f"init_{role}", "model.safetensors"))
  assert not os.path.exists(os.path.join(workdir, "init_model"))
  assert dro.run(config, workdir, progress=False) == summary  # resumes from the checkpoint


def test_prompts_and_rows(tiny_run):
  world, cand, models, task = _tiny_task(tiny_run[0])
  ex = next(e for e in world.dataset.train if e.hops == 2)
  # The ranking the selector is trained to write parses back to its positions.
  out = task.ranking_ids([4, 0, 7, 2, 1])
  text = task.tokenizer.decode(out, skip_special_tokens=True)
  assert text == "[5] > [1] > [8] > [3] > [2]"
  perms, valid = dro_agents.parse_selections([text], task.num, task.top_k)
  assert perms[0][:5] == [4, 0, 7, 2, 1] and valid[0]
  # Selector prompt: every candidate behind its id token, in BM25 order.
  prompt = task.tokenizer.decode(task.selector_prompt(ex))
  for pos, i in enumerate(cand[0][ex.id]):
    assert f"[{pos + 1}] {world.dataset.corpus[i].text}" in prompt
  # The oracle ranking puts both gold passages first; the generator row
  # trains only the gold answer + EOS.
  gold = task.docs(ex, task.oracle_ranking(ex))[:2]
  assert gold == list(world.gold[ex.id])
  toks, mask, _ = task.generator_row(ex, gold)
  assert task.tokenizer.decode(np.asarray(toks)[np.asarray(mask)]) == ex.answers[0] + " </s>"
  # Constrained selector decoding (selector.no_repeat_ids): no candidate id
  # twice in one output; the same sampling without it does repeat ids.
  graphdef, params = nnx.split(models["policy"])
  examples = world.dataset.train[:6]

  def most_repeats():
    outs, _, _ = dro_agents.select(graphdef, params, task, examples, jax.random.key(1),
                                   repeats=4, temperature=3.0)
    return max(o.count(t) for o in outs for t in id_tokens)

  id_tokens = task.no_repeat
  assert id_tokens and most_repeats() == 1
  task.no_repeat = None
  assert most_repeats() > 1


def test_counterfactual_warmup_rows(tiny_run):
  world, _, _, task = _tiny_task(tiny_run[0])
  decode = task.tokenizer.decode
  rng = np.random.RandomState(0)
  for ex in world.dataset.train[:12]:
    old, new = task.counterfactual_swap(ex, rng)
    assert decode(old) == ex.answers[0]
    assert decode(new) in world.answer_pool[ex.id] and decode(new) != ex.answers[0]
    gold = list(world.gold[ex.id])
    toks, loss, answer = map(np.asarray, task.generator_row(ex, gold, (old, new),
                                                            train_prompt=True))
    # The answer is swapped in the passages and the target alike; with
    # train_prompt every token is trained, the answer mask is the target only.
    # (Names are two words: compared as text.)
    plain = decode(task.generator_row(ex, gold)[0])
    swapped = decode(toks)
    assert swapped == plain.replace(ex.answers[0], decode(new))
    assert ex.answers[0] in plain and ex.answers[0] not in swapped
    assert loss.all() and decode(toks[answer]) == decode(new) + " </s>"


def test_warmup_passages_drawn_per_row(tiny_run):
  # warmup.fresh_passages: each warm-up row draws its passages anew (the gold
  # ones and top_k - |gold| other candidates, shuffled), so the answer's
  # position cannot be memorised per question.
  world, _, _, task = _tiny_task(tiny_run[0])
  rng = np.random.RandomState(0)
  for ex in world.dataset.train[:6]:
    gold = set(world.gold[ex.id])
    draws = [dro.warmup_passages(task, ex, rng) for _ in range(20)]
    for d in draws:
      assert len(d) == len(set(d)) == task.top_k and gold <= set(d)
      assert set(d) <= {int(i) for i in task.candidates[ex.id]}
    assert len({tuple(d) for d in draws}) > 10
    assert len({d.index(min(gold)) for d in draws}) > 1  # the gold moves


def test_swap_tokens():
  assert dro_agents.swap_tokens([1, 2, 3, 2, 3, 4], [2, 3], [9]) == [1, 9, 9, 4]
  assert dro_agents.swap_tokens([1, 2, 3], [5], [6, 7]) == [1, 2, 3]
  with pytest.raises(ValueError, match="non-empty"):
    dro_agents.swap_tokens([1, 2], [], [3])


# The world's pools, candidates and gold positions: tests/agents/test_dro_world.py.


def test_bm25_top5_reads_bm25s_own_ranking(tiny_run):
  # bm25_top5 is evaluated on BM25's top 5 of the question, not on the first 5
  # candidates (which may hold inserted gold passages).
  workdir, summary = tiny_run
  config = load_config_file(TINY)
  world, (order, bm25), _, task = _tiny_task(workdir)
  examples = world.dataset.train + world.dataset.eval
  retriever = retrieval.BM25Retriever.build(world.dataset.corpus)
  top = retriever.search_ids([e.question for e in examples], config.candidates.num)
  for e, t in zip(examples, top):
    np.testing.assert_array_equal(bm25[e.id], t)
    assert task.bm25_docs(e) == t[:5].tolist()
  assert any(order[e.id][:5].tolist() != bm25[e.id][:5].tolist() for e in examples)
  held = world.dataset.eval[:config.eval.size]
  recall = np.mean([len(set(world.gold[e.id]) & set(task.bm25_docs(e))) / len(world.gold[e.id])
                    for e in held])
  assert summary["bm25_top5/eval/gold_passage_recall_before"] == pytest.approx(100 * recall)


def _spec_weights(texts, ll, qids, num_candidates, top_k, renormalize, temperature=1.0,
                  outputs=None, log_ratio=None):
  """§7.1 step by step: parse, de-duplicate (identical `outputs`, default the
  texts), exp(l / temperature) * p_phi / q (`log_ratio`: log p_phi - log q,
  default 0) normalised over kept, drop, renormalise."""
  import re
  outputs = texts if outputs is None else [tuple(o) for o in outputs]
  w = np.zeros(len(texts))
  for q in sorted(set(qids)):
    rows = [i for i in range(len(texts)) if qids[i] == q]
    kept, seen = [], set()
    for i in rows:
      if outputs[i] not in seen:
        seen.add(outputs[i])
        kept.append(i)
    x = np.asarray([ll[i] for i in kept], np.float64) / temperature
    if log_ratio is not None:
      x = x + np.asarray([log_ratio[i] for i in kept], np.float64)
    p = np.exp(x - x.max())
    p /= p.sum()
    for i, pi in zip(kept, p):
      ids = []
      for m in re.findall(r"\[(\d+)\]", texts[i]):
        if 1 <= int(m) <= num_candidates and int(m) not in ids:
          ids.append(int(m))
      w[i] = pi if len(ids) == top_k else 0.0
    if renormalize and w[rows].sum() > 0:
      w[rows] /= w[rows].sum()
  return w


@pytest.mark.parametrize("renormalize", [False, True])
def test_weights_hand_worked(renormalize):
  texts = ["[2] > [1] > [5]", "[2] > [1] > [5]", "[3] > [3] > [9] > [1]", "[6] > [4] > [1]",
           "[1] > [2] > [3]", "no ids here", "[4] > [5] > [6] > [1]", "[1] > [2] > [3]"]
  ll = np.asarray([-0.5, -0.5, -2.0, -1.0, -0.2, -3.0, -0.1, -0.2], np.float32)
  qids = np.repeat([0, 1], 4)
  perms, valid = dro_agents.parse_selections(texts, num_candidates=6, top_k=3)
  assert perms[0] == [1, 0, 4, 2, 3, 5]
  assert perms[2] == [2, 0, 1, 3, 4, 5]  # [9] out of range, repeat dropped, completed
  assert perms[5] == list(range(6))
  assert valid.tolist() == [True, True, False, True, True, False, False, True]
  keep = objectives.first_occurrences(texts, qids)
  assert keep.tolist() == [True, False, True, True, True, True, True, False]
  w = objectives.dro_weights(ll, qids, 2, keep, valid, renormalize_after_filter=renormalize)
  np.testing.assert_allclose(w, _spec_weights(texts, ll, qids, 6, 3, renormalize),
                             rtol=1e-6, atol=1e-7)
  # By hand: question 0 softmaxes over rows {0, 2, 3} (row 1 is a duplicate),
  # then row 2 (two ids) is dropped; question 1 keeps only row 4.
  s0 = np.exp(-0.5) + np.exp(-2.0) + np.exp(-1.0)
  s1 = np.exp(-0.2) + np.exp(-3.0) + np.exp(-0.1)
  if renormalize:
    want = [np.exp(-0.5) / (np.exp(-0.5) + np.exp(-1.0)), 0, 0,
            np.exp(-1.0) / (np.exp(-0.5) + np.exp(-1.0)), 1, 0, 0, 0]
  else:
    want = [np.exp(-0.5) / s0, 0, 0, np.exp(-1.0) / s0, np.exp(-0.2) / s1, 0, 0, 0]
  np.testing.assert_allclose(w, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("renormalize, proposal", [(False, (1.0, 1.0)), (True, (1.0, 1.0)),
                                                   (True, (0.7, 0.95))])
def test_e_step_weights_follow_the_estimator(tiny_run, monkeypatch, renormalize, proposal):
  # The E-step's weights end to end against §7.1 re-derived in NumPy: each of
  # the m selector outputs of a question is scored by the token mean of
  # log p(gold answer | question, the output's first top_k passages), from the
  # generator's logits; w = exp(l / tau) p_phi(z) / q(z) normalised over the
  # question's distinct outputs, with q the selector at the proposal's
  # temperature and top_p (1, 1: q = p_phi, w = softmax(l / tau)); malformed
  # outputs are dropped after it (the rest renormalised).
  # The outputs are fixed here (duplicates and a malformed one included): the
  # tiny warm-up model writes no well-formed ranking yet.
  from tests.agents.test_dro_weights import numpy_selection_logprobs
  world, _, models, task = _tiny_task(tiny_run[0])
  config = load_config_file(TINY)
  config.em.update(temperature=0.5, num_samples=5, min_weight=0.0,
                   renormalize_after_filter=renormalize)
  config.selector.update(temperature=proposal[0], top_p=proposal[1])
  m = config.em.num_samples
  examples = world.dataset.train[8:12]
  rng = np.random.RandomState(0)
  outs = []
  for _ in examples:
    rows = [task.ranking_ids(rng.permutation(task.num)[:task.top_k].tolist())
            for _ in range(m - 2)]
    outs += rows + [rows[0], task.ranking_ids(rng.permutation(task.num)[:3].tolist())]
  texts = [task.decode(o) for o in outs]
  perms, valid = dro_agents.parse_selections(texts, task.num, task.top_k)
  assert valid.sum() == len(examples) * (m - 1)

  def fixed_select(graphdef, params, fmt, exs, key, *, repeats, temperature, top_p):
    assert (exs, repeats) == (examples, m)
    return outs, perms, valid

  monkeypatch.setattr(dro_agents, "select", fixed_select)
  model = models["policy"]
  graphdef, params = nnx.split(model)
  states = {"policy": type("S", (), {"params": params})()}
  lengths = task.lengths(world.dataset.train + world.dataset.eval)
  batches, _ = dro_em.selection_e_step(graphdef, states, dro.roles_of(config), task,
                                       examples, config, jax.random.key(3), lengths,
                                       weighting=dro_em.dro_weighting)
  rows_ex = [e for e in examples for _ in range(m)]
  ll = []
  for e, p in zip(rows_ex, perms):
    prompt, gold = task.generator_prompt(e, task.docs(e, p)), task.gold_ids(e)
    hidden, _ = model.forward(jnp.asarray([prompt + gold]))
    z = np.asarray(model.logits(hidden)[0], np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    ll.append(np.mean([logp[len(prompt) + t - 1, tok] for t, tok in enumerate(gold)]))
  ratio = None
  if proposal != (1.0, 1.0):
    lp_lq = np.asarray([numpy_selection_logprobs(
        model, task.selector_prompt(e), o, temperature=proposal[0], top_p=proposal[1],
        no_repeat=task.no_repeat) for e, o in zip(rows_ex, outs)])
    ratio = lp_lq[:, 0] - lp_lq[:, 1]
    assert np.ptp(ratio) > 0.5  # the correction matters for these outputs
  want = _spec_weights(texts, ll, np.repeat(np.arange(len(examples)), m), task.num,
                       task.top_k, renormalize, temperature=0.5, outputs=outs,
                       log_ratio=ratio)
  assert (want > 0).sum() == len(examples) * (m - 2)  # duplicates and malformed: 0
  got = batches["generator"]["weights"]
  np.testing.assert_allclose(got, want[want > 0], rtol=2e-4, atol=1e-6)
  np.testing.assert_array_equal(batches["selector"]["weights"], got)
  # Each trained row: the output itself (selector) and the gold answer behind
  # the output's passages (generator).
  for row, i in enumerate(np.flatnonzero(want > 0)):
    n = int(batches["selector"]["attention_mask"][row].sum())
    assert batches["selector"]["sequences"][row][:n].tolist() == (
        task.selector_prompt(rows_ex[i]) + outs[i])
    n = int(batches["generator"]["attention_mask"][row].sum())
    assert batches["generator"]["sequences"][row][:n].tolist() == (
        task.generator_prompt(rows_ex[i], task.docs(rows_ex[i], perms[i]))
        + task.gold_ids(rows_ex[i]))


def test_weights_question_with_nothing_valid():
  w = objectives.dro_weights(np.asarray([-1.0, -2.0]), np.asarray([0, 0]), 1,
                             np.asarray([True, True]), np.asarray([False, False]),
                             renormalize_after_filter=True)
  np.testing.assert_array_equal(w, [0.0, 0.0])


@pytest.mark.parametrize("change, message", [
    (dict(methods=("bm25_top5",)), "must include 'dro'"),
    (dict(methods=("dro", "uniform")), re.escape("config.methods=('dro', 'uniform')")),
    (dict(dataset="nq"), "config.dataset='nq': must be one of 'builtin', 'hotpotqa'"),
    (dict(selector=dict(top_k=9)), "top_k=9"),
    (dict(em=dict(num_samples=0)), ">= 1"),
    (dict(candidates=dict(keep_top=13)), "keep_top=13"),
])
def test_bad_config(tmp_path, change, message):
  config = load_config_file(TINY)
  for k, v in change.items():
    if isinstance(v, dict):
      config[k].update(v)
    else:
      config[k] = v
  with pytest.raises(ValueError, match=message):
    dro.run(config, str(tmp_path))
  assert not os.listdir(tmp_path)  # rejected before any work


def test_per_type_diagnostics_agree_with_the_run(tiny_run, tmp_path):
  # benchmarks/dro_diagnostics.py re-measures the run's held-out EM from its
  # saved warm-up and final models: the "all" row equals the summary's.
  import importlib.util
  spec = importlib.util.spec_from_file_location("dro_diagnostics", os.path.join(
      os.path.dirname(__file__), "..", "..", "benchmarks", "dro_diagnostics.py"))
  dro_diagnostics = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(dro_diagnostics)
  workdir, summary = tiny_run
  out = dro_diagnostics.main(["--workdir", workdir, "--out", str(tmp_path / "d.json")])
  with open(tmp_path / "d.json") as f:
    assert json.load(f)["dro"]["all"] == out["dro"]["all"]
  for label, key in (("warm-up", "eval/em_before"), ("dro", "eval/em_after")):
    assert out[label]["all"]["selector_em"] == pytest.approx(summary[key])
    assert sum(out[label][t]["count"] for t in dro_world.QUESTION_TYPES
               if t in out[label]) == out[label]["all"]["count"] == 8
