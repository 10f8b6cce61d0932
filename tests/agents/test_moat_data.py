"""MOAT tasks and tools from files (`agents.data.moat_data`): a built-in world
written to files reads back as the same tasks and tools; the critic works on
file tasks; every kind of bad row is an error naming the file, line and field."""
import json
import os

import pytest

from alignax.agents.data import moat_data
from alignax.agents.methods import moat_critic as mc
from alignax.agents.worlds import retrieval
from alignax.agents.worlds import moat_world as mw
from alignax.agents.worlds.retrieval import DataFormatError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "examples")


@pytest.fixture(scope="module")
def builtin():
  world = mw.make_moat_world(0, relations=tuple(mw.RELATIONS), nested_fraction=0.5,
                             num_people=12, num_cities=4, num_countries=2, num_companies=3)
  search = mw.make_search_fn(retrieval.BM25Retriever.build(world.corpus))
  return world, search


@pytest.fixture(scope="module")
def files(builtin, tmp_path_factory):
  world, search = builtin
  splits = [s[:20] for s in world.splits()]
  return splits, moat_data.write_files(world, splits, str(tmp_path_factory.mktemp("moat")),
                                       search)


def test_builtin_world_round_trips_through_files(builtin, files):
  world, _ = builtin
  splits, paths = files
  loaded = moat_data.load_world(**paths, seed=3)
  assert loaded.facts == world.facts and loaded.corpus == world.corpus
  got = loaded.splits()
  assert [len(s) for s in got] == [len(s) for s in splits]
  # Held-in / held-out come from the split field; training tasks are reordered
  # by a hash of (seed, id).
  assert [t.id for t in got[1]] == [t.id for t in splits[1]]
  assert sorted(t.id for t in got[0]) == sorted(t.id for t in splits[0])
  by_id = {t.id: t for s in got for t in s}
  for t in (t for s in splits for t in s):
    f = by_id[t.id]
    assert (f.question, f.subject, f.answer, f.path, f.chain) == (
        t.question, t.subject, t.answer, t.path, t.chain)
    assert mw.gold_actions(f) == mw.gold_actions(t)
    assert mw.gold_subgoals(f) == mw.gold_subgoals(t)
    assert mw.success(loaded, f, mw.actions_text(mw.gold_actions(f)))
  assert mw.vocabulary(loaded, [])[-1] == mw.actions_text(mw.gold_actions(got[2][-1]))


