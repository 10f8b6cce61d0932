"""MOAT pieces: DPO pairs and grounder scores vs NumPy, the DPO loss as the
planner update uses it vs TRL, the built-in critic, the LLM critic's parsing,
task/action formats, and batched stage-1 sampling and scoring."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alignax import objectives
from alignax.agents.data import qa_data
from alignax.agents.methods import moat_agents
from alignax.agents.methods import moat_critic as mc
from alignax.agents.worlds import moat_world as mw
from alignax.framework import hf, train
from alignax.framework.config import ModelConfig
from alignax.framework.model import Decoder


# ------------------------------------------------------------ DPO pairs
def _np_pairs(scores, k, min_gap):
  """NumPy re-derivation of MOAT's `get_minmax` (§8.1)."""
  g = np.asarray(scores, np.float64).reshape(-1, k)
  chosen, rejected, valid = [], [], []
  for i, row in enumerate(g):
    lo = min(range(k), key=lambda j: (row[j], j))   # first index on ties
    hi = min(range(k), key=lambda j: (-row[j], j))
    chosen.append(i * k + lo)
    rejected.append(i * k + hi)
    valid.append(len(set(row.tolist())) >= 2 and row.max() - row.min() >= min_gap)
  return np.asarray(chosen), np.asarray(rejected), np.asarray(valid)


def test_build_dpo_pairs_matches_numpy_with_edge_cases():
  scores = np.asarray([
      1.0, 1.0, 1.0, 1.0,        # fewer than two distinct scores: no pair
      0.5, 2.0, 0.5, 2.0,        # ties: first argmin (4), first argmax (5)
      1.0, 1.05, 1.02, 1.01,     # gap 0.05 < min_gap: no pair
      3.0, 2.75, 3.0, 2.9,       # gap exactly 0.25 == min_gap: kept
      0.1, 5.0, 2.0, 0.2], np.float32)
  chosen, rejected, valid = objectives.build_dpo_pairs(jnp.asarray(scores), 4,
                                                       min_gap=0.25)
  want = _np_pairs(scores, 4, 0.25)
  np.testing.assert_array_equal(np.asarray(chosen), want[0])
  np.testing.assert_array_equal(np.asarray(rejected), want[1])
  np.testing.assert_array_equal(np.asarray(valid), want[2])
  np.testing.assert_array_equal(np.asarray(valid), [False, True, False, True, True])
  assert int(chosen[1]) == 4 and int(rejected[1]) == 5
  rng = np.random.RandomState(0)  # random groups, with rounding ties
  scores = np.round(rng.rand(60) * 2, 1).astype(np.float32)
  got = objectives.build_dpo_pairs(jnp.asarray(scores), 5, min_gap=0.1)
  # gaps are multiples of 0.1 in float32; compare on groups away from the edge
  want = _np_pairs(scores, 5, 0.1)
  g = scores.reshape(-1, 5)
  gap = g.max(1) - g.min(1)
  safe = np.abs(gap - 0.1) > 1e-3
  for a, b in zip(got[:2], want[:2]):
    np.testing.assert_array_equal(np.asarray(a), b)
  np.testing.assert_array_equal(np.asarray(got[2])[safe], want[2][safe])


# ------------------------------------------------------- shared fixtures
@pytest.fixture(scope="module")
def world():
  return mw.make_moat_world(0, relations=tuple(mw.RELATIONS), nested_fraction=0.5,
                            num_people=24, num_cities=6, num_countries=3, num_companies=4)


