"""Data loaders: a malformed file is one error naming the file and line (and
field); nothing is silently mangled (strings split into characters, null
text turned into "None", empty splits, truncated timestamps)."""
import gzip
import json
import os
import types

import numpy as np
import pytest

from alignax.agents.data import qa_data
from alignax.agents.worlds.retrieval import DataFormatError, read_corpus_jsonl

HOTPOT_OK = {"_id": "q1", "question": "Who?", "answer": "Ann",
             "context": [["Ann", ["Ann was born in Oslo.", "She writes."]]],
             "supporting_facts": [["Ann", 0]]}


def _hotpot(tmp_path, row):
  path = tmp_path / "train.json"
  path.write_text(json.dumps([HOTPOT_OK, row], indent=1))
  return str(path)


HOTPOT_BAD = {
    "sentences_as_string": (dict(HOTPOT_OK, context=[["Ann", "Ann was born."]]),
                            ["context[0]", "str sentences"]),
    "title_not_string": (dict(HOTPOT_OK, context=[[3, ["x"]]]), ["context[0]", "int title"]),
    "null_answer": (dict(HOTPOT_OK, answer=None), ["'answer' is null"]),
    "answer_is_list": (dict(HOTPOT_OK, answer=["Ann"]), ["'answer' must be str"]),
    "question_missing": ({k: v for k, v in HOTPOT_OK.items() if k != "question"},
                         ["missing field 'question'"]),
    "context_not_pairs": (dict(HOTPOT_OK, context=[["Ann"]]), ["context[0] does not"]),
    "row_not_object": ("just a string", ["expected a JSON object"]),
}


@pytest.mark.parametrize("case", sorted(HOTPOT_BAD))
def test_hotpotqa_bad_row_names_file_and_line(tmp_path, case):
  row, words = HOTPOT_BAD[case]
  path = _hotpot(tmp_path, row)
  with pytest.raises(DataFormatError) as e:
    qa_data.load_hotpotqa(path)
  msg = str(e.value)
  assert path in msg and "line" in msg, msg
  for w in words:
    assert w in msg, msg


def test_hotpotqa_sentences_are_joined_as_sentences(tmp_path):
  ex = qa_data.load_hotpotqa(_hotpot(tmp_path, dict(HOTPOT_OK, _id="q2")))
  assert ex[0].passages[0].text == "Ann was born in Oslo. She writes."


@pytest.mark.parametrize("content", ["[]", "[\n]\n"])
def test_empty_hotpotqa_split_is_refused(tmp_path, content):
  path = tmp_path / "dev.json"
  path.write_text(content)
  with pytest.raises(DataFormatError, match="holds no examples"):
    qa_data.load_hotpotqa(str(path))


KILT_BAD = {
    "empty_split": ("", ["holds no examples"]),
    "blank_lines_only": ("\n\n", ["holds no examples"]),
    "answer_not_string": (json.dumps({"id": 1, "input": "q", "output": [{"answer": 3}]}),
                          ["line 1", "output[].answer"]),
    "null_input": (json.dumps({"id": 1, "input": None, "output": [{"answer": "a"}]}),
                   ["line 1", "'input' is null"]),
    "broken_json": ('{"id": 1, "input": ', ["line 1", "not valid JSON"]),
}


@pytest.mark.parametrize("case", sorted(KILT_BAD))
def test_kilt_bad_file_names_file(tmp_path, case):
  text, words = KILT_BAD[case]
  path = tmp_path / "train.jsonl"
  path.write_text(text)
  with pytest.raises(DataFormatError) as e:
    qa_data.load_kilt(str(path))
  assert str(path) in str(e.value)
  for w in words:
    assert w in str(e.value), str(e.value)


CORPUS_BAD = {
    "null_text": ({"id": "p1", "text": None}, ["line 2", "'text'", "null"]),
    "numeric_text": ({"id": "p1", "text": 5}, ["line 2", "'text'", "int"]),
    "missing_id": ({"text": "hi"}, ["line 2", "missing field 'id'"]),
    "list_row": (["p1", "hi"], ["line 2", "JSON object"]),
}


