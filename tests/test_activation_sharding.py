"""Activations carry logical axis names (sharding.constrain): on 8 simulated CPU devices the
train step compiled under fsdp holds a sixth or less of data parallelism's state per device
and no more temporaries, and the constrained model computes what the unconstrained one
does."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from bloom_jax import compat, layers, plan, sharding
from bloom_jax.model import Bloom, BloomConfig
from tests.tiny import tiny_config

BATCH, SEQ = 16, 32


@pytest.fixture(scope='module')
def memory():
  """XLA's memory analysis of the train step (plan.make_plan) under data=8 and fsdp=8."""
  out = {}
  for name in ('data', 'fsdp'):
    config = tiny_config()
    config.model.hidden_size, config.tokenizer.vocab_size = 64, 512
    mesh = {axis: 8 if axis == name else 1 for axis in sharding.MESH_AXES}
    p = plan.make_plan(config, 'tiny', plan.Topology('cpu-8', 'cpu', 8), mesh, BATCH, SEQ,
                       mfu=0.4, chip_name='')
    out[name] = p['bytes_per_device']
  return out


def test_fsdp_holds_a_sixth_of_the_state_of_data_parallelism(memory):
  # The step's arguments and outputs are the state (parameters, Adam's moments, counters)
  # plus the batch, or plus the metrics; the batch is split 8 ways under both meshes.
  for kind in ('argument', 'output'):
    data, fsdp = (memory[m][f'xla_{kind}'] - memory[m]['batch'] for m in ('data', 'fsdp'))
    assert fsdp <= data / 6, (kind, fsdp, data)


def test_fsdp_activations_are_split_by_rows_as_under_data_parallelism(memory):
  # Each device computes 2 of the 16 rows under either mesh. Without the constraints, under
  # fsdp every device held a slice of the hidden states of all 16 rows: twice the temporaries.
  assert memory['fsdp']['temp'] <= 1.1 * memory['data']['temp'], memory


def test_constrain_maps_logical_names_and_replicates_what_does_not_divide():
  x = jnp.ones((8, 5, 6, 4))
  assert sharding.constrain(x, layers.HEADS) is x  # no mesh in context: nothing to do
  mesh = sharding.make_mesh(dict(data=1, fsdp=2, tensor=4))
  for heads, spec in ((8, PartitionSpec(sharding.BATCH_AXES, None, 'tensor')),
                      (6, PartitionSpec(sharding.BATCH_AXES))):  # 6 heads on 4: whole
    with compat.use_mesh(mesh):
      y = jax.jit(lambda x: sharding.constrain(x, layers.HEADS))(jnp.ones((8, 5, heads, 4)))
    assert y.sharding.is_equivalent_to(NamedSharding(mesh, spec), y.ndim), (heads, y.sharding)


def test_constrained_model_computes_what_the_unconstrained_one_does():
  cfg = BloomConfig(vocab_size=64, hidden_size=32, n_layer=2, n_head=4)
  graphdef, state = nnx.split(Bloom(cfg, rngs=nnx.Rngs(0)))
  ids = jax.random.randint(jax.random.key(1), (8, 12), 0, cfg.vocab_size)

  def loss(state, ids):
    return jnp.mean(jnp.square(nnx.merge(graphdef, state)(ids)))

  step = jax.jit(jax.value_and_grad(loss))
  expected = step(state, ids)
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  state = jax.device_put(state, sharding.state_shardings(state, mesh))
  ids = jax.device_put(ids, sharding.batch_sharding(mesh))
  with compat.use_mesh(mesh):
    assert 'sharding_constraint' in step.lower(state, ids).as_text()
    got = step(state, ids)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
