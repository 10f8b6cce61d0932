"""Answer metrics and ranked-list parsing (docs/algorithms.md §6.4, §7.1).

Plain Python on strings; every function takes a prediction and a list of gold
answers and returns the best score over the golds, as the KILT scripts do.
"""
from __future__ import annotations

import collections
import re
import string
from typing import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
  """SQuAD normalisation: lower case, drop punctuation and articles, squash spaces."""
  text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
  return " ".join(_ARTICLES.sub(" ", text).split())


def _golds(golds) -> list[str]:
  return [golds] if isinstance(golds, str) else list(golds)


def exact_match(pred: str, golds: Sequence[str] | str) -> float:
  """1.0 if the normalised prediction equals a normalised gold answer."""
  p = normalize_answer(pred)
  return float(any(p == normalize_answer(g) for g in _golds(golds)))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
  common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
  same = sum(common.values())
  if not pred_tokens or not gold_tokens:
    return float(pred_tokens == gold_tokens)  # both empty: 1, one empty: 0 (SQuAD)
  if same == 0:
    return 0.0
  precision, recall = same / len(pred_tokens), same / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


def token_f1(pred: str, golds: Sequence[str] | str) -> float:
  """SQuAD token F1 (bag of normalised tokens), max over the gold answers."""
  p = normalize_answer(pred).split()
  return max(_f1(p, normalize_answer(g).split()) for g in _golds(golds))


def answer_accuracy(pred: str, golds: Sequence[str] | str) -> float:
  """1.0 if a normalised gold answer is contained in the normalised prediction."""
  p = f" {normalize_answer(pred)} "
  return float(any(f" {normalize_answer(g)} " in p for g in _golds(golds)
                   if normalize_answer(g)))


_ID = re.compile(r"\[(\d+)\]")


def parse_ranking(text: str, num_candidates: int, k: int | None = None, *,
                  complete: bool = True) -> list[int]:
  """Parses a ranked list `"[3] > [1] > [2]"` into 0-based candidate indices.

  Identifiers in the text are 1-based (RankGPT / DRO convention). Ids out of
  `[1, num_candidates]` and repeats are dropped; with `complete`, the unseen
  candidates are appended in their original order so the result is a full
  permutation (DRO `sampling.py`). `k` keeps the first k.

  Example: `parse_ranking("[2] > [9] > [2] > [1]", 3)` -> `[1, 0, 2]`.
  """
  seen, out = set(), []
  for m in _ID.finditer(text):
    i = int(m.group(1)) - 1
    if 0 <= i < num_candidates and i not in seen:
      seen.add(i)
      out.append(i)
  if complete:
    out += [i for i in range(num_candidates) if i not in seen]
  return out if k is None else out[:k]


def score_answers(preds: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
  """Mean EM, F1 and accuracy (in [0, 1]) of predictions against gold lists."""
  if len(preds) != len(golds):
    raise ValueError(f"{len(preds)} predictions for {len(golds)} gold lists.")
  n = max(len(preds), 1)
  return {"em": sum(map(exact_match, preds, golds)) / n,
          "f1": sum(map(token_f1, preds, golds)) / n,
          "accuracy": sum(map(answer_accuracy, preds, golds)) / n}
