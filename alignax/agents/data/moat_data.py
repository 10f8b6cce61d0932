"""MOAT tasks and tools read from files (docs/data_formats.md, "MOAT tasks from files").

Three files, one JSON object a line:

  tasks (`tasks_path`)    {"id": "t1",                        (optional; default: the line)
                           "task": "what is the country of zor 's birthplace ?",
                           "subject": "zor",                  (optional: what #0 stands for)
                           "subgoals": ["find birthplace of #0", "find country of #1",
                                        "answer #2"],
                           "actions": [
                             {"tool": "lookup", "args": ["#0", "birthplace"], "result": "vatox"},
                             {"tool": "search", "args": ["#1 city country"], "result": "ulm"},
                             {"tool": "answer", "args": ["#2"], "result": "ulm"}],
                           "split": "train"}                  (optional: train | eval | held_out)
  corpus (`corpus_path`)  {"id": "p0", "title": "vatox", "text": "vatox is a city in ..."}
                          (`retrieval.read_corpus_jsonl`'s format; Search ranks it by BM25)
  lookup (`lookup_path`)  {"subject": "zor", "relation": "birthplace", "object": "vatox"}

The tools are `moat_world.TOOLS`: `Search[q]` (the top BM25 passage's
`SEARCH_RESULTS[search_result]`: its last word or its title), `Lookup[e, r]`
(the lookup table's object of (e, r), else none) and `Answer[x]`; `#k` in an
argument is the result of action k, `#0` the task's subject. There is one
subgoal per action, and the last action (only that one) is the Answer; its
result is the task's answer. Every gold action is run through the tools when
the file is read, and a result that differs from the file's `result` is an
error, so the critic and the success metric see the world the file describes.

Arguments, results, subjects and lookup keys are compared as
`moat_world.normalize` writes them (lower case, single spaces); the task and
subgoal texts are kept as written (they are the agents' input and targets).

Tasks without a `split` are assigned by a stable hash of their id:
`heldout_fraction` of them to held-out evaluation, `eval_fraction` to held-in
evaluation, the rest to training. Training tasks are ordered by a hash of
(seed, id), so the warm-up's gold tasks and each iteration's slice mix the
file's task types. Any malformed row raises `DataFormatError` naming the
file, the line and the field.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Sequence

from alignax.agents.worlds import moat_world as mw
from alignax.agents.worlds import retrieval
from alignax.agents.worlds.retrieval import DataFormatError

SPLITS = ("train", "eval", "held_out")
TASK_FIELDS = ("id", "task", "subject", "subgoals", "actions", "split")
ACTION_FIELDS = ("tool", "args", "result")
_REF = re.compile(r"#\s*(\d+)")


def _string(row: dict, field: str, where: str, *, required=True, name=None) -> str:
  name = name or field
  if field not in row or row[field] is None:
    if required:
      raise DataFormatError(f"{where}: missing field {name!r}.")
    return ""
  value = row[field]
  if not isinstance(value, str) or not value.strip():
    raise DataFormatError(f"{where}: field {name!r} must be a non-empty string, got"
                          f" {json.dumps(value)[:60]}.")
  return value


def _list(row: dict, field: str, where: str) -> list:
  value = row.get(field)
  if value is None:
    raise DataFormatError(f"{where}: missing field {field!r}.")
  if not isinstance(value, list) or not value:
    raise DataFormatError(f"{where}: field {field!r} must be a non-empty list, got"
                          f" {json.dumps(value)[:60]}.")
  return value


def read_lookup_table(path: str) -> dict[str, dict[str, str]]:
  """{relation: {subject: object}} of a lookup JSONL file (keys and objects
  normalized). Raises `DataFormatError` on a bad row or a (subject, relation)
  given two different objects."""
  facts: dict[str, dict[str, str]] = {}
  first: dict[tuple[str, str], int] = {}
  for line, row in retrieval.jsonl_rows(path):
    where = f"{path}, line {line}"
    subject, relation, obj = (mw.normalize(_string(row, f, where))
                              for f in ("subject", "relation", "object"))
    for field, value in (("subject", subject), ("relation", relation)):
      if set(value) & set("[],"):
        raise DataFormatError(f"{where}: field {field!r}={value!r} may not hold '[', ']'"
                              " or ',' (they delimit an action's arguments).")
    old = facts.setdefault(relation, {}).get(subject)
    if old is not None and old != obj:
      raise DataFormatError(f"{where}: ({subject!r}, {relation!r}) -> {obj!r}, but line"
                            f" {first[subject, relation]} gives {old!r}.")
    facts[relation][subject] = obj
    first.setdefault((subject, relation), line)
  return facts


def _action(raw, i: int, num: int, where: str) -> mw.Action:
  """The file's action `i` of `num` as an `Action` (arguments normalized)."""
  name = f"actions[{i}]"
  if not isinstance(raw, dict):
    raise DataFormatError(f"{where}: {name} must be an object with fields"
                          f" {list(ACTION_FIELDS)}, got {json.dumps(raw)[:60]}.")
  unknown = sorted(set(raw) - set(ACTION_FIELDS))
  if unknown:
    raise DataFormatError(f"{where}: {name} has unknown field(s) {unknown}; an action has"
                          f" {list(ACTION_FIELDS)}.")
  kind = _string(raw, "tool", where, name=f"{name}.tool").strip().lower()
  if kind not in mw.TOOLS:
    raise DataFormatError(f"{where}: {name}.tool={raw['tool']!r} is not a tool; the tools"
                          f" are {sorted(mw.TOOLS)}.")
  tool = mw.TOOLS[kind]
  if tool.final != (i == num - 1):
    raise DataFormatError(f"{where}: {name} is {kind}; the last action, and only the last,"
                          f" must be one that ends the episode"
                          f" ({[n for n in mw.TOOLS if mw.TOOLS[n].final]}).")
  args = raw.get("args")
  if (not isinstance(args, list) or len(args) != tool.arity
      or not all(isinstance(a, str) and a.strip() for a in args)):
    raise DataFormatError(f"{where}: {name}.args must be a list of {tool.arity} non-empty"
                          f" string(s) for {kind}, got {json.dumps(args)[:60]}.")
  args = [mw.normalize(a) for a in args]
  for a in args:
    if set(a) & set("[]") or (tool.arity > 1 and "," in a):
      raise DataFormatError(f"{where}: {name}.args holds {a!r}; arguments may not hold"
                            " '[' or ']' (nor ',' when a tool takes several).")
    for ref in _REF.findall(a):
      if int(ref) > i:
        raise DataFormatError(f"{where}: {name}.args refers to #{ref}, the result of an"
                              f" action that has not run yet (#k is action k's result,"
                              f" k <= {i}; #0 is the subject).")
  return mw.Action(kind, tuple(args))


