"""The dense-matmul floor of the sampler and GRPO-step benchmarks on this machine.

Every dense matmul one benchmarked call performs is listed with its exact
shape and count, derived from the model and the call's structure (below).
Each distinct shape is timed alone, jitted, inside a `fori_loop` of
`--inner` dependent repetitions (so neither dispatch nor hoisting hides its
cost), best of `--repeats`; torch times the same shapes with
`torch.nn.functional.linear` / `torch.mm` on the same threads. The sum over
shapes x counts is a lower bound on the call's wall time in that library: the
real call also runs attention, norms, softmax passes, sampling and the
optimiser, and cannot run its matmuls faster than they run alone.

Structures (defaults match `benchmarks/sampler.py` and `benchmarks/grpo_step.py`):
  sampler:   B rows, prompt P, N new tokens, greedy. Prefill: the layers over
             B*P rows, the LM head on the last position (B rows). Decode: N
             steps of the layers and the LM head at B rows.
  grpo_step: U prompts x G completions, prompt P, N new tokens, alignax's
             structure: generation prefills U*P rows once (prompt shared by
             the group), then N decode steps at U*G rows; the update runs the
             prompt once per group (U*P rows) and the completions (U*G*N rows)
             through the layers, the LM head on the U*G*N completion rows, and
             the backward pass: two matmuls (input and weight gradient) of the
             same size per forward matmul.
The per-layer matmuls are q, k, v, o (hidden x hidden; k, v hidden x kv
width), gate, up (hidden x intermediate) and down (intermediate x hidden).

  python benchmarks/matmul_floor.py [--out benchmarks/results/matmul_floor.json]

It reads the measured step times from benchmarks/results/{sampler,grpo_step}.json
(when present) to print how much of each target's time budget the floor uses.
"""
import argparse
import collections
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np


def layer_shapes(hidden, intermediate, kv_width):
  """(K, N) of each dense matmul of one decoder layer."""
  return [(hidden, hidden), (hidden, kv_width), (hidden, kv_width), (hidden, hidden),
          (hidden, intermediate), (hidden, intermediate), (intermediate, hidden)]


def forward_dots(rows, layers, hidden, intermediate, kv_width):
  return [(rows, k, n) for _ in range(layers)
          for k, n in layer_shapes(hidden, intermediate, kv_width)]


def backward_dots(dots):
  """Input gradient dy @ W^T [M,N]x[N,K] and weight gradient x^T @ dy [K,M]x[M,N]."""
  out = []
  for m, k, n in dots:
    out += [("dx", m, n, k), ("dw", k, m, n)]
  return out


def sampler_plan(a):
  kv = a.hidden  # benchmarks/sampler.py uses as many kv heads as heads
  inter = 4 * a.hidden
  plan = collections.OrderedDict()
  plan["prefill layers"] = forward_dots(a.batch * a.prompt, a.layers, a.hidden, inter, kv)
  plan["prefill lm head"] = [(a.batch, a.hidden, a.vocab)]
  plan["decode layers"] = forward_dots(a.batch, a.layers, a.hidden, inter, kv) * a.new
  plan["decode lm head"] = [(a.batch, a.hidden, a.vocab)] * a.new
  return plan


def grpo_plan(a):
  kv, inter = getattr(a, "kv_width", None) or a.hidden, a.intermediate
  rows = a.prompts_per_step * a.generations
  plan = collections.OrderedDict()
  plan["generate: prefill layers"] = forward_dots(a.prompts_per_step * a.prompt, a.layers,
                                                  a.hidden, inter, kv)
  plan["generate: prefill lm head"] = [(a.prompts_per_step, a.hidden, a.vocab)]
  plan["generate: decode layers"] = forward_dots(rows, a.layers, a.hidden, inter, kv) * a.new
  plan["generate: decode lm head"] = [(rows, a.hidden, a.vocab)] * a.new
  fwd_layers = (forward_dots(a.prompts_per_step * a.prompt, a.layers, a.hidden, inter, kv)
                + forward_dots(rows * a.new, a.layers, a.hidden, inter, kv))
  head = [(rows * a.new, a.hidden, a.vocab)]
  plan["update: forward layers"] = fwd_layers
  plan["update: forward lm head"] = head
  plan["update: backward lm head"] = backward_dots(head)
  plan["update: backward layers"] = backward_dots(fwd_layers)
  return plan


