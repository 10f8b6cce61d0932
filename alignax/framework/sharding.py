"""Device meshes and the one place that maps logical axes onto mesh axes.

Parameters declare logical axes (`Dense(..., axes=("embed", "mlp"))`); `RULES`
maps each logical axis to a mesh axis, MaxText-style. The same code runs on one
CPU, on 8 simulated CPU devices in tests, and on a multi-host slice.
"""
from __future__ import annotations

import math
import os
from typing import Any, Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P, SingleDeviceSharding

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or a tuple of mesh axes, or None: replicated).
RULES: Mapping[str, Any] = {
    "batch": ("data", "fsdp"),
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "norm": None,
}


def maybe_initialize_distributed() -> None:
  """Calls `jax.distributed.initialize()` when the environment asks for it.

  Set `JAX_COORDINATOR_ADDRESS` (host:port of process 0) with
  `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` on every process, or
  `ALIGNAX_DISTRIBUTED=1` on clusters where JAX detects them itself (TPU
  pods, SLURM). `ALIGNAX_HEARTBEAT_SECONDS` (default 100) bounds how long
  the others wait for a process that died, `ALIGNAX_INIT_TIMEOUT_SECONDS`
  (default 300) how long they wait at start for one that never came.
  Single-process runs do nothing.
  """
  if jax.distributed.is_initialized():
    return
  timeouts = dict(
      heartbeat_timeout_seconds=int(os.environ.get("ALIGNAX_HEARTBEAT_SECONDS", "100")),
      initialization_timeout=int(os.environ.get("ALIGNAX_INIT_TIMEOUT_SECONDS", "300")))
  address = os.environ.get("JAX_COORDINATOR_ADDRESS")
  if address:
    missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if k not in os.environ]
    if missing:
      raise ValueError(f"JAX_COORDINATOR_ADDRESS={address} is set but {missing} are not;"
                       " set all three on every process.")
    # jax.distributed.initialize reads no JAX_NUM_PROCESSES / JAX_PROCESS_ID
    # variables itself: pass them.
    jax.distributed.initialize(address, int(os.environ["JAX_NUM_PROCESSES"]),
                               int(os.environ["JAX_PROCESS_ID"]), **timeouts)
  elif os.environ.get("ALIGNAX_DISTRIBUTED") == "1":
    jax.distributed.initialize(**timeouts)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
              devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh; one size may be -1 to take the rest."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise ValueError(f"At most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}.")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(
          f"Cannot fill mesh {dict(zip(MESH_AXES, sizes))} from {len(devices)} devices.")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(
        f"Mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices;"
        f" {len(devices)} are available.")
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_spec(axes, shape, mesh: Mesh, rules: Mapping[str, Any] = RULES) -> P:
  """PartitionSpec for an array with logical `axes`.

  A dimension stays replicated when its size is not divisible by the mesh axes
  it maps to, or when those mesh axes are already used by another dimension.
  """
  used: set[str] = set()
  spec = []
  for name, dim in zip(axes, shape):
    target = rules.get(name) if name is not None else None
    names = (target,) if isinstance(target, str) else tuple(target or ())
    # Mesh axes of size 1 are left out: the same placement, written the way
    # jit writes its outputs' shardings, so the state a jitted update returns
    # has the shardings it was given and its second call does not recompile.
    names = tuple(n for n in names if n not in used and mesh.shape[n] > 1)
    size = math.prod(mesh.shape[n] for n in names)
    if not names or dim % size:
      spec.append(None)
      continue
    used.update(names)
    spec.append(names[0] if len(names) == 1 else names)
  while spec and spec[-1] is None:
    spec.pop()
  return P(*spec)


def replicate_unplaced(tree: Any) -> Any:
  """Leaves of `tree` on a single device (e.g. step counters created next to
  sharded parameters) replicated over the mesh of its sharded leaves; when no
  leaf is sharded, every leaf committed to the device it is on. (jit returns
  its outputs so placed: given them so from the start, a jitted update or
  sampler compiles once, not again at the second step, whose inputs are the
  first step's committed outputs; and with several processes they live on the
  global mesh like the parameters.)"""
  leaves = [x for x in jax.tree.leaves(tree)
            if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)]
  mesh = next((x.sharding.mesh for x in leaves if isinstance(x.sharding, NamedSharding)),
              None)
  if mesh is None:
    return jax.tree.map(
        lambda x: (jax.device_put(x, x.sharding) if isinstance(x, jax.Array)
                   and not isinstance(x, jax.core.Tracer) else x), tree)

  def one(x):
    if (isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)
        and isinstance(x.sharding, SingleDeviceSharding)):
      return jax.device_put(x, NamedSharding(mesh, P()))
    return x
  return jax.tree.map(one, tree)


def state_shardings(state: nnx.State, mesh: Mesh,
                    rules: Mapping[str, Any] = RULES) -> nnx.State:
  """NamedShardings for every variable of an NNX state (from `logical_axes`)."""

  def one(var):
    axes = var.get_metadata().get("logical_axes")
    spec = logical_spec(axes, var.shape, mesh, rules) if axes else P()
    return var.replace(NamedSharding(mesh, spec))

  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh,
                rules: Mapping[str, Any] = RULES) -> nnx.Module:
  """Places a model's variables on `mesh` per the logical-axis rules (in place)."""
  state = nnx.state(model)
  nnx.update(model, jax.device_put(state, state_shardings(state, mesh, rules)))
  return model


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Shards the leading (batch) dimension over the data and fsdp axes."""
  return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))
