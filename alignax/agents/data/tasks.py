"""Built-in verifiable tasks (addition, digit reversal) as prompt/answer datasets.

The GRPO binary reads them through the same path as a user's data
(`agents.data.prompt_data`, format `prompt_answer`) and scores them with the
registered `exact_match` reward (`agents.scoring.rewards`). Deterministic: problem `i` of a split depends only on (seed, split, i). The tokenizer is a character-level WordLevel model
trained locally with `tokenizers` and saved in the Hugging Face format.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Sequence

import numpy as np

from alignax.registry import Registry

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0..3, in this order


@dataclasses.dataclass(frozen=True)
class Problem:
  prompt: str  # e.g. "47+85="
  answer: str  # e.g. "132"


class VerifiableTask:
  """A deterministic verifiable task: problems by (split, batch index).

  Subclasses define `sample(rng) -> Problem`; a problem belongs to the held-out
  split iff a hash of its prompt says so, so train and eval never share one.
  """

  seed: int
  eval_fraction: float

  def sample(self, rng: np.random.RandomState) -> Problem:
    raise NotImplementedError

  def is_eval(self, problem: Problem) -> bool:
    h = hashlib.sha256(f"{self.seed}:{problem.prompt}".encode()).digest()
    return int.from_bytes(h[:4], "little") / 2**32 < self.eval_fraction

  def problems(self, split: str, index: int, count: int) -> list[Problem]:
    """`count` problems of batch `index` of `split` ("train" or "eval")."""
    if split not in ("train", "eval"):
      raise ValueError(f"split must be 'train' or 'eval', got {split!r}.")
    if not 0.0 < self.eval_fraction < 1.0:
      raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}.")
    key = (self.seed, 0 if split == "train" else 1, index)
    rng = np.random.RandomState(np.random.SeedSequence(key).generate_state(1)[0])
    out = []
    while len(out) < count:
      problem = self.sample(rng)
      if self.is_eval(problem) == (split == "eval"):
        out.append(problem)
    return out

  def flawed_answer(self, problem: Problem) -> str:
    """A plausible wrong answer a flawed demonstrator would write."""
    raise NotImplementedError

  def corpus(self) -> str:
    """Text covering every symbol of the task (to train the tokenizer)."""
    return "0123456789+=>\n"


@dataclasses.dataclass(frozen=True)
class AdditionTask(VerifiableTask):
  """`a+b=` with `num_digits`-digit operands; the answer is the sum."""

  num_digits: int = 2
  seed: int = 0
  eval_fraction: float = 0.1
  # Write the sum least-significant digit first ("47+85=" -> "231"): each
  # output digit then depends only on digits already seen (Lee et al., 2023,
  # "Teaching arithmetic to small transformers").
  reverse_answer: bool = False

  def sample(self, rng):
    a, b = (int(x) for x in rng.randint(0, 10 ** self.num_digits, 2))
    answer = str(a + b)
    return Problem(f"{a}+{b}=", answer[::-1] if self.reverse_answer else answer)

  def flawed_answer(self, problem):
    """Digit-wise sum that forgets every carry (the classic error)."""
    a, b = problem.prompt[:-1].split("+")
    width = max(len(a), len(b))
    digits = "".join(str((int(x) + int(y)) % 10) for x, y in zip(a.zfill(width), b.zfill(width)))
    answer = str(int(digits))
    return answer[::-1] if self.reverse_answer else answer


@dataclasses.dataclass(frozen=True)
class ReverseTask(VerifiableTask):
  """`d1 d2 ... dn>` -> the digits reversed, n in [min_len, max_len]."""

  min_len: int = 3
  max_len: int = 6
  seed: int = 0
  eval_fraction: float = 0.1

  def sample(self, rng):
    n = rng.randint(self.min_len, self.max_len + 1)
    digits = "".join(str(d) for d in rng.randint(0, 10, n))
    return Problem(digits + ">", digits[::-1])

  def flawed_answer(self, problem):
    """Copies the digits instead of reversing them."""
    return problem.prompt[:-1]


# Tasks a config can name (config.task.name); the other config.task fields are
# passed to the class.
TASKS = Registry("built-in task")
TASKS.add("addition", AdditionTask)
TASKS.add("reverse", ReverseTask)


def make_task(name: str, **kwargs) -> VerifiableTask:
  return TASKS[name](**kwargs)  # an unknown name lists the registered ones


def records(problems: Sequence[Problem]) -> list[dict[str, str]]:
  """Problems as `{"prompt", "answer"}` rows (the `prompt_answer` data format)."""
  return [{"prompt": p.prompt, "answer": p.answer} for p in problems]


def train_tokenizer(task: VerifiableTask, path: str | None = None):
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