def _key(dot):
  return dot if isinstance(dot[0], str) else ("fwd",) + tuple(dot)


def time_xla(kind, m, k, n, inner, repeats):
  """Seconds per [m,k]x[k,n] product (operand layout as the model's pass uses)."""
  rng = np.random.RandomState(0)
  # fwd: x [m,k] @ W [k,n]; dx: dy [m,k] @ W^T, W stored [n,k]; dw: x^T @ dy, x [k,m], dy [k,n].
  if kind == "fwd":
    lhs, rhs = rng.randn(m, k), rng.randn(k, n)
    prod = lambda x, w: x @ w
  elif kind == "dx":
    lhs, rhs = rng.randn(m, k), rng.randn(n, k)    # W stored [K_in=n, N_out=k]
    prod = lambda x, w: x @ w.T
  else:
    lhs, rhs = rng.randn(k, m), rng.randn(k, n)     # x [rows=k, in=m], dy [rows=k, out=n]
    prod = lambda x, w: x.T @ w
  lhs = jnp.asarray(lhs, jnp.float32)
  rhs = jnp.asarray(rhs, jnp.float32)

  @jax.jit
  def loop(lhs, rhs):
    def body(_, c):
      y = prod(lhs + c, rhs)
      return y[0, 0] * 1e-30       # a dependency: no repetition can be hoisted or skipped
    return jax.lax.fori_loop(0, inner, body, jnp.float32(0))

  loop(lhs, rhs).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    loop(lhs, rhs).block_until_ready()
    best = min(best, (time.perf_counter() - t0) / inner)
  return best


def time_torch(kind, m, k, n, inner, repeats):
  import torch
  g = torch.Generator().manual_seed(0)
  if kind == "fwd":   # transformers' nn.Linear: x @ W^T with W [out, in]
    x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
    prod = lambda: torch.nn.functional.linear(x, w)
  elif kind == "dx":  # dy [M, N_out] @ W [N_out, K_in]
    x, w = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
    prod = lambda: torch.mm(x, w)
  else:               # weight gradient dy^T @ x: dy [rows=k, out=n], x [rows=k, in=m]
    x, w = torch.randn(k, m, generator=g), torch.randn(k, n, generator=g)
    prod = lambda: torch.mm(w.t(), x)
  with torch.no_grad():
    prod()
    best = float("inf")
    for _ in range(repeats):
      t0 = time.perf_counter()
      for _ in range(inner):
        prod()
      best = min(best, (time.perf_counter() - t0) / inner)
  return best


def measure(plan, a, with_torch):
  shapes = sorted({_key(d) for dots in plan.values() for d in dots})
  timed = {}
  for s in shapes:
    kind, m, k, n = s
    flop = 2.0 * m * k * n
    inner = int(max(1, min(200, 2e9 / flop)))  # ~2 GFLOP per timing
    timed[s] = dict(xla=time_xla(kind, m, k, n, inner, a.repeats))
    if with_torch:
      timed[s]["torch"] = time_torch(kind, m, k, n, inner, a.repeats)
    print(f"  {kind:3s} [{m},{k}]x[{k},{n}]: xla {timed[s]['xla'] * 1e3:8.3f} ms"
          f" ({flop / timed[s]['xla'] / 1e9:5.1f} GFLOP/s)"
          + (f"  torch {timed[s]['torch'] * 1e3:8.3f} ms"
             f" ({flop / timed[s]['torch'] / 1e9:5.1f} GFLOP/s)" if with_torch else ""),
          flush=True)
  phases = []
  for name, dots in plan.items():
    row = dict(phase=name, matmuls=len(dots),
               gflop=sum(2.0 * m * k * n for m, k, n in (_key(d)[1:] for d in dots)) / 1e9)
    for lib in ("xla", "torch") if with_torch else ("xla",):
      row[f"{lib}_s"] = sum(timed[_key(d)][lib] for d in dots)
    phases.append(row)
  return phases, {"x".join(map(str, s)): v for s, v in timed.items()}


