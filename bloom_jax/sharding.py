"""The device mesh and the one table that maps logical axis names to mesh axes.

Parameters carry logical names ('embed', 'heads', ...; see bloom_jax/compat.param), and
so do the activations at block boundaries (`constrain`); nothing else in the codebase
mentions mesh axes. Batches are split over ('data', 'fsdp'); parameters are split over
'fsdp' (ZeRO-3 style) and 'tensor' (Megatron style: heads and MLP features).
"""

import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec

from bloom_jax import compat

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')

LOGICAL_RULES = {
    'batch': BATCH_AXES,
    'length': None,
    'vocab': 'tensor',
    'embed': 'fsdp',
    # An activation's hidden dimension stays whole: its rows are already split over the
    # batch axes, fsdp among them, and each device computes whole rows.
    'activation_embed': None,
    # Rows looked up in a table split along 'embed': over the batch axes the table leaves
    # free (layers.embedding_lookup).
    'lookup_batch': 'data',
    'heads': 'tensor',
    'mlp': 'tensor',
    'labels': None,
    'kv': None,
    'layers': None,
    'norm': None,
}


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) with at most one -1 filled from the device count."""
  sizes = [int(mesh_config[axis]) for axis in MESH_AXES]
  for axis, size in zip(MESH_AXES, sizes, strict=True):
    if size == 0 or size < -1:
      raise ValueError(f'mesh.{axis} must be a positive size or -1, got {size}')
  if sizes.count(-1) > 1:
    raise ValueError('mesh: at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f'mesh: {num_devices} devices cannot be split with the fixed axes '
                       f'{dict(zip(MESH_AXES, sizes, strict=True))}')
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f'mesh: data*fsdp*tensor = {math.prod(sizes)} but {num_devices} devices '
                     f'are available (mesh.data={sizes[0]}, mesh.fsdp={sizes[1]}, '
                     f'mesh.tensor={sizes[2]})')
  return tuple(sizes)


def make_mesh(mesh_config, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_config, len(devices))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def logical_to_spec(axes, shape, mesh: Mesh | AbstractMesh) -> PartitionSpec:
  """PartitionSpec for logical `axes`; a dimension the mesh axes do not divide evenly
  stays replicated (e.g. 6 heads on a 4-way tensor axis)."""
  spec = []
  for name, dim in zip(axes, shape, strict=True):
    mesh_axes = LOGICAL_RULES.get(name) if name else None
    if mesh_axes is not None:
      names = (mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes
      if dim % math.prod(mesh.shape[a] for a in names):
        mesh_axes = None
    spec.append(mesh_axes)
  return PartitionSpec(*spec)


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
  """x, constrained to be sharded as its logical `axes` say on the mesh the step is
  traced under (`compat.use_mesh`); x unchanged outside one (one device, or the model
  called eagerly or in a plain jit).

  Without them XLA infers the activations' shardings from the parameters'. Under fsdp
  those are split along 'embed', and so were the activations: every device held a slice
  of the hidden states of every row of the batch (and the MLP features of every row whole).
  BLOOM-560m planned on cpu-8 with fsdp=8 (8 rows of 2048 tokens) asked 31.96 GiB of
  temporaries per device without constraints and 6.47 GiB with them (docs/scaling.md).
  """
  mesh = compat.context_mesh()
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, x.shape, mesh))


def state_shardings(abstract_state: nnx.State, mesh: Mesh):
  """NamedShardings for an nnx.State of parameters (abstract or concrete)."""
  def sharding(variable):
    axes = compat.logical_axes(variable)
    value = variable.get_value()
    if axes is None:
      return NamedSharding(mesh, PartitionSpec())
    return NamedSharding(mesh, logical_to_spec(axes, value.shape, mesh))

  return jax.tree.map(sharding, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch, mesh: Mesh):
  """Assembles each process's rows into one array sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def like_params(tree_shapes, param_shapes, param_shardings, mesh: Mesh):
  """Shardings for a tree holding per-parameter arrays (e.g. Adam's mu and nu): a leaf
  whose key path ends with a parameter's path and has its shape is sharded like that
  parameter; anything else (step counters) is replicated."""
  def keys(path):
    return tuple(str(k) for k in path)

  params = {keys(p): (s.shape, sh) for (p, s), sh in zip(
      jax.tree_util.tree_flatten_with_path(param_shapes)[0], jax.tree.leaves(param_shardings),
      strict=True)}

  def pick(path, leaf):
    path = keys(path)
    for start in range(len(path)):
      shape, sh = params.get(path[start:], (None, None))
      if shape == leaf.shape:
        return sh
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(pick, tree_shapes)