def parse_task(row: dict, where: str, world: mw.MoatWorld, search_fn) -> mw.MoatTask:
  """One tasks-file row as a `MoatTask`, its gold actions run through the
  world's tools and checked against their expected results."""
  unknown = sorted(set(row) - set(TASK_FIELDS))
  if unknown:
    raise DataFormatError(f"{where}: unknown field(s) {unknown}; a task has"
                          f" {list(TASK_FIELDS)}.")
  text = _string(row, "task", where)
  subject = mw.normalize(_string(row, "subject", where, required=False))
  subgoals = _list(row, "subgoals", where)
  for i, s in enumerate(subgoals):
    if not isinstance(s, str) or not s.strip():
      raise DataFormatError(f"{where}: subgoals[{i}] must be a non-empty string, got"
                            f" {json.dumps(s)[:60]}.")
  raw_actions = _list(row, "actions", where)
  if len(subgoals) != len(raw_actions):
    raise DataFormatError(f"{where}: {len(subgoals)} subgoals but {len(raw_actions)}"
                          " actions; give one subgoal per action (the Answer's included).")
  actions = [_action(a, i, len(raw_actions), where) for i, a in enumerate(raw_actions)]
  expected = [mw.normalize(_string(a, "result", where, name=f"actions[{i}].result"))
              for i, a in enumerate(raw_actions)]
  got = mw.execute(world, actions, search_fn, subject).values
  for i, (a, want, value) in enumerate(zip(actions, expected, got)):
    if value != want:
      raise DataFormatError(
          f"{where}: actions[{i}].result={want!r}, but {a.render()} gives"
          f" {'none' if value is None else repr(value)} with these tools (lookup table,"
          " BM25 corpus); fix the result or the tool files.")
  # chain: each hop's relation (lookups) or tool name, as a description only:
  # text, gold actions and subgoals are the file's, not derived from it.
  return mw.MoatTask(id="", subject=subject,
                     chain=tuple(a.args[-1] if a.kind == "lookup" else a.kind
                                 for a in actions[:-1]),
                     answer=expected[-1], path=tuple(expected[:-1]), text=text,
                     actions=tuple(actions), subgoals=tuple(s.strip() for s in subgoals))