def report(title, phases, budget, measured, with_torch):
  print(f"\n{title}")
  print(f"{'phase':28s} {'matmuls':>8s} {'GFLOP':>8s} {'xla s':>8s}"
        + (f" {'torch s':>8s}" if with_torch else ""))
  for r in phases:
    print(f"{r['phase']:28s} {r['matmuls']:8d} {r['gflop']:8.1f} {r['xla_s']:8.3f}"
          + (f" {r['torch_s']:8.3f}" if with_torch else ""))
  total = {k: sum(r[k] for r in phases) for k in phases[0] if k.endswith("_s") or k == "gflop"}
  print(f"{'total (floor)':28s} {sum(r['matmuls'] for r in phases):8d} {total['gflop']:8.1f}"
        f" {total['xla_s']:8.3f}" + (f" {total['torch_s']:8.3f}" if with_torch else ""))
  if budget:
    print(f"target budget {budget:.3f} s; the xla matmul floor is"
          f" {100 * total['xla_s'] / budget:.0f}% of it"
          + (f"; measured alignax {measured:.3f} s = {measured / total['xla_s']:.2f}x the floor"
             if measured else ""))
  return total


def _read(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--layers", type=int, default=4)
  ap.add_argument("--hidden", type=int, default=256)
  ap.add_argument("--intermediate", type=int, default=1024)
  ap.add_argument("--kv-width", type=int, default=None,
                  help="key/value projection width (KV heads x head dim); default hidden")
  ap.add_argument("--vocab", type=int, default=32000)
  ap.add_argument("--batch", type=int, default=16, help="sampler rows")
  ap.add_argument("--sampler-prompt", type=int, default=64)
  ap.add_argument("--sampler-new", type=int, default=128)
  ap.add_argument("--prompts-per-step", type=int, default=8)
  ap.add_argument("--generations", type=int, default=8)
  ap.add_argument("--prompt", type=int, default=32)
  ap.add_argument("--new", type=int, default=64)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--skip-torch", action="store_true")
  ap.add_argument("--out", default="benchmarks/results/matmul_floor.json")
  a = ap.parse_args()
  with_torch = not a.skip_torch
  if with_torch:
    import torch
    torch.set_num_threads(os.cpu_count() or 1)

  sampler_args = argparse.Namespace(**vars(a))
  sampler_args.prompt, sampler_args.new = a.sampler_prompt, a.sampler_new
  results = {}
  # (name, plan, measured JSON, its seconds key, the reference's impl prefix, target)
  for name, plan, bench, key, reference, target in (
      ("sampler", sampler_plan(sampler_args), "benchmarks/results/sampler.json", "seconds",
       "transformers", 3.0),
      ("grpo_step", grpo_plan(a), "benchmarks/results/grpo_step.json", "seconds_per_step",
       "TRL", 5.0)):
    print(f"\n[{name}] timing each distinct matmul shape")
    phases, shapes = measure(plan, a, with_torch)
    measured = _read(bench)
    budget = ours = None
    if measured:
      seconds = lambda prefix: next(r[key] for r in measured["results"]
                                    if r["impl"].startswith(prefix))
      ours, budget = seconds("alignax"), seconds(reference) / target
    total = report(f"{name}: dense-matmul floor per call ({target:g}x target)", phases,
                   budget, ours, with_torch)
    results[name] = dict(phases=phases, total=total, shapes_s=shapes, target_speedup=target,
                         target_budget_s=budget, measured_alignax_s=ours,
                         floor_fraction_of_budget=(total["xla_s"] / budget) if budget else None)

  machine = dict(processor=platform.processor() or platform.machine(),
                 platform=platform.platform(), cpu_count=os.cpu_count(),
                 load_average=os.getloadavg())
  os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
  with open(a.out, "w") as f:
    json.dump(dict(args=vars(a), machine=machine, jax=jax.__version__,
                   device=str(jax.devices()[0].device_kind), results=results), f, indent=2)


if __name__ == "__main__":
  main()
