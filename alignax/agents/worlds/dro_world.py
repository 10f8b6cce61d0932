"""A QA world where passage *selection* matters and reading is required (DRO,
docs/algorithms.md §7).

Every question is its own small world: its subject, its bridge entities and
every fact about them are drawn afresh for it, so no fact can be learned
from other questions -- an answer can only be read from the question's own
passages, and a generator that is not given the right ones cannot know it.

* Names: every entity (person, city, country, company) is a two-word name
  "first second", each word from an inventory of `name_pieces` made-up words
  of its type (`name_pieces`**2 names a type, 48**2 = 2304 by default). The
  word-level tokenizer of the built-in model then holds 8 * name_pieces name
  words, whatever the number of questions; every name word is in many names.
  With `object_names` > 0, cities, companies and countries are instead one
  made-up word each, `object_names` per type (persons keep two words).
  Subjects are distinct across questions; the other entities are drawn per
  question (distinct within it), so two questions share a fact only by
  chance (about 1 in name_pieces**2 per pair of facts).
* Question types (`QUESTION_TYPES`, paraphrased: the question says
  "birthplace" where the passage says "born"): born_city, employer (1 hop:
  "P was born in C ."), born_country, employer_city (2 hops: the hop-1
  passage, then the bridge "C is a city in the country N ."), cycled over the
  questions.
* The question's passages (its `context`): the subject's facts (born and
  works, whatever is asked) and `distractors_per_question` distractors about
  the subject ("P visited C2 .", "P once applied to the company K2 ." ...),
  each with up to `max_fillers` leading filler words (so BM25 scores them
  unalike); and bridge-like passages about the hop-1 object's type: the one
  of the hop-1 object and `bridge_decoys` decoys about other entities of that
  type (those the distractors name first: "C2 is a city in the country N2 .").
  Every passage shares surface words with the gold ones (the subject's name,
  or the bridge template); a bridge names no word of the question, so BM25
  never finds it.

Candidates (`candidates`): BM25's top `num_candidates` for the question; with
`insert_gold` the question's `context` passages that BM25 missed (gold
passages and decoys, DRO's k_positive) replace others at random positions;
with `shuffle` each question's list is put in a uniformly random order, so a
gold passage is equally likely at every position. The held-out split is a
hashed fraction of the questions.

Everything depends only on `(seed, sizes)`.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

import numpy as np

from alignax.agents.worlds import qa_world
from alignax.agents.worlds.qa_world import Passage, QADataset, QAExample

# name -> (hops, paraphrased question, relation path).
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
# The type of each relation's object: a question's answer type is its path's last.
OBJECT_TYPES = {"born": "city", "works": "company", "city_country": "country",
                "company_city": "city"}
# The bridge relation of each hop-1 object type.
_BRIDGES = {"city": "city_country", "company": "company_city"}
# Distractors about the subject: (template, type of the other entity).
_DISTRACTORS = (
    ("{p} visited {x} .", "city"), ("{p} studied in {x} .", "city"),
    ("{p} moved to {x} .", "city"), ("{p} once applied to the company {x} .", "company"),
    ("{p} bought a lamp from the company {x} .", "company"), ("{p} met {x} .", "person"),
    ("{p} wrote a letter to {x} .", "person"), ("{p} likes {x} .", "product"),
)
_FILLERS = ("last year", "in spring", "with a friend", "after the war", "at dawn")
_PRODUCTS = ("lamps", "boats", "tea", "clocks", "maps", "salt", "glass", "rope")
ENTITY_TYPES = ("person", "city", "country", "company")
# Words of the prompts and outputs that are not in any passage or question.
EXTRA_WORDS = "rank answer question : > . ?"


@dataclasses.dataclass(frozen=True)
class DroWorld:
  dataset: QADataset
  gold: dict  # question id -> tuple of gold passage indices into dataset.corpus (hop order)
  answer_pool: dict  # question id -> every entity of its answer's type (sorted)
  # question id -> the passages its candidates must hold (`insert_gold`): its
  # gold passages (hop order), then its decoys. Loaded data sets: the gold ones.
  context: dict = dataclasses.field(default_factory=dict)
  # type -> (first words, second words) of the generated names (built-in world;
  # one-word names: (words, ())).
  name_pieces: dict = dataclasses.field(default_factory=dict)


def _hash_fraction(seed: int, key: str) -> float:
  h = hashlib.sha256(f"dro:{seed}:{key}".encode()).digest()
  return int.from_bytes(h[:4], "little") / 2**32


def make_dro_world(seed: int = 0, num_questions: int = 1600, name_pieces: int = 48,
                   distractors_per_question: int = 4, bridge_decoys: int = 3,
                   max_fillers: int = 1, heldout_fraction: float = 0.2,
                   object_names: int = 0) -> DroWorld:
  """Generates the world deterministically (see the module docstring).

  object_names: 0 = every entity a two-word name from `name_pieces` words per
  slot; > 0 = cities, companies and countries (the answers and bridges) are
  one made-up word each, `object_names` of each type (persons keep two-word
  names, so subjects stay distinct across questions)."""
  if not 0 <= distractors_per_question <= len(_DISTRACTORS):
    raise ValueError(f"distractors_per_question must be in [0, {len(_DISTRACTORS)}],"
                     f" got {distractors_per_question}.")
  if name_pieces**2 < num_questions:
    raise ValueError(f"name_pieces={name_pieces} gives {name_pieces**2} person names for"
                     f" num_questions={num_questions} distinct subjects; raise name_pieces.")
  if name_pieces**2 < 2 * (bridge_decoys + distractors_per_question + 4):
    raise ValueError(f"name_pieces={name_pieces} is too small for one question's entities.")
  if object_names < 0 or 0 < object_names < 2 * (bridge_decoys + distractors_per_question + 4):
    raise ValueError(f"object_names={object_names} is too small for one question's"
                     " entities (0 = two-word names from name_pieces).")
  rng = np.random.RandomState(seed)
  taken: set[str] = set()
  one_word = {t for t in ENTITY_TYPES if t != "person"} if object_names else set()
  pieces = {t: (tuple(qa_world._names(rng, name_pieces, taken)),  # pylint: disable=protected-access
                tuple(qa_world._names(rng, name_pieces, taken))) for t in ENTITY_TYPES
            if t not in one_word}
  for t in sorted(one_word):
    pieces[t] = (tuple(qa_world._names(rng, object_names, taken)), ())  # pylint: disable=protected-access
  n2 = name_pieces * name_pieces
  size = {t: (object_names if t in one_word else n2) for t in ENTITY_TYPES}
  name = lambda t, i: (pieces[t][0][i] if t in one_word else
                       f"{pieces[t][0][i // name_pieces]} {pieces[t][1][i % name_pieces]}")
  pools = {t: tuple(sorted(name(t, i) for i in range(size[t]))) for t in ENTITY_TYPES}
  subjects = [name("person", i) for i in rng.choice(n2, num_questions, replace=False)]
  subject_set = set(subjects)

  passages: list[Passage] = []
  gold, context, answer_pool = {}, {}, {}
  train, held = [], []
  qtypes = list(QUESTION_TYPES)
  for n, p in enumerate(subjects):
    qtype = qtypes[n % len(qtypes)]
    hops, fmt, path = QUESTION_TYPES[qtype]
    used = {p}

    def fresh(t):  # an entity of type t not yet in this question
      while True:
        x = name(t, rng.randint(size[t]))
        if x not in used and not (t == "person" and x in subject_set):
          used.add(x)
          return x

    facts = {"born": fresh("city"), "works": fresh("company")}
    # (relation of a fact the questions ask, or None; title; text)
    texts = [("born", p, _FACTS["born"].format(s=p, o=facts["born"])),
             ("works", p, _FACTS["works"].format(s=p, o=facts["works"]))]
    mentioned = {"city": [], "company": []}  # entities of the distractors, in order
    kind = OBJECT_TYPES[path[0]]  # the hop-1 object's type
    # At least one distractor names an entity of that type ("P visited C2 ."),
    # whose decoy bridge below then makes a whole wrong chain.
    same = [j for j, (_, k) in enumerate(_DISTRACTORS) if k == kind]
    chosen = [same[rng.randint(len(same))]] if distractors_per_question else []
    chosen += rng.choice([j for j in range(len(_DISTRACTORS)) if j not in chosen],
                         distractors_per_question - len(chosen), replace=False).tolist()
    for j in chosen:
      template, other = _DISTRACTORS[j]
      x = _PRODUCTS[rng.randint(len(_PRODUCTS))] if other == "product" else fresh(other)
      mentioned.get(other, []).append(x)
      texts.append((None, p, template.format(p=p, x=x)))
    filler = lambda: "".join(_FILLERS[i] + " " for i in rng.choice(
        len(_FILLERS), rng.randint(0, max_fillers + 1), replace=False))
    texts = [(key, title, filler() + text)  # fillers first: the object stays last
             for key, title, text in texts]
    # Bridges about the hop-1 object's type: its own, then decoys.
    relation = _BRIDGES[kind]
    subjects_b = [facts[path[0]]] + mentioned[kind][:bridge_decoys]
    while len(subjects_b) < 1 + bridge_decoys:
      subjects_b.append(fresh(kind))
    for j, s in enumerate(subjects_b):
      o = fresh(OBJECT_TYPES[relation])
      if j == 0:
        facts[relation] = o
      texts.append((relation if j == 0 else None, s, _FACTS[relation].format(s=s, o=o)))

    start, index = len(passages), {}
    for i in rng.permutation(len(texts)):
      key, title, text = texts[i]
      if key is not None:
        index[key] = len(passages)
      passages.append(Passage(f"d{len(passages)}", title, text))
    qid = f"{qtype}:{p}"
    ids = tuple(index[rel] for rel in path)
    answer = facts[path[-1]]
    ex = QAExample(id=qid, question=fmt.format(p=p), answers=(answer,), hops=hops,
                   passages=tuple(passages[i] for i in ids))
    gold[qid] = ids
    context[qid] = ids + tuple(i for i in range(start, len(passages)) if i not in ids)
    answer_pool[qid] = pools[OBJECT_TYPES[path[-1]]]
    (held if _hash_fraction(seed, qid) < heldout_fraction else train).append(ex)
  order = np.random.RandomState(seed + 1).permutation(len(train))
  dataset = QADataset(tuple(train[i] for i in order), tuple(held), tuple(passages))
  return DroWorld(dataset, gold, answer_pool, context, pieces)


def candidates(retriever, examples: Sequence[QAExample], gold: dict, num_candidates: int,
               *, insert_gold: bool = True, keep_top: int = 0, shuffle: bool = False,
               seed: int = 0) -> np.ndarray:
  """BM25 top-`num_candidates` passage indices [Q, n] for each question (one
  batched call); with `insert_gold`, the missing passages of `gold` (question
  id -> indices: the gold passages, or a world's `context`) are put at random
  positions (`insert_gold_passages`); with `shuffle`, each row is then put in
  a uniformly random order (`shuffle_candidates`)."""
  ids = retriever.search_ids([e.question for e in examples], num_candidates).copy()
  if ids.shape[1] < num_candidates:
    raise ValueError(f"The corpus has {ids.shape[1]} passages; num_candidates="
                     f"{num_candidates} needs more.")
  if insert_gold:
    ids = insert_gold_passages(ids, examples, gold, keep_top=keep_top, seed=seed)
  if shuffle:
    ids = shuffle_candidates(ids, examples, seed=seed)
  return ids


def insert_gold_passages(ids: np.ndarray, examples: Sequence[QAExample], gold: dict, *,
                         keep_top: int = 0, seed: int = 0) -> np.ndarray:
  """DRO's k_positive (§7.1): each passage of `gold[question id]` missing from
  a question's row of `ids` [Q, n] replaces the candidate at a uniformly
  random position after the first `keep_top` (0: anywhere), drawn among the
  positions not holding one of its passages, per question from `(seed,
  question id)`. Returns a copy.

  `gold` may be a world's `context` (its gold passages and decoys): the
  decoys then enter the candidates the same way as the gold passages, so
  being inserted says nothing about a passage.
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


def shuffle_candidates(ids: np.ndarray, examples: Sequence[QAExample], *,
                       seed: int = 0) -> np.ndarray:
  """Each question's row of `ids` [Q, n] in a uniformly random order, drawn
  from `(seed, question id)`: a passage's position then says nothing about
  it (neither BM25's rank nor having been inserted). Returns a copy."""
  out = np.array(ids, copy=True)
  for row, ex in zip(out, examples):
    rng = np.random.RandomState(int(_hash_fraction(seed, "shuffle:" + ex.id) * 2**31))
    row[:] = row[rng.permutation(len(row))]
  return out


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
  return DroWorld(dataset, gold, {e.id: pool for e in examples}, dict(gold))


def vocabulary_text(world: DroWorld) -> list[str]:
  """Texts covering every word of the world, prompts and outputs (and every
  name word, which a counterfactual answer may use)."""
  d = world.dataset
  texts = [p.text for p in d.corpus] + [p.title for p in d.corpus]
  texts += [e.question for e in d.train + d.eval] + [a for e in d.train + d.eval for a in e.answers]
  texts += [" ".join(w) for first, second in world.name_pieces.values() for w in (first, second)
            if w]
  return texts + [EXTRA_WORDS]
