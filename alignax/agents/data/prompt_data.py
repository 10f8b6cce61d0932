r"""Prompt datasets for RL: load files, normalise record formats, split, order, tokenize.

Files are read with Hugging Face `datasets`: a `.jsonl`, `.json` or `.parquet`
file, a glob of them, or a directory written by `Dataset.save_to_disk`. Each
row becomes an `Example`: the prompt (a string, or a list of `{"role",
"content"}` messages), the gold answer `ground_truth` (a string or None) and the
row's other columns, which reward functions receive as keyword arguments.

Record formats (`FORMATS`, chosen by name or detected with `auto`):
  prompt_answer  `prompt` / `answer` string columns (names configurable).
  messages       `prompt` is a list of messages (TRL's conversational format);
                 the answer column (`answer`, else `solution`) is optional.
  gsm8k          `question`, `answer` ending in `#### <number>`.
  math           `problem`, `solution` containing `\boxed{...}`.
  verl           `prompt` messages, `reward_model.ground_truth` (verl's parquet).

Order is a pure function of (seed, step): step s takes positions
s*B .. s*B+B-1 of an endless sequence of per-epoch permutations, so a resumed
run draws exactly the prompts an uninterrupted run draws.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob as glob_lib
import hashlib
import json
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from absl import logging

from alignax.registry import Registry

_EXTENSIONS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class DataError(ValueError):
  """Bad input data; the message names the file, row and field."""


@dataclasses.dataclass(frozen=True)
class Example:
  """One prompt.

  prompt: a string, or a list of {"role", "content"} messages.
  ground_truth: the gold answer as a string, or None.
  columns: the row's other fields (passed to reward functions), `ground_truth`
    included.
  source: "file, row i" (for error messages).
  """

  prompt: Any
  ground_truth: str | None
  columns: Mapping[str, Any]
  source: str

  @property
  def is_conversational(self) -> bool:
    return isinstance(self.prompt, list)


# --------------------------------------------------------------------------- loading


@contextlib.contextmanager
def _quiet_datasets():
  import datasets as ds_tqdm  # pylint: disable=g-import-not-at-top
  was_disabled = ds_tqdm.are_progress_bars_disabled()
  ds_tqdm.disable_progress_bars()
  try:
    yield
  finally:
    if not was_disabled:
      ds_tqdm.enable_progress_bars()


def _files(path: str, what: str) -> list[str]:
  if any(ch in path for ch in "*?["):
    files = sorted(glob_lib.glob(path))
    if not files:
      raise FileNotFoundError(f"{what}={path!r}: the glob matches no file.")
    return files
  if not os.path.exists(path):
    raise FileNotFoundError(f"{what}={path!r}: no such file or directory.")
  return [path]


def _read(file: str, what: str) -> list[dict]:
  import datasets  # pylint: disable=g-import-not-at-top

  with _quiet_datasets():
    if os.path.isdir(file):
      try:
        ds = datasets.load_from_disk(file)
      except Exception as e:  # pylint: disable=broad-except
        raise DataError(f"{what}={file!r} is a directory but not one written by"
                        f" datasets' save_to_disk ({e}).") from e
      if isinstance(ds, datasets.DatasetDict):
        raise DataError(f"{what}={file!r} holds a DatasetDict with splits {sorted(ds)};"
                        f" point at one split's folder, e.g. {os.path.join(file, next(iter(ds)))!r}.")
      return ds.to_list()
    ext = os.path.splitext(file)[1].lower()
    if ext not in _EXTENSIONS:
      raise DataError(f"{what}={file!r}: unknown file type {ext!r}; use .jsonl, .json,"
                      " .parquet, a glob of them, or a save_to_disk directory.")
    try:
      ds = datasets.load_dataset(_EXTENSIONS[ext], data_files=file, split="train")
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(f"{what}={file!r} could not be read as {ext} ({type(e).__name__}:"
                      f" {e}).") from e
    return ds.to_list()


def load_rows(path: str, what: str = "data") -> list[tuple[str, list[dict]]]:
  """[(file, rows)] for a file, a glob or a save_to_disk directory.

  `what` names the setting in error messages (e.g. "config.data.train").
  """
  out = []
  for file in _files(path, what):
    rows = _read(file, what)
    if rows:
      out.append((file, rows))
  if not out:
    raise DataError(f"{what}={path!r} holds no rows.")
  return out


# --------------------------------------------------------------------------- formats


def last_boxed(text: str) -> str | None:
  r"""Content of the last `\boxed{...}` (nested braces allowed), or None."""
  start = text.rfind("\\boxed")
  if start < 0:
    return None
  i = text.find("{", start)
  if i < 0:
    return None
  depth = 0
  for j in range(i, len(text)):
    depth += {"{": 1, "}": -1}.get(text[j], 0)
    if depth == 0:
      return text[i + 1:j]
  return None


class _FieldError(Exception):
  """Raised by a format's `convert`: (field, what is wrong)."""


