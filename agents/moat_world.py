"""MOAT tasks on the built-in QA world: relation chains, subgoals, actions.

Built on `qa_world`'s public API (`make_world`, `QAWorld.facts`, `corpus()`):
the world's four relations (born, works, city->country, company->city) are
extended with three generated ones (company founder, city mayor, country
capital) so that relation *chains* from a person compose in many ways:

  person --birthplace--> city --country--> country --capital--> city
  person --employer--> company --hq--> city --mayor--> person
                       company --founder--> person

A task is a chain `(r1, ..., rn)` applied to a person:
  task     : what is the country of the birthplace of zor ?
  subgoals : 1 . find birthplace of zor 2 . find country of #1 3 . answer #2
  actions  : Lookup [ zor , birthplace ] Lookup [ #1 , country ] Answer [ #2 ]
`#k` is the result of action k. Actions run against the world:
  Lookup[e, r]  the object of relation r for subject e (or "none");
  Search[q]     the last word of the top BM25 passage for q (every passage
                ends with its object, so a good query finds the fact);
  Answer[x]     ends the episode with x (or the value of #k).
Held-in tasks use the chains of `HELD_IN_CHAINS` (seen in training); held-out
tasks use `HELD_OUT_CHAINS` (new compositions of length 3, and length 4).
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Callable, Sequence

import numpy as np

from alignax.agents import qa_world

# relation -> (subject type, object type, passage template).
RELATIONS = {
    "birthplace": ("person", "city", "{s} was born in {o} ."),
    "employer": ("person", "company", "{s} works for the company {o} ."),
    "country": ("city", "country", "{s} is a city in the country {o} ."),
    "hq": ("company", "city", "{s} is a company based in {o} ."),
    "founder": ("company", "person", "the company {s} was founded by {o} ."),
    "mayor": ("city", "person", "the mayor of {s} is {o} ."),
    "capital": ("country", "city", "the capital of {s} is {o} ."),
}
_WORLD_RELATION = {"birthplace": "born", "employer": "works", "country": "city_country",
                   "hq": "company_city"}

HELD_IN_CHAINS = (
    ("birthplace",), ("employer",),
    ("birthplace", "country"), ("birthplace", "mayor"), ("employer", "hq"),
    ("employer", "founder"),
    ("birthplace", "country", "capital"), ("birthplace", "mayor", "employer"),
    ("employer", "hq", "mayor"), ("employer", "founder", "birthplace"),
)
HELD_OUT_CHAINS = (
    ("employer", "hq", "country"), ("birthplace", "mayor", "birthplace"),
    ("employer", "founder", "employer"),
    ("employer", "hq", "country", "capital"), ("birthplace", "mayor", "employer", "hq"),
)

ACTION_RE = re.compile(r"(search|lookup|answer)\s*\[([^\]]*)\]", re.IGNORECASE)
_REF_RE = re.compile(r"#\s*(\d+)")


@dataclasses.dataclass(frozen=True)
class Task:
  id: str
  subject: str
  chain: tuple[str, ...]
  answer: str
  path: tuple[str, ...]  # the entity after each hop (path[-1] == answer)

  @property
  def question(self) -> str:
    return "what is the " + " of the ".join(reversed(self.chain)) + f" of {self.subject} ?"


@dataclasses.dataclass(frozen=True)
class Action:
  kind: str  # "search" | "lookup" | "answer"
  args: tuple[str, ...]

  def render(self) -> str:
    name = self.kind.capitalize()
    return f"{name} [ {' , '.join(self.args)} ]"


@dataclasses.dataclass
class MoatWorld:
  """The extended fact tables, the task splits and the corpus."""

  facts: dict  # relation -> {subject: object}
  people: tuple[str, ...]
  corpus: tuple  # qa_world.Passage
  seed: int

  def lookup(self, entity: str, relation: str) -> str | None:
    return self.facts.get(relation, {}).get(entity)

  def task(self, person: str, chain: Sequence[str]) -> Task:
    path, e = [], person
    for r in chain:
      e = self.facts[r][e]
      path.append(e)
    return Task(f"{'.'.join(chain)}:{person}", person, tuple(chain), e, tuple(path))

  def splits(self, eval_fraction: float = 0.2):
    """(train held-in, eval held-in, eval held-out) task lists. Held-in tasks
    are split by a hash of (person, chain); held-out tasks use other chains."""
    train, held_in, held_out = [], [], []
    for p in self.people:
      for chain in HELD_IN_CHAINS:
        h = hashlib.sha256(f"{self.seed}:{p}:{chain}".encode()).digest()
        frac = int.from_bytes(h[:4], "little") / 2**32
        (held_in if frac < eval_fraction else train).append(self.task(p, chain))
      for chain in HELD_OUT_CHAINS:
        held_out.append(self.task(p, chain))
    rng = np.random.RandomState(self.seed + 7)
    shuffle = lambda xs: [xs[i] for i in rng.permutation(len(xs))]
    return shuffle(train), shuffle(held_in), shuffle(held_out)


def make_moat_world(seed: int = 0, **world_kwargs) -> MoatWorld:
  """The QA world of `qa_world.make_world(seed, **world_kwargs)` plus founder,
  mayor and capital facts (deterministic in `seed`)."""
  world = qa_world.make_world(seed=seed, **world_kwargs)
  facts = {r: dict(world.facts[w]) for r, w in _WORLD_RELATION.items()}
  cities = sorted(set(facts["birthplace"].values()) | set(facts["hq"].values())
                  | set(facts["country"]))
  companies = sorted(facts["hq"])
  countries = sorted(set(facts["country"].values()))
  people = list(world.people)
  rng = np.random.RandomState(seed + 101)
  pick = lambda xs: xs[rng.randint(len(xs))]
  facts["founder"] = {k: pick(people) for k in companies}
  facts["mayor"] = {c: pick(people) for c in cities}
  facts["capital"] = {n: pick([c for c in cities if facts["country"].get(c) == n] or cities)
                      for n in countries}
  corpus = list(world.corpus())
  for r in ("founder", "mayor", "capital"):
    for s, o in facts[r].items():
      corpus.append(qa_world.Passage(f"p{len(corpus)}", s, RELATIONS[r][2].format(s=s, o=o)))
  # Only people with a birthplace and employer (all of them) head a chain.
  return MoatWorld(facts, tuple(people), tuple(corpus), seed)


# --------------------------------------------------------------- formats
def task_text(task: Task) -> str:
  return f"task : {task.question}"


def gold_actions(task: Task) -> list[Action]:
  out = []
  for i, r in enumerate(task.chain):
    out.append(Action("lookup", (task.subject if i == 0 else f"#{i}", r)))
  out.append(Action("answer", (f"#{len(task.chain)}",)))
  return out


def subgoal_for(action: Action, index: int) -> str:
  """The subgoal sentence that `action` (number `index`, 1-based) grounds."""
  if action.kind == "lookup":
    return f"{index} . find {action.args[1]} of {action.args[0]}"
  if action.kind == "search":
    return f"{index} . search {action.args[0]}"
  return f"{index} . answer {action.args[0]}"


def subgoals_text(actions: Sequence[Action]) -> str:
  return " ".join(subgoal_for(a, i + 1) for i, a in enumerate(actions))


def gold_subgoals(task: Task) -> str:
  return subgoals_text(gold_actions(task))


def actions_text(actions: Sequence[Action]) -> str:
  return " ".join(a.render() for a in actions)


def normalize(text: str) -> str:
  """Lower case, `# 1` -> `#1`, single spaces (the word tokenizer's decode
  puts spaces around punctuation)."""
  text = _REF_RE.sub(lambda m: f"#{m.group(1)}", text.lower())
  return " ".join(text.split())


def parse_actions(text: str) -> list[Action]:
  """Every `Search[..]`, `Lookup[.., ..]`, `Answer[..]` of `text`, in order,
  up to and including the first Answer. Malformed Lookups are kept with the
  arguments they have (they execute to "none")."""
  out = []
  for m in ACTION_RE.finditer(normalize(text)):
    kind = m.group(1).lower()
    args = tuple(a.strip() for a in m.group(2).split(","))
    if kind != "lookup":
      args = (m.group(2).strip(),)
    out.append(Action(kind, args))
    if kind == "answer":
      break
  return out


def parse_subgoals(text: str) -> list[str]:
  """`1 . find x of y 2 . ...` -> ["find x of y", ...] (numbering dropped)."""
  parts = re.split(r"(?:^|\s)\d+\s*\.\s", " " + normalize(text))
  return [p.strip() for p in parts if p.strip()]


@dataclasses.dataclass
class Execution:
  values: list  # value of each action (str or None)
  answer: str | None  # the Answer's value; None without an Answer


def execute(world: MoatWorld, actions: Sequence[Action],
            search_fn: Callable[[str], str | None] | None = None) -> Execution:
  """Runs `actions` in order; `#k` refers to the value of action k."""
  values: list = []

  def resolve(x: str):
    m = re.fullmatch(r"#(\d+)", x.strip())
    if m:
      k = int(m.group(1))
      return values[k - 1] if 1 <= k <= len(values) else None
    return x.strip()

  for a in actions:
    if a.kind == "lookup":
      e = resolve(a.args[0]) if a.args else None
      v = world.lookup(e, a.args[1]) if (e is not None and len(a.args) == 2) else None
    elif a.kind == "search":
      q = _REF_RE.sub(lambda m: str(resolve(m.group(0)) or ""), a.args[0])
      v = search_fn(q) if search_fn is not None else None
    else:
      v = resolve(a.args[0])
      values.append(v)
      return Execution(values, v)
    values.append(v)
  return Execution(values, None)


def make_search_fn(retriever) -> Callable[[str], str | None]:
  """Search[q] -> the object (last word before the final '.') of the top passage."""

  def search(query: str):
    if not query.strip():
      return None
    hits = retriever.search([query], k=1)[0]
    if not hits:
      return None
    words = [w for w in hits[0].text.split() if w != "."]
    return words[-1] if words else None

  return search


def success(world: MoatWorld, task: Task, actions_str: str, search_fn=None) -> bool:
  return execute(world, parse_actions(actions_str), search_fn).answer == task.answer


def vocabulary(world: MoatWorld, tasks: Sequence[Task]) -> list[str]:
  """Texts covering every word of tasks, subgoals, actions and the corpus."""
  texts = [p.text for p in world.corpus]
  texts += ["task : subgoals : actions : plan : search find answer of what is the ?",
            "Search [ ] Lookup [ , ] Answer [ ] # 1 2 3 4 5 6 7 8 9 .",
            "Corrected Subgoals : Corrected Actions :", " ".join(RELATIONS), "none"]
  for t in tasks:
    texts += [task_text(t), gold_subgoals(t), actions_text(gold_actions(t))]
  return texts