def read_tasks(path: str, world: mw.MoatWorld, search_fn, *, seed: int = 0,
               eval_fraction: float = 0.2, heldout_fraction: float = 0.2
               ) -> tuple[list, list, list]:
  """(train, held-in eval, held-out eval) `MoatTask`s of a tasks JSONL file."""
  splits = {s: [] for s in SPLITS}
  lines = {}
  for line, row in retrieval.jsonl_rows(path):
    where = f"{path}, line {line}"
    tid = row.get("id", f"line{line}")
    if not isinstance(tid, (str, int)) or isinstance(tid, bool) or str(tid) == "":
      raise DataFormatError(f"{where}: field 'id' must be a string or an integer, got"
                            f" {json.dumps(tid)[:60]}.")
    tid = str(tid)
    if tid in lines:
      raise DataFormatError(f"{where}: id {tid!r} is also the id of line {lines[tid]};"
                            " ids must be unique.")
    lines[tid] = line
    split = row.get("split")
    if split is None:
      u = mw.hash_fraction("moat_data.split", tid)
      split = ("held_out" if u < heldout_fraction else
               "eval" if u < heldout_fraction + eval_fraction else "train")
    elif split not in SPLITS:
      raise DataFormatError(f"{where}: field 'split'={split!r}; use one of {list(SPLITS)}"
                            " or leave it out (a hash of the id decides).")
    task = parse_task(row, where, world, search_fn)
    splits[split].append(dataclasses.replace(task, id=tid))
  for split, tasks in splits.items():
    if not tasks:
      raise DataFormatError(
          f"{path}: no {split!r} tasks; give rows with \"split\": \"{split}\" (or, for rows"
          " without a split, a larger eval / held-out fraction or more rows).")
  train = sorted(splits["train"], key=lambda t: mw.hash_fraction(seed, "order", t.id))
  return train, splits["eval"], splits["held_out"]


def load_world(*, tasks_path: str, corpus_path: str, lookup_path: str = "",
               search_result: str = "last_word", eval_fraction: float = 0.2,
               heldout_fraction: float = 0.2, seed: int = 0,
               index_dir: str | None = None) -> mw.MoatWorld:
  """A `MoatWorld` whose tools and tasks come from files (module docstring).

  The BM25 index over the corpus is built in memory, or built once and saved
  under `index_dir` (re-used while the corpus is unchanged). Without
  `lookup_path` the lookup table is empty (every Lookup gives none).
  """
  if search_result not in mw.SEARCH_RESULTS:
    raise ValueError(f"search_result={search_result!r}; choose one of"
                     f" {sorted(mw.SEARCH_RESULTS)}.")
  if not os.path.isfile(corpus_path):
    raise FileNotFoundError(f"{corpus_path!r} not found: the corpus JSONL that Search ranks"
                            " ({\"id\", \"title\", \"text\"} a line).")
  corpus = retrieval.read_corpus_jsonl(corpus_path)
  facts = read_lookup_table(lookup_path) if lookup_path else {}
  retriever = (retrieval.BM25Retriever.build_or_load(corpus, index_dir) if index_dir
               else retrieval.BM25Retriever.build(corpus))
  world = mw.MoatWorld(facts, (), tuple(corpus), seed, tuple(sorted(facts)),
                       search_result=search_result)
  tasks = read_tasks(tasks_path, world, mw.make_search_fn(retriever, search_result),
                     seed=seed, eval_fraction=eval_fraction,
                     heldout_fraction=heldout_fraction)
  return dataclasses.replace(world, tasks=tasks)


def _action_row(action: mw.Action, result) -> dict:
  return {"tool": action.kind, "args": list(action.args), "result": result}


def write_files(world: mw.MoatWorld, splits: Sequence[Sequence[mw.MoatTask]], folder: str,
                search_fn=None, prefix: str = "") -> dict[str, str]:
  """Writes `world` (e.g. a built-in one) and its task `splits` (train, eval,
  held-out) as `<prefix>tasks.jsonl`, `<prefix>corpus.jsonl` and
  `<prefix>lookup.jsonl` under `folder`, in the format `load_world` reads
  (results: what `search_fn` and the world's facts give). Returns
  {"tasks_path", "corpus_path", "lookup_path"}."""
  os.makedirs(folder, exist_ok=True)
  paths = {k: os.path.join(folder, f"{prefix}{k.split('_')[0]}.jsonl")
           for k in ("tasks_path", "corpus_path", "lookup_path")}
  with open(paths["tasks_path"], "w") as f:
    for split, tasks in zip(SPLITS, splits):
      for t in tasks:
        actions = mw.gold_actions(t)
        values = mw.execute(world, actions, search_fn, t.subject).values
        subgoals = mw.parse_subgoals(mw.gold_subgoals(t))
        f.write(json.dumps({
            "id": t.id, "task": t.question, "subject": t.subject, "subgoals": subgoals,
            "actions": [_action_row(a, v) for a, v in zip(actions, values)],
            "split": split}) + "\n")
  retrieval.write_corpus_jsonl(world.corpus, paths["corpus_path"])
  with open(paths["lookup_path"], "w") as f:
    for relation, table in world.facts.items():
      for s, o in table.items():
        f.write(json.dumps({"subject": s, "relation": relation, "object": o}) + "\n")
  return paths
