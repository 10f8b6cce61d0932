"""Peak temporary memory of log-prob loss + gradient: fused vs naive.

Compiles (does not run) `grad(loss)` w.r.t. hidden states and the output
projection, where `loss = sum(logp * mask)` over GRPO-sized inputs, and reads
XLA's `memory_analysis().temp_size_in_bytes`. The naive version materialises
`[N, T, V]` logits (and their log-softmax and cotangent); the fused one
(`alignax.framework.logprobs`) works chunk by chunk. CPU compile is enough, so
this runs in CI; on an accelerator pass `--platform=gpu`.

  python benchmarks/logprob_memory.py [--n 8 --t 2048 --d 256 --v 32000]
"""
import argparse
import json
import os
import platform

import jax
import jax.numpy as jnp

from alignax.framework.logprobs import fused_logprobs_and_entropy


def naive_logprobs(hidden, w, tokens, temperature=1.0):
  z = jnp.einsum("ntd,dv->ntv", hidden, w,
                 preferred_element_type=jnp.float32) / temperature
  lp = jax.nn.log_softmax(z, axis=-1)
  return jnp.take_along_axis(lp, tokens[..., None], axis=-1)[..., 0]


def naive_with_entropy(hidden, w, tokens):
  z = jnp.einsum("ntd,dv->ntv", hidden, w, preferred_element_type=jnp.float32)
  lp = jax.nn.log_softmax(z, axis=-1)
  ent = -jnp.sum(jnp.exp(lp) * lp, axis=-1)
  return jnp.take_along_axis(lp, tokens[..., None], axis=-1)[..., 0], ent


def temp_bytes(loss, shapes):
  comp = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*shapes).compile()
  return comp.memory_analysis().temp_size_in_bytes


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--n", type=int, default=8)
  p.add_argument("--t", type=int, default=2048)
  p.add_argument("--d", type=int, default=256)
  p.add_argument("--v", type=int, default=32000)
  p.add_argument("--token_chunk", type=int, default=1024)
  p.add_argument("--vocab_chunk", type=int, default=8192)
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__),
                                               "results",
                                               "logprob_memory.json"))
  a = p.parse_args()
  shapes = (jax.ShapeDtypeStruct((a.n, a.t, a.d), jnp.float32),
            jax.ShapeDtypeStruct((a.d, a.v), jnp.float32),
            jax.ShapeDtypeStruct((a.n, a.t), jnp.int32))
  mask = jnp.ones((a.n, a.t), jnp.float32)

  def lp_loss(fn):
    return lambda h, w, tok: jnp.sum(fn(h, w, tok) * mask)

  def lp_ent_loss(fn):
    def loss(h, w, tok):
      lp, ent = fn(h, w, tok)
      return jnp.sum(lp * mask) + 0.01 * jnp.sum(ent * mask)
    return loss

  tc, vc = a.token_chunk, a.vocab_chunk
  variants = {
      "naive logp": lp_loss(naive_logprobs),
      f"fused logp (token_chunk={tc})": lp_loss(
          lambda h, w, t: fused_logprobs_and_entropy(
              h, w, t, token_chunk=tc, entropy=False)[0]),
      f"fused logp (token_chunk={tc}, vocab_chunk={vc})": lp_loss(
          lambda h, w, t: fused_logprobs_and_entropy(
              h, w, t, token_chunk=tc, vocab_chunk=vc, entropy=False)[0]),
      "naive logp+entropy": lp_ent_loss(naive_with_entropy),
      f"fused logp+entropy (token_chunk={tc})": lp_ent_loss(
          lambda h, w, t: fused_logprobs_and_entropy(h, w, t, token_chunk=tc)),
  }
  rows = []
  for name, loss in variants.items():
    rows.append({"variant": name, "temp_bytes": int(temp_bytes(loss, shapes))})
  base = {"logp": rows[0]["temp_bytes"], "logp+entropy": rows[3]["temp_bytes"]}
  for r in rows:
    key = "logp+entropy" if "entropy" in r["variant"] else "logp"
    r["reduction_vs_naive"] = base[key] / max(r["temp_bytes"], 1)

  logits_gb = a.n * a.t * a.v * 4 / 1e9
  print(f"N={a.n} T={a.t} D={a.d} V={a.v}  one f32 [N,T,V] = {logits_gb:.2f} GB"
        f"  backend={jax.default_backend()}")
  print(f"{'variant':<52} {'temp MB':>10} {'x less':>8}")
  for r in rows:
    print(f"{r['variant']:<52} {r['temp_bytes'] / 1e6:>10.1f}"
          f" {r['reduction_vs_naive']:>8.1f}")
  config = {k: v for k, v in vars(a).items() if k != "out"}
  result = {"config": config | {"backend": jax.default_backend(),
                                 "jax": jax.__version__,
                                 "machine": platform.machine()},
            "results": rows}
  os.makedirs(os.path.dirname(a.out), exist_ok=True)
  with open(a.out, "w") as f:
    json.dump(result, f, indent=2)
  print("wrote", a.out)


if __name__ == "__main__":
  main()
