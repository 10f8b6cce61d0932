r"""One-call accelerator check: correctness, attention speed, decode, a GRPO step.

  python benchmarks/accelerator_check.py            # on a GPU host (H100/H200), < 8 min
  python benchmarks/accelerator_check.py --smoke    # CPU, seconds (run by the tests)

Writes `benchmarks/results/<device>/accelerator_check.json` and prints one
table. Sections:

1. kernels: the block-sparse kernels with real lowering (`interpret=False`;
   the Pallas interpreter in `--smoke`) against the pure-jnp reference,
   forward and backward (dq, dk, dv), f32 and bf16, causal / window+sinks /
   DeltaLLM hybrid masks, GQA 4.
2. attention: forward and forward+backward time of our kernel at dense
   causal and 10 % / 25 % block density (a causal window of that share of the
   sequence), next to `jax.nn.dot_product_attention` (cuDNN on a GPU, XLA
   otherwise) on the dense causal and non-causal problems, T = 4k and 16k,
   bf16, 16 heads, D = 128. TFLOP/s count visible pairs: forward
   `4 * D * pairs` per (batch, head), forward+backward 3.5x that.
   Anchors measured on one H100 80GB (docs/sparse_attention.md §5): cuDNN
   592 / 510 TFLOP/s forward non-causal / causal at 16k; FlexAttention 0.663
   ms forward and 2.42 ms forward+backward at 10.8 % block density, 16k.
3. decode: sampler tokens/s for a random Llama-3.2-1B-shaped model (1.24 B
   parameters, bf16) at batch 1 and 64, next to the HBM roofline
   `batch * bandwidth / weight bytes` (H100 SXM 3.35 TB/s, H200 4.8 TB/s).
4. grpo_step: one GRPO update (model + fused log-probs + loss + AdamW) on a
   random Qwen2.5-0.5B-shaped model, bf16 compute, 64 x (256 + 512) tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from alignax import kernels
from alignax import objectives
from alignax.framework import sampling, train
from alignax.framework.config import ModelConfig
from alignax.framework.model import Decoder

# HBM bandwidth (bytes/s) by device kind, for the decode roofline.
HBM_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}
LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64,
                tie_word_embeddings=True, max_position_embeddings=4096)
QWEN_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                num_layers=24, num_heads=14, num_kv_heads=2, qkv_bias=True,
                model_type="qwen2", tie_word_embeddings=True,
                max_position_embeddings=4096)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
            num_heads=4, num_kv_heads=2, max_position_embeddings=512)


def time_ms(fn, args, iters, warmup=2):
  """Median wall time (ms) of `fn(*args)` after `warmup` calls (compile excluded)."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return 1e3 * float(np.median(times))


def _err(a, b):
  return float(jnp.max(jnp.abs(jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32))))


def _masks(t, q, k, block):
  return {
      "causal": kernels.BlockMask.causal(t, block_q=block, block_k=block),
      "window_sinks": kernels.BlockMask.local(t, 2 * block, sinks=4, block_q=block,
                                              block_k=block),
      "hybrid": kernels.hybrid_block_mask(q, k, window=2 * block, sinks=4, top_k=2,
                                          block_q=block, block_k=block),
  }


def check_kernels(a):
  """Kernel vs reference, forward and backward; returns rows with max errors."""
  t, block, hq, hkv, d = (256, 128, 4, 1, 64) if a.smoke else (2048, 128, 8, 2, 128)
  interpret = a.smoke
  rows = []
  # --smoke covers each code path once: f32 on a rule mask, bf16 on the
  # hybrid (top-k) mask.
  smoke_cases = {("float32", "causal"), ("bfloat16", "hybrid")}
  for dtype, tol in (("float32", 2e-5 if not a.smoke else 1e-4), ("bfloat16", 2e-2)):
    rng = np.random.default_rng(0)
    q, k, v, do = (jnp.asarray(rng.standard_normal(s), dtype) for s in (
        (1, t, hq, d), (1, t, hkv, d), (1, t, hkv, d), (1, t, hq, d)))
    for name, mask in _masks(t, q, k, block).items():
      if a.smoke and (dtype, name) not in smoke_cases:
        continue
      def ours(q, k, v, mask=mask):
        return kernels.block_sparse_attention(q, k, v, mask, implementation="pallas",
                                              interpret=interpret)

      def ref(q, k, v, mask=mask):
        return kernels.block_sparse_attention_reference(q, k, v, mask)

      def grads(f):
        return jax.jit(lambda q, k, v, do: jax.vjp(f, q, k, v)[1](do))(q, k, v, do)

      out_err = _err(jax.jit(ours)(q, k, v), jax.jit(ref)(q, k, v))
      grad_err = max(_err(x, y) for x, y in zip(grads(ours), grads(ref)))
      # bf16: errors relative to the output scale (values are O(1)).
      rows.append(dict(section="kernels", dtype=dtype, mask=name, T=t, D=d,
                       fwd_err=out_err, bwd_err=grad_err, tol=tol,
                       ok=out_err <= tol and grad_err <= 10 * tol))
  return rows


