"""Small files in the real HotpotQA layout for the EM binaries' tests, drawn
from the built-in QA world (so the questions are answerable from the
passages): `train.json` / `dev.json`, JSON arrays of {_id, question, answer,
supporting_facts: [[title, sentence index]], context: [[title, [sentences]]]}."""
import json
import os

from alignax.agents import qa_world


def write_hotpotqa(folder, num_people=12):
  """Each question's context: the passages naming its subject or an entity of
  its plan; those stating a plan fact are its supporting facts."""
  ds = qa_world.make_world(seed=0, num_people=num_people, num_cities=4, num_countries=2,
                           num_companies=3, heldout_fraction=0.3).dataset()
  title = lambda p: f"{p.title} {p.id}"  # HotpotQA titles are unique
  os.makedirs(folder, exist_ok=True)
  for name, exs in (("train.json", ds.train), ("dev.json", ds.eval)):
    rows = []
    for e in exs:
      words = {w for q, a in e.plan for w in (q.split()[0], a)}
      ctx = [p for p in ds.corpus if words & set(p.text.split())][:5]
      gold = [p for p in ctx if any(q.split()[0] in p.text.split() and a in p.text.split()
                                    for q, a in e.plan)]
      rows.append({"_id": e.id, "question": e.question, "answer": e.answers[0],
                   "supporting_facts": [[title(p), 0] for p in gold],
                   "context": [[title(p), [p.text]] for p in ctx]})
    with open(os.path.join(folder, name), "w") as f:
      json.dump(rows, f)
  return str(folder)
