"""Block-sparse attention benchmark (docs/sparse_attention.md §5).

    python benchmarks/attention.py                 # CPU: quick correctness table
    python benchmarks/attention.py --mode=gpu      # GPU: timing table (H100)

CPU mode checks every implementation (xla, both Pallas bodies in interpret
mode) against the dense reference on small shapes and prints the table.
GPU mode times forward and forward+backward of our Pallas GPU kernel on
bf16, D=128, T in {4k, 8k, 16k}, block densities 100/50/25/10 % (random
blocks + diagonal), causal, window+sinks and the DeltaLLM hybrid, next to
`jax.nn.dot_product_attention` (cuDNN and XLA; dense). TFLOP/s count only
visible pairs: forward `4 * D * pairs` per (batch, head), forward+backward
3.5x that. Every timed output of our kernel is checked once against the
reference on two heads (bf16 rule) so a fast wrong kernel is not reported.
Results go to `benchmarks/results/attention_<device>.json`.
"""
from __future__ import annotations

import json
import os
import platform
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from alignax import kernels as K
from alignax.kernels.block_mask import BlockMask
from alignax.kernels.block_mask import MaskRule

_MODE = flags.DEFINE_enum("mode", "auto", ["auto", "cpu", "gpu"],
                          "auto: gpu if a GPU is present, else cpu.")
_SEQS = flags.DEFINE_list("seqs", ["4096", "8192", "16384"], "GPU seq lens.")
_HEADS = flags.DEFINE_integer("heads", 16, "query heads (GPU).")
_KV_HEADS = flags.DEFINE_integer("kv_heads", 16, "KV heads (GPU).")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 128, "head dim (GPU).")
_BLOCK_Q = flags.DEFINE_integer("block_q", 128, "kernel block_q.")
_BLOCK_K = flags.DEFINE_integer("block_k", 64, "kernel block_k.")
_ITERS = flags.DEFINE_integer("iters", 20, "timed calls (GPU).")
_OUT = flags.DEFINE_string("out", None, "JSON path (default by device).")
_SKIP_XLA_ABOVE = flags.DEFINE_integer("skip_xla_above", 8192,
                                       "skip dense XLA attention above T.")

PEAK_TFLOPS = 989.0  # H100 SXM dense bf16


def random_block_mask(t, bq, bk, density, seed=0):
  """Random full blocks at `density` of all blocks, diagonal always live."""
  rng = np.random.default_rng(seed)
  nq, nk = -(-t // bq), -(-t // bk)
  qi = np.arange(nq)[:, None] * bq
  kj = np.arange(nk)[None, :] * bk
  diag = (kj <= qi + bq - 1) & (kj + bk - 1 >= qi)   # no empty query rows
  # Draw the off-diagonal blocks so that the total hits `density`.
  rest = max(0.0, (density * nq * nk - diag.sum()) / max(1, (~diag).sum()))
  live = diag | (rng.random((nq, nk)) < rest)
  if density >= 1.0:
    live[:] = True
  status = np.where(live, 2, 0).astype(np.int8)[None, None]
  z = np.zeros((1,), np.int32)
  return BlockMask._from_status(  # pylint: disable=protected-access
      status, q_len=t, kv_len_static=t, block_q=bq, block_k=bk,
      rule=MaskRule(causal=False), q_pos0=z, kv_start=z, kv_len=z + t)


def visible_pairs(mask: BlockMask) -> float:
  """Visible (query, key) pairs per (batch, head), averaged over heads."""
  st = np.asarray(mask.block_status())
  if mask.rule is None or (st == 1).sum() == 0:
    full = (st == 2).sum(axis=(-1, -2)).mean() * mask.block_q * mask.block_k
    if (st == 1).sum() == 0:
      return float(full)
  return float(np.asarray(mask.to_dense()).sum(axis=(-1, -2)).mean())


def issued_pairs(mask: BlockMask) -> float:
  st = np.asarray(mask.block_status())
  return float((st > 0).sum(axis=(-1, -2)).mean() * mask.block_q * mask.block_k)


def time_fn(fn, args, iters, warmup=3):
  out = fn(*args)
  jax.block_until_ready(out)
  for _ in range(warmup - 1):
    jax.block_until_ready(fn(*args))
  ts = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ts.append(time.perf_counter() - t0)
  ts = np.asarray(ts) * 1e3
  return out, float(np.median(ts)), float(np.percentile(ts, 75)
                                          - np.percentile(ts, 25))


def fwd_bwd(attn):
  def f(q, k, v, do):
    out, vjp = jax.vjp(attn, q, k, v)
    return out, vjp(do)
  return jax.jit(f)


def env_info():
  dev = jax.devices()[0]
  info = {"device_kind": dev.device_kind, "platform": dev.platform,
          "jax": jax.__version__, "host": platform.node(),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}
  try:
    import jaxlib  # pylint: disable=g-import-not-at-top
    info["jaxlib"] = jaxlib.__version__
  except ImportError:
    pass
  try:
    from jax._src.lib import cuda_versions  # pylint: disable=g-import-not-at-top
    if cuda_versions is not None:
      info["cudnn"] = cuda_versions.cudnn_get_version()
      info["cuda_runtime"] = cuda_versions.cuda_runtime_get_version()
  except Exception:  # pylint: disable=broad-except
    pass
  return info


def print_table(rows, cols):
  widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols]
  print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
  for r in rows:
    print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(cols, widths)))


