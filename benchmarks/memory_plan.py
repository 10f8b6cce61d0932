r"""Memory on paper: compile one GRPO update for real model shapes, no weights.

  JAX_PLATFORMS=cpu python benchmarks/memory_plan.py            # 3 models (slow)
  JAX_PLATFORMS=cpu python benchmarks/memory_plan.py --quick    # seconds

For each model shape (Llama-3.2-1B, Qwen2.5-1.5B, Qwen2.5-7B as
`jax.ShapeDtypeStruct`s: nothing is allocated), each mesh of 8 CPU devices,
each decoder remat policy and fused log-probs with or without recomputation,
the whole update (model + fused log-probs + DAPO loss + AdamW, bf16 compute
with f32 master weights) is lowered and compiled for the CPU backend and
`compiled.memory_analysis()` is read per device: arguments (params + Adam
state + batch), temporaries (activations, gradients) and the total. Next to
it, the arithmetic for the same sharding: f32 master weights (4 B/param),
Adam moments (8 B/param), bf16 weights (2 B/param, what a pure-bf16 run
stores). XLA:CPU's buffer assignment is not a GPU's or a TPU's, so read the
figures as a plan (which model fits which accelerator at which mesh), not as
a measurement.

Batch: 64 rows = 8 prompts x 8 generations, prompt 256 + completion 1024
tokens, 8 micro-batches (a micro-batch is one prompt group).

Off-policy (`--off_policy`, `rollout.off_policy_steps=1`, alignax/rl/step.py):
the sampling of the next batch is dispatched before the update of the current
one, from the parameters before it, so at the peak both are alive. The
sampler (`sampling.prefill` of the 8 prompts, then `sampling.decode` of the 64
rows over prompt + completion slots, rows sharded over the data and fsdp axes
as `sampling.generate` places them) is compiled too; the peak adds to the
update's total the sampler's memory other than the parameters (KV cache,
logits, token buffers, temporaries; the larger of prefill and decode) and one
more copy of the parameters it reads: the update donates them, but the
runtime keeps the old buffers until the sampler has read them. The sampler
reads `TrainState.params` as they are (f32 master weights here), so the copy
is f32. The KV cache's arithmetic (2 x layers x rows x slots x kv_heads x
head_dim x 2 B of bf16, per device) stands next to it.

Hook for other trainable sets (LoRA): `plan(...)` takes
`build_state(config, optimizer) -> (graphdef, TrainState)`; the default trains
every parameter. A LoRA row passes a builder whose TrainState holds only the
adapters (and frozen base weights closed over), nothing else changes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from alignax import objectives  # noqa: E402
from alignax.framework import sampling, sharding, train  # noqa: E402
from alignax.framework.config import ModelConfig, as_dtype  # noqa: E402
from alignax.framework.model import Decoder, KVCache  # noqa: E402

GIB = 1 << 30
LLAMA3_ROPE = (("factor", 32.0), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
               ("original_max_position_embeddings", 8192), ("rope_type", "llama3"))
# Shapes of the public config.json files.
MODELS = {
    "llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                         num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64,
                         rope_theta=500000.0, rope_scaling=LLAMA3_ROPE,
                         tie_word_embeddings=True, max_position_embeddings=131072),
    "qwen2.5-1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                         num_layers=28, num_heads=12, num_kv_heads=2, qkv_bias=True,
                         model_type="qwen2", rope_theta=1000000.0,
                         tie_word_embeddings=True, max_position_embeddings=32768),
    "qwen2.5-7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                       num_layers=28, num_heads=28, num_kv_heads=4, qkv_bias=True,
                       model_type="qwen2", rope_theta=1000000.0,
                       tie_word_embeddings=False, max_position_embeddings=32768),
}
MESHES = {"fsdp8": dict(data=1, fsdp=8, tensor=1),
          "fsdp4_tensor2": dict(data=1, fsdp=4, tensor=2)}
# Accelerator memories the table is read against (GiB per device).
ACCELERATORS = {"TPU v5e": 16, "A100/H100 80GB": 80, "H200": 141}


def default_build_state(config: ModelConfig, optimizer):
  """Abstract (graphdef, TrainState) training every parameter."""
  return jax.eval_shape(lambda: train.init_train_state(Decoder(config), optimizer))


def tree_shardings(tree, mesh):
  """NamedShardings for an abstract TrainState: every nnx Variable (params and
  the optimiser moments, which keep the params' `logical_axes`) per the
  logical-axis rules, everything else replicated."""
  def one(x):
    if isinstance(x, nnx.Variable):
      axes = x.get_metadata().get("logical_axes")
      spec = sharding.logical_spec(axes, x.shape, mesh) if axes else P()
      return x.replace(NamedSharding(mesh, spec))
    return NamedSharding(mesh, P())
  return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_struct(rows, prompt, completion):
  sds = jax.ShapeDtypeStruct
  n, length = rows, prompt + completion
  return dict(sequences=sds((n, length), np.int32), attention_mask=sds((n, length), bool),
              completion_tokens=sds((n, completion), np.int32),
              completion_mask=sds((n, completion), bool),
              old_logprobs=sds((n, completion), np.float32),
              advantages=sds((n,), np.float32))


def lora_build_state(rank: int):
  """A `build_state` whose TrainState trains rank-`rank` LoRA adapters only
  (alignax.framework.lora): base and adapters in params, Adam state of the
  adapters alone."""
  from alignax.framework import lora  # pylint: disable=g-import-not-at-top

  def build(config: ModelConfig, optimizer):
    def init():
      model = lora.apply(Decoder(config), lora.LoraConfig(rank=rank, alpha=2.0 * rank))
      return train.init_train_state(model, optimizer)
    return jax.eval_shape(init)
  return build


def count_params(state) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params)))


def memory_gib(mem) -> dict:
  """A compiled call's `memory_analysis()` in GiB per device, with its total
  (arguments + temporaries + outputs, aliased outputs counted once)."""
  sizes = dict(arguments=mem.argument_size_in_bytes / GIB, temporaries=mem.temp_size_in_bytes / GIB,
               outputs=mem.output_size_in_bytes / GIB, aliased=mem.alias_size_in_bytes / GIB)
  return dict(sizes, total=sizes["arguments"] + sizes["temporaries"] + sizes["outputs"]
              - sizes["aliased"])


def sampler_plan(config, graphdef, params, params_sh, mesh, *, rows, groups, prompt,
                 completion):
  """Compiles the sampler of one off-policy step (`sampling.prefill` of the
  `groups` prompts, repeated to `rows` rows, then `sampling.decode` of those
  rows over prompt + completion slots; rows on the mesh's batch axes) and
  returns its memory per phase and what it adds to the update's peak (GiB
  per device)."""
  def sds(shape, dtype, replicated=False):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, P()) if replicated
                                else sharding.batch_sharding(mesh, len(shape)))
  params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        params, params_sh)
  param_bytes = sum(np.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                    for x in jax.tree.leaves(params))
  slots, dtype = prompt + completion, as_dtype(config.dtype)
  kv = sds((rows, config.num_kv_heads, slots, config.dim_per_head), dtype)
  cache = KVCache((kv,) * config.num_layers, (kv,) * config.num_layers, sds((rows, slots), bool))
  key = jax.eval_shape(lambda: jax.random.key(0)).dtype
  sampling_params = sampling.SamplingParams(max_new_tokens=completion, temperature=1.0,
                                            stop_token_ids=(1,))
  t0 = time.perf_counter()
  phases = dict(
      prefill=sampling.prefill.lower(graphdef, params, sds((groups, prompt), np.int32),
                                     sds((groups, prompt), bool), slots=slots,
                                     repeats=rows // groups),
      decode=sampling.decode.lower(graphdef, params, cache,
                                   sds((rows, config.vocab_size), np.float32),
                                   sds((rows,), np.int32), sds((), np.int32, True),
                                   sds((), key, True), sampling_params=sampling_params))
  out = {k: memory_gib(v.compile().memory_analysis()) for k, v in phases.items()}
  seconds = time.perf_counter() - t0
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  return dict(
      **out, param_copy=param_bytes / GIB,
      sampler_non_param=max(m["total"] for m in out.values()) - param_bytes / GIB,
      kv_cache_arithmetic=2 * config.num_layers * rows * slots * config.num_kv_heads
      * config.dim_per_head * np.dtype(dtype).itemsize / shards / GIB,
      compile_seconds=seconds)


def plan(name, model_kwargs, mesh_name, *, remat, fused_remat, rows, prompt,
         completion, groups, micro_batches, build_state=default_build_state,
         off_policy=False):
  """Compiles one update and returns a result row (sizes in GiB per device)."""
  config = ModelConfig(**model_kwargs, param_dtype="float32", dtype="bfloat16",
                       remat=remat)
  mesh = sharding.make_mesh(**MESHES[mesh_name])
  optimizer = train.make_optimizer(1e-6, warmup_steps=10, total_steps=1000)
  graphdef, state = build_state(config, optimizer)
  update = train.make_grpo_update(
      graphdef, optimizer, loss=objectives.PolicyLossConfig(loss_type="dapo"),
      micro_batches=micro_batches, prompt_groups=groups, remat=fused_remat)
  state_sh = tree_shardings(state, mesh)
  batch = batch_struct(rows, prompt, completion)
  batch_sh = {k: sharding.batch_sharding(mesh, v.ndim) for k, v in batch.items()}
  step = jax.jit(lambda s, b: update(s, b), in_shardings=(state_sh, batch_sh),
                 out_shardings=(state_sh, None), donate_argnums=0)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  seconds = time.perf_counter() - t0
  n = count_params(state)
  trained = int(sum(np.prod(x.shape) for x in jax.tree.leaves(
      train.trainable_params(state.params))))  # < n with LoRA adapters
  devices = mesh.size
  row = dict(
      model=name, mesh=mesh_name, remat=remat,
      fused_logprobs="recompute" if fused_remat else "keep logits",
      params_billion=n / 1e9, rows=rows, prompt=prompt, completion=completion,
      micro_batches=micro_batches,
      trained_billion=trained / 1e9,
      arithmetic_gib=dict(master_f32=4 * n / devices / GIB, adam=8 * trained / devices / GIB,
                          bf16_weights=2 * n / devices / GIB),
      compiled_gib=memory_gib(compiled.memory_analysis()),
      compile_seconds=seconds)
  if off_policy:
    off = sampler_plan(config, graphdef, state.params, state_sh.params, mesh, rows=rows,
                       groups=groups, prompt=prompt, completion=completion)
    off["peak_total"] = row["compiled_gib"]["total"] + off["sampler_non_param"] + off["param_copy"]
    row["off_policy_gib"] = off
  return row


def _fits(total):
  return ", ".join(k for k, v in ACCELERATORS.items() if total <= 0.9 * v) or "none"


def print_table(rows):
  off_policy = any("off_policy_gib" in r for r in rows)
  head = ("| model | mesh | remat | log-probs | params | f32 master + Adam /dev "
          "| args /dev | temps /dev | total /dev | fits (90%) |")
  if off_policy:
    head += (" sampler w/o params /dev | KV cache (arith.) /dev | param copy /dev "
             "| off-policy peak /dev | peak fits (90%) |")
  print(head)
  print("|" + " --- |" * (head.count("|") - 1))
  for r in rows:
    a, c = r["arithmetic_gib"], r["compiled_gib"]
    print(f"| {r['model']} | {r['mesh']} | {r['remat']} | {r['fused_logprobs']} "
          f"| {r['params_billion']:.2f} B | {a['master_f32'] + a['adam']:.2f} GiB "
          f"| {c['arguments']:.2f} GiB | {c['temporaries']:.2f} GiB "
          f"| {c['total']:.2f} GiB | {_fits(c['total'])} |", end="")
    o = r.get("off_policy_gib")
    if o:
      print(f" {o['sampler_non_param']:.2f} GiB | {o['kv_cache_arithmetic']:.2f} GiB "
            f"| {o['param_copy']:.2f} GiB | {o['peak_total']:.2f} GiB "
            f"| {_fits(o['peak_total'])} |", end="")
    elif off_policy:
      print(" |" * 5, end="")
    print()


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--meshes", default=",".join(MESHES))
  parser.add_argument("--remat", default="none,full")
  parser.add_argument("--fused", default="recompute,keep",
                      help="fused log-probs: recompute (remat) and/or keep logits")
  parser.add_argument("--rows", type=int, default=64)
  parser.add_argument("--prompt", type=int, default=256)
  parser.add_argument("--completion", type=int, default=1024)
  parser.add_argument("--groups", type=int, default=8)
  parser.add_argument("--micro_batches", type=int, default=8)
  parser.add_argument("--layers", type=int, default=0,
                      help="override num_layers (0: the model's own)")
  parser.add_argument("--lora_rank", type=int, default=0,
                      help="> 0: train LoRA adapters of this rank only (frozen base)")
  parser.add_argument("--off_policy", action="store_true",
                      help="also compile the sampler of the next batch (one-step off-policy"
                           " GRPO) and add its memory to the peak")
  parser.add_argument("--quick", action="store_true",
                      help="Llama-3.2-1B shapes with 2 layers, 16 x (64 + 256) tokens,"
                           " fsdp8: a smoke run in seconds")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                    "memory_plan.json"))
  parser.add_argument("--merge", nargs="+", default=None,
                      help="JSON files of earlier runs: write their rows together to --out"
                           " and print one table (no compiling)")
  args = parser.parse_args(argv)
  if args.merge:
    runs = []
    for path in args.merge:
      with open(path) as f:
        runs.append(json.load(f))
    rows = [r for run in runs for r in run["rows"]]
    print_table(rows)
    with open(args.out, "w") as f:
      json.dump(dict(runs=[{k: v for k, v in run.items() if k != "rows"} for run in runs],
                     rows=rows), f, indent=1)
    return rows
  if args.quick:
    args.models, args.meshes, args.layers = "llama-3.2-1b", "fsdp8", 2
    args.rows, args.prompt, args.completion, args.micro_batches = 16, 64, 256, 2
  rows = []
  for name in args.models.split(","):
    kwargs = dict(MODELS[name])
    if args.layers:
      kwargs["num_layers"] = args.layers
    for mesh_name in args.meshes.split(","):
      for remat in args.remat.split(","):
        for fused in args.fused.split(","):
          row = plan(name, kwargs, mesh_name, remat=remat, fused_remat=fused == "recompute",
                     rows=args.rows, prompt=args.prompt, completion=args.completion,
                     groups=args.groups, micro_batches=args.micro_batches,
                     **({"build_state": lora_build_state(args.lora_rank)}
                        if args.lora_rank else {}), off_policy=args.off_policy)
          row["lora_rank"] = args.lora_rank
          if args.layers:
            row["num_layers"] = args.layers
          rows.append(row)
          print(f"# {name} {mesh_name} remat={remat} log-probs={fused}: "
                f"{row['compiled_gib']['total']:.2f} GiB/device "
                f"(compiled in {row['compile_seconds']:.0f} s)"
                + (f"; off-policy peak {row['off_policy_gib']['peak_total']:.2f} GiB/device"
                   f" (sampler compiled in {row['off_policy_gib']['compile_seconds']:.0f} s)"
                   if args.off_policy else ""), file=sys.stderr, flush=True)
  print_table(rows)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(dict(backend=jax.default_backend(), devices=jax.device_count(),
                   jax=jax.__version__, command=" ".join(sys.argv), rows=rows), f, indent=1)
  return rows


if __name__ == "__main__":
  main()
