"""The calls into fast-moving library APIs (Flax NNX, Orbax, JAX's mesh context) that changed
between releases. Everything version-sensitive goes through here, so an upgrade touches one
file."""

import functools

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


def use_mesh(mesh: jax.sharding.Mesh):
  """Context manager: functions traced inside it see `mesh` as the context mesh.

  `jax.set_mesh` replaced `jax.sharding.use_mesh` in JAX 0.7.1.
  """
  return jax.set_mesh(mesh)


def traced_under(mesh: jax.sharding.Mesh, fn):
  """`fn`, which when traced (under jit) sees `mesh` as the context mesh: what
  `sharding.constrain` reads. Entering `use_mesh` is not allowed inside a traced function,
  so this sets the mesh's abstract form there."""
  @functools.wraps(fn)
  def traced(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args, **kwargs)
  return traced


def context_mesh() -> jax.sharding.AbstractMesh | None:
  """The mesh of the enclosing `use_mesh`, or None outside one."""
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty else mesh


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