def test_example_files_are_what_the_script_writes(tmp_path):
  import importlib.util
  spec = importlib.util.spec_from_file_location("make_examples",
                                                os.path.join(EXAMPLES, "make_examples.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  module.moat_main(str(tmp_path))
  for name in ("moat_tasks.jsonl", "moat_corpus.jsonl", "moat_lookup.jsonl"):
    with open(tmp_path / name) as a, open(os.path.join(EXAMPLES, name)) as b:
      assert a.read() == b.read(), name
  world = moat_data.load_world(
      **{k: os.path.join(EXAMPLES, f"moat_{k.split('_')[0]}.jsonl")
         for k in ("tasks_path", "corpus_path", "lookup_path")})
  train = world.splits()[0]
  assert [len(s) for s in world.splits()] == [96, 24, 24]
  kinds = {a.kind for t in train for a in mw.gold_actions(t)}
  assert kinds == {"search", "lookup", "answer"}


def test_critic_fixes_file_tasks_with_their_own_subgoals(tmp_path):
  """A Search hop the grounder got wrong is replaced by the gold Search, and the
  rewritten subgoals use the file's wording for gold actions."""
  rows = [
      {"subject": "ada", "relation": "employer", "object": "acme"},
      {"subject": "acme", "relation": "hq", "object": "oslo"}]
  corpus = [retrieval.Passage("p0", "acme", "ada works for the company acme ."),
            retrieval.Passage("p1", "oslo", "acme is based in oslo .")]
  task = {"id": "q", "task": "Where is Ada's employer based?", "subject": "Ada",
          "subgoals": ["Who employs Ada?", "Where is that company based?", "Say it."],
          "actions": [{"tool": "search", "args": ["#0 works for company"], "result": "Acme"},
                      {"tool": "Lookup", "args": ["#1", "hq"], "result": "oslo"},
                      {"tool": "answer", "args": ["#2"], "result": "oslo"}]}
  paths = _write(tmp_path, [task, {**task, "id": "e", "split": "eval"},
                            {**task, "id": "h", "split": "held_out"}], rows, corpus)
  world = moat_data.load_world(**paths, search_result="title")
  t = world.splits()[0][0]
  assert t.subject == "ada" and t.answer == "oslo" and t.path == ("acme", "oslo")
  assert mw.task_text(t) == "task : Where is Ada's employer based?"
  assert mw.gold_subgoals(t) == ("1 . Who employs Ada? 2 . Where is that company based?"
                                 " 3 . Say it.")
  search = mw.make_search_fn(retrieval.BM25Retriever.build(world.corpus), "title")
  critic = mc.BuiltinCritic(world, search)
  wrong = "Lookup [ #0 , hq ] Lookup [ #1 , hq ] Answer [ #2 ]"  # ada has no hq
  fix = critic([mc.CriticInput(t, "1 . find employer of #0 2 . x 3 . y", wrong)])[0]
  assert fix.changed and fix.actions == mw.actions_text(mw.gold_actions(t))
  assert fix.subgoals == mw.gold_subgoals(t)
  assert mw.success(world, t, fix.actions, search)
  right = critic([mc.CriticInput(t, mw.gold_subgoals(t), fix.actions)])[0]
  assert not right.changed


# ------------------------------------------------------------ bad files
def _write(folder, tasks, lookup=(), corpus=None, tasks_text=None):
  corpus = corpus or [retrieval.Passage("p0", "bo", "al was born in bo .")]
  paths = {"tasks_path": str(folder / "tasks.jsonl"), "corpus_path": str(folder / "c.jsonl"),
           "lookup_path": str(folder / "lookup.jsonl")}
  with open(paths["tasks_path"], "w") as f:
    f.write(tasks_text if tasks_text is not None else
            "".join(json.dumps(t) + "\n" for t in tasks))
  retrieval.write_corpus_jsonl(corpus, paths["corpus_path"])
  with open(paths["lookup_path"], "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in lookup)
  return paths


GOOD = {"task": "where was al born ?", "subject": "al",
        "subgoals": ["find birthplace of #0", "answer #1"],
        "actions": [{"tool": "lookup", "args": ["#0", "birthplace"], "result": "bo"},
                    {"tool": "answer", "args": ["#1"], "result": "bo"}]}
LOOKUP = [{"subject": "al", "relation": "birthplace", "object": "bo"}]


def _with(**changes):
  row = json.loads(json.dumps(GOOD))
  for key, value in changes.items():
    if value is None:
      row.pop(key)
    else:
      row[key] = value
  return row


def _act(i, **changes):
  actions = json.loads(json.dumps(GOOD["actions"]))
  actions[i].update(changes)
  return actions


# case -> (bad second line, words the message must hold besides file and line 2)
BAD_TASKS = {
    "not_json": ('{"task": ', ["not valid JSON"]),
    "not_object": ("[1, 2]", ["JSON object"]),
    "missing_task": (_with(task=None), ["'task'"]),
    "empty_task": (_with(task=" "), ["'task'", "non-empty string"]),
    "missing_actions": (_with(actions=None), ["'actions'"]),
    "missing_subgoals": (_with(subgoals=None), ["'subgoals'"]),
    "subgoal_not_string": (_with(subgoals=["a", 3]), ["subgoals[1]"]),
    "unknown_field": (_with(subgoal=["x"]), ["unknown field", "'subgoal'", "'subgoals'"]),
    "unknown_tool": (_with(actions=_act(0, tool="browse")),
                     ["actions[0].tool='browse'", "'answer'", "'lookup'", "'search'"]),
    "action_unknown_field": (_with(actions=_act(0, output="bo")), ["actions[0]", "'output'"]),
    "lookup_arity": (_with(actions=_act(0, args=["#0"])),
                     ["actions[0].args", "2 non-empty", "lookup"]),
    "args_not_list": (_with(actions=_act(1, args="#1")), ["actions[1].args"]),
    "bracket_in_arg": (_with(actions=_act(0, args=["#0", "birth]place"])),
                       ["actions[0].args", "']'"]),
    "missing_result": (_with(actions=[GOOD["actions"][0], {"tool": "answer", "args": ["#1"]}]),
                       ["'actions[1].result'"]),
    "lookup_contradicts": (_with(actions=_act(0, result="rome")),
                           ["actions[0].result='rome'", "Lookup [ #0 , birthplace ]", "'bo'"]),
    "unknown_fact": (_with(actions=_act(0, args=["#0", "employer"], result="acme")),
                     ["actions[0].result='acme'", "gives none"]),
    "search_contradicts": (_with(actions=[{"tool": "search", "args": ["#0 born"],
                                           "result": "rome"}, GOOD["actions"][1]]),
                           ["actions[0].result='rome'", "Search [ #0 born ]", "'bo'"]),
    "answer_contradicts": (_with(actions=_act(1, result="rome")),
                           ["actions[1].result='rome'", "Answer [ #1 ]"]),
    "answer_not_last": (_with(actions=list(reversed(GOOD["actions"]))),
                        ["actions[0] is answer", "last action"]),
    "no_answer": (_with(subgoals=["a"], actions=GOOD["actions"][:1]),
                  ["actions[0] is lookup", "last action"]),
    "future_reference": (_with(actions=_act(0, args=["#1", "birthplace"])),
                         ["actions[0].args", "#1"]),
    "count_mismatch": (_with(subgoals=["one"]), ["1 subgoals but 2 actions"]),
    "bad_split": (_with(split="test"), ["'split'='test'", "'held_out'"]),
    "duplicate_id": (_with(id="a"), ["id 'a'", "line 1"]),
    "bad_id": (_with(id=[1]), ["'id'"]),
}


@pytest.mark.parametrize("case", sorted(BAD_TASKS))
def test_bad_task_rows_name_file_line_and_field(tmp_path, case):
  row, words = BAD_TASKS[case]
  text = json.dumps({**GOOD, "id": "a"}) + "\n" + (row if isinstance(row, str)
                                                   else json.dumps(row)) + "\n"
  paths = _write(tmp_path, None, LOOKUP, tasks_text=text)
  with pytest.raises(DataFormatError) as e:
    moat_data.load_world(**paths)
  message = str(e.value)
  for w in [paths["tasks_path"] + ", line 2", *words]:
    assert w in message, (w, message)


def test_bad_lookup_tables_and_missing_splits(tmp_path):
  def lookup_error(rows):
    paths = _write(tmp_path, [GOOD], rows)
    with pytest.raises(DataFormatError) as e:
      moat_data.load_world(**paths)
    return str(e.value)
  conflict = LOOKUP + [{"subject": "Al", "relation": "birthplace", "object": "rome"}]
  assert all(w in lookup_error(conflict) for w in
             ["lookup.jsonl, line 2", "'rome'", "line 1 gives 'bo'"])
  assert all(w in lookup_error([{"subject": "al", "relation": "birthplace"}]) for w in
             ["lookup.jsonl, line 1", "missing field 'object'"])
  assert "'relation'='a,b'" in lookup_error([{"subject": "al", "relation": "a,b",
                                             "object": "x"}])
  # Rows without a split go by a hash of the id: one row cannot fill three splits.
  paths = _write(tmp_path, [{**GOOD, "id": "a", "split": "train"},
                            {**GOOD, "id": "b", "split": "eval"}], LOOKUP)
  with pytest.raises(DataFormatError, match="no 'held_out' tasks"):
    moat_data.load_world(**paths)
  hashed = [{**GOOD, "id": str(i)} for i in range(200)]
  world = moat_data.load_world(**_write(tmp_path, hashed, LOOKUP), eval_fraction=0.3,
                               heldout_fraction=0.1)
  sizes = [len(s) for s in world.splits()]
  assert sum(sizes) == 200 and 100 < sizes[0] < 140 and 40 < sizes[1] < 80
  assert [len(s) for s in moat_data.load_world(**_write(tmp_path, hashed, LOOKUP),
                                               eval_fraction=0.3,
                                               heldout_fraction=0.1).splits()] == sizes
  with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
    moat_data.load_world(**{**paths, "corpus_path": str(tmp_path / "nowhere.jsonl")})
  with pytest.raises(ValueError, match="'last_word', 'title'"):
    moat_data.load_world(**paths, search_result="first_word")
