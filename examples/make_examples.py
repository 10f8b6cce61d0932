"""Writes the example prompt file the README's "Train on your own data" uses.

  python examples/make_examples.py      # -> examples/reverse.jsonl

Digit-reversal problems (3 or 4 digits, the `tiny` preset's range) in the
`prompt_answer` format, one JSON object a line, with an extra `num_digits`
column that reward functions receive. Deterministic (seed 0).
"""
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def main(path=os.path.join(HERE, "reverse.jsonl"), count=512, seed=0):
  rng = np.random.RandomState(seed)
  with open(path, "w") as f:
    for _ in range(count):
      digits = "".join(map(str, rng.randint(0, 10, rng.randint(3, 5))))
      f.write(json.dumps({"prompt": digits + ">", "answer": digits[::-1],
                          "num_digits": len(digits)}) + "\n")
  print(f"wrote {count} rows to {path}")


if __name__ == "__main__":
  main()
