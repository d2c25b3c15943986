"""The calls into fast-moving library APIs (Flax NNX, Orbax) that changed between
releases. Everything version-sensitive goes through here, so an upgrade touches one file."""

import jax
from flax import nnx


def param(value: jax.Array, axes: tuple[str | None, ...]) -> nnx.Param:
  """A parameter annotated with logical axis names.

  Flax 0.12 calls the annotation `out_sharding` and, by default, shards a variable as
  soon as it is created. We keep the names logical and shard later through the rules
  in `bloom_jax.sharding`, so eager sharding is switched off.
  """
  return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def logical_axes(variable: nnx.Variable) -> tuple[str | None, ...] | None:
  """The logical axis names of a variable (with the scanned 'layers' axis added)."""
  return variable.get_metadata().get('out_sharding')


SCAN_METADATA = {nnx.PARTITION_NAME: 'layers'}


def to_pure_dict(state: nnx.State) -> dict:
  """Nested dict of arrays: the layout we optimize and checkpoint (independent of how
  NNX represents variables)."""
  return nnx.to_pure_dict(state)


def from_pure_dict(abstract_state: nnx.State, params: dict) -> nnx.State:
  """The inverse of `to_pure_dict` for a state of the same structure; cheap under jit."""
  leaves = jax.tree.leaves(params)
  treedef = jax.tree.structure(abstract_state)
  if treedef.num_leaves != len(leaves):
    raise ValueError(f'parameter tree has {len(leaves)} arrays, the model {treedef.num_leaves}')
  return jax.tree.unflatten(treedef, leaves)
