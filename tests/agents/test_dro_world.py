"""The DRO world where reading is required (alignax/agents/worlds/dro_world.py): facts
drawn per question from pools far too large to memorise, distractors that
share surface words with the gold passages, gold passages at uniformly random
candidate positions, everything deterministic per seed."""
import collections
import os
import re

import numpy as np
import pytest
from scipy import stats

from alignax.agents.worlds import dro_world, retrieval
from alignax.experiments import dro
from alignax.experiments.runtime.config_files import load_config_file

CONFIG = os.path.join(os.path.dirname(dro.__file__), "configs", "dro.py")
# A relation's passage, parsed back: (pattern, relation).
_PATTERNS = [(re.compile(r"^(?:.* )?(\w+ \w+) was born in (\w+ \w+) \.$"), "born"),
             (re.compile(r"^(?:.* )?(\w+ \w+) works for the company (\w+ \w+) \.$"), "works"),
             (re.compile(r"^(\w+ \w+) is a city in the country (\w+ \w+) \.$"), "city_country"),
             (re.compile(r"^(\w+ \w+) is a company based in (\w+ \w+) \.$"), "company_city")]


def _facts(text):
  for pattern, rel in _PATTERNS:
    m = pattern.match(text)
    if m:
      return (m.group(1), rel, m.group(2))
  return None


@pytest.fixture(scope="module")
def world():
  return dro_world.make_dro_world(seed=0)  # the default sizes


def test_deterministic_per_seed():
  a, b = dro_world.make_dro_world(seed=3, num_questions=80), dro_world.make_dro_world(
      seed=3, num_questions=80)
  assert a == b
  c = dro_world.make_dro_world(seed=4, num_questions=80)
  assert a.dataset.corpus != c.dataset.corpus
  assert {e.answers[0] for e in a.dataset.train} != {e.answers[0] for e in c.dataset.train}


def test_facts_are_drawn_per_question(world):
  d = world.dataset
  examples = d.train + d.eval
  corpus = d.corpus
  assert len(examples) == 1600
  assert collections.Counter(e.id.split(":")[0] for e in examples) == {
      t: 400 for t in dro_world.QUESTION_TYPES}
  # Pools far too large to memorise: 48**2 names a type, and the answers of
  # 1600 questions are nearly all distinct (the old world: 24 cities, 6 countries).
  for t, (first, second) in world.name_pieces.items():
    assert len(first) == len(second) == 48, t
  pool = {a for e in examples for a in world.answer_pool[e.id]}
  assert len(pool) == 3 * 48**2  # cities, countries, companies
  answers = collections.Counter(e.answers[0] for e in examples)
  assert len(answers) > 0.85 * len(examples) and max(answers.values()) <= 4
  # Each question's passages are its own, and every fact is stated once per
  # question: a subject is in no other question, and a (subject, relation,
  # object) fact recurs across questions only by chance.
  owner = {}
  for e in examples:
    for i in world.context[e.id]:
      assert i not in owner
      owner[i] = e.id
  assert len(owner) == len(corpus)
  subjects = [e.id.split(":")[1] for e in examples]  # "<type>:<subject>"
  assert all(s in e.question for s, e in zip(subjects, examples))
  assert len(set(subjects)) == len(examples)
  fact_questions = collections.defaultdict(set)
  for i, p in enumerate(corpus):
    f = _facts(p.text)
    if f:
      fact_questions[f].add(owner[i])
  shared = sum(len(q) > 1 for q in fact_questions.values())
  # Chance: a bridge fact pairs two names of 2304 drawn uniformly, so two of
  # one relation's 3200 bridge facts are equal with probability 1 / 2304**2:
  # 2 * C(3200, 2) / 2304**2 = 1.9 pairs expected.
  per_relation = collections.Counter(_facts(p.text)[1] for p in corpus if _facts(p.text))
  assert per_relation["city_country"] == per_relation["company_city"] == 3200
  expected = 2 * 3200 * 3199 / 2 / 2304**2
  assert shared <= expected + 4 * np.sqrt(expected), shared  # Poisson, ~4 sigma
  # A held-out question's answer-bearing facts are stated in no training question.
  train_ids = {e.id for e in d.train}
  leaked = 0
  for e in d.eval:
    for g in world.gold[e.id]:
      leaked += bool(fact_questions[_facts(corpus[g].text)] & train_ids)
  assert leaked <= 2, leaked
  # The gold passages state the answer: the last hop's object.
  for e in examples[:200]:
    chain = [_facts(corpus[g].text) for g in world.gold[e.id]]
    assert chain[-1][2] == e.answers[0]
    if e.hops == 2:
      assert chain[0][2] == chain[1][0]  # the bridge is about the hop-1 object


