r"""DRO per question type: what the selector and the generator each do, before
and after EM.

  python benchmarks/dro_diagnostics.py --workdir runs/dro

Reads a finished DRO run (`python -m alignax.experiments.dro`): its
`config.json`, the warm-up model(s) `init_model/` (or `init_selector/` +
`init_generator/`) and DRO's trained model(s) `final_model/` (or
`final_selector/` + `final_generator/`). On the run's held-out questions it
measures, per question type (born_city, employer: 1 hop; born_country,
employer_city: 2 hops, the second passage being the bridge BM25 never finds):

  selector EM          EM of the whole pipeline (greedy selection, greedy answer),
                       as the binary's `eval/em`
  hop-1 gold selected  share of questions whose greedy selection holds the
                       hop-1 gold passage
  bridge selected      the same for the 2-hop bridge passage
  generator EM w/ gold the generator's EM given the gold passages among random
                       other candidates (top_k passages in all, shuffled; fixed seed)

Prints the table (before -> after) and writes JSON (default
`benchmarks/results/dro_diagnostics.json`).
"""
from __future__ import annotations

import argparse
import json
import os
import types

import jax
import ml_collections
import numpy as np
from flax import nnx

from alignax.agents.methods import dro_agents
from alignax.agents.scoring import answer_metrics as metrics_lib
from alignax.agents.worlds import dro_world, retrieval
from alignax.experiments import dro
from alignax.experiments.runtime import pretrained
from alignax.framework import run_records

COLUMNS = {"selector_em": "selector EM", "hop1_selected": "hop-1 gold selected",
           "bridge_selected": "bridge selected", "generator_em_gold": "generator EM w/ gold"}


def _states(models):
  """{name: Decoder} -> (graphdef, {name: object with .params}) as dro_agents expects."""
  graphdef, states = None, {}
  for name, model in models.items():
    graphdef, params = nnx.split(model)
    states[name] = types.SimpleNamespace(params=params)
  return graphdef, states


def measure(graphdef, states, roles, fmt, examples, seed: int = 0) -> dict:
  """{question type: {column: percent, "count": n}} (+ "all") on `examples`."""
  world = fmt.world
  _, perms, _ = dro_agents.select(graphdef, states[roles["selector"]].params, fmt, examples,
                                  jax.random.key(0))
  selected = [fmt.docs(e, p) for e, p in zip(examples, perms)]
  gen = states[roles["generator"]].params
  preds = dro_agents.answers(graphdef, gen, fmt, examples, selected)
  # The gold passages among random other candidates, shuffled (the warm-up's
  # generator rows, without the counterfactual swap).
  rng = np.random.RandomState(seed)
  with_gold = []
  for e in examples:
    gold = list(world.gold[e.id])
    others = [int(i) for i in fmt.candidates[e.id] if int(i) not in gold]
    docs = gold + [others[i] for i in rng.permutation(len(others))[:fmt.top_k - len(gold)]]
    with_gold.append([docs[i] for i in rng.permutation(len(docs))])
  gold_preds = dro_agents.answers(graphdef, gen, fmt, examples, with_gold)
  rows = {}
  for e, sel, p, gp in zip(examples, selected, preds, gold_preds):
    gold = world.gold[e.id]
    r = {"selector_em": metrics_lib.exact_match(p, e.answers),
         "hop1_selected": gold[0] in sel,
         "generator_em_gold": metrics_lib.exact_match(gp, e.answers)}
    if len(gold) > 1:
      r["bridge_selected"] = gold[1] in sel
    for qtype in (e.id.split(":")[0], "all"):
      rows.setdefault(qtype, []).append(r)
  out = {}
  for qtype, rs in rows.items():
    out[qtype] = {"count": len(rs)}
    for col in COLUMNS:
      vals = [float(r[col]) for r in rs if col in r]
      if vals:
        out[qtype][col] = 100.0 * float(np.mean(vals))
  return out


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", default="runs/dro")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                    "dro_diagnostics.json"))
  args = parser.parse_args(argv)
  with open(os.path.join(args.workdir, run_records.CONFIG_FILE)) as f:
    config = ml_collections.ConfigDict(json.load(f))
  if config.dataset != "builtin":
    raise ValueError(f"{args.workdir}: config.dataset={config.dataset!r}; the per-type table"
                     " needs the built-in world's question types.")
  world = dro.load_world(config)
  retriever = retrieval.BM25Retriever.build_or_load(world.dataset.corpus,
                                                    os.path.join(args.workdir, "bm25"))
  candidates = dro.build_candidates(config, world, retriever)
  roles = dro.roles_of(config)
  names = sorted(set(roles.values()))
  folder = lambda prefix, n: os.path.join(args.workdir,
                                          f"{prefix}_{'model' if n == 'policy' else n}")
  examples = world.dataset.eval[:config.eval.size]
  result = {"workdir": os.path.abspath(args.workdir), "seed": config.seed,
            "candidates": config.candidates.to_dict(), "questions": len(examples),
            "columns": COLUMNS}
  for label, prefix in (("warm-up", "init"), ("dro", "final")):
    models, tokenizer = pretrained.build_or_load_hf({n: folder(prefix, n) for n in names})
    fmt = dro.make_prompts(tokenizer, world, candidates, config)
    graphdef, states = _states(models)
    result[label] = measure(graphdef, states, roles, fmt, examples, seed=config.seed)

  types_ = [t for t in (*dro_world.QUESTION_TYPES, "all") if t in result["warm-up"]]
  print(f"\nDRO per question type, {args.workdir} (held-out, warm-up -> dro)")
  print(f"{'type':<14} {'n':>4}" + "".join(f" {c:>22}" for c in COLUMNS.values()))
  for t in types_:
    b, a = result["warm-up"][t], result["dro"][t]
    cells = "".join(f" {(f'{b[c]:.1f} -> {a[c]:.1f}' if c in b else '-'):>22}"
                    for c in COLUMNS)
    print(f"{t:<14} {b['count']:>4}{cells}")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  print(f"\nwrote {args.out}")
  return result


if __name__ == "__main__":
  main()
