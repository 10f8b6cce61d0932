"""A QA world where passage *selection* matters (DRO, docs/algorithms.md §7).

Built on the entities and relations of `agents.qa_world.make_world` (people,
cities, countries, companies; born / works / city-country / company-city), but
rendered so that a lexical retriever cannot find the evidence on its own:

* Questions are paraphrased: "what is the birthplace of P ?" while the passage
  says "P was born in C .". BM25 matches only the name P, so every passage about
  P scores alike (their lengths vary with random leading filler words) and the gold
  passage is not always in BM25's top 5 (1-hop held-out questions of the
  default world: 72 % in the top 5, 100 % in the top 12; the 2-hop bridge
  passage is never retrieved by BM25).
* Every person has `distractors_per_person` more passages with the same name
  and an entity of the answer's type: "P visited C2 .", "P studied in C3 .",
  "P once applied to the company K2 ." ...
* 2-hop questions ("what nation holds the birthplace of P ?") need the person's
  passage and the bridge passage ("C is a city in the country N ."), which
  shares no word with the question; BM25 never ranks it.

Candidates (`candidates`): BM25's top `num_candidates` for the question. With
`insert_gold` (DRO's `k_positive`, §7.1), a gold passage that BM25 missed
replaces the candidate at a uniformly random position (after the first
`keep_top`, default 0: anywhere), so where it sits says nothing about it.
The held-out split is a hashed fraction of the questions, as `qa_world`'s `split="question"`.

Everything depends only on `(seed, sizes)`.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

import numpy as np

from alignax.agents import qa_world
from alignax.agents.qa_world import Passage, QADataset, QAExample

# name -> (hops, paraphrased question, relation path as in qa_world).
QUESTION_TYPES = {
    "born_city": (1, "what is the birthplace of {p} ?", ("born",)),
    "employer": (1, "who employs {p} ?", ("works",)),
    "born_country": (2, "what nation holds the birthplace of {p} ?", ("born", "city_country")),
    "employer_city": (2, "where is the employer of {p} located ?", ("works", "company_city")),
}
_FACTS = {
    "born": "{s} was born in {o} .",
    "works": "{s} works for the company {o} .",
    "city_country": "{s} is a city in the country {o} .",
    "company_city": "{s} is a company based in {o} .",
}
# Distractors about a person: (template, type of the other entity).
_DISTRACTORS = (
    ("{p} visited {x} .", "city"), ("{p} studied in {x} .", "city"),
    ("{p} moved to {x} .", "city"), ("{p} once applied to the company {x} .", "company"),
    ("{p} bought a lamp from the company {x} .", "company"), ("{p} met {x} .", "person"),
    ("{p} wrote a letter to {x} .", "person"), ("{p} likes {x} .", "product"),
)
_FILLERS = ("last year", "in spring", "with a friend", "after the war", "at dawn")
_PRODUCTS = ("lamps", "boats", "tea", "clocks", "maps", "salt", "glass", "rope")
# Words of the prompts and outputs that are not in any passage or question.
EXTRA_WORDS = "rank answer question : > . ?"


# The type of each relation's object: a question's answer type is its path's last.
OBJECT_TYPES = {"born": "city", "works": "company", "city_country": "country",
                "company_city": "city"}


@dataclasses.dataclass(frozen=True)
class DroWorld:
  dataset: QADataset
  gold: dict  # question id -> tuple of gold passage indices into dataset.corpus (hop order)
  answer_pool: dict  # question id -> every entity of its answer's type (sorted)


def _hash_fraction(seed: int, key: str) -> float:
  h = hashlib.sha256(f"dro:{seed}:{key}".encode()).digest()
  return int.from_bytes(h[:4], "little") / 2**32


def make_dro_world(seed: int = 0, num_people: int = 200, num_cities: int = 24,
                   num_countries: int = 6, num_companies: int = 16,
                   distractors_per_person: int = 6, max_fillers: int = 2,
                   heldout_fraction: float = 0.2) -> DroWorld:
  """Generates the world deterministically (see the module docstring)."""
  if not 0 <= distractors_per_person <= len(_DISTRACTORS):
    raise ValueError(f"distractors_per_person must be in [0, {len(_DISTRACTORS)}],"
                     f" got {distractors_per_person}.")
  base = qa_world.make_world(seed=seed, num_people=num_people, num_cities=num_cities,
                             num_countries=num_countries, num_companies=num_companies)
  rng = np.random.RandomState(seed + 7)
  facts = base.facts
  people = list(base.people)
  cities = sorted(facts["city_country"])
  companies = sorted(facts["company_city"])
  pools = {"city": cities, "company": companies, "person": people, "product": _PRODUCTS}

  def filler() -> str:
    n = rng.randint(0, max_fillers + 1)
    return "".join(_FILLERS[i] + " " for i in rng.choice(len(_FILLERS), n, replace=False))

  passages, index = [], {}  # index: (relation, subject) -> passage index

  def add(title: str, text: str, key=None):
    if key is not None:
      index[key] = len(passages)
    passages.append(Passage(f"d{len(passages)}", title, text))

  for p in people:
    texts = [(("born", p), _FACTS["born"].format(s=p, o=facts["born"][p])),
             (("works", p), _FACTS["works"].format(s=p, o=facts["works"][p]))]
    for j in rng.choice(len(_DISTRACTORS), distractors_per_person, replace=False):
      template, kind = _DISTRACTORS[j]
      pool = [x for x in pools[kind] if x != p]
      texts.append((None, template.format(p=p, x=pool[rng.randint(len(pool))])))
    for key, text in (texts[i] for i in rng.permutation(len(texts))):
      add(p, filler() + text, key)  # fillers first: the object stays last
  for c in cities:
    add(c, _FACTS["city_country"].format(s=c, o=facts["city_country"][c]), ("city_country", c))
    add(c, f"{c} has a river and an old market .")
  for k in companies:
    add(k, _FACTS["company_city"].format(s=k, o=facts["company_city"][k]), ("company_city", k))
    add(k, f"the company {k} sells {_PRODUCTS[rng.randint(len(_PRODUCTS))]} .")

  countries = sorted(set(facts["city_country"].values()))
  by_type = {"city": tuple(cities), "company": tuple(companies), "country": tuple(countries)}
  train, held, gold, answer_pool = [], [], {}, {}
  for p in people:
    for qtype, (hops, fmt, path) in QUESTION_TYPES.items():
      subject, ids = p, []
      for rel in path:
        ids.append(index[(rel, subject)])
        subject = facts[rel][subject]
      qid = f"{qtype}:{p}"
      ex = QAExample(id=qid, question=fmt.format(p=p), answers=(subject,), hops=hops,
                     passages=tuple(passages[i] for i in ids))
      gold[qid] = tuple(ids)
      answer_pool[qid] = by_type[OBJECT_TYPES[path[-1]]]
      (held if _hash_fraction(seed, qid) < heldout_fraction else train).append(ex)
  order = np.random.RandomState(seed + 1).permutation(len(train))
  dataset = QADataset(tuple(train[i] for i in order), tuple(held), tuple(passages))
  return DroWorld(dataset, gold, answer_pool)


def candidates(retriever, examples: Sequence[QAExample], gold: dict, num_candidates: int,
               *, insert_gold: bool = True, keep_top: int = 0, seed: int = 0) -> np.ndarray:
  """BM25 top-`num_candidates` passage indices [Q, n] for each question (one
  batched call); with `insert_gold`, missing gold passages are put at random
  positions (`insert_gold_passages`)."""
  ids = retriever.search_ids([e.question for e in examples], num_candidates).copy()
  if ids.shape[1] < num_candidates:
    raise ValueError(f"The corpus has {ids.shape[1]} passages; num_candidates="
                     f"{num_candidates} needs more.")
  if insert_gold:
    ids = insert_gold_passages(ids, examples, gold, keep_top=keep_top, seed=seed)
  return ids


def insert_gold_passages(ids: np.ndarray, examples: Sequence[QAExample], gold: dict, *,
                         keep_top: int = 0, seed: int = 0) -> np.ndarray:
  """DRO's k_positive (§7.1): each gold passage missing from a question's row
  of `ids` [Q, n] replaces the candidate at a uniformly random position after
  the first `keep_top` (0: anywhere), drawn among the positions not holding a
  gold passage, per question from `(seed, question id)`. Returns a copy.

  With keep_top=0 the position carries no information: a selector must read
  the passage to find it (the built-in world's 2-hop bridge passage is never
  in BM25's list).
  """
  ids = np.array(ids, copy=True)
  num_candidates = ids.shape[1]
  for row, ex in zip(ids, examples):
    golds = gold.get(ex.id, ())
    missing = [g for g in golds if g not in row]
    if not missing:
      continue
    rng = np.random.RandomState(int(_hash_fraction(seed, ex.id) * 2**31))
    free = [i for i in range(keep_top, num_candidates) if row[i] not in golds]
    if len(free) < len(missing):
      raise ValueError(f"num_candidates={num_candidates} leaves no room after"
                       f" keep_top={keep_top} for {len(missing)} gold passages.")
    for pos, g in zip(rng.choice(free, len(missing), replace=False), missing):
      row[pos] = g
  return ids


def from_qa_dataset(dataset: QADataset) -> DroWorld:
  """A `DroWorld` over a loaded HotpotQA / KILT data set (`qa_data.load_dataset`):
  each question's gold passages are the corpus passages whose titles its
  supporting facts (KILT: provenance) name; any other question's answer can
  stand in for its answer (`warmup.counterfactual`)."""
  index = {}
  for i, p in enumerate(dataset.corpus):
    index.setdefault(p.title, i)
  examples = dataset.train + dataset.eval
  pool = tuple(sorted({e.answers[0] for e in examples}))
  gold = {e.id: tuple(index[t] for t in e.supporting if t in index) for e in examples}
  return DroWorld(dataset, gold, {e.id: pool for e in examples})


def vocabulary_text(world: DroWorld) -> list[str]:
  """Texts covering every word of the world, prompts and outputs."""
  d = world.dataset
  texts = [p.text for p in d.corpus] + [p.title for p in d.corpus]
  texts += [e.question for e in d.train + d.eval] + [a for e in d.train + d.eval for a in e.answers]
  return texts + [EXTRA_WORDS]