def test_distractors_share_surface_words(world):
  d = world.dataset
  corpus = d.corpus
  for e in (d.train + d.eval)[:400]:
    subject = e.id.split(":")[1]
    gold = world.gold[e.id]
    others = [i for i in world.context[e.id] if i not in gold]
    assert len(others) == len(world.context[e.id]) - len(gold) == 10 - e.hops
    about_subject = [i for i in others if subject in corpus[i].text]
    # The subject's other fact and 4 distractors name the subject, as the hop-1 gold.
    assert subject in corpus[gold[0]].text and len(about_subject) == 5
    facts = [_facts(corpus[i].text) for i in world.context[e.id]]
    hop1 = _facts(corpus[gold[0]].text)
    bridge_rel = dro_world._BRIDGES[dro_world.OBJECT_TYPES[hop1[1]]]
    bridges = [f for f in facts if f and f[1] == bridge_rel]
    # The hop-1 object's bridge and 3 decoys of the same template; at least
    # one decoy is about an entity a distractor names (a wrong chain).
    assert len(bridges) == 4 and bridges[0] != bridges[1]
    assert any(f[0] == hop1[2] for f in bridges)
    named = {m for i in about_subject for m in re.findall(r"\w+ \w+ \.$", corpus[i].text)}
    assert any(f"{f[0]} ." in named for f in bridges if f[0] != hop1[2])
    if e.hops == 2:
      assert corpus[gold[1]].text.split(" ")[2:-3] == [
          w for w in corpus[[i for i in others if _facts(corpus[i].text) in bridges][0]]
          .text.split(" ")[2:-3]]  # the same template words as a decoy


def _default_candidates():
  config = load_config_file(CONFIG)
  world = dro.load_world(config)
  retriever = retrieval.BM25Retriever.build(world.dataset.corpus)
  return config, world, retriever, dro.build_candidates(config, world, retriever)


def test_gold_positions_are_uniform():
  # The binary's candidates (default config): every gold passage, retrieved
  # or inserted, is equally likely at each of the 12 positions (chi-square);
  # each question's 10 passages are all among its candidates.
  config, world, retriever, (cand, bm25) = _default_candidates()
  examples = world.dataset.train + world.dataset.eval
  n = config.candidates.num
  counts = np.zeros(n)
  hop1_top5 = bridge_top5 = 0
  for e in examples:
    row = cand[e.id].tolist()
    assert len(set(row)) == n and set(world.context[e.id]) <= set(row)
    for g in world.gold[e.id]:
      counts[row.index(g)] += 1
    hop1_top5 += world.gold[e.id][0] in bm25[e.id][:5]
    if e.hops == 2:  # a bridge shares no word with the question
      bridge_top5 += world.gold[e.id][1] in bm25[e.id][:5]
  assert counts.sum() == 2400
  assert stats.chisquare(counts).pvalue > 1e-3, counts
  assert counts.max() - counts.min() < 0.3 * counts.mean()
  # BM25 finds the hop-1 gold among the subject's 6 passages, not always in its top 5.
  assert 0.75 < hop1_top5 / len(examples) < 0.98
  assert bridge_top5 == 0