@dataclasses.dataclass(frozen=True)
class Format:
  """A record format.

  detect(row, prompt_field, answer_field) -> bool: whether a row looks like it.
  convert(row, prompt_field, answer_field) -> (prompt, ground_truth, prompt key):
    raises `_FieldError(field, problem)`.
  """

  detect: Callable[[Mapping, str, str], bool]
  convert: Callable[[Mapping, str, str], tuple[Any, str | None, str]]


FORMATS = Registry("data format")


def _get(row, field, kind=str):
  if field not in row or row[field] is None:
    raise _FieldError(field, "is missing")
  value = row[field]
  if kind is str and not isinstance(value, str):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return str(value)
    raise _FieldError(field, f"should be a string, got {type(value).__name__}")
  if kind is list and not _is_messages(value):
    raise _FieldError(field, "should be a list of {'role', 'content'} messages")
  return value


def _is_messages(value) -> bool:
  return (isinstance(value, list) and bool(value) and
          all(isinstance(m, dict) and "role" in m and "content" in m for m in value))


def _answer_or_none(row, *fields):
  for f in fields:
    if row.get(f) is not None:
      return _get(row, f)
  return None


FORMATS.add("prompt_answer", Format(
    detect=lambda row, p, a: isinstance(row.get(p), str),
    convert=lambda row, p, a: (_get(row, p), _get(row, a), p)))

FORMATS.add("messages", Format(
    detect=lambda row, p, a: _is_messages(row.get(p)),
    convert=lambda row, p, a: (_get(row, p, list), _answer_or_none(row, a, "solution"), p)))


def _gsm8k(row, p, a):
  del p, a
  answer = _get(row, "answer")
  if "####" not in answer:
    raise _FieldError("answer", "does not end with '#### <number>' (GSM8K)")
  return _get(row, "question"), answer.rsplit("####", 1)[1].strip().replace(",", ""), "question"


FORMATS.add("gsm8k", Format(
    detect=lambda row, p, a: isinstance(row.get("question"), str)
    and "####" in str(row.get("answer", "")),
    convert=_gsm8k))


def _math(row, p, a):
  del p, a
  boxed = last_boxed(_get(row, "solution"))
  if boxed is None:
    raise _FieldError("solution", "has no \\boxed{...} answer (MATH)")
  return _get(row, "problem"), boxed.strip(), "problem"


FORMATS.add("math", Format(
    detect=lambda row, p, a: isinstance(row.get("problem"), str) and "solution" in row,
    convert=_math))


def _verl(row, p, a):
  del p, a
  reward_model = row.get("reward_model")
  if not isinstance(reward_model, dict) or reward_model.get("ground_truth") is None:
    raise _FieldError("reward_model.ground_truth", "is missing")
  gt = reward_model["ground_truth"]
  return _get(row, "prompt", list), gt if isinstance(gt, str) else str(gt), "prompt"


FORMATS.add("verl", Format(
    detect=lambda row, p, a: isinstance(row.get("reward_model"), dict)
    and _is_messages(row.get("prompt")),
    convert=_verl))

# `auto` tries these in order (the most specific first).
_DETECT_ORDER = ("verl", "gsm8k", "math", "messages", "prompt_answer")


