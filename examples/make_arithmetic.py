"""Writes the arithmetic tasks of the README's "A real model" section.

  python examples/make_arithmetic.py
    # -> examples/addition_{train,eval}.jsonl       two-digit additions
    # -> examples/two_ops_{train,eval}.jsonl        two operations, three numbers
    # -> examples/two_step_{train,eval}.jsonl       two-operation word problems
    # -> examples/word_problems_{train,eval}.jsonl  three-to-four-operation ones

`prompt_answer` format (one JSON object a line, `prompt` and `answer`), so
`--config.data.train=...` reads them and the chat template renders each prompt
as a user message. Rewards: `examples/arithmetic_rewards.py`. Train and eval
prompts are disjoint. Deterministic (seed 0).

- addition: "What is 17 + 25?" -> "42" (both operands 10..99).
- two_ops: "What is 46 + 39 - 40?" -> "45": two additions or subtractions on
  three two-digit numbers, left to right, the intermediate and the answer
  non-negative: the `smollm2_two_ops` preset's task. Held-out prompts are all
  two-operation; half the training prompts are one-operation (`one_or_two_ops`).
- two_step: two operations over one quantity (buy then give away, lose then
  find, packs plus what one has, packs minus what one gives away), numbers
  small enough for a short chain ("46 + 39 = 85, 85 - 40 = 45"); the base
  model writes long explanations (completions average 62 of 64 new
  tokens), so training it needs longer completions than 2 cores afford.
- word_problems: three to four operations over two or three named quantities
  (buy k packs of n, give away, share equally, ...); each answer is a
  non-negative integer, every intermediate too, so a model must chain steps.
"""
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
NAMES = ("Ava", "Ben", "Chloe", "Dan", "Emma", "Finn", "Grace", "Hugo", "Isla", "Jack",
         "Lena", "Mia", "Noah", "Omar", "Priya", "Ruby", "Sam", "Tara", "Umar", "Zoe")
ITEMS = ("apples", "pencils", "stickers", "marbles", "cookies", "books", "cards",
         "shells", "stamps", "coins")


def addition(rng):
  a, b = rng.randint(10, 100, size=2)
  return f"What is {a} + {b}?", str(a + b)


def two_ops(rng):
  while True:
    a, b, c = rng.randint(10, 100, size=3)
    plus1, plus2 = rng.randint(2, size=2) == 1
    first = a + b if plus1 else a - b
    answer = first + c if plus2 else first - c
    if first >= 0 and answer >= 0:
      return f"What is {a} {'+' if plus1 else '-'} {b} {'+' if plus2 else '-'} {c}?", str(answer)


def one_or_two_ops(rng):
  """two_ops' training prompts: half of them one operation ("What is 54 - 17?"),
  a curriculum: the base model rarely answers a two-operation prompt right
  (0.4% greedy), but often enough a one-operation one to learn the answer's
  form from it."""
  if rng.randint(2):
    return two_ops(rng)
  a, b = rng.randint(10, 100, size=2)
  if rng.randint(2):
    return f"What is {a} + {b}?", str(a + b)
  a, b = max(a, b), min(a, b)
  return f"What is {a} - {b}?", str(a - b)


def _packs(rng, name, item):
  start, packs, per, gone = (rng.randint(5, 40), rng.randint(2, 6), rng.randint(3, 10),
                             0)
  total = start + packs * per
  gone = rng.randint(1, total)
  return (f"{name} has {start} {item}. {name} buys {packs} packs of {item} with {per} in"
          f" each pack, then gives away {gone}. How many {item} does {name} have now?",
          total - gone)


def _share(rng, name, item):
  friends, each, extra = rng.randint(2, 7), rng.randint(3, 12), rng.randint(2, 20)
  start = friends * each - extra
  while start <= 0:
    extra = rng.randint(1, 5)
    start = friends * each - extra
  return (f"{name} has {start} {item} and finds {extra} more. {name} shares all of"
          f" them equally among {friends} friends. How many {item} does each friend"
          " get?", each)