@pytest.mark.parametrize("case", sorted(CORPUS_BAD))
def test_corpus_bad_row_names_file_and_line(tmp_path, case):
  row, words = CORPUS_BAD[case]
  path = tmp_path / "corpus.jsonl"
  path.write_text(json.dumps({"id": "p0", "text": "ok"}) + "\n" + json.dumps(row) + "\n")
  with pytest.raises(DataFormatError) as e:
    read_corpus_jsonl(str(path))
  assert str(path) in str(e.value)
  for w in words:
    assert w in str(e.value), str(e.value)


def test_null_title_is_empty_not_none(tmp_path):
  path = tmp_path / "corpus.jsonl"
  path.write_text(json.dumps({"id": "p0", "title": None, "text": "ok"}) + "\n")
  assert read_corpus_jsonl(str(path))[0].title == ""


def test_unknown_qa_dataset_lists_names():
  with pytest.raises(ValueError) as e:
    qa_data.load_dataset(types.SimpleNamespace(dataset="nq"))
  assert "'nq'" in str(e.value) and "hotpotqa" in str(e.value) and "kilt" in str(e.value)


# --- session data (recsys) -------------------------------------------------

builders = pytest.importorskip("alignax.recsys.data.builders")


RATINGS_BAD = {
    "too_few_fields": ("u1,i1,5\n", ["line 1", "expected 4", "user,item,rating,time"]),
    "bad_timestamp": ("u1,i1,5,1200\nu2,i1,4,yesterday\n", ["line 2", "'yesterday'"]),
    "nan_timestamp": ("u1,i1,5,nan\n", ["line 1", "not finite"]),
}


@pytest.mark.parametrize("case", sorted(RATINGS_BAD))
def test_amazon_csv_bad_line_names_file_and_line(tmp_path, case):
  text, words = RATINGS_BAD[case]
  path = tmp_path / "ratings_Beauty.csv"
  path.write_text(text)
  with pytest.raises(builders.DataFormatError) as e:
    list(builders._read_ratings_csv(str(path)))
  assert str(path) in str(e.value)
  for w in words:
    assert w in str(e.value), str(e.value)


@pytest.mark.parametrize("line,words", [
    ('{"reviewerID": "u", "asin": "a"', ["line 2", "not valid JSON"]),
    ('{"reviewerID": "u", "asin": "a"}', ["line 2", "'unixReviewTime'"]),
])
def test_amazon_json_bad_line_names_file_and_line(tmp_path, line, words):
  path = str(tmp_path / "reviews_Beauty_5.json.gz")
  with gzip.open(path, "wt") as f:
    f.write(json.dumps({"reviewerID": "u", "asin": "a", "unixReviewTime": 5}) + "\n")
    f.write(line + "\n")
  with pytest.raises(builders.DataFormatError) as e:
    list(builders._read_5core_json(path))
  assert path in str(e.value)
  for w in words:
    assert w in str(e.value), str(e.value)


def test_amazon_float_timestamps_keep_their_order(tmp_path):
  """Two events within one second: cutting to ints would tie them and keep
  file order (wrong); the float times order them."""
  path = tmp_path / "ratings_Beauty.csv"
  rows = [("u", f"i{k}", 5, t) for k, t in enumerate([10.9, 10.1, 10.5, 9.0, 11.0])]
  path.write_text("".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows))
  got = list(builders._read_ratings_csv(str(path)))
  assert [r[2] for r in got] == [10.9, 10.1, 10.5, 9, 11]
  _, sessions = builders.k_core_sessions(got, min_count=1)
  _, items, times = sessions[0]
  np.testing.assert_array_equal(times, [9.0, 10.1, 10.5, 10.9, 11.0])
  assert list(items) == [4, 2, 3, 1, 5]  # i3, i1, i2, i0, i4 re-indexed 1..5


def test_movielens_bad_line_names_file_and_line(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "ratings.dat").write_text("1::10::5::978300760\n1::x::5::978300761\n")
  with pytest.raises(builders.DataFormatError) as e:
    builders.load_sessions("movielens_1m", data_dir=str(tmp_path / "data"),
                           manual_dir=str(manual))
  assert str(manual / "ratings.dat") in str(e.value) and "line 2" in str(e.value)


@pytest.mark.parametrize("name", ["movielens_20m", "amazon_reviews/books_ratings",
                                  "amazon_reviews"])
def test_unknown_session_dataset_lists_names(name):
  with pytest.raises(ValueError) as e:
    builders.make_builder(name)
  assert repr(name) in str(e.value) and "amazon_reviews/beauty_5core" in str(e.value)
