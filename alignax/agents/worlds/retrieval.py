"""BM25 retrieval (bm25s) over a JSONL passage corpus, built once per workdir.

Corpus format, one JSON object a line: `{"id": str, "title": str, "text": str}`.
`BM25Retriever.build_or_load(corpus, index_dir)` indexes title + text, saves the
index with the corpus next to it and re-loads it on later runs (a fingerprint
of the corpus guards against a stale index). `search(queries, k)` is batched:
one bm25s call for all queries.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from typing import Sequence

import numpy as np

from alignax.agents.worlds.qa_world import DOC, END_SEARCH, Passage
from alignax.framework import run_records

_FINGERPRINT = "corpus.sha256"


class DataFormatError(ValueError):
  """A data file is malformed; the message names the file, line and field."""


def write_corpus_jsonl(passages: Sequence[Passage], path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    for p in passages:
      f.write(json.dumps({"id": p.id, "title": p.title, "text": p.text}) + "\n")


def jsonl_rows(path: str):
  """(line number, JSON object) of each non-blank line of a JSONL file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found (a JSONL file, one JSON object a line).")
  with open(path) as f:
    for line, text in enumerate(f, 1):
      if not text.strip():
        continue
      try:
        row = json.loads(text)
      except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}, line {line}: not valid JSON ({e.msg}).") from e
      if not isinstance(row, dict):
        raise DataFormatError(f"{path}, line {line}: expected a JSON object, got"
                              f" {type(row).__name__}.")
      yield line, row


def read_corpus_jsonl(path: str) -> list[Passage]:
  """Reads a corpus; raises `DataFormatError(file, line, field)` when malformed."""
  out = []
  for line_no, row in jsonl_rows(path):
    for field, kinds in (("id", (str, int)), ("text", str), ("title", (str, type(None)))):
      if field not in row and field != "title":
        raise DataFormatError(f"{path}, line {line_no}: missing field {field!r}.")
      if not isinstance(row.get(field), kinds):
        raise DataFormatError(
            f"{path}, line {line_no}: field {field!r} must be a string, got"
            f" {'null' if row.get(field) is None else type(row[field]).__name__}.")
    out.append(Passage(str(row["id"]), row.get("title") or "", row["text"]))
  if not out:
    raise DataFormatError(f"{path}: holds no passages.")
  return out


def _fingerprint(passages: Sequence[Passage]) -> str:
  h = hashlib.sha256()
  for p in passages:
    h.update(json.dumps([p.id, p.title, p.text]).encode())
  return h.hexdigest()


def _tokenize(texts: Sequence[str]):
  import bm25s  # pylint: disable=g-import-not-at-top
  # bm25s logs every build and every empty query at INFO.
  logging.getLogger("bm25s").setLevel(logging.WARNING)
  return bm25s.tokenize(list(texts), stopwords="en", show_progress=False)


@run_records.writer_only  # several processes: each builds the index, process 0 saves it
def _save_index(retriever: "BM25Retriever", fingerprint: str, index_dir: str) -> None:
  tmp = index_dir.rstrip("/") + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  retriever.index.save(tmp, show_progress=False)
  write_corpus_jsonl(retriever.passages, os.path.join(tmp, "corpus.jsonl"))
  with open(os.path.join(tmp, _FINGERPRINT), "w") as f:
    f.write(fingerprint)
  shutil.rmtree(index_dir, ignore_errors=True)
  os.replace(tmp, index_dir)


class BM25Retriever:
  """A bm25s index and the passages it ranks."""

  def __init__(self, index, passages: Sequence[Passage]):
    self.index = index
    self.passages = list(passages)

  @classmethod
  def build(cls, passages: Sequence[Passage]) -> "BM25Retriever":
    import bm25s  # pylint: disable=g-import-not-at-top
    if not passages:
      raise ValueError("Cannot build a BM25 index over an empty corpus.")
    index = bm25s.BM25()
    index.index(_tokenize([f"{p.title} {p.text}" for p in passages]), show_progress=False)
    return cls(index, passages)

  @classmethod
  def build_or_load(cls, passages: Sequence[Passage], index_dir: str) -> "BM25Retriever":
    """Loads the index saved in `index_dir` if it was built from `passages`,
    else builds it and saves it there (with `corpus.jsonl`)."""
    import bm25s  # pylint: disable=g-import-not-at-top
    fp = _fingerprint(passages)
    fp_file = os.path.join(index_dir, _FINGERPRINT)
    if os.path.exists(fp_file) and open(fp_file).read().strip() == fp:
      index = bm25s.BM25.load(index_dir, show_progress=False)
      return cls(index, read_corpus_jsonl(os.path.join(index_dir, "corpus.jsonl")))
    retriever = cls.build(passages)
    _save_index(retriever, fp, index_dir)
    return retriever

  def search_ids(self, queries: Sequence[str], k: int) -> np.ndarray:
    """Indices [Q, k] into `self.passages`, best first (one batched call)."""
    if not queries:
      return np.zeros((0, k), np.int64)
    k = min(k, len(self.passages))
    ids, _ = self.index.retrieve(_tokenize(queries), k=k, show_progress=False)
    return np.asarray(ids)

  def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
    """Top-k passages of each query, best first."""
    return [[self.passages[i] for i in row] for row in self.search_ids(queries, k)]


def render_results(passages: Sequence[Passage]) -> str:
  """Tool-output text appended after `<SEARCH>`: `<DOC> text ... </SEARCH>`."""
  return " ".join([f"{DOC} {p.text}" for p in passages] + [END_SEARCH])