def _two_people(rng, name, item):
  other = NAMES[(NAMES.index(name) + 1 + rng.randint(len(NAMES) - 1)) % len(NAMES)]
  a, times, given = rng.randint(3, 20), rng.randint(2, 5), 0
  b = a * times
  given = rng.randint(1, b)
  return (f"{name} has {a} {item}. {other} has {times} times as many {item} as {name}."
          f" {other} gives {given} {item} to {name}. How many {item} does {other} have"
          " left?", b - given)


def _price(rng, name, item):
  count, price, paid_extra = rng.randint(2, 9), rng.randint(2, 15), rng.randint(1, 30)
  paid = count * price + paid_extra
  return (f"{name} buys {count} {item} at {price} dollars each and pays with {paid}"
          f" dollars. How many dollars of change does {name} get?", paid_extra)


def _total_after(rng, name, item):
  boxes, per, eaten, got = (rng.randint(2, 6), rng.randint(4, 12), 0, rng.randint(2, 15))
  eaten = rng.randint(1, boxes * per)
  return (f"{name} fills {boxes} boxes with {per} {item} each, loses {eaten} of them,"
          f" and is then given {got} more. How many {item} does {name} have?",
          boxes * per - eaten + got)


TEMPLATES = (_packs, _share, _two_people, _price, _total_after)


def word_problem(rng):
  template = TEMPLATES[rng.randint(len(TEMPLATES))]
  text, answer = template(rng, NAMES[rng.randint(len(NAMES))], ITEMS[rng.randint(len(ITEMS))])
  assert answer >= 0, text
  return text, str(answer)


def _buy_give(rng, name, item):
  a, b = rng.randint(10, 60, size=2)
  c = rng.randint(1, a + b)
  return (f"{name} has {a} {item}, buys {b} more and then gives away {c}. How many"
          f" {item} does {name} have now?", a + b - c)


def _lose_find(rng, name, item):
  a = rng.randint(20, 80)
  b, c = rng.randint(1, a), rng.randint(5, 40)
  return (f"{name} has {a} {item}, loses {b} of them and then finds {c} more. How many"
          f" {item} does {name} have now?", a - b + c)


def _packs_plus(rng, name, item):
  k, per, a = rng.randint(2, 10), rng.randint(2, 10), rng.randint(5, 50)
  return (f"{name} has {a} {item} and buys {k} packs with {per} {item} in each pack."
          f" How many {item} does {name} have now?", a + k * per)


def _packs_minus(rng, name, item):
  k, per = rng.randint(2, 10), rng.randint(3, 10)
  c = rng.randint(1, k * per)
  return (f"{name} buys {k} packs with {per} {item} in each pack and gives away {c}"
          f" {item}. How many {item} does {name} have left?", k * per - c)


TWO_STEP = (_buy_give, _lose_find, _packs_plus, _packs_minus)


def two_step(rng):
  template = TWO_STEP[rng.randint(len(TWO_STEP))]
  text, answer = template(rng, NAMES[rng.randint(len(NAMES))], ITEMS[rng.randint(len(ITEMS))])
  assert answer >= 0, text
  return text, str(answer)


# task -> (held-out maker, train size, held-out size[, train maker if other]).
TASKS = {"addition": (addition, 4000, 256),
         "two_ops": (two_ops, 4000, 256, one_or_two_ops),
         "two_step": (two_step, 4000, 256),
         "word_problems": (word_problem, 4000, 256)}


def write(task: str, folder: str = HERE, seed: int = 0) -> dict[str, str]:
  """Writes `<task>_train.jsonl` and `<task>_eval.jsonl`; returns their paths."""
  make, num_train, num_eval, *train_make = TASKS[task]
  rng = np.random.RandomState(seed)
  seen, rows = set(), []
  while len(rows) < num_train + num_eval:
    maker = train_make[0] if train_make and len(rows) >= num_eval else make
    prompt, answer = maker(rng)
    if prompt not in seen:  # eval prompts never appear in train
      seen.add(prompt)
      rows.append({"prompt": prompt, "answer": answer})
  paths = {}
  for split, part in (("eval", rows[:num_eval]), ("train", rows[num_eval:])):
    paths[split] = os.path.join(folder, f"{task}_{split}.jsonl")
    with open(paths[split], "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in part)
  return paths


if __name__ == "__main__":
  for name in TASKS:
    for split, path in write(name).items():
      print(f"wrote {path}")
