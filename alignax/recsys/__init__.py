"""alignax.recsys: session recommenders and their unlearning (CAU).

Not part of the LLM framework layer: it builds on `alignax.objectives`
(unlearning losses, MGDA, curricula) and Flax NNX, and is used by the
`cau_unlearn` binary.

- `recommenders`: GRU4Rec, SASRec, BERT4Rec; jitted training and evaluation.
- `cau`: one CAU unlearning step (MGDA or fixed weights), difficulty scores
  and curriculum schedules, each a `jax.jit` function with static arguments.
- `data.sessions`: the synthetic session generator and shared helpers
  (NumPy only).
- `data.builders`: tensorflow-datasets builders for MovieLens-1M and Amazon
  reviews; needs the `recsys` extra (`pip install 'alignax[recsys]'`).
"""