def detect_format(row: Mapping, prompt_field: str, answer_field: str, where: str) -> str:
  for name in _DETECT_ORDER:
    if FORMATS[name].detect(row, prompt_field, answer_field):
      return name
  raise DataError(
      f"{where}: cannot detect the record format from its columns {sorted(row)}. Expected"
      f" {prompt_field!r}+{answer_field!r} (data.prompt_field/answer_field), {prompt_field!r}"
      " as a list of messages, question+answer (gsm8k), problem+solution (math), or"
      " prompt+reward_model (verl); or set --config.data.format to one of"
      f" {sorted(FORMATS)}.")


def to_examples(sources: Sequence[tuple[str, Sequence[Mapping]]], *, format: str = "auto",  # pylint: disable=redefined-builtin
                prompt_field: str = "prompt", answer_field: str = "answer",
                what: str = "data") -> list[Example]:
  """Normalises rows of each (file, rows) into `Example`s (format per file)."""
  if format != "auto" and format not in FORMATS:
    FORMATS[format]  # raises, listing the registered formats  # pylint: disable=pointless-statement
  out = []
  for file, rows in sources:
    name = format if format != "auto" else detect_format(
        rows[0], prompt_field, answer_field, f"{what}: {file}, row 0")
    fmt = FORMATS[name]
    for i, row in enumerate(rows):
      where = f"{file}, row {i}"
      try:
        prompt, gt, prompt_key = fmt.convert(row, prompt_field, answer_field)
      except _FieldError as e:
        field, problem = e.args
        raise DataError(f"{what}: {where}: field {field!r} {problem} (format {name!r};"
                        f" the row has fields {sorted(row)}).") from None
      columns = {k: v for k, v in row.items() if k != prompt_key}
      columns["ground_truth"] = gt
      out.append(Example(prompt, gt, columns, where))
  return out


def prompt_key(prompt) -> str:
  """Canonical text of a prompt (for hashing)."""
  return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def in_eval_split(prompt, eval_fraction: float) -> bool:
  """Stable hash split: the same prompt always lands in the same split."""
  h = hashlib.sha256(prompt_key(prompt).encode()).digest()
  return int.from_bytes(h[:8], "little") / 2.0**64 < eval_fraction


def split_examples(examples: Sequence[Example], eval_fraction: float):
  """(train, eval) by `in_eval_split` of each prompt."""
  if not 0.0 <= eval_fraction < 1.0:
    raise ValueError(f"config.data.eval_fraction must be in [0, 1), got {eval_fraction}.")
  train, evals = [], []
  for ex in examples:
    (evals if in_eval_split(ex.prompt, eval_fraction) else train).append(ex)
  return train, evals


# --------------------------------------------------------------------------- prompts -> ids


class PromptEncoder:
  """Turns prompts into token ids, as TRL does.

  With `chat_template="auto"` and a tokenizer that has a chat template, a prompt
  (a string becomes one user message; `system_prompt`, if set, is prepended
  unless the messages start with a system message) is rendered with
  `apply_chat_template(..., add_generation_prompt=True)`. Otherwise the raw
  string is used, after the tokenizer's BOS token if it has one (Llama's `<s>`;
  Qwen2.5 has none).
  """

  def __init__(self, tokenizer, chat_template: str = "auto", system_prompt: str = ""):
    if chat_template not in ("auto", "none"):
      raise ValueError(f"config.data.chat_template={chat_template!r}; use 'auto' or 'none'.")
    self.tokenizer = tokenizer
    self.use_chat = chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None))
    self.system_prompt = system_prompt

  def text(self, prompt) -> str:
    """The prompt as the model sees it (chat template applied)."""
    if not self.use_chat:
      if not isinstance(prompt, str):
        raise DataError(
            "conversational prompts (lists of messages) need a tokenizer with a chat"
            " template and config.data.chat_template=auto; this tokenizer has none.")
      return prompt
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if self.system_prompt and messages[0]["role"] != "system":
      messages = [{"role": "system", "content": self.system_prompt}] + messages
    return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                              add_generation_prompt=True)

  def encode(self, prompts: Sequence) -> list[list[int]]:
    texts = [self.text(p) for p in prompts]
    ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
    bos = self.tokenizer.bos_token_id
    if not self.use_chat and bos is not None:
      ids = [r if r[:1] == [bos] else [bos] + r for r in ids]
    return ids


