"""Worker of test_multiprocess.py: a few sharded GRPO updates + an Orbax
checkpoint, on however many processes the environment declares.

  python tests/framework/multiprocess_update.py OUT_DIR [--die_after=K] [--steps=N]

Every process runs the same program (SPMD). Process 0 writes
`OUT_DIR/result.json` (per-step losses) and `OUT_DIR/params.npz` (final parameters);
all processes save and restore the Orbax checkpoint `OUT_DIR/ckpt`.
`--die_after=K`: process 1 exits abruptly after K updates (a killed host).
"""
import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from alignax import objectives
from alignax.framework import checkpoint, sharding, train
from alignax.framework.config import ModelConfig
from alignax.framework.model import Decoder


def batch(step, n=16, p=6, c=5, vocab=64):
  rng = np.random.RandomState(step)
  seq = rng.randint(0, vocab, (n, p + c)).astype(np.int32)
  seq[1::2, :p] = seq[0::2, :p]   # groups of 2 share the prompt
  return dict(sequences=seq, attention_mask=np.ones((n, p + c), bool),
              completion_tokens=seq[:, p:], completion_mask=np.ones((n, c), bool),
              old_logprobs=(-4.0 + 0.1 * rng.randn(n, c)).astype(np.float32),
              advantages=rng.randn(n).astype(np.float32))


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("out")
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--die_after", type=int, default=-1)
  a = ap.parse_args(argv)
  sharding.maybe_initialize_distributed()
  mesh = sharding.make_mesh(data=1, fsdp=8, tensor=1)
  config = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                       num_heads=4, num_kv_heads=2)
  model = sharding.shard_model(Decoder(config, seed=0), mesh)
  optimizer = optax.adamw(1e-3)
  graphdef, state = train.init_train_state(model, optimizer)
  update = train.make_grpo_update(graphdef, optimizer, loss=objectives.PolicyLossConfig(loss_type="dapo"),
                                  prompt_groups=2)
  ckpt = checkpoint.Checkpointer(os.path.join(a.out, "ckpt"))
  restored = ckpt.restore_latest(state)
  start = 0 if restored is None else restored[0]
  if restored is not None:
    state = restored[1]
  losses = []
  for step in range(start, a.steps):
    b = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim))
         for k, v in batch(step).items()}
    state, metrics = update(state, b)
    losses.append(float(metrics["loss"]))     # replicated scalar: readable anywhere
    ckpt.save(step + 1, state)
    if step + 1 == a.die_after and jax.process_index() == 1:
      os._exit(3)                               # a host dies, no clean shutdown
  ckpt.close()
  params = [np.asarray(jax.experimental.multihost_utils.process_allgather(x, tiled=True))
            for x in jax.tree.leaves(state.params)]
  if jax.process_index() == 0:
    np.savez(os.path.join(a.out, "params.npz"), *params)
    with open(os.path.join(a.out, "result.json"), "w") as f:
      json.dump(dict(processes=jax.process_count(), start=start, losses=losses), f)


if __name__ == "__main__":
  sys.exit(main())
