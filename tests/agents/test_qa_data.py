"""Built-in QA world, BM25 retrieval, HotpotQA / KILT loaders."""
import json
import os

import pytest

from alignax.agents.data import qa_data
from alignax.agents.worlds import qa_world, retrieval


@pytest.fixture(scope="module")
def world():
  return qa_world.make_world(seed=3, num_people=60)


def test_world_is_deterministic_and_splits(world):
  again = qa_world.make_world(seed=3, num_people=60)
  assert world.dataset() == again.dataset()
  ds = world.dataset()
  assert ds.train and ds.eval
  assert not {e.id for e in ds.train} & {e.id for e in ds.eval}
  by_person = qa_world.make_world(seed=3, num_people=60, split="person").dataset()
  people = lambda exs: {e.id.split(":")[1] for e in exs}
  assert by_person.eval and not people(by_person.train) & people(by_person.eval)
  assert {e.hops for e in ds.eval} == {1, 2}
  for ex in ds.train + ds.eval:
    # The answer is never in the question, and a passage states it.
    assert ex.answers[0] not in ex.question.split()
    assert any(ex.answers[0] in p.text.split() for p in ds.corpus)


def test_oracle_plan_follows_the_facts(world):
  ex = world.question(world.people[0], "born_country")
  city = world.facts["born"][world.people[0]]
  assert ex.plan == ((f"{world.people[0]} born", city), (f"{city} country", ex.answers[0]))
  assert ex.answers[0] == world.facts["city_country"][city]
  text = qa_world.oracle_trajectory(ex, lambda q: "<DOC> x </SEARCH>")
  assert text.startswith("<QUERY> ") and text.endswith(f"<FINAL> {ex.answers[0]}")
  assert text.count("<SEARCH>") == 2


def test_bm25_index_built_once_and_batched(world, tmp_path):
  ds = world.dataset()
  index_dir = str(tmp_path / "bm25")
  r1 = retrieval.BM25Retriever.build_or_load(ds.corpus, index_dir)
  stamp = os.path.getmtime(os.path.join(index_dir, "corpus.sha256"))
  r2 = retrieval.BM25Retriever.build_or_load(ds.corpus, index_dir)  # loads
  assert os.path.getmtime(os.path.join(index_dir, "corpus.sha256")) == stamp
  queries = [q for ex in ds.train[:20] for q, _ in ex.plan]
  batched = r2.search(queries, 3)
  assert batched == [r1.search([q], 3)[0] for q in queries]
  # The oracle sub-queries find their fact in the top 3.
  facts = [f for ex in ds.train[:20] for _, f in ex.plan]
  assert all(any(f in p.text.split() for p in docs) for f, docs in zip(facts, batched))
  assert retrieval.render_results(batched[0][:1]) == f"<DOC> {batched[0][0].text} </SEARCH>"


def test_corpus_jsonl_roundtrip_and_error(tmp_path):
  ps = [qa_world.Passage("a", "T", "some text"), qa_world.Passage("b", "", "x")]
  path = str(tmp_path / "c.jsonl")
  retrieval.write_corpus_jsonl(ps, path)
  assert retrieval.read_corpus_jsonl(path) == ps
  with open(path, "a") as f:
    f.write(json.dumps({"id": "c", "title": "no text"}) + "\n")
  with pytest.raises(retrieval.DataFormatError, match=r"c\.jsonl, line 3: missing field 'text'"):
    retrieval.read_corpus_jsonl(path)


HOTPOT = [
    {"_id": "q1", "question": "Which city is Alpha from?", "answer": "Bern",
     "type": "bridge", "level": "easy",
     "supporting_facts": [["Alpha", 0]],
     "context": [["Alpha", ["Alpha is a band.", " It is from Bern."]],
                 ["Beta", ["Beta is a river."]]]},
    {"_id": "q2", "question": "Is Beta a river?", "answer": "yes",
     "supporting_facts": [["Beta", 0]],
     "context": [["Beta", ["Beta is a river."]]]},
]


def _write_hotpot(path, rows):
  with open(path, "w") as f:
    json.dump(rows, f, indent=1)


