"""Writes the README's example data files.

  python examples/make_examples.py
    # -> examples/reverse.jsonl (GRPO, "Train on your own data")
    # -> examples/moat_tasks.jsonl, moat_corpus.jsonl, moat_lookup.jsonl (MOAT)

reverse.jsonl: digit-reversal problems (3 or 4 digits, the `tiny` preset's
range) in the `prompt_answer` format, one JSON object a line, with an extra
`num_digits` column that reward functions receive.

moat_*.jsonl: MOAT tasks in the format of `alignax.agents.data.moat_data` (docs/api.md),
drawn from a small built-in world: relation-chain questions whose gold actions
are Lookups, except that a first hop a BM25 Search answers as well is written as
`Search[#0 <relation words>]` (the task's subgoal keeps its wording). Every
action's result is what the tools return. Deterministic (seed 0).
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


def moat_main(folder=HERE, num_train=96, num_eval=24, seed=0):
  from alignax.agents.data import moat_data  # pylint: disable=g-import-not-at-top
  from alignax.agents.worlds import retrieval  # pylint: disable=g-import-not-at-top
  from alignax.agents.worlds import moat_world as mw  # pylint: disable=g-import-not-at-top
  world = mw.make_moat_world(seed, num_people=24, num_cities=6, num_countries=3,
                             num_companies=4)
  search = mw.make_search_fn(retrieval.BM25Retriever.build(world.corpus))
  splits = []
  for tasks, count in zip(world.splits(eval_fraction=0.2), (num_train, num_eval, num_eval)):
    out = []
    for t in tasks[:count]:
      actions = mw.gold_actions(t)
      words = [w for w in mw.RELATIONS[t.chain[0]][2].split() if w not in ("{s}", "{o}", ".")]
      first = mw.Action("search", (f"#0 {' '.join(words)}",))
      if mw.execute(world, [first], search, t.subject).values[0] == t.path[0]:
        actions[0] = first
      out.append(mw.MoatTask(t.id, t.subject, t.chain, t.answer, t.path, t.nested,
                             text=t.question, actions=tuple(actions),
                             subgoals=tuple(mw.parse_subgoals(mw.gold_subgoals(t)))))
    splits.append(out)
  paths = moat_data.write_files(world, splits, folder, search, prefix="moat_")
  print(f"wrote {sum(map(len, splits))} MOAT tasks to {paths['tasks_path']}")


if __name__ == "__main__":
  main()
  moat_main()