@dataclasses.dataclass
class PromptDataset:
  """Examples with their prompt token ids, and the deterministic order."""

  examples: list[Example]
  prompt_ids: list[list[int]]

  def __len__(self) -> int:
    return len(self.examples)

  def indices(self, seed: int, step: int, size: int) -> np.ndarray:
    """Rows of batch `step` (size `size`): a pure function of (seed, step)."""
    n = len(self.examples)
    pos = step * size + np.arange(size)
    epochs, offsets = pos // n, pos % n
    out = np.empty(size, np.int64)
    for e in np.unique(epochs):
      perm = np.random.default_rng([seed, int(e)]).permutation(n)
      sel = epochs == e
      out[sel] = perm[offsets[sel]]
    return out


def encode_examples(examples: Sequence[Example], encoder: PromptEncoder, *,
                    max_prompt_length: int, drop_long_prompts: bool = False,
                    what: str = "data") -> PromptDataset:
  """Tokenizes every prompt now (so bad rows fail before any compilation).

  A prompt longer than `max_prompt_length` tokens raises a `DataError` naming
  its row, or is dropped (counted in a warning) when `drop_long_prompts`.
  """
  ids = encoder.encode([ex.prompt for ex in examples])
  keep_ex, keep_ids, dropped = [], [], 0
  for ex, row in zip(examples, ids):
    if not row:
      raise DataError(f"{what}: {ex.source}: the prompt is empty.")
    if len(row) > max_prompt_length:
      if not drop_long_prompts:
        raise DataError(
            f"{what}: {ex.source}: the prompt has {len(row)} tokens, more than"
            f" config.rollout.max_prompt_length={max_prompt_length}. Raise it, shorten the"
            " prompt, or set --config.data.drop_long_prompts=True to skip such rows.")
      dropped += 1
      continue
    keep_ex.append(ex)
    keep_ids.append(row)
  if dropped:
    logging.warning("%s: dropped %d of %d prompts longer than max_prompt_length=%d tokens.",
                    what, dropped, len(examples), max_prompt_length)
  if not keep_ex:
    raise DataError(f"{what}: no prompt left (all {len(examples)} exceed"
                    f" max_prompt_length={max_prompt_length}).")
  return PromptDataset(keep_ex, keep_ids)


def load_prompt_data(data, tokenizer, *, max_prompt_length: int,
                     builtin: tuple[Sequence[Mapping], Sequence[Mapping]] | None = None):
  """(train, eval or None) `PromptDataset`s for a `config.data` node.

  data: has `train`, `eval`, `eval_fraction`, `format`, `prompt_field`,
    `answer_field`, `chat_template`, `system_prompt`, `drop_long_prompts`.
  builtin: (train rows, eval rows) used when `data.train` is empty (the built-in
    tasks, as prompt/answer rows).
  """
  kw = dict(format=data.format, prompt_field=data.prompt_field, answer_field=data.answer_field)
  if data.train:
    train = to_examples(load_rows(data.train, "config.data.train"), what="config.data.train", **kw)
    if data.eval:
      evals = to_examples(load_rows(data.eval, "config.data.eval"), what="config.data.eval", **kw)
    else:
      train, evals = split_examples(train, data.eval_fraction)
  elif builtin is not None:
    train, evals = (to_examples([(f"built-in task ({s})", list(rows))], what="built-in task", **kw)
                    for s, rows in zip(("train", "eval"), builtin))
  else:
    raise ValueError("config.data.train is empty; give a .jsonl/.json/.parquet file, a glob"
                     " or a save_to_disk directory.")
  if not train:
    raise DataError(f"config.data.train={data.train!r}: no training rows (after the"
                    f" eval split of eval_fraction={data.eval_fraction}).")
  encoder = PromptEncoder(tokenizer, data.chat_template, data.system_prompt)
  enc = dict(max_prompt_length=max_prompt_length, drop_long_prompts=data.drop_long_prompts)
  train_ds = encode_examples(train, encoder, what="config.data.train", **enc)
  eval_ds = encode_examples(evals, encoder, what="config.data.eval", **enc) if evals else None
  return train_ds, eval_ds