@pytest.fixture(scope="module")
def io_and_models(world, tmp_path_factory):
  train_tasks, held_in, held_out = world.splits()
  tok = qa_data.train_word_tokenizer(mw.vocabulary(world, train_tasks + held_in + held_out))
  cfg = ModelConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_layers=1,
                    num_heads=2, num_kv_heads=1, max_position_embeddings=128,
                    pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                    eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
  io = moat_agents.AgentIO(tok, plan_prompt_len=32, plan_len=40, ground_prompt_len=80,
                      action_len=40)
  path = str(tmp_path_factory.mktemp("critic_model"))
  grounder = Decoder(cfg, seed=2)
  hf.save_pretrained(grounder, path)  # a random model as the LLM critic
  tok.save_pretrained(path)
  return io, Decoder(cfg, seed=1), grounder, path


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_grounder_scores_match_numpy(world, io_and_models):
  io, _, grounder, _ = io_and_models
  tasks = world.splits()[0][30:33]
  plans = [io.encode(mw.gold_subgoals(t)) for t in tasks]
  plans[1] = []                                   # an empty plan
  plans[2] = plans[2][:3]                         # a shorter prompt
  gold = [mw.actions_text(mw.gold_actions(t)) for t in tasks]
  batch = io.grounder_batch(tasks, plans, gold)
  from flax import nnx
  graphdef, params = nnx.split(grounder)
  got = np.asarray(moat_agents.grounder_scores(graphdef, params, batch))
  # NumPy: full-vocabulary log-softmax of each row alone (no padding).
  for i, t in enumerate(tasks):
    prompt = io.grounder_prompt(t, plans[i])
    comp = io.completion(gold[i], io.action_len)
    ids = np.asarray([prompt + comp], np.int32)
    logits = np.asarray(grounder.logits(grounder.forward(ids)[0]), np.float64)[0]
    logp = _np_log_softmax(logits)[len(prompt) - 1:-1]
    ce = -logp[np.arange(len(comp)), comp]
    want = ce.sum() / max((ce >= 1e-9).sum(), 1)
    np.testing.assert_allclose(got[i], want, rtol=2e-4)
  # The count excludes tokens with CE < 1e-9 (docs/algorithms.md §8.1); empty rows give 0.
  logp = jnp.asarray([[-2.0, 0.0, -1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [-1.0, -3.0, 0, 0]])
  mask = jnp.asarray([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], jnp.float32)
  np.testing.assert_allclose(objectives.perplexity_scores(logp, mask, count_threshold=1e-9),
                             [3.0 / 2, 0.0, 0.0])


def test_dpo_update_loss_equals_trl_sigmoid(world, io_and_models):
  from tests.objectives import trl_harness  # pylint: disable=g-import-not-at-top
  io, planner, _, _ = io_and_models
  from flax import nnx
  graphdef, params = nnx.split(planner)
  ref_params = jax.tree.map(lambda x: x * 0.9, params)
  tasks = world.splits()[0][:8]
  rng = np.random.RandomState(0)
  plans = [" ".join(mw.gold_subgoals(t).split()[:rng.randint(3, 12)]) for t in tasks]
  pb = io.planner_batch(tasks, plans)
  chosen, rejected = np.asarray([0, 2, 4, 6]), np.asarray([1, 3, 5, 7])
  ref = train.sequence_logps(graphdef, ref_params, pb)
  batch = train.dpo_batch(pb, chosen, rejected, ref)
  opt = optax.sgd(0.0)
  _, state = train.init_train_state(planner, opt)
  update = train.make_dpo_update(graphdef, opt, beta=0.2)
  _, metrics = update(jax.tree.map(jnp.copy, state), batch)  # (the update donates)
  logp, _ = train.completion_logprobs(graphdef, params, pb["sequences"], pb["attention_mask"],
                                      pb["completion_tokens"])
  order = np.concatenate([chosen, rejected])
  mask = pb["completion_mask"][order]
  per_token = np.asarray(logp, np.float64)[order] * mask
  mask_full = np.concatenate([np.zeros((len(order), 1), mask.dtype), mask], 1)
  t_loss, _, t_metrics = trl_harness.trl_dpo_loss(
      per_token, mask_full, np.asarray(ref)[chosen], np.asarray(ref)[rejected], beta=0.2)
  np.testing.assert_allclose(float(metrics["loss"]), t_loss, rtol=1e-4)
  np.testing.assert_allclose(float(metrics["rewards/margins"]), t_metrics["rewards/margins"],
                             rtol=1e-4, atol=1e-6)
  # rpo_alpha adds alpha * the token-mean NLL of the chosen rows (NumPy).
  nll = -per_token[:len(chosen)].sum() / mask[:len(chosen)].sum()
  update = train.make_dpo_update(graphdef, opt, beta=0.2, rpo_alpha=0.5)
  _, m2 = update(jax.tree.map(jnp.copy, state), batch)
  np.testing.assert_allclose(float(m2["nll"]), nll, rtol=1e-4)
  np.testing.assert_allclose(float(m2["loss"]), t_loss + 0.5 * nll, rtol=1e-4)


# ---------------------------------------------------------- formats
def test_parse_and_execute_actions(world):
  task = world.splits()[0][40]
  gold = mw.actions_text(mw.gold_actions(task))
  assert mw.success(world, task, gold)
  decoded = gold.lower().replace("#", "# ")  # what the word tokenizer decodes to
  assert mw.parse_actions(decoded) == mw.gold_actions(task)
  assert mw.success(world, task, decoded)
  assert not mw.success(world, task, "")
  assert not mw.success(world, task, "Lookup [ #0 , nothing ] Answer [ #1 ]")
  named = gold.replace("#0", task.subject)   # a literal name works too
  assert mw.success(world, task, named)
  assert mw.parse_actions("Answer [ x ] Lookup [ a , b ]") == [mw.Action("answer", ("x",))]
  assert mw.parse_subgoals(mw.gold_subgoals(task))[-1].startswith("answer #")
  train_tasks = world.splits()[0]
  # Both phrasings occur; the nested one lists the relations in reverse.
  nested = [t for t in train_tasks if t.nested]
  assert 0.3 < len(nested) / len(train_tasks) < 0.7
  t = next(t for t in nested if len(t.chain) == 2)
  assert t.question == f"what is the {t.chain[1]} of the {t.chain[0]} of {t.subject} ?"
  flat = world.task(t.subject, t.chain, nested=False)
  assert flat.question == f"what is {t.subject} 's {t.chain[0]} 's {t.chain[1]} ?"
  assert mw.gold_actions(flat) == mw.gold_actions(t) and flat.answer == t.answer
  with pytest.raises(ValueError, match="relations"):
    mw.make_moat_world(0, relations=("birthplace", "country"))


# ------------------------------------------------------------- critics
def _corruptions(task, rng):
  gold = mw.gold_actions(task)
  rels = list(mw.RELATIONS)
  outs = [[], gold[:-1], gold[1:]]
  wrong_rel = [mw.Action("lookup", (a.args[0], rels[rng.randint(len(rels))]))
               if a.kind == "lookup" else a for a in gold]
  outs.append(wrong_rel)
  outs.append([mw.Action("lookup", ("#3", a.args[1])) if a.kind == "lookup" else a
               for a in gold])
  outs.append(gold[:1] + [mw.Action("search", (f"{task.chain[-1]} #1",))] + gold[1:])
  outs.append(gold + gold)
  outs.append([mw.Action("answer", ("nowhere",))])
  return [mw.actions_text(o) for o in outs]



# ------------------------------------------------------------- the split
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chain_split_holds_out_new_compositions_of_seen_steps(world, seed):
  """The held-out split (issue 32): new compositions whose every step is in
  some training chain, at training lengths, >= 50 (chain, phrasing) groups,
  deterministic per seed."""
  rels = world.relations
  for c in mw.all_chains(4, rels):  # type-valid: each hop starts where the last ended
    assert all(mw.RELATIONS[a][1] == mw.RELATIONS[b][0] for a, b in zip(c, c[1:]))
  assert len(mw.all_chains(3, rels)) > 3 * len(mw.all_chains(3))  # 11 vs 7 relations
  chains_in, chains_out, none = mw.chain_split(seed, relations=rels)
  assert none == [] and mw.chain_split(seed, relations=rels) == (chains_in, chains_out, [])
  assert sorted(chains_in + chains_out) == sorted(mw.all_chains(3, rels))
  assert not set(chains_in) & set(chains_out)  # no held-out composition in training
  seen = set().union(*(mw.chain_steps(c) for c in chains_in))
  for c in chains_out:  # every step (relation at its position, answer at the end)
    assert mw.chain_steps(c) <= seen, c
    assert {(i, r) for i, r in enumerate(c)} <= seen
  lengths_in = {len(c) for c in chains_in}
  assert {len(c) for c in chains_out} == {2, 3} and lengths_in == {1, 2, 3}
  # ~40% of each held-out length (the default), 50 chains
  assert [sum(len(c) == n for c in chains_out) for n in (2, 3)] == [13, 37]
  assert mw.chain_split(seed + 10, relations=rels)[1] != chains_out  # the seed matters
  # On the tasks: the world's splits use these chains; both phrasings of
  # each held-out chain give >= 50 independent (chain, phrasing) groups.
  w = mw.make_moat_world(seed, relations=rels, nested_fraction=0.5, num_people=24,
                         num_cities=6, num_countries=3, num_companies=4)
  train_tasks, held_in, held_out = w.splits()
  assert {t.chain for t in train_tasks + held_in} == set(chains_in)
  assert {t.chain for t in held_out} == set(chains_out)
  assert not {t.id for t in train_tasks} & {t.id for t in held_in}
  assert len({t.group for t in held_out}) >= 50
  assert {t.group.split("/")[0] for t in held_out} == {".".join(c) for c in chains_out}
  train_subgoals = {s for t in train_tasks for s in mw.parse_subgoals(mw.gold_subgoals(t))}
  train_actions = {a for t in train_tasks for a in mw.gold_actions(t)}
  for t in held_out:  # the gold subgoals and actions, word for word
    assert set(mw.parse_subgoals(mw.gold_subgoals(t))) <= train_subgoals
    assert set(mw.gold_actions(t)) <= train_actions
  assert [t.id for t in w.splits()[2]] == [t.id for t in held_out]
  assert w.pool_only_tasks() == []
  # pool_only_fraction: a hashed share of the new compositions become
  # pool-only training chains; held-in chains (and so the train and held-in
  # tasks) stay as they were, and no pool-only chain is evaluated.
  split = mw.chain_split(seed, relations=rels, pool_only_fraction=0.5)
  assert split[0] == chains_in and split[2]
  assert sorted(split[1] + split[2]) == sorted(chains_out)
  tasks = w.splits(pool_only_fraction=0.5)
  pool_only = w.pool_only_tasks(pool_only_fraction=0.5)
  assert [t.id for t in tasks[0] + tasks[1]] == [t.id for t in train_tasks + held_in]
  assert {t.chain for t in pool_only} == set(split[2])
  assert {t.chain for t in tasks[2]} == set(split[1])
  # Longer chains: held-out lengths must be training lengths.
  long_in, long_out, _ = mw.chain_split(seed, relations=rels, heldout_lengths=(3, 4),
                                        max_len=4)
  assert {len(c) for c in long_out} == {3, 4} and max(len(c) for c in long_in) == 4
  seen = set().union(*(mw.chain_steps(c) for c in long_in))
  assert all(mw.chain_steps(c) <= seen for c in long_out)
  with pytest.raises(ValueError, match="heldout_lengths"):
    mw.chain_split(seed, relations=rels, heldout_lengths=(4,), max_len=3)


def test_chain_split_never_removes_a_steps_last_training_chain():
  """With every chain a candidate, a step found in one chain only keeps it."""
  rels = mw.BASE_RELATIONS
  chains_in, chains_out, _ = mw.chain_split(0, heldout_fraction=0.99, relations=rels)
  seen = set().union(*(mw.chain_steps(c) for c in chains_in))
  assert chains_out and all(mw.chain_steps(c) <= seen for c in chains_out)
  assert seen == set().union(*(mw.chain_steps(c) for c in mw.all_chains(3, rels)))


def test_cluster_se_matches_numpy():
  """The standard error over groups (CR1 sandwich of a mean) vs a NumPy
  re-derivation: a regression of the values on a constant with clustered
  residuals; one value per group is the ordinary ddof=1 standard error."""
  rng = np.random.RandomState(0)
  groups = rng.randint(0, 17, size=200)
  values = (rng.rand(200) < 0.3 + 0.04 * groups).astype(np.float64)
  # NumPy: X = 1, beta = mean, V = (X'X)^-1 (sum_g X_g' e_g e_g' X_g) (X'X)^-1 * G/(G-1)
  x = np.ones((200, 1))
  e = values - values.mean()
  meat = sum(np.outer(x[groups == g].T @ e[groups == g], x[groups == g].T @ e[groups == g])
             for g in np.unique(groups))
  bread = np.linalg.inv(x.T @ x)
  g = len(np.unique(groups))
  want = np.sqrt((bread @ meat @ bread)[0, 0] * g / (g - 1))
  np.testing.assert_allclose(mw.cluster_se(values, list(groups)), want, rtol=1e-12)
  np.testing.assert_allclose(mw.cluster_se(values, range(200)),
                             values.std(ddof=1) / np.sqrt(200), rtol=1e-12)
  # Perfectly correlated groups: the SE of the group means (ddof=1 over groups,
  # equal group sizes).
  means = rng.rand(12) < 0.5
  v = np.repeat(means, 5).astype(float)
  np.testing.assert_allclose(mw.cluster_se(v, np.repeat(np.arange(12), 5).tolist()),
                             means.astype(float).std(ddof=1) / np.sqrt(12), rtol=1e-12)
  assert np.isnan(mw.cluster_se([1.0, 0.0], ["a", "a"]))
  assert np.isnan(mw.cluster_se([], []))


@pytest.mark.parametrize("rewrite_subgoals", [False, True])
def test_builtin_critic_corrections_execute_to_gold(rewrite_subgoals):
  from alignax.experiments import moat
  from alignax.experiments.runtime.config_files import load_config_file
  config = load_config_file(os.path.join(os.path.dirname(moat.__file__), "configs",
                                         "moat.py"))
  world = moat.make_world(config)  # the default preset's world: every training task
  critic = mc.make_critic("builtin", world=world, rewrite_subgoals=rewrite_subgoals)
  train_tasks = moat.split_tasks(world, config)[0]
  rng = np.random.RandomState(0)
  items = []
  for t in train_tasks:
    subgoals = mw.gold_subgoals(t)
    for actions in _corruptions(t, rng):
      items.append(mc.CriticInput(t, subgoals, actions))
    items.append(mc.CriticInput(t, "1 . find country of #0", mw.actions_text(mw.gold_actions(t))))
  fixes = critic(items)
  changed = 0
  for item, fix in zip(items, fixes):
    assert fix is not None
    if fix.changed:  # every correction runs to the gold answer
      changed += 1
      assert mw.success(world, item.task, fix.actions), (item, fix)
    if rewrite_subgoals:  # the subgoals then describe the actions
      assert mw.parse_subgoals(fix.subgoals) == mw.parse_subgoals(
          mw.subgoals_text(mw.parse_actions(fix.actions)))
    else:  # the planner's own subgoals are kept
      assert fix.subgoals == item.subgoals
  assert changed > len(train_tasks) * (5 if not rewrite_subgoals else 6)
  # A right pair is kept as is.
  t = train_tasks[0]
  ok = critic([mc.CriticInput(t, mw.gold_subgoals(t), mw.actions_text(mw.gold_actions(t)))])[0]
  assert not ok.changed and ok.actions == mw.actions_text(mw.gold_actions(t))


def test_builtin_critic_keeps_a_right_search_action(world):
  # search finds the right entity for the first hop: kept, later hops fixed.
  t = next(t for t in world.splits()[0] if len(t.chain) == 2)
  search_fn = lambda q: t.path[0] if q.strip() == f"{t.chain[0]} {t.subject}" else None
  critic = mc.BuiltinCritic(world, search_fn, rewrite_subgoals=True)
  actions = f"Search [ {t.chain[0]} #0 ] Lookup [ #1 , nothing ] Answer [ #2 ]"
  fix = critic([mc.CriticInput(t, "1 . x", actions)])[0]
  assert fix.changed and fix.actions.startswith(f"Search [ {t.chain[0]} #0 ]")
  assert mw.execute(world, mw.parse_actions(fix.actions), search_fn,
                    t.subject).answer == t.answer
  assert fix.subgoals.startswith(f"1 . search {t.chain[0]} #0 2 . find {t.chain[1]} of #1")


def test_parse_critic_output():
  text = ("Task: ...\nCorrected Subgoals: ...\nCorrected Actions: ...\n"
          "Corrected Subgoals: 1 . find employer of #0 2 . answer #1\n"
          "Corrected Actions: Lookup [ #0 , employer ] Answer [ #1 ]\nmore text")
  assert mc.parse_critic_output(text) == ("1 . find employer of #0 2 . answer #1",
                                          "Lookup [ #0 , employer ] Answer [ #1 ]")
  lower = "corrected subgoals : 1 . answer # 1 corrected actions : answer [ # 1 ]"
  assert mc.parse_critic_output(lower) == ("1 . answer # 1", "Answer [ #1 ]")
  assert mc.parse_critic_output("Corrected Subgoals: x\n") is None
  assert mc.parse_critic_output("Corrected Subgoals: x\nCorrected Actions: nothing") is None
  assert mc.parse_critic_output("Corrected Subgoals: ...\nCorrected Actions: ...") is None
  assert mc.parse_critic_output("") is None


def test_llm_critic_with_stub_and_with_a_random_model(world, io_and_models):
  t = world.splits()[0][0]
  gold = mw.actions_text(mw.gold_actions(t))
  prompts = []

  def stub(ps):
    prompts.extend(ps)
    return [p + f"Corrected Subgoals: {mw.gold_subgoals(t)}\nCorrected Actions: {gold}"
            if i == 0 else p + "I cannot tell." for i, p in enumerate(ps)]

  critic = mc.make_critic("llm", generate_fn=stub)
  items = [mc.CriticInput(t, "1 . x", "Answer [ y ]"), mc.CriticInput(t, "1 . x", "")]
  fixes = critic(items)
  assert fixes[0] == mc.Correction(mw.gold_subgoals(t), gold, True)
  assert fixes[1] is None
  assert "Corrected Subgoals:" in prompts[0] and t.question in prompts[0]
  _, _, _, path = io_and_models
  random_critic = mc.make_critic("llm", model_dir=path, max_new_tokens=8)
  out = random_critic(items)  # a random model's text rarely parses: None, no crash
  assert len(out) == 2 and all(o is None or isinstance(o, mc.Correction) for o in out)
  with pytest.raises(ValueError, match="model_dir"):
    mc.make_critic("llm")
  with pytest.raises(ValueError, match="unknown critic 'nope'; registered: .*builtin"):
    mc.make_critic("nope")


# ------------------------------------------------- batched stage 1
def test_stage1_is_one_generate_and_one_scoring_pass(world, io_and_models, monkeypatch):
  from alignax.experiments import moat
  from alignax.experiments.runtime.config_files import load_config_file
  from flax import nnx
  config = load_config_file(os.path.join(os.path.dirname(moat.__file__), "configs",
                                         "moat.py") + ":tiny")
  io, planner, grounder, _ = io_and_models
  calls = {"generate": 0, "score": 0}
  real_gen, real_score = moat_agents.sampling.generate, moat_agents.grounder_scores

  def gen(*a, **k):
    calls["generate"] += 1
    return real_gen(*a, **k)

  def score(*a, **k):
    calls["score"] += 1
    return real_score(*a, **k)

  monkeypatch.setattr(moat_agents.sampling, "generate", gen)
  monkeypatch.setattr(moat_agents, "grounder_scores", score)
  opt = train.make_optimizer(1e-3)
  p_graphdef, p_state = train.init_train_state(planner, opt)
  g_graphdef, g_params = nnx.split(grounder)
  tasks = world.splits()[0][:6]
  update = train.make_dpo_update(p_graphdef, opt, beta=0.2)
  _, plans, stats = moat.stage1(p_graphdef, jax.tree.map(jnp.copy, p_state), g_graphdef,
                                g_params, io, tasks, config, update, 0, None)
  assert calls == {"generate": 1, "score": 1}
  assert len(plans) == len(tasks) * config.stage1.num_samples
  assert stats["stage1/pairs"] <= len(tasks)


def test_stage1_max_chosen_score_keeps_pairs_whose_chosen_plan_scores_low(
    world, io_and_models, monkeypatch):
  from alignax.experiments import moat
  from alignax.experiments.runtime.config_files import load_config_file
  from flax import nnx
  config = load_config_file(os.path.join(os.path.dirname(moat.__file__), "configs",
                                         "moat.py") + ":tiny")
  io, planner, grounder, _ = io_and_models
  k, tasks = config.stage1.num_samples, world.splits()[0][:6]
  # Task i's plans score 0.1 i (the chosen one), then 0.1 i + 1, ...: every
  # gap passes min_gap; the chosen score alone decides.
  fake = jnp.asarray([0.1 * i + j for i in range(len(tasks)) for j in range(k)], jnp.float32)
  monkeypatch.setattr(moat_agents, "grounder_scores", lambda *a, **kw: fake)
  opt = train.make_optimizer(1e-3)
  p_graphdef, p_state = train.init_train_state(planner, opt)
  g_graphdef, g_params = nnx.split(grounder)
  update = train.make_dpo_update(p_graphdef, opt, beta=0.2)
  pairs = {}
  for limit in (0.0, 0.25):  # 0: off
    config.stage1.max_chosen_score = limit
    _, _, stats = moat.stage1(p_graphdef, jax.tree.map(jnp.copy, p_state), g_graphdef,
                              g_params, io, tasks, config, update, 0, None)
    pairs[limit] = stats["stage1/pairs"]
  assert pairs == {0.0: 6, 0.25: 3}