def _flops(pairs, d, heads, direction):
  return 4 * d * pairs * heads * (3.5 if direction == "fwd+bwd" else 1.0)


def bench_attention(a):
  """Our kernel vs jax.nn.dot_product_attention, fwd and fwd+bwd."""
  seqs = (256,) if a.smoke else (4096, 16384)
  heads, d, block = (2, 64, 128) if a.smoke else (16, 128, 128)
  gpu = jax.default_backend() == "gpu"
  iters = 1 if a.smoke else 10
  rows = []
  for t in seqs:
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.standard_normal((1, t, heads, d)), jnp.bfloat16)
               for _ in range(3))
    cases = [("ours", "causal", kernels.BlockMask.causal(t, block_q=block, block_k=block))]
    for density in () if a.smoke else (0.25, 0.10):
      w = max(block, int(density * t))
      cases.append(("ours", f"window {density:.0%}",
                    kernels.BlockMask.local(t, w, block_q=block, block_k=block)))
    for causal in (True,) if a.smoke else (False, True):
      cases.append(("dot_product_attention", "causal" if causal else "non-causal", causal))
    for impl, mask_name, mask in cases:
      if impl == "ours":
        f = lambda q, k, v, m=mask: kernels.block_sparse_attention(  # noqa: E731
            q, k, v, m, implementation="pallas", interpret=a.smoke)
        pairs = float(np.asarray(mask.to_dense()).sum()) if a.smoke or t <= 4096 else None
        if pairs is None:   # window masks: count analytically (no T x T array)
          w = mask.rule.window or t
          pairs = sum(min(i + 1, w) for i in range(t))
        density = pairs / (t * t)
      else:
        f = lambda q, k, v, c=mask: jax.nn.dot_product_attention(  # noqa: E731
            q, k, v, is_causal=c, implementation="cudnn" if gpu else "xla")
        pairs = t * (t + 1) / 2 if mask else t * t
        density = pairs / (t * t)
      fwd = jax.jit(f)
      both = jax.jit(lambda q, k, v, f=f: jax.vjp(f, q, k, v)[1](q))
      for direction, fn in (("fwd", fwd), ("fwd+bwd", both)):
        try:
          ms = time_ms(fn, (q, k, v), iters, warmup=1 if a.smoke else 3)
        except Exception as e:  # pylint: disable=broad-except
          rows.append(dict(section="attention", impl=impl, mask=mask_name, T=t,
                           direction=direction, error=f"{type(e).__name__}: {e}"[:200]))
          continue
        rows.append(dict(section="attention", impl=impl, mask=mask_name, T=t,
                         direction=direction, density=density, ms=ms,
                         tflops=_flops(pairs, d, heads, direction) / ms / 1e9))
  return rows


def _bandwidth():
  kind = jax.devices()[0].device_kind
  for name, bw in HBM_BANDWIDTH.items():
    if name in kind:
      return bw
  return None


def bench_decode(a):
  config = ModelConfig(**(TINY if a.smoke else LLAMA_1B), param_dtype="bfloat16",
                       dtype="bfloat16")
  model = Decoder(config, seed=0)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
      jax.tree.map(lambda v: v, __import__("flax").nnx.state(model))))
  weight_bytes = 2 * n_params
  bw = _bandwidth()
  new = 8 if a.smoke else 128
  rows = []
  for batch in ((1, 4) if a.smoke else (1, 64)):
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(0, config.vocab_size, 16 if a.smoke else 128))
               for _ in range(batch)]
    run = lambda: sampling.generate(model, prompts, max_new_tokens=new).tokens  # noqa: E731
    jax.block_until_ready(run())   # compile
    t0 = time.perf_counter()
    jax.block_until_ready(run())
    seconds = time.perf_counter() - t0
    roofline = batch * bw / weight_bytes if bw else None
    rows.append(dict(section="decode", batch=batch, new_tokens=new,
                     params_billion=n_params / 1e9, tokens_per_s=batch * new / seconds,
                     roofline_tokens_per_s=roofline,
                     share_of_roofline=(batch * new / seconds) / roofline if roofline else None))
  return rows