def test_hotpotqa_loader(tmp_path):
  _write_hotpot(tmp_path / "train.json", HOTPOT)
  _write_hotpot(tmp_path / "dev.json", HOTPOT[1:])
  exs = qa_data.load_hotpotqa(str(tmp_path / "train.json"))
  assert [e.id for e in exs] == ["q1", "q2"]
  assert exs[0].question == "Which city is Alpha from?" and exs[0].answers == ("Bern",)
  assert exs[0].passages == (qa_world.Passage("Alpha", "Alpha", "Alpha is a band. It is from Bern."),
                             qa_world.Passage("Beta", "Beta", "Beta is a river."))
  ds = qa_data.load_dataset("hotpotqa", data_dir=str(tmp_path))
  assert len(ds.train) == 2 and len(ds.eval) == 1
  assert sorted(p.title for p in ds.corpus) == ["Alpha", "Beta"]


def test_hotpotqa_malformed_names_file_line_field(tmp_path):
  bad = [HOTPOT[0], {k: v for k, v in HOTPOT[1].items() if k != "answer"}]
  path = tmp_path / "train.json"
  _write_hotpot(path, bad)
  line = open(path).read().splitlines().index(" {", 2) + 1  # second record's line
  with pytest.raises(qa_data.DataFormatError,
                     match=rf"train\.json, line {line}: missing field 'answer'"):
    qa_data.load_hotpotqa(str(path))


KILT = [
    {"id": "k1", "input": "who wrote hamlet", "output": [{"answer": "Shakespeare"},
                                                        {"answer": "William Shakespeare"}]},
    {"id": "k2", "input": "capital of france", "output": [{"answer": "Paris",
                                                          "provenance": [{"wikipedia_id": "1"}]}]},
]


def test_kilt_loader_and_errors(tmp_path):
  for split in ("train", "dev"):
    with open(tmp_path / f"{split}.jsonl", "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in KILT)
  retrieval.write_corpus_jsonl([qa_world.Passage("1", "Paris", "Paris is the capital.")],
                               str(tmp_path / "corpus.jsonl"))
  ds = qa_data.load_dataset("kilt", data_dir=str(tmp_path))
  assert [(e.id, e.question, e.answers) for e in ds.train] == [
      ("k1", "who wrote hamlet", ("Shakespeare", "William Shakespeare")),
      ("k2", "capital of france", ("Paris",))]
  assert ds.corpus[0].text == "Paris is the capital."
  with open(tmp_path / "dev.jsonl", "a") as f:
    f.write(json.dumps({"id": "k3", "output": [{"answer": "x"}]}) + "\n")
  with pytest.raises(qa_data.DataFormatError, match=r"dev\.jsonl, line 3: missing field 'input'"):
    qa_data.load_kilt(str(tmp_path / "dev.jsonl"))
  with pytest.raises(ValueError, match="unknown dataset 'nq'; registered: .*kilt"):
    qa_data.load_dataset("nq")


def test_word_tokenizer_keeps_markers(tmp_path):
  tok = qa_data.train_word_tokenizer(["alpha was born in beta ."], str(tmp_path / "tok"))
  ids = tok.encode("<QUERY> alpha born <SEARCH>", add_special_tokens=False)
  assert tok.convert_ids_to_tokens(ids) == ["<QUERY>", "alpha", "born", "<SEARCH>"]
  assert tok.pad_token_id == 0 and tok.bos_token_id == 1 and tok.eos_token_id == 2


def test_two_word_names_share_words_and_keep_the_default_world():
  w = qa_world.make_world(seed=3, num_people=60, name_words=2)
  assert w == qa_world.make_world(seed=3, num_people=60, name_words=2)
  assert len(set(w.people)) == 60 and all(len(p.split()) == 2 for p in w.people)
  firsts = {p.split()[0] for p in w.people}
  lasts = {p.split()[1] for p in w.people}
  assert not firsts & lasts and len(firsts) < 60 and len(lasts) < 60  # words are shared
  ds = w.dataset()
  ex = ds.train[0]
  person = " ".join(ex.plan[0][0].split()[:-1])
  assert person in w.people and person in ex.question
  # The default (one-word names) world is unchanged by the option.
  assert qa_world.make_world(seed=3, num_people=60).people == qa_world.make_world(
      seed=3, num_people=60, name_words=1).people
  assert all(len(p.split()) == 1 for p in qa_world.make_world(seed=3, num_people=60).people)
  with pytest.raises(ValueError):
    qa_world.make_world(name_words=3)