def _fmt(x):
  if x is None:
    return "-"
  if isinstance(x, float):
    return f"{x:.4g}"
  return str(x)


def run_cpu():
  """Small-shape correctness table for every implementation."""
  b, t, hq, hkv, d, bq, bk = 1, 256, 4, 2, 64, 32, 32
  rng = np.random.default_rng(0)
  q = rng.standard_normal((b, t, hq, d)).astype(np.float32)
  k = rng.standard_normal((b, t, hkv, d)).astype(np.float32)
  v = rng.standard_normal((b, t, hkv, d)).astype(np.float32)
  masks = {f"blocks{int(p * 100)}%": random_block_mask(t, bq, bk, p)
           for p in (1.0, 0.5, 0.25, 0.1)}
  masks["causal"] = BlockMask.causal(t, block_q=bq, block_k=bk)
  masks["window64+sinks4"] = BlockMask.local(t, 64, sinks=4, block_q=bq,
                                             block_k=bk)
  masks["hybrid(w64,s4,top2)"] = jax.jit(lambda a, c: K.hybrid_block_mask(
      a, c, window=64, sinks=4, top_k=2, block_q=bq, block_k=bk))(q, k)
  rows = []
  for name, m in masks.items():
    ref = jax.jit(lambda a, c, e, m=m: K.block_sparse_attention_reference(
        a, c, e, m))(q, k, v)
    for impl in ("xla", "pallas_gpu", "pallas_tpu"):
      f = jax.jit(lambda a, c, e, m=m, impl=impl: K.block_sparse_attention(
          a, c, e, m, implementation=impl, interpret=True))
      out, med, _ = time_fn(f, (q, k, v), iters=2, warmup=1)
      err = float(jnp.abs(out - ref).max())
      pairs = visible_pairs(m)
      rows.append({"impl": impl, "mask": name, "T": t, "D": d,
                   "dtype": "float32", "dir": "fwd", "ms": med,
                   "density": pairs / (t * t),
                   "block_density": issued_pairs(m) / (t * t),
                   "max_abs_err": err, "ok": err < 2e-5})
  dense = jax.jit(lambda a, c, e: jax.nn.dot_product_attention(
      a, c, e, is_causal=True, implementation="xla"))
  out, med, _ = time_fn(dense, (q, k, v), iters=2, warmup=1)
  err = float(jnp.abs(out - jax.jit(
      lambda a, c, e: K.block_sparse_attention_reference(
          a, c, e, masks["causal"]))(q, k, v)).max())
  rows.append({"impl": "jax.nn.dpa[xla]", "mask": "causal", "T": t, "D": d,
               "dtype": "float32", "dir": "fwd", "ms": med, "density":
               (t + 1) / (2 * t), "max_abs_err": err, "ok": err < 2e-5})
  print_table(rows, ["impl", "mask", "T", "D", "dtype", "dir", "ms",
                     "density", "block_density", "max_abs_err", "ok"])
  print("(CPU: Pallas kernels run in interpret mode; times are not kernel "
        "performance.)")
  return rows


