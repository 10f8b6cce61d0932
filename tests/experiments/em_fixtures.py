"""Small files in the real HotpotQA and KILT layouts for the EM binaries'
tests, drawn from the built-in QA world (so the questions are answerable from
the passages):
  HotpotQA  `train.json` / `dev.json`, JSON arrays of {_id, question, answer,
            supporting_facts: [[title, sentence index]], context: [[title, [sentences]]]};
  KILT      `train.jsonl` / `dev.jsonl`, {id, input, output: [{answer, provenance:
            [{wikipedia_id, title}]}]} a line, and the passage corpus `corpus.jsonl`
            ({id, title, text} a line)."""
import json
import os

import jax.numpy as jnp
import numpy as np

from alignax.agents.worlds import qa_world
from alignax.framework import hf, vocab


def _examples(num_people):
  """(split name, [(example, context passages, gold passages)]) of a small
  built-in world: each question's context holds the passages naming its
  subject or an entity of its plan; those stating a plan fact are gold."""
  ds = qa_world.make_world(seed=0, num_people=num_people, num_cities=4, num_countries=2,
                           num_companies=3, heldout_fraction=0.3).dataset()
  out = []
  for split, exs in (("train", ds.train), ("dev", ds.eval)):
    rows = []
    for e in exs:
      words = {w for q, a in e.plan for w in (q.split()[0], a)}
      ctx = [p for p in ds.corpus if words & set(p.text.split())][:5]
      gold = [p for p in ctx if any(q.split()[0] in p.text.split() and a in p.text.split()
                                    for q, a in e.plan)]
      rows.append((e, ctx, gold))
    out.append((split, rows))
  return ds, out


def _title(p):
  return f"{p.title} {p.id}"  # unique titles, as HotpotQA's and KILT's are


def write_hotpotqa(folder, num_people=12):
  _, splits = _examples(num_people)
  os.makedirs(folder, exist_ok=True)
  for split, rows in splits:
    records = [{"_id": e.id, "question": e.question, "answer": e.answers[0],
                "supporting_facts": [[_title(p), 0] for p in gold],
                "context": [[_title(p), [p.text]] for p in ctx]} for e, ctx, gold in rows]
    with open(os.path.join(folder, f"{split}.json"), "w") as f:
      json.dump(records, f)
  return str(folder)


def write_kilt(folder, num_people=12):
  ds, splits = _examples(num_people)
  os.makedirs(folder, exist_ok=True)
  for split, rows in splits:
    with open(os.path.join(folder, f"{split}.jsonl"), "w") as f:
      for e, _, gold in rows:
        f.write(json.dumps({"id": e.id, "input": e.question, "output": [
            {"answer": e.answers[0],
             "provenance": [{"wikipedia_id": p.id, "title": _title(p)} for p in gold]}]})
                + "\n")
  with open(os.path.join(folder, "corpus.jsonl"), "w") as f:
    for p in ds.corpus:
      f.write(json.dumps({"id": p.id, "title": _title(p), "text": p.text}) + "\n")
  return str(folder)


def assert_transformers_loads(folder, markers=()):
  """`folder` (an exported model) loads in transformers with the logits of
  alignax's loader (1e-5), with a tokenizer that keeps each marker as one
  token and a generation config listing the tokenizer's EOS."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  tok = transformers.AutoTokenizer.from_pretrained(folder)
  for m in markers:
    assert len(tok.encode(m, add_special_tokens=False)) == 1, m
  ids = vocab.prompt_ids(tok, " ".join(markers) + " who is the boss ?")
  ref = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
  with torch.no_grad():
    want = ref(torch.tensor([ids])).logits.numpy()
  got = np.asarray(hf.from_pretrained(folder)(jnp.asarray([ids])))
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  with open(os.path.join(folder, "generation_config.json")) as f:
    eos = json.load(f)["eos_token_id"]
  assert tok.eos_token_id in (eos if isinstance(eos, list) else [eos])
