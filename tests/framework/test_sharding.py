"""The forward pass under an 8-device (fsdp x tensor) mesh equals one device's."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from alignax.framework import sharding
from alignax.framework.config import ModelConfig
from alignax.framework.model import Decoder


def test_eight_simulated_devices():
  assert jax.device_count() == 8


@pytest.mark.parametrize("data,fsdp,tensor", [(1, 4, 2), (2, 2, 2)])
def test_sharded_forward_equals_single_device(data, fsdp, tensor):
  config = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                       num_layers=2, num_heads=4, num_kv_heads=2)
  ids = jnp.asarray(np.random.RandomState(0).randint(0, 128, (8, 12)), jnp.int32)
  mask = jnp.ones((8, 12), jnp.int32).at[1, :4].set(0)
  model = Decoder(config, seed=0)
  ref = jax.jit(lambda m, x, a: m(x, attention_mask=a))(model, ids, mask)

  mesh = sharding.make_mesh(data=data, fsdp=fsdp, tensor=tensor)
  sharding.shard_model(model, mesh)
  kernel = model.layers[0].mlp.gate_proj.kernel[...]
  assert kernel.sharding.spec == P("fsdp", "tensor")
  assert kernel.addressable_shards[0].data.shape == (64 // fsdp, 128 // tensor)
  assert model.embed_tokens[...].sharding.spec == P("tensor", "fsdp")
  batch = sharding.batch_sharding(mesh)
  out = jax.jit(lambda m, x, a: m(x, attention_mask=a))(
      model, jax.device_put(ids, batch), jax.device_put(mask, batch))
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)


def test_bad_mesh_sizes_are_explained():
  with pytest.raises(ValueError, match="needs 6 devices"):
    sharding.make_mesh(data=3, fsdp=2, tensor=1)
  with pytest.raises(ValueError, match="At most one"):
    sharding.make_mesh(data=-1, fsdp=-1)


def test_indivisible_dimension_stays_replicated():
  mesh = sharding.make_mesh(data=1, fsdp=4, tensor=2)
  assert sharding.logical_spec(("vocab", "embed"), (97, 64), mesh) == P(None, "fsdp")


def test_unsharded_state_is_placed_as_jit_returns_it(caplog):
  # Without a mesh, a fresh state (uncommitted arrays) and a jitted step's
  # output (committed) were two cache keys for an update jitted with
  # out_shardings (train.jit_donating_state): the GRPO update compiled again
  # at the second step. Placed up front, it compiles once.
  def compiles(state):
    def update(s, batch):  # a new function each time: no cache shared
      return jax.tree.map(lambda x: x + 1, s), batch
    step = jax.jit(update, donate_argnums=0,
                   out_shardings=(jax.tree.map(lambda x: x.sharding, state), None))
    caplog.clear()
    with jax.log_compiles(True), caplog.at_level("WARNING"):
      state, _ = step(state, jnp.ones(3))
      step(state, jnp.ones(3))
    return sum("Finished XLA compilation of jit(update)" in r.getMessage()
               for r in caplog.records)

  fresh = lambda: {"w": jnp.ones((4, 4)), "count": jnp.int32(0)}  # noqa: E731
  assert compiles(sharding.replicate_unplaced(fresh())) == 1
  assert compiles(fresh()) == 2  # what placing avoids
