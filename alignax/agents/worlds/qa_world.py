"""A deterministic, generated multi-hop QA world for search agents (no download).

Entities (people, cities, countries, companies) with single-word made-up names
are linked by relations; every fact is rendered as one passage, beside
distractor passages that mention the same entities (a city a person *visited*,
what a company *sells*). Questions need 1 hop (`where was P born ?`) or 2 hops
(`in which country was P born ?` = born-in then city-in-country). Answers are
made-up words, so a model can only find them in the corpus. The held-out split
holds the questions about a held-out set of people, so the held-out answers are
never seen in training questions (`split="person"`), or a random fifth
of the questions (`split="question"`, the default).

Everything depends only on `(seed, sizes)`: the same config gives the same
world, corpus and splits on every machine.

Trajectory token format (shared with `agents.rollouts.multi_turn`; words are tokens of the
word-level tokenizer):

  prompt : <s> question : where was P born ?
  model  : <QUERY> P born <SEARCH>                      # stop: tool call
  tool   : <DOC> P was born in C . <DOC> ... </SEARCH>  # top-k passages
  model  : <FACT> C <QUERY> C country <SEARCH>          # record, next query
  tool   : <DOC> C is a city in the country N . ... </SEARCH>
  model  : <FACT> N <FINAL> N </s>                      # answer after <FINAL>
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

import numpy as np

# Markers of the trajectory format (special tokens of the tokenizer).
QUERY, SEARCH, END_SEARCH, DOC, FACT, FINAL = (
    "<QUERY>", "<SEARCH>", "</SEARCH>", "<DOC>", "<FACT>", "<FINAL>")
MARKERS = (QUERY, SEARCH, END_SEARCH, DOC, FACT, FINAL)

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "br", "dr", "kr", "st", "tr", "vl")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "eo")
_CODAS = ("", "n", "r", "s", "l", "x", "th")
_PRODUCTS = ("lamps", "boats", "tea", "clocks", "maps", "salt", "glass", "rope")


@dataclasses.dataclass(frozen=True)
class Passage:
  id: str
  title: str
  text: str


@dataclasses.dataclass(frozen=True)
class QAExample:
  """One question. `answers` holds every accepted gold string (first = canonical)."""

  id: str
  question: str
  answers: tuple[str, ...]
  hops: int = 1
  # Oracle search plan: [(query, fact recorded from its results), ...].
  plan: tuple[tuple[str, str], ...] = ()
  passages: tuple[Passage, ...] = ()  # per-question context (HotpotQA); may be empty
  # Titles of the gold passages (HotpotQA supporting facts, KILT provenance).
  supporting: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class QADataset:
  """Splits + corpus, whatever the source (built-in world, HotpotQA, KILT)."""

  train: tuple[QAExample, ...]
  eval: tuple[QAExample, ...]
  corpus: tuple[Passage, ...]


def _names(rng: np.random.RandomState, count: int, taken: set[str]) -> list[str]:
  out = []
  while len(out) < count:
    n = rng.randint(2, 4)
    name = "".join(_ONSETS[rng.randint(len(_ONSETS))] + _VOWELS[rng.randint(len(_VOWELS))]
                   for _ in range(n - 1)) + _CODAS[rng.randint(len(_CODAS))]
    if len(name) >= 4 and name not in taken:
      taken.add(name)
      out.append(name)
  return out


# Question templates: name -> (hops, question format, relation path).
# Each relation maps a subject to an object; a path is followed hop by hop.
QUESTION_TYPES = {
    "born_city": (1, "where was {p} born ?"),
    "employer": (1, "which company does {p} work for ?"),
    "born_country": (2, "in which country was {p} born ?"),
    "employer_city": (2, "in which city is the company of {p} based ?"),
}
# Sub-query words of each relation and the passage template that states it.
_RELATIONS = {
    "born": ("born", "{s} was born in {o} ."),
    "works": ("works", "{s} works for the company {o} ."),
    "city_country": ("country", "{s} is a city in the country {o} ."),
    "company_city": ("based", "{s} is a company based in {o} ."),
}
_PATHS = {"born_city": ("born",), "employer": ("works",),
          "born_country": ("born", "city_country"),
          "employer_city": ("works", "company_city")}


@dataclasses.dataclass(frozen=True)
class QAWorld:
  """The generated world. Build with `make_world(seed, ...)`."""

  seed: int
  people: tuple[str, ...]
  facts: dict  # relation -> {subject: object}
  distractors: tuple[Passage, ...]
  split: str
  heldout_fraction: float

  def is_heldout(self, person: str, qtype: str) -> bool:
    key = person if self.split == "person" else f"{qtype}:{person}"
    h = hashlib.sha256(f"{self.seed}:{key}".encode()).digest()
    return int.from_bytes(h[:4], "little") / 2**32 < self.heldout_fraction

  def corpus(self) -> list[Passage]:
    """Fact passages and distractors, in a fixed order, ids `p0, p1, ...`."""
    texts = []
    for rel, table in self.facts.items():
      template = _RELATIONS[rel][1]
      texts += [(s, template.format(s=s, o=o)) for s, o in table.items()]
    texts += [(d.title, d.text) for d in self.distractors]
    return [Passage(f"p{i}", t, x) for i, (t, x) in enumerate(texts)]

  def question(self, person: str, qtype: str) -> QAExample:
    hops, fmt = QUESTION_TYPES[qtype]
    subject, plan = person, []
    for rel in _PATHS[qtype]:
      obj = self.facts[rel][subject]
      plan.append((f"{subject} {_RELATIONS[rel][0]}", obj))
      subject = obj
    return QAExample(id=f"{qtype}:{person}", question=fmt.format(p=person),
                     answers=(subject,), hops=hops, plan=tuple(plan))

  def dataset(self) -> QADataset:
    train, held = [], []
    for p in self.people:
      for qtype in QUESTION_TYPES:
        (held if self.is_heldout(p, qtype) else train).append(self.question(p, qtype))
    # A fixed shuffle so that a prefix of `train` mixes every question type.
    order = np.random.RandomState(self.seed + 1).permutation(len(train))
    return QADataset(tuple(train[i] for i in order), tuple(held), tuple(self.corpus()))


def _person_names(rng: np.random.RandomState, count: int, taken: set[str],
                  name_words: int) -> list[str]:
  """`count` distinct person names. name_words=1: one made-up word each.
  name_words=2: "first last", from two disjoint inventories of about
  sqrt(3 * count) words each, so every word is shared by several people."""
  if name_words == 1:
    return _names(rng, count, taken)
  if name_words != 2:
    raise ValueError(f"name_words must be 1 or 2, got {name_words}.")
  size = max(4, int(np.ceil(np.sqrt(3 * count))))
  firsts, lasts = _names(rng, size, taken), _names(rng, size, taken)
  pairs = rng.permutation(size * size)[:count]
  return [f"{firsts[i // size]} {lasts[i % size]}" for i in pairs]


def make_world(seed: int = 0, num_people: int = 200, num_cities: int = 24,
               num_countries: int = 6, num_companies: int = 16,
               heldout_fraction: float = 0.2, split: str = "question",
               name_words: int = 1) -> QAWorld:
  """Generates the world deterministically from its arguments.

  `split`: "question" holds out a random `heldout_fraction` of the questions
  (their answers are still only in the corpus: no training question has the
  same answer *for the same question*); "person" holds out every question
  about a random fraction of the people, whose names then never occur in a
  training question (with a word-level tokenizer their embeddings stay
  untrained, which makes copying them into a query much harder).

  `name_words`: 1 (default) gives every person a single made-up word as a
  name; 2 gives "first last" names built from two shared inventories of
  words. With a word-level tokenizer a single-word name that no training
  target contains has an untrained output embedding, so a small model cannot
  copy it into a query; with two-word names every word is in many names, so
  copying a name the model never wrote is possible (the EXSEARCH default).
  """
  if split not in ("question", "person"):
    raise ValueError(f"split must be 'question' or 'person', got {split!r}.")
  rng = np.random.RandomState(seed)
  taken: set[str] = set()
  people = _person_names(rng, num_people, taken, name_words)
  cities = _names(rng, num_cities, taken)
  countries = _names(rng, num_countries, taken)
  companies = _names(rng, num_companies, taken)
  pick = lambda xs: xs[rng.randint(len(xs))]
  facts = {
      "born": {p: pick(cities) for p in people},
      "works": {p: pick(companies) for p in people},
      "city_country": {c: pick(countries) for c in cities},
      "company_city": {k: pick(cities) for k in companies},
  }
  distractors = []
  for p in people:  # same person, same answer type, different relation
    other = pick([c for c in cities if c != facts["born"][p]])
    distractors.append(Passage("", p, f"{p} visited {other} last year ."))
  for k in companies:
    distractors.append(Passage("", k, f"the company {k} sells {pick(_PRODUCTS)} ."))
  for c in cities:
    distractors.append(Passage("", c, f"{c} has a river and an old market ."))

  return QAWorld(seed, tuple(people), facts, tuple(distractors), split, heldout_fraction)


def oracle_segments(example: QAExample, search_fn) -> list[tuple[str, bool]]:
  """An expert trajectory (after the prompt) as (text, model-written) pieces.

  Follows `example.plan`, calling `search_fn(query) -> tool text` for each
  query, so the tool outputs are the retriever's real results. The answer
  piece is last (`<FINAL> answer`; the trainer appends EOS).
  """
  parts = []
  for i, (query, fact) in enumerate(example.plan):
    parts.append((f"{FACT} {example.plan[i - 1][1]} " if i else "")
                 + f"{QUERY} {query} {SEARCH}")
    parts.append(search_fn(query))
  parts.append((f"{FACT} {example.plan[-1][1]} " if example.plan else "")
               + f"{FINAL} {example.answers[0]}")
  return [(text, i % 2 == 0) for i, text in enumerate(parts)]


def oracle_trajectory(example: QAExample, search_fn) -> str:
  """The text of an expert trajectory (after the prompt) for `example`."""
  return " ".join(text for text, _ in oracle_segments(example, search_fn))


def prompt_text(example: QAExample) -> str:
  """The question prompt (the tokenizer adds `<s>`)."""
  return f"question : {example.question}"


def vocabulary_text(dataset: QADataset) -> Sequence[str]:
  """Texts covering every word of the world (to train the tokenizer)."""
  texts = [p.text for p in dataset.corpus] + [p.title for p in dataset.corpus]
  for ex in dataset.train + dataset.eval:
    texts.append(prompt_text(ex))
    texts.extend(ex.answers)
    texts.extend(q for q, _ in ex.plan)
  return texts
