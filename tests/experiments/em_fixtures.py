"""Small files in the real HotpotQA layout for the EM binaries' tests, drawn
from the built-in QA world (so the questions are answerable from the
passages): `train.json` / `dev.json`, JSON arrays of {_id, question, answer,
supporting_facts: [[title, sentence index]], context: [[title, [sentences]]]}."""
import json
import os

import jax.numpy as jnp
import numpy as np

from alignax.agents import qa_world
from alignax.framework import hf, vocab


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
