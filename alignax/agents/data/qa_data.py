"""QA data sources for the search agents, picked by `config.dataset`.

  builtin   the generated world of `agents.worlds.qa_world` (no download)
  hotpotqa  HotpotQA JSON (a list of {_id, question, answer, context,
            supporting_facts}); `data_dir/train.json`, `data_dir/dev.json`;
            the corpus is every context paragraph.
  kilt      KILT JSONL (NQ, TriviaQA, 2WikiMultihopQA: {id, input,
            output: [{answer}, ...]}); `data_dir/train.jsonl`,
            `data_dir/dev.jsonl` and a passage corpus `data_dir/corpus.jsonl`.

A malformed file raises `DataFormatError` naming the file, the line and the
missing field. Also here: the word-level tokenizer the built-in agents use.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

from alignax.agents.worlds import qa_world
from alignax.agents.worlds.qa_world import Passage, QADataset, QAExample
from alignax.agents.worlds.retrieval import DataFormatError, jsonl_rows, read_corpus_jsonl
from alignax.registry import Registry

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"


def _require(row: dict, field: str, path: str, line: int, kind=None):
  """`row[field]`, checked to be present, not null and (if given) of `kind`."""
  if not isinstance(row, dict):
    raise DataFormatError(f"{path}, line {line}: expected a JSON object, got"
                          f" {type(row).__name__}.")
  if field not in row:
    raise DataFormatError(f"{path}, line {line}: missing field {field!r}.")
  value = row[field]
  if value is None:
    raise DataFormatError(f"{path}, line {line}: field {field!r} is null.")
  if kind is not None and not isinstance(value, kind):
    names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
    raise DataFormatError(f"{path}, line {line}: field {field!r} must be {names}, got"
                          f" {type(value).__name__} {str(value)[:40]!r}.")
  return value


def _nonempty(examples: list, path: str) -> list:
  if not examples:
    raise DataFormatError(f"{path}: holds no examples; check the file (an empty split"
                          " would train or evaluate on nothing).")
  return examples


def _json_array_records(path: str):
  """Yields (line number, record) of a JSON array file, element by element."""
  with open(path) as f:
    text = f.read()
  decoder = json.JSONDecoder()
  pos = len(text) - len(text.lstrip())
  if not text.startswith("[", pos):
    raise DataFormatError(f"{path}, line 1: expected a JSON list of examples.")
  pos += 1
  while True:
    while pos < len(text) and text[pos] in " \t\r\n,":
      pos += 1
    if pos >= len(text):
      raise DataFormatError(f"{path}: unterminated JSON list.")
    if text[pos] == "]":
      return
    line = text.count("\n", 0, pos) + 1
    try:
      record, pos = decoder.raw_decode(text, pos)
    except json.JSONDecodeError as e:
      raise DataFormatError(f"{path}, line {e.lineno}: not valid JSON ({e.msg}).") from e
    yield line, record


def load_hotpotqa(path: str) -> list[QAExample]:
  """HotpotQA examples with their context paragraphs as passages."""
  out = []
  for line, row in _json_array_records(path):
    qid = str(_require(row, "_id", path, line, (str, int)))
    question = _require(row, "question", path, line, str)
    answer = _require(row, "answer", path, line, str)
    context = _require(row, "context", path, line, list)
    facts = _require(row, "supporting_facts", path, line, list)
    supporting = tuple(dict.fromkeys(
        f[0] for f in facts if isinstance(f, (list, tuple)) and f and isinstance(f[0], str)))
    passages = []
    for i, item in enumerate(context):
      if not (isinstance(item, (list, tuple)) and len(item) == 2):
        raise DataFormatError(f"{path}, line {line}: field 'context' must hold"
                              f" [title, [sentences]] pairs; context[{i}] does not.")
      title, sentences = item
      # A string here would be joined character by character.
      if not isinstance(title, str) or not (
          isinstance(sentences, list) and all(isinstance(x, str) for x in sentences)):
        raise DataFormatError(
            f"{path}, line {line}: context[{i}] must be [title, [sentence, ...]] with"
            f" strings; got a {type(title).__name__} title and"
            f" {type(sentences).__name__} sentences.")
      passages.append(Passage(title, title, " ".join(x.strip() for x in sentences)))
    out.append(QAExample(qid, question, (answer,), hops=2,
                         plan=((question, answer),), passages=tuple(passages),
                         supporting=supporting))
  return _nonempty(out, path)


def load_kilt(path: str) -> list[QAExample]:
  """KILT JSONL examples (answers from `output[].answer`)."""
  out = []
  for line, row in jsonl_rows(path):
    qid = str(_require(row, "id", path, line, (str, int)))
    question = _require(row, "input", path, line, str)
    outputs = _require(row, "output", path, line, list)
    answers = tuple(o["answer"] for o in outputs if isinstance(o, dict)
                    and isinstance(o.get("answer"), str))
    if not answers:
      raise DataFormatError(f"{path}, line {line}: missing field 'output[].answer'"
                            " (a string).")
    supporting = tuple(dict.fromkeys(
        p["title"] for o in outputs if isinstance(o, dict)
        for p in (o.get("provenance") or ()) if isinstance(p, dict)
        and isinstance(p.get("title"), str)))
    out.append(QAExample(qid, question, answers, plan=((question, answers[0]),),
                         supporting=supporting))
  return _nonempty(out, path)


def _builtin(*, data_dir: str, seed: int, world: Mapping[str, Any]) -> QADataset:
  del data_dir
  w = world
  return qa_world.make_world(seed=seed, num_people=w["num_people"],
                             num_cities=w["num_cities"], num_countries=w["num_countries"],
                             num_companies=w["num_companies"],
                             heldout_fraction=w["heldout_fraction"],
                             split=w.get("split", "question"),
                             name_words=w.get("name_words", 1)).dataset()


def _path(data_dir: str, name: str) -> str:
  path = os.path.join(data_dir, name)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found; set --config.data_dir to a folder with {name}.")
  return path


def _hotpotqa(*, data_dir: str, seed: int, world: Mapping[str, Any]) -> QADataset:
  del seed, world
  train = load_hotpotqa(_path(data_dir, "train.json"))
  dev = load_hotpotqa(_path(data_dir, "dev.json"))
  corpus = {p.title: p for ex in train + dev for p in ex.passages}
  return QADataset(tuple(train), tuple(dev), tuple(corpus.values()))


def _kilt(*, data_dir: str, seed: int, world: Mapping[str, Any]) -> QADataset:
  del seed, world
  return QADataset(tuple(load_kilt(_path(data_dir, "train.jsonl"))),
                   tuple(load_kilt(_path(data_dir, "dev.jsonl"))),
                   tuple(read_corpus_jsonl(_path(data_dir, "corpus.jsonl"))))


# Data sets a config names (config.dataset), each
# `loader(*, data_dir, seed, world) -> QADataset` (`world`: the built-in
# world's sizes, a mapping with num_people, num_cities, ...).
DATASETS = Registry("dataset")
DATASETS.add("builtin", _builtin)
DATASETS.add("hotpotqa", _hotpotqa)
DATASETS.add("kilt", _kilt)


def load_dataset(name: str, *, data_dir: str = "", seed: int = 0,
                 world: Mapping[str, Any] | None = None) -> QADataset:
  """The QA data set `name` (a key of `DATASETS`): files under `data_dir`, or
  the built-in world of `seed` and sizes `world`."""
  return DATASETS[name](data_dir=data_dir, seed=seed, world=world or {})


def train_word_tokenizer(texts: Sequence[str], path: str | None = None,
                         max_vocab: int = 8192):
  """A word-level tokenizer (whitespace + punctuation split, lower case) with
  the special tokens `<pad> <s> </s> <unk>` (ids 0..3) and the trajectory
  markers of `qa_world.MARKERS`. Returns a `PreTrainedTokenizerFast`, saved
  in the Hugging Face format under `path` if given."""
  import transformers  # pylint: disable=g-import-not-at-top
  from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

  tok = Tokenizer(models.WordLevel(unk_token=UNK))
  tok.normalizer = normalizers.Lowercase()
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
  specials = [PAD, BOS, EOS, UNK, *qa_world.MARKERS]
  trainer = trainers.WordLevelTrainer(vocab_size=max_vocab, special_tokens=specials)
  tok.train_from_iterator(list(texts), trainer=trainer)
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK,
      additional_special_tokens=list(qa_world.MARKERS))
  if path:
    os.makedirs(path, exist_ok=True)
    fast.save_pretrained(path)
  return fast
