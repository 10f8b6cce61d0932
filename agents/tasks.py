"""Built-in verifiable task: multi-digit addition with an exact-match reward.

Deterministic: problem `i` of a split depends only on (seed, split, i). A pair
(a, b) belongs to the held-out split iff a hash of it says so, so train and
eval never share a problem. The tokenizer is a character-level WordLevel model
trained locally with `tokenizers` and saved in the Hugging Face format.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Sequence

import numpy as np

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0..3, in this order


@dataclasses.dataclass(frozen=True)
class Problem:
  prompt: str  # e.g. "47+85="
  answer: str  # e.g. "132"


@dataclasses.dataclass(frozen=True)
class AdditionTask:
  """`a+b=` for a, b with `num_digits` digits; held-out fraction by hash."""

  num_digits: int = 2
  seed: int = 0
  eval_fraction: float = 0.1

  def __post_init__(self):
    if not 1 <= self.num_digits <= 6:
      raise ValueError(f"num_digits must be in [1, 6], got {self.num_digits}.")
    if not 0.0 < self.eval_fraction < 1.0:
      raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}.")

  def is_eval(self, a: int, b: int) -> bool:
    h = hashlib.sha256(f"{self.seed}:{a}+{b}".encode()).digest()
    return int.from_bytes(h[:4], "little") / 2**32 < self.eval_fraction

  def _draw(self, rng: np.random.RandomState, want_eval: bool) -> Problem:
    hi = 10 ** self.num_digits
    while True:
      a, b = (int(x) for x in rng.randint(0, hi, 2))
      if self.is_eval(a, b) == want_eval:
        return Problem(f"{a}+{b}=", str(a + b))

  def problems(self, split: str, index: int, count: int) -> list[Problem]:
    """`count` problems of batch `index` of `split` ("train" or "eval")."""
    if split not in ("train", "eval"):
      raise ValueError(f"split must be 'train' or 'eval', got {split!r}.")
    key = (self.seed, 0 if split == "train" else 1, index)
    rng = np.random.RandomState(np.random.SeedSequence(key).generate_state(1)[0])
    return [self._draw(rng, split == "eval") for _ in range(count)]

  def corpus(self) -> str:
    """Text covering every symbol of the task (to train the tokenizer)."""
    return "0123456789+=\n"


def exact_match_reward(completion: str, answer: str) -> float:
  """1.0 if the completion (stripped) is exactly the answer, else 0.0."""
  return float(completion.strip() == answer)


def train_tokenizer(task: AdditionTask, path: str | None = None):
  """Trains a character-level tokenizer on the task's symbols.

  Returns a `transformers.PreTrainedTokenizerFast` (saved to `path` if given).
  Ids: <pad>=0, <s>=1, </s>=2, <unk>=3, then the characters.
  """
  import transformers
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

  tok = Tokenizer(models.WordLevel(unk_token=UNK))
  tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
  tok.decoder = decoders.Fuse()
  trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS))
  tok.train_from_iterator([task.corpus()], trainer=trainer)
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK)
  if path:
    os.makedirs(path, exist_ok=True)
    fast.save_pretrained(path)
  return fast


def encode_prompts(tokenizer, problems: Sequence[Problem]) -> list[list[int]]:
  """Token ids of `<s>` + prompt for each problem."""
  return [[tokenizer.bos_token_id] + tokenizer.encode(p.prompt, add_special_tokens=False)
          for p in problems]


def encode_answers(tokenizer, problems: Sequence[Problem]) -> list[list[int]]:
  """Token ids of answer + `</s>` (the supervised completion)."""
  return [tokenizer.encode(p.answer, add_special_tokens=False) + [tokenizer.eos_token_id]
          for p in problems]


def score_completions(tokenizer, tokens: np.ndarray, mask: np.ndarray,
                      problems: Sequence[Problem], num_generations: int = 1) -> np.ndarray:
  """Exact-match rewards [N] for completions [N, C] of problems (groups contiguous)."""
  texts = tokenizer.batch_decode(
      [row[m].tolist() for row, m in zip(np.asarray(tokens), np.asarray(mask, bool))],
      skip_special_tokens=True)
  answers = [p.answer for p in problems for _ in range(num_generations)]
  if len(answers) != len(texts):
    raise ValueError(f"{len(texts)} completions for {len(answers)} expected answers.")
  return np.asarray([exact_match_reward(t, a) for t, a in zip(texts, answers)], np.float32)
