r"""Training memory of a Qwen2.5-7B-shaped GRPO update: LoRA vs full fine-tuning.

  python benchmarks/memory_plan_lora.py                    # rank 16, one device
  python benchmarks/memory_plan_lora.py --mesh fsdp8       # 8 (simulated) devices
  python benchmarks/memory_plan_lora.py --layers 2         # smoke run, seconds

Nothing is allocated: the train state and batch are `jax.ShapeDtypeStruct`s,
the whole update (decoder + fused log-probs + DAPO loss + AdamW + gradient
accumulation) is lowered and compiled for the CPU backend, and
`compiled.memory_analysis()` gives the per-device arguments (weights, Adam
state, batch), temporaries (activations, gradients) and total. Next to it the
arithmetic of the persistent state per device:

  full: f32 master weights 4 B + Adam moments 8 B + gradient accumulator 4 B per parameter
  LoRA: bf16 frozen base 2 B per base parameter; adapters in f32 with their
        Adam moments and gradients, 16 B per adapter parameter

(both with bf16 matmuls by default). XLA:CPU's buffer assignment is not a
GPU's or a TPU's: read the compiled figures as a plan, not a measurement. In
particular XLA:CPU runs bf16 dots in f32, so with bf16 compute its temporaries
include f32 copies of the weights that a GPU/TPU never makes;
`--compute_dtype float32 --lora_base_dtype float32` compares without them.
Writes benchmarks/results/memory_plan_lora.json (`--out` to change).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
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
from alignax.framework import lora, sharding, train  # noqa: E402
from alignax.framework.config import ModelConfig  # noqa: E402
from alignax.framework.model import Decoder  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memory_plan import GIB, memory_gib  # noqa: E402  pylint: disable=g-import-not-at-top

# Qwen2.5-7B's config.json shapes.
QWEN25_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                 num_layers=28, num_heads=28, num_kv_heads=4, qkv_bias=True,
                 model_type="qwen2", rope_theta=1000000.0, tie_word_embeddings=False,
                 max_position_embeddings=32768)
MESHES = {"single": dict(data=1, fsdp=1, tensor=1), "fsdp8": dict(data=1, fsdp=8, tensor=1)}


def abstract_state(config: ModelConfig, optimizer, rank: int):
  """(graphdef, TrainState of ShapeDtypeStructs); rank > 0 attaches LoRA adapters."""
  def build():
    model = Decoder(config)
    if rank:
      lora.apply(model, lora.LoraConfig(rank=rank, alpha=2.0 * rank))
    return train.init_train_state(model, optimizer)
  return jax.eval_shape(build)


def shardings(tree, mesh):
  """Every nnx Variable (params, Adam moments) per its logical axes; rest replicated."""
  def one(x):
    if isinstance(x, nnx.Variable):
      axes = x.get_metadata().get("logical_axes")
      return x.replace(NamedSharding(
          mesh, sharding.logical_spec(axes, x.shape, mesh) if axes else P()))
    return NamedSharding(mesh, P())
  return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def plan(rank: int, args) -> dict:
  kwargs = dict(QWEN25_7B, num_layers=args.layers or QWEN25_7B["num_layers"])
  # Full fine-tuning keeps f32 master weights; LoRA's frozen base can be bf16.
  base_dtype = args.lora_base_dtype if rank else "float32"
  config = ModelConfig(**kwargs, param_dtype=base_dtype, dtype=args.compute_dtype)
  optimizer = train.make_optimizer(1e-5)
  graphdef, state = abstract_state(config, optimizer, rank)
  mesh = sharding.make_mesh(**MESHES[args.mesh], devices=jax.devices()[:np.prod(
      list(MESHES[args.mesh].values()))])
  update = train.make_grpo_update(
      graphdef, optimizer, loss=objectives.PolicyLossConfig(loss_type="dapo"),
      micro_batches=args.micro_batches)
  sds = jax.ShapeDtypeStruct
  n, c, length = args.rows, args.completion, args.prompt + args.completion
  batch = dict(sequences=sds((n, length), np.int32), attention_mask=sds((n, length), bool),
               completion_tokens=sds((n, c), np.int32), completion_mask=sds((n, c), bool),
               old_logprobs=sds((n, c), np.float32), advantages=sds((n,), np.float32))
  state_sh = shardings(state, mesh)
  batch_sh = {k: sharding.batch_sharding(mesh, v.ndim) for k, v in batch.items()}
  step = jax.jit(lambda s, b: update(s, b), in_shardings=(state_sh, batch_sh),
                 out_shardings=(state_sh, None), donate_argnums=0)
  t0 = time.perf_counter()
  mem = step.lower(state, batch).compile().memory_analysis()
  seconds = time.perf_counter() - t0
  total = int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params)))
  trained = int(sum(np.prod(x.shape) for x in jax.tree.leaves(
      train.trainable_params(state.params))))
  devices = mesh.size
  if rank:
    base_bytes = np.dtype(jax.numpy.dtype(base_dtype)).itemsize
    persistent = (base_bytes * (total - trained) + 16 * trained) / devices
  else:
    persistent = 16 * total / devices
  return dict(method=f"lora r={rank}" if rank else "full", mesh=args.mesh,
              weights_dtype=base_dtype, compute_dtype=args.compute_dtype,
              params_billion=total / 1e9, trainable_million=trained / 1e6,
              arithmetic_state_gib=persistent / GIB,
              compiled_gib=memory_gib(mem),
              compile_seconds=seconds)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rank", type=int, default=16)
  parser.add_argument("--mesh", default="single", choices=sorted(MESHES))
  parser.add_argument("--layers", type=int, default=0, help="0: the model's 28")
  parser.add_argument("--rows", type=int, default=8)
  parser.add_argument("--prompt", type=int, default=256)
  parser.add_argument("--completion", type=int, default=1024)
  parser.add_argument("--micro_batches", type=int, default=8)
  parser.add_argument("--compute_dtype", default="bfloat16", choices=("bfloat16", "float32"))
  parser.add_argument("--lora_base_dtype", default="bfloat16",
                      choices=("bfloat16", "float32"))
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                    "memory_plan_lora.json"))
  args = parser.parse_args(argv)
  rows = [plan(0, args), plan(args.rank, args)]
  print(f"Qwen2.5-7B shapes ({args.layers or 28} layers), GRPO update of {args.rows} rows x"
        f" ({args.prompt} + {args.completion}) tokens in {args.micro_batches} micro-batches,"
        f" mesh {args.mesh}, per device:\n")
  print("| method | weights | compute | params | trained | state (arithmetic) | arguments "
        "| temporaries | total (compiled) |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for r in rows:
    c = r["compiled_gib"]
    print(f"| {r['method']} | {r['weights_dtype']} | {r['compute_dtype']} "
          f"| {r['params_billion']:.2f} B | {r['trainable_million']:.1f} M "
          f"| {r['arithmetic_state_gib']:.1f} GiB | {c['arguments']:.1f} GiB "
          f"| {c['temporaries']:.1f} GiB | {c['total']:.1f} GiB |")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(dict(args=vars(args), rows=rows, jax=jax.__version__,
                   machine=platform.processor() or platform.machine()), f, indent=2)
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
