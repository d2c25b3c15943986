"""Orbax checkpoints of a run: train state, input position and config, saved together.

Saves are asynchronous; the newest `keep` checkpoints are kept, plus the best one by a
validation metric. Restoring goes into an abstract target that carries the shardings of
the *current* mesh, so a checkpoint written on one mesh shape restores on another.
"""

import json
import os

import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:

  def __init__(self, workdir: str, *, keep: int, best_metric: str = '', best_mode: str = 'max',
               create: bool = True):
    policies = [ocp.checkpoint_managers.LatestN(n=keep)]
    if best_metric:
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=lambda metrics: metrics[best_metric], reverse=best_mode == 'min', n=1,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=True, create=create)
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    if not create and not os.path.isdir(self.directory):
      raise FileNotFoundError(f'{workdir}: no checkpoints (train first with bloom_jax.train)')
    self.best_metric = best_metric
    self.manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=('state', 'data', 'config'))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_state: dict, config_json: str, metrics=None) -> None:
    if metrics is not None and self.best_metric not in metrics:
      metrics = None
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(json.loads(config_json)),
    ), metrics=metrics, force=True)

  def restore(self, step: int, abstract_state):
    """(state, data_state) of `step`, laid out as `abstract_state`'s shardings say."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=ocp.args.JsonRestore(),
    ))
    logging.info('Restored checkpoint %d from %s', step, self.directory)
    return restored['state'], restored['data']

  def restore_config(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))['config']

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def abstract_like(tree, shardings):
  """ShapeDtypeStructs with target shardings: the restore target, nothing allocated."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)