def test_insertion_without_shuffle():
  # shuffle=False: BM25's order, the missing context passages at uniformly
  # random positions among those not holding one; keep_top keeps a prefix.
  config, world, retriever, _ = _default_candidates()
  examples = (world.dataset.train + world.dataset.eval)[:400]
  raw = dro_world.candidates(retriever, examples, world.gold, 12, insert_gold=False)
  cand = dro_world.insert_gold_passages(raw, examples, world.context, seed=0)
  observed, expected = np.zeros(12), np.zeros(12)
  for e, row, r in zip(examples, cand, raw):
    ctx = world.context[e.id]
    missing = [g for g in ctx if g not in r]
    free = [i for i in range(12) if r[i] not in ctx]
    for g in missing:
      observed[row.tolist().index(g)] += 1
      expected[free] += 1 / len(free)
    assert [i for i in range(12) if row[i] != r[i]] == sorted(
        row.tolist().index(g) for g in missing)  # only the inserted positions change
  some = expected > 0
  assert stats.chisquare(observed[some], expected[some]).pvalue > 1e-3, (observed, expected)
  # Without the shuffle, BM25's top 5 (the subject's passages) is never
  # replaced: where a passage sits tells whether it was inserted.
  assert observed[:5].sum() == 0
  kept = dro_world.insert_gold_passages(raw, examples, world.context, keep_top=5, seed=0)
  np.testing.assert_array_equal(kept[:, :5], raw[:, :5])
  shuffled = dro_world.shuffle_candidates(cand, examples, seed=0)
  for a, b in zip(cand, shuffled):
    assert sorted(a.tolist()) == sorted(b.tolist())
  assert (shuffled != cand).any()


def test_answer_pools_and_vocabulary():
  world = dro_world.make_dro_world(num_questions=120, name_pieces=12,
                                   distractors_per_question=2, bridge_decoys=1)
  d = world.dataset
  pools = {}
  for e in d.train + d.eval:
    assert e.answers[0] in world.answer_pool[e.id]
    pools.setdefault(e.id.split(":")[0], set()).update(world.answer_pool[e.id])
  assert pools["born_city"] == pools["employer_city"]  # both are cities
  assert len(pools["born_country"]) == len(pools["employer"]) == 144
  assert not pools["born_city"] & pools["employer"]
  words = {w for t in dro_world.vocabulary_text(world) for w in t.split()}
  # Every name word (a counterfactual answer may use any) is in the vocabulary,
  # which stays small: 8 inventories of name words plus the templates.
  assert all(w in words for first, second in world.name_pieces.values()
             for w in first + second)
  assert len(words) < 8 * 12 + 80
  with pytest.raises(ValueError, match="name_pieces"):
    dro_world.make_dro_world(num_questions=200, name_pieces=12)


def test_one_word_object_names():
  # object_names=N: cities, companies and countries are one word each, N per
  # type (persons keep two words); facts are still drawn per question.
  world = dro_world.make_dro_world(num_questions=200, name_pieces=16, object_names=40)
  d = world.dataset
  pools = {}
  for e in d.train + d.eval:
    assert e.answers[0] in world.answer_pool[e.id] and len(e.answers[0].split()) == 1
    assert len(e.id.split(":")[1].split()) == 2  # the subject: a two-word person
    pools.setdefault(e.id.split(":")[0], set()).update(world.answer_pool[e.id])
  assert len(pools["born_city"]) == len(pools["employer"]) == len(pools["born_country"]) == 40
  assert pools["born_city"] == pools["employer_city"]
  assert not pools["born_city"] & pools["employer"]
  assert world.name_pieces["city"][1] == () and len(world.name_pieces["person"][1]) == 16
  words = {w for t in dro_world.vocabulary_text(world) for w in t.split()}
  assert all(w in words for first, second in world.name_pieces.values() for w in first + second)
  # Every 2-hop question reads its bridge: the hop-1 object names the bridge's subject.
  for e in (d.train + d.eval)[:40]:
    gold = [d.corpus[i].text for i in world.gold[e.id]]
    assert gold[-1].split()[-2] == e.answers[0]
    if e.hops == 2:
      assert gold[0].split()[-2] == gold[1].split()[0]
  # Facts differ across questions: an object's bridge fact is drawn per question.
  bridges = collections.defaultdict(set)
  for e in d.train + d.eval:
    if e.hops == 2:
      s, o = d.corpus[world.gold[e.id][1]].text.split()[0], e.answers[0]
      bridges[s].add(o)
  assert max(len(v) for v in bridges.values()) > 1
  with pytest.raises(ValueError, match="object_names"):
    dro_world.make_dro_world(num_questions=100, name_pieces=12, object_names=5)
