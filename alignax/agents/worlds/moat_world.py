"""MOAT tasks on the built-in QA world: relation chains, subgoals, actions.

Built on `qa_world`'s public API (`make_world`, `QAWorld.facts`, `corpus()`):
the world's four relations (born, works, city->country, company->city) are
extended with three generated ones (company founder, city mayor, country
capital) so that relation *chains* from a person compose in many ways:

  person --birthplace--> city --country--> country --capital--> city
  person --employer--> company --hq--> city --mayor--> person
                       company --founder--> person

Four more generated relations (mentor, twin city, rival company, country
president) are available (`make_moat_world(relations=...)`); with all eleven
there are 11 / 32 / 92 chains of length 1 / 2 / 3, so the held-out split can
hold many distinct compositions.

A task is a chain `(r1, ..., rn)` applied to an entity, phrased either
possessively (relations in execution order) or nested (reverse order, a
`nested_fraction` of the tasks), so the plan carries the decomposition:
  task     : what is zor 's birthplace 's country ?
  nested   : what is the country of the birthplace of zor ?
  subgoals : 1 . find birthplace of #0 2 . find country of #1 3 . answer #2
  actions  : Lookup [ #0 , birthplace ] Lookup [ #1 , country ] Answer [ #2 ]
`#k` is the result of action k and `#0` the entity the task names (Lumos-style
variables: the tiny word-level agents cannot copy names they never saw in
training (seen in our runs), so the subject is bound, not copied; a
literal name is accepted too). Actions run against the world:
  Lookup[e, r]  the object of relation r for subject e (or "none");
  Search[q]     the last word of the top BM25 passage for q (every passage
                ends with its object, so a good query finds the fact);
  Answer[x]     ends the episode with x (or the value of #k).
Chains start from any entity type; `chain_split` keeps held-in chains (seen in
training) apart from held-out ones: new compositions (chains no training task
has) of lengths the training chains have (2 and 3), each of whose steps
(relation at its position, answer at its length) some training chain has;
optionally some new compositions are pool-only instead (their tasks only the
iterations' pool holds: `MoatWorld.pool_only_tasks`). A task's `group` (its
chain and phrasing) is the unit its plan depends on: evaluation reports the
standard error over groups (`cluster_se`).
The actions are the `TOOLS` registry; `agents.data.moat_data` reads tasks, a corpus
and a lookup table from files into a `MoatWorld` instead.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Callable, Sequence

import numpy as np

from alignax.agents.worlds import qa_world
from alignax.registry import Registry

# relation -> (subject type, object type, passage template).
RELATIONS = {
    "birthplace": ("person", "city", "{s} was born in {o} ."),
    "employer": ("person", "company", "{s} works for the company {o} ."),
    "country": ("city", "country", "{s} is a city in the country {o} ."),
    "hq": ("company", "city", "{s} is a company based in {o} ."),
    "founder": ("company", "person", "the company {s} was founded by {o} ."),
    "mayor": ("city", "person", "the mayor of {s} is {o} ."),
    "capital": ("country", "city", "the capital of {s} is {o} ."),
    # Generated too, so that every entity type has 2-3 out-relations and
    # there are many chains (many distinct held-out compositions).
    "mentor": ("person", "person", "{s} was mentored by {o} ."),
    "twin": ("city", "city", "{s} is twinned with {o} ."),
    "rival": ("company", "company", "the company {s} competes with {o} ."),
    "president": ("country", "person", "the president of {s} is {o} ."),
}
BASE_RELATIONS = ("birthplace", "employer", "country", "hq", "founder", "mayor", "capital")
_WORLD_RELATION = {"birthplace": "born", "employer": "works", "country": "city_country",
                   "hq": "company_city"}



def all_chains(max_len: int = 4, relations: Sequence[str] = BASE_RELATIONS
               ) -> list[tuple[str, ...]]:
  """Every type-valid chain of `relations`, length 1..max_len, from any entity type."""
  out, frontier = [], [(r,) for r in relations]
  for _ in range(max_len):
    out += frontier
    frontier = [c + (r,) for c in frontier for r in relations
                if RELATIONS[r][0] == RELATIONS[c[-1]][1]]
  return out


def cluster_se(values: Sequence[float], groups: Sequence) -> float:
  """The standard error of `mean(values)` with tasks correlated within their
  group (clustered by `groups`; the CR1 "sandwich" estimator of a mean):
  sqrt(G / (G - 1) * sum_g (sum_{i in g} (v_i - mean))^2) / n over G groups
  and n values. With one value per group it is the ordinary standard error
  (ddof=1); with one group, nan."""
  v = np.asarray(values, dtype=np.float64)
  if v.size == 0:
    return float("nan")
  ids = {g: i for i, g in enumerate(dict.fromkeys(groups))}
  if len(ids) < 2:
    return float("nan")
  sums = np.zeros(len(ids))
  np.add.at(sums, [ids[g] for g in groups], v - v.mean())
  return float(np.sqrt(len(ids) / (len(ids) - 1) * np.sum(sums ** 2)) / v.size)


def hash_fraction(*key) -> float:
  """A stable number in [0, 1) of `key` (the same in every run and process)."""
  h = hashlib.sha256(":".join(map(str, key)).encode()).digest()
  return int.from_bytes(h[:4], "little") / 2**32


def chain_steps(chain: Sequence[str]) -> set[tuple[int, str]]:
  """The steps of `chain`'s gold plan: (position, relation) for each hop
  (the subgoal "find r of #i" and action "Lookup [ #i , r ]") and
  (length, "answer") for the final "answer #n"."""
  return {(i, r) for i, r in enumerate(chain)} | {(len(chain), "answer")}


def chain_split(seed: int = 0, heldout_fraction: float = 0.4,
                heldout_lengths: Sequence[int] = (2, 3), max_len: int = 3,
                relations: Sequence[str] = BASE_RELATIONS,
                pool_only_fraction: float = 0.0):
  """(held-in chains, held-out chains, pool-only chains): every type-valid
  chain of length 1..`max_len`, split so that the new compositions measure
  generalisation, not unseen lengths.

  At each length in `heldout_lengths`, about `heldout_fraction` of the chains
  (taken in a seeded hash order) become new compositions, each only if every
  step of it (`chain_steps`: each relation at its position, and the final
  answer at its length) stays in some held-in chain; so every new
  composition's gold subgoals and actions are seen in training, its length
  is a training length, and no held-in chain equals it. Chains of length 1
  are always held-in. Of the new compositions a hashed `pool_only_fraction`
  are pool-only (training tasks outside any warm-up gold set, never
  evaluated) and the rest held-out."""
  if max_len < 2 or not set(heldout_lengths) <= set(range(2, max_len + 1)):
    raise ValueError(f"heldout_lengths={tuple(heldout_lengths)} must lie in 2..max_len"
                     f" (max_len={max_len}): held-out chains are new compositions of"
                     " lengths the training chains also have.")
  chains = all_chains(max_len, relations)
  held_in = set(chains)
  cover: dict = {}  # step -> number of held-in chains with it
  for c in chains:
    for s in chain_steps(c):
      cover[s] = cover.get(s, 0) + 1
  new = []
  for length in sorted(set(heldout_lengths)):
    pool = sorted((c for c in chains if len(c) == length),
                  key=lambda c: hash_fraction(seed, "heldout", c))
    want, taken = int(round(heldout_fraction * len(pool))), 0
    for c in pool:
      if taken >= want:
        break
      if all(cover[s] > 1 for s in chain_steps(c)):  # every step stays in training
        held_in.discard(c)
        for s in chain_steps(c):
          cover[s] -= 1
        new.append(c)
        taken += 1
  pool_only = [c for c in new if hash_fraction(seed, "unlabeled", c) < pool_only_fraction]
  # In a seeded hash order, so that a prefix of the held-out tasks (which
  # `MoatWorld.splits` interleaves chain by chain) mixes the lengths.
  held_out = sorted(set(new) - set(pool_only),
                    key=lambda c: hash_fraction(seed, "order", c))
  return [c for c in chains if c in held_in], held_out, pool_only

_REF_RE = re.compile(r"#\s*(\d+)")


@dataclasses.dataclass(frozen=True)
class MoatTask:
  id: str
  subject: str
  chain: tuple[str, ...]
  answer: str
  path: tuple[str, ...]  # the entity after each hop (path[-1] == answer)
  nested: bool = False  # phrasing: "the r2 of the r1 of P" (True) or "P 's r1 's r2"
  # Tasks read from a file (`agents.data.moat_data`) carry their own text, gold
  # actions and gold subgoals; the built-in ones derive them from `chain`.
  text: str = ""
  actions: tuple = ()  # gold `Action`s, the last one an Answer
  subgoals: tuple[str, ...] = ()  # one per gold action, numbering left out

  @property
  def group(self) -> str:
    """The (chain, phrasing) unit: every task of a group has the same gold
    plan and the same words but the subject, so the agents' success is
    correlated within a group (the unit of `cluster_se`)."""
    return ".".join(self.chain) + ("/nested" if self.nested else "/possessive")

  @property
  def question(self) -> str:
    if self.text:
      return self.text
    if self.nested:  # the relations in the reverse of their execution order
      return "what is " + " ".join(f"the {r} of" for r in reversed(self.chain)) + \
          f" {self.subject} ?"
    return f"what is {self.subject} " + " ".join(f"'s {r}" for r in self.chain) + " ?"


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
  relations: tuple[str, ...] = BASE_RELATIONS
  nested_fraction: float = 0.0  # share of tasks phrased "the r2 of the r1 of P"
  # (train, held-in eval, held-out eval) tasks read from a file
  # (`agents.data.moat_data`); None: generated from relation chains.
  tasks: tuple | None = None
  search_result: str = "last_word"  # what Search[q] returns (`SEARCH_RESULTS`)

  def lookup(self, entity: str, relation: str) -> str | None:
    return self.facts.get(relation, {}).get(entity)

  def task(self, person: str, chain: Sequence[str], nested: bool | None = None) -> MoatTask:
    """The task `chain` applied to `person`; `nested` (the phrasing) defaults
    to a hash of the task against `nested_fraction`."""
    path, e = [], person
    for r in chain:
      e = self.facts[r][e]
      path.append(e)
    tid = f"{'.'.join(chain)}:{person}"
    if nested is None:
      nested = hash_fraction(self.seed, "nested", tid) < self.nested_fraction
    return MoatTask(tid, person, tuple(chain), e, tuple(path), nested)

  def subjects(self, entity_type: str) -> list[str]:
    rel = next(r for r in self.relations if RELATIONS[r][0] == entity_type)
    return sorted(self.facts[rel])

  def splits(self, eval_fraction: float = 0.2, heldout_fraction: float = 0.4,
             heldout_lengths: Sequence[int] = (2, 3), pool_only_fraction: float = 0.0,
             max_len: int = 3):
    """(train held-in, eval held-in, eval held-out) task lists.

    A world read from files returns its files' split (the arguments are
    unused). Otherwise held-in tasks (held-in chains) are split into train /
    eval by a hash of (subject, chain); held-out tasks use the held-out chains
    only (`chain_split`; its pool-only chains are `pool_only_tasks`'). Each
    list interleaves the chains round-robin (subjects shuffled), so any
    prefix covers every chain about equally.
    """
    if self.tasks is not None:
      return tuple(list(x) for x in self.tasks)
    chains_in, chains_out, _ = chain_split(self.seed, heldout_fraction, heldout_lengths,
                                           max_len, self.relations, pool_only_fraction)
    rng = np.random.RandomState(self.seed + 7)
    train, held_in, held_out = [], [], []
    for chains, lists in ((chains_in, (train, held_in)), (chains_out, (held_out,))):
      self._round_robin(chains, lists, rng, eval_fraction)
    return train, held_in, held_out

  def pool_only_tasks(self, heldout_fraction: float = 0.4,
                      pool_only_fraction: float = 0.0,
                      heldout_lengths: Sequence[int] = (2, 3),
                      max_len: int = 3) -> list[MoatTask]:
    """The tasks of `chain_split`'s pool-only chains (new compositions, none
    held-out), round-robin over the chains; [] for a world
    read from files. No warm-up gold set holds them: only the iterations'
    pool does (MOAT's stage 1 scores plans by their gold actions, as for
    every pool task; `separate_gold/` trains on their gold subgoals too)."""
    if self.tasks is not None:
      return []
    chains = chain_split(self.seed, heldout_fraction, heldout_lengths, max_len,
                         self.relations, pool_only_fraction)[2]
    out = []
    self._round_robin(chains, (out,), np.random.RandomState(self.seed + 11), 0.0)
    return out

  def _round_robin(self, chains, lists, rng, eval_fraction):
    """Appends every subject's task of each chain to `lists` (two lists:
    train / eval by a hash against `eval_fraction`; one: all), chains
    interleaved round-robin."""
    groups = []
    for c in chains:
      subjects = self.subjects(RELATIONS[c[0]][0])
      parts = [[], []]
      for i in rng.permutation(len(subjects)):
        t = self.task(subjects[i], c)
        parts[len(lists) == 2 and hash_fraction(self.seed, t.id) < eval_fraction].append(t)
      groups.append(parts)
    for j, out in enumerate(lists):
      seqs = [g[j] if len(lists) == 2 else g[0] + g[1] for g in groups]
      for i in range(max((len(x) for x in seqs), default=0)):
        out += [x[i] for x in seqs if i < len(x)]


def make_moat_world(seed: int = 0, relations: Sequence[str] = BASE_RELATIONS,
                    nested_fraction: float = 0.0, **world_kwargs) -> MoatWorld:
  """The QA world of `qa_world.make_world(seed, **world_kwargs)` plus the
  generated relations among `relations` (founder, mayor, capital, mentor,
  twin, rival, president; deterministic in `seed`). Tasks use `relations`
  only; `nested_fraction` of them are phrased "the r2 of the r1 of P"."""
  unknown = set(relations) - set(RELATIONS)
  if unknown or not set(_WORLD_RELATION) <= set(relations):
    raise ValueError(f"relations must include {sorted(_WORLD_RELATION)} and come from"
                     f" {sorted(RELATIONS)}; got {list(relations)}.")
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
  # Drawn after the base ones so that the base facts do not depend on them.
  rng = np.random.RandomState(seed + 202)
  other = lambda xs, x: xs[(xs.index(x) + 1 + rng.randint(len(xs) - 1)) % len(xs)]
  facts["mentor"] = {p: other(people, p) for p in people}
  facts["twin"] = {c: other(cities, c) for c in cities}
  facts["rival"] = {k: other(companies, k) for k in companies}
  facts["president"] = {n: pick(people) for n in countries}
  facts = {r: facts[r] for r in RELATIONS if r in relations}
  corpus = list(world.corpus())
  for r in facts:
    if r not in _WORLD_RELATION:
      for s, o in facts[r].items():
        corpus.append(qa_world.Passage(f"p{len(corpus)}", s,
                                       RELATIONS[r][2].format(s=s, o=o)))
  # Only people with a birthplace and employer (all of them) head a chain.
  return MoatWorld(facts, tuple(people), tuple(corpus), seed, tuple(relations),
                   nested_fraction)


# --------------------------------------------------------------- formats
def task_text(task: MoatTask) -> str:
  return f"task : {task.question}"


def gold_actions(task: MoatTask) -> list[Action]:
  if task.actions:
    return list(task.actions)
  out = []
  for i, r in enumerate(task.chain):
    out.append(Action("lookup", (f"#{i}", r)))
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


def task_subgoals_text(task: MoatTask, actions: Sequence[Action]) -> str:
  """`subgoals_text(actions)`, but an action equal to the task's gold action
  at its position gets the task's own gold subgoal (file tasks word their
  subgoals freely; built-in tasks' gold subgoals are `subgoal_for`'s)."""
  gold, own = gold_actions(task), task.subgoals
  return " ".join(f"{i + 1} . {own[i]}" if own and i < len(gold) and a == gold[i]
                  else subgoal_for(a, i + 1) for i, a in enumerate(actions))


def gold_subgoals(task: MoatTask) -> str:
  return task_subgoals_text(task, gold_actions(task))


def actions_text(actions: Sequence[Action]) -> str:
  return " ".join(a.render() for a in actions)


def normalize(text: str) -> str:
  """Lower case, `# 1` -> `#1`, single spaces (the word tokenizer's decode
  puts spaces around punctuation)."""
  text = _REF_RE.sub(lambda m: f"#{m.group(1)}", text.lower())
  return " ".join(text.split())


# ------------------------------------------------------------------ tools
@dataclasses.dataclass(frozen=True)
class Tool:
  """An action's meaning: `run(world, args, resolve, search_fn) -> value or
  None`, `resolve` mapping `#k` to the value of action k. `arity`: its number
  of comma-separated arguments (1: the whole bracket is the argument);
  `final`: it ends the episode with its value as the answer."""
  arity: int
  run: Callable
  final: bool = False


def _lookup(world, args, resolve, search_fn):
  del search_fn
  e = resolve(args[0]) if args else None
  return world.lookup(e, args[1]) if (e is not None and len(args) == 2) else None


def _search(world, args, resolve, search_fn):
  del world
  query = _REF_RE.sub(lambda m: str(resolve(m.group(0)) or ""), args[0])
  return search_fn(query) if search_fn is not None else None


def _answer(world, args, resolve, search_fn):
  del world, search_fn
  return resolve(args[0])


# The actions agents may write, by name (`Name [ arg , ... ]`, any case).
TOOLS = Registry("tool")
TOOLS.add("search", Tool(1, _search))
TOOLS.add("lookup", Tool(2, _lookup))
TOOLS.add("answer", Tool(1, _answer, final=True))


def _action_re():
  names = "|".join(map(re.escape, TOOLS))
  return re.compile(rf"({names})\s*\[([^\]]*)\]", re.IGNORECASE)


def parse_actions(text: str) -> list[Action]:
  """Every `Search[..]`, `Lookup[.., ..]`, `Answer[..]` (every `TOOLS` name)
  of `text`, in order, up to and including the first final one (Answer).
  Malformed Lookups are kept with the arguments they have (they execute to
  "none")."""
  out = []
  for m in _action_re().finditer(normalize(text)):
    kind = m.group(1).lower()
    tool = TOOLS[kind]
    args = tuple(a.strip() for a in m.group(2).split(","))
    if tool.arity == 1:
      args = (m.group(2).strip(),)
    out.append(Action(kind, args))
    if tool.final:
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
            search_fn: Callable[[str], str | None] | None = None,
            subject: str | None = None) -> Execution:
  """Runs `actions` in order; `#k` refers to the value of action k, `#0` to
  `subject` (the task's entity)."""
  values: list = []

  def resolve(x: str):
    m = re.fullmatch(r"#(\d+)", x.strip())
    if m:
      k = int(m.group(1))
      if k == 0:
        return subject
      return values[k - 1] if 1 <= k <= len(values) else None
    return x.strip()

  for a in actions:
    tool = TOOLS[a.kind]
    v = tool.run(world, a.args, resolve, search_fn)
    values.append(v)
    if tool.final:
      return Execution(values, v)
  return Execution(values, None)


def _last_word(passage) -> str | None:
  words = [w for w in passage.text.split() if w != "."]
  return words[-1] if words else None


# What Search[q] returns of the top BM25 passage, by name: `last_word` (the
# built-in world's passages end with their object) or `title` (an entity
# page's name, as a Wikipedia-style corpus has). Values are `normalize`d.
SEARCH_RESULTS = Registry("search result")
SEARCH_RESULTS.add("last_word", _last_word)
SEARCH_RESULTS.add("title", lambda passage: passage.title or None)


def make_search_fn(retriever, result: str = "last_word") -> Callable[[str], str | None]:
  """Search[q] -> `SEARCH_RESULTS[result]` of the top passage (default: its
  object, the last word before the final '.')."""
  pick = SEARCH_RESULTS[result]

  def search(query: str):
    if not query.strip():
      return None
    hits = retriever.search([query], k=1)[0]
    value = pick(hits[0]) if hits else None
    return normalize(value) if value else None

  return search


def success(world: MoatWorld, task: MoatTask, actions_str: str, search_fn=None) -> bool:
  return execute(world, parse_actions(actions_str), search_fn,
                 task.subject).answer == task.answer


def vocabulary(world: MoatWorld, tasks: Sequence[MoatTask]) -> list[str]:
  """Texts covering every word of tasks, subgoals, actions and the corpus."""
  texts = [p.text for p in world.corpus]
  texts += ["task : subgoals : actions : plan : search find answer of what is the ?",
            " ".join(world.relations),
            "Search [ ] Lookup [ , ] Answer [ ] # 1 2 3 4 5 6 7 8 9 . 's",
            "Corrected Subgoals : Corrected Actions :", " ".join(RELATIONS), "none"]
  if world.tasks is not None:  # a file's tasks: every word of every split
    tasks = [t for split in world.tasks for t in split]
  for t in tasks:
    texts += [task_text(t), gold_subgoals(t), actions_text(gold_actions(t))]
  return texts