def run_gpu():
  """Timing table on a GPU (bf16)."""
  hq, hkv, d = _HEADS.value, _KV_HEADS.value, _HEAD_DIM.value
  bq, bk, iters = _BLOCK_Q.value, _BLOCK_K.value, _ITERS.value
  rows = []
  for t in (int(s) for s in _SEQS.value):
    b = 1
    key = jax.random.key(t)
    kq, kk, kv, kd = jax.random.split(key, 4)
    q = jax.random.normal(kq, (b, t, hq, d), jnp.bfloat16)
    k = jax.random.normal(kk, (b, t, hkv, d), jnp.bfloat16)
    v = jax.random.normal(kv, (b, t, hkv, d), jnp.bfloat16)
    do = jax.random.normal(kd, (b, t, hq, d), jnp.bfloat16)
    masks = {f"blocks{int(p * 100)}%": random_block_mask(t, bq, bk, p)
             for p in (1.0, 0.5, 0.25, 0.1)}
    masks["causal"] = BlockMask.causal(t, block_q=bq, block_k=bk)
    masks["window1024+sinks4"] = BlockMask.local(t, 1024, sinks=4,
                                                 block_q=bq, block_k=bk)
    masks["hybrid(w1024,s128,top8)"] = jax.jit(
        lambda a, c: K.hybrid_block_mask(a, c, window=1024, sinks=128,
                                         top_k=8, block_q=bq, block_k=bk))(
                                             q, k)
    base = {}

    def record(impl, name, direction, med, iqr, pairs, issued, extra=None):
      mult = 1.0 if direction == "fwd" else 3.5
      flops = 4.0 * d * pairs * b * hq * mult
      row = {"impl": impl, "mask": name, "T": t, "D": d, "Hq": hq,
             "Hkv": hkv, "dtype": "bfloat16", "dir": direction,
             "block_q": bq, "block_k": bk, "ms": med, "iqr_ms": iqr,
             "density": pairs / (t * t),
             "useful_tflops": flops / (med * 1e-3) / 1e12 if med else None,
             "issued_tflops": (4.0 * d * issued * b * hq * mult
                               / (med * 1e-3) / 1e12) if med else None}
      if row["useful_tflops"]:
        row["pct_peak"] = 100 * row["useful_tflops"] / PEAK_TFLOPS
      row.update(extra or {})
      rows.append(row)
      print_table([row], list(row))
      return row

    # Dense baselines: cuDNN and XLA, non-causal and causal.
    for impl in ("cudnn", "xla"):
      if impl == "xla" and t > _SKIP_XLA_ABOVE.value:
        continue
      for causal in (False, True):
        name = "dense_causal" if causal else "dense"
        pairs = t * (t + 1) / 2 if causal else t * t
        attn = lambda a, c, e, causal=causal, impl=impl: (
            jax.nn.dot_product_attention(a, c, e, is_causal=causal,
                                         implementation=impl))
        for direction, fn, args in (("fwd", jax.jit(attn), (q, k, v)),
                                    ("fwd+bwd", fwd_bwd(attn), (q, k, v, do))):
          try:
            _, med, iqr = time_fn(fn, args, iters)
            base[(impl, name, direction)] = med
            record(f"jax.nn.dpa[{impl}]", name, direction, med, iqr, pairs,
                   pairs)
          except Exception as e:  # pylint: disable=broad-except
            record(f"jax.nn.dpa[{impl}]", name, direction, None, None, pairs,
                   pairs, {"error": repr(e)[:200]})
    # Ours.
    for name, m in masks.items():
      pairs, issued = visible_pairs(m), issued_pairs(m)
      attn = lambda a, c, e, m=m: K.block_sparse_attention(
          a, c, e, m, implementation="pallas_gpu")
      # One correctness check per mask on two heads (bf16 rule vs f32 ref).
      out = jax.jit(attn)(q, k, v)
      h2 = min(2, hkv)
      g = hq // hkv
      ref32 = jax.jit(lambda a, c, e, m=m: K.block_sparse_attention_reference(
          a, c, e, m))(q[:, :, :h2 * g].astype(jnp.float32),
                       k[:, :, :h2].astype(jnp.float32),
                       v[:, :, :h2].astype(jnp.float32))
      ref16 = jax.jit(lambda a, c, e, m=m: K.block_sparse_attention_reference(
          a, c, e, m))(q[:, :, :h2 * g], k[:, :, :h2], v[:, :, :h2])
      err = float(jnp.abs(out[:, :, :h2 * g].astype(jnp.float32) - ref32).max())
      ref_err = float(jnp.abs(ref16.astype(jnp.float32) - ref32).max())
      ok = err <= 2 * ref_err + 1e-3
      del out, ref32, ref16
      for direction, fn, args in (("fwd", jax.jit(attn), (q, k, v)),
                                  ("fwd+bwd", fwd_bwd(attn), (q, k, v, do))):
        try:
          _, med, iqr = time_fn(fn, args, iters)
        except Exception as e:  # pylint: disable=broad-except
          record("ours[pallas_gpu]", name, direction, None, None, pairs,
                 issued, {"error": repr(e)[:300], "max_abs_err": err,
                          "ok": ok})
          continue
        extra = {"max_abs_err": err, "ok": ok}
        for ref_name in ("dense", "dense_causal"):
          ref_ms = base.get(("cudnn", ref_name, direction))
          if ref_ms:
            extra[f"speedup_vs_cudnn_{ref_name}"] = ref_ms / med
        record("ours[pallas_gpu]", name, direction, med, iqr, pairs, issued,
               extra)
  print("\nSummary")
  print_table(rows, ["impl", "mask", "T", "dir", "ms", "density",
                     "useful_tflops", "pct_peak", "speedup_vs_cudnn_dense",
                     "speedup_vs_cudnn_dense_causal", "ok", "error"])
  return rows


def main(argv):
  del argv
  mode = _MODE.value
  if mode == "auto":
    mode = "gpu" if jax.default_backend() == "gpu" else "cpu"
  info = env_info()
  rows = run_cpu() if mode == "cpu" else run_gpu()
  kind = info["device_kind"].lower().replace(" ", "_")
  out = _OUT.value or os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results",
      f"attention_{kind}.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump({"env": info, "mode": mode, "rows": rows}, f, indent=1)
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