def bench_grpo_step(a):
  config = ModelConfig(**(TINY if a.smoke else QWEN_05B), dtype="bfloat16")
  n, p, c = (8, 16, 16) if a.smoke else (64, 256, 512)
  optimizer = train.make_optimizer(1e-6)
  graphdef, state = train.init_train_state(Decoder(config, seed=0), optimizer)
  update = train.make_grpo_update(graphdef, optimizer, loss=objectives.PolicyLossConfig(loss_type="dapo"),
                                  micro_batches=1 if a.smoke else 8, prompt_groups=8)
  rng = np.random.default_rng(0)
  prompt = rng.integers(0, config.vocab_size, (n // 8, p)).repeat(8, axis=0)
  seq = np.concatenate([prompt, rng.integers(0, config.vocab_size, (n, c))], 1)
  batch = dict(sequences=jnp.asarray(seq, jnp.int32),
               attention_mask=jnp.ones((n, p + c), bool),
               completion_tokens=jnp.asarray(seq[:, p:], jnp.int32),
               completion_mask=jnp.ones((n, c), bool),
               old_logprobs=jnp.full((n, c), -3.0, jnp.float32),
               advantages=jnp.asarray(rng.standard_normal(n), jnp.float32))
  t0 = time.perf_counter()
  state, metrics = update(state, batch)
  jax.block_until_ready(metrics)
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  state, metrics = update(state, batch)
  jax.block_until_ready(metrics)
  step = time.perf_counter() - t0
  return [dict(section="grpo_step", rows=n, prompt=p, completion=c,
               compile_plus_step_s=first, step_s=step,
               tokens_per_s=n * (p + c) / step, loss=float(metrics["loss"]),
               ok=bool(np.isfinite(float(metrics["loss"]))))]


def env():
  dev = jax.devices()[0]
  return dict(backend=jax.default_backend(), device_kind=dev.device_kind,
              devices=jax.device_count(), jax=jax.__version__,
              python=platform.python_version(), host=platform.node())


def print_table(rows):
  print("| section | what | result |")
  print("| --- | --- | --- |")
  for r in rows:
    s = r["section"]
    if s == "kernels":
      what = f"{r['mask']} {r['dtype']} T={r['T']}"
      res = (f"fwd err {r['fwd_err']:.1e}, bwd err {r['bwd_err']:.1e} "
             f"({'ok' if r['ok'] else 'FAIL'})")
    elif s == "attention":
      what = f"{r['impl']} {r['mask']} T={r['T']} {r['direction']}"
      res = r.get("error") or (f"{r['ms']:.3f} ms, {r['tflops']:.1f} TFLOP/s, "
                               f"density {r['density']:.3f}")
    elif s == "decode":
      what = f"batch {r['batch']}, {r['params_billion']:.2f} B params bf16"
      roof = (f", roofline {r['roofline_tokens_per_s']:.0f} "
              f"({r['share_of_roofline']:.0%})" if r["roofline_tokens_per_s"] else "")
      res = f"{r['tokens_per_s']:.0f} tokens/s{roof}"
    else:
      what = f"{r['rows']} x ({r['prompt']} + {r['completion']}) tokens"
      res = f"{r['step_s']:.3f} s/step, {r['tokens_per_s']:.0f} tokens/s, loss {r['loss']:.3f}"
    print(f"| {s} | {what} | {res} |")


SECTIONS = {"kernels": check_kernels, "attention": bench_attention,
            "decode": bench_decode, "grpo_step": bench_grpo_step}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU, seconds")
  parser.add_argument("--sections", default=",".join(SECTIONS))
  parser.add_argument("--out_dir", default=os.path.join(os.path.dirname(__file__), "results"))
  a = parser.parse_args(argv)
  info = env()
  rows = []
  for name in a.sections.split(","):
    t0 = time.perf_counter()
    rows += SECTIONS[name](a)
    print(f"# {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
  print_table(rows)
  device = "smoke_" + info["backend"] if a.smoke else re.sub(r"\W+", "_", info["device_kind"])
  out = os.path.join(a.out_dir, device, "accelerator_check.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump(dict(env=info, smoke=a.smoke, rows=rows), f, indent=1)
  print(f"wrote {out}", file=sys.stderr)
  return rows, out


if __name__ == "__main__":
  main()
