"""Orbax checkpoints of a run: train state, input position and config, saved together.

Saves are asynchronous; the newest `keep` checkpoints are kept, plus the best one by a
validation metric (`BestRecord` says which, in DIR/best.json). Restoring goes into an
abstract target that carries the shardings of the *current* mesh, so a checkpoint written
on one mesh shape restores on another.
"""

import contextlib
import json
import math
import os
import re

import jax
import orbax.checkpoint as ocp
from absl import logging

from bloom_jax.errors import ConfigError

# tensorstore reports e.g. "... File too large [os_error_code='27'] ..." amid kilobytes of specs.
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


class CheckpointCorruptError(RuntimeError):
  """Checkpoints exist but none of them restores."""


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (disk full, unwritable directory, ...)."""


class Checkpointer:
  """Saves and restores the checkpoints under `<workdir>/checkpoints/<step>/`.

  `restore_latest` tolerates a corrupt or partial newest checkpoint (truncated array
  file, missing metadata, deleted item, e.g. after a crash mid-write): it warns naming
  the step and falls back to the newest step that restores. The steps newer than that
  one are then moved aside to `checkpoints/corrupt-<step>-<n>/` rather than deleted, so
  they stay inspectable. They must leave the step numbering: Orbax refuses to save a
  step whose directory already exists (the resumed run will reach that step again), and
  the keep-newest-N policy would count them as newer than the intact checkpoint and
  garbage-collect the intact one. Nothing is moved when no step restores, since then a
  mismatched restore target is likelier than corruption of every checkpoint.
  """

  def __init__(self, workdir: str, *, keep: int, best_metric: str = '', best_mode: str = 'max',
               create: bool = True):
    policies = [ocp.checkpoint_managers.LatestN(n=keep)]
    rank = None
    if best_metric:
      worst = math.inf if best_mode == 'min' else -math.inf  # {}: saved without an evaluation
      rank = lambda metrics: metrics.get(best_metric, worst)
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=rank, reverse=best_mode == 'min', n=1,
          keep_checkpoints_without_metrics=False))
    # `best_fn` only makes Orbax write each step's metrics to disk (the policies above
    # decide what is kept): without it they live in memory, and a resumed run would
    # delete the best checkpoint at its first save.
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        best_fn=rank, best_mode=best_mode, enable_async_checkpointing=True, create=create)
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    if not create and not os.path.isdir(self.directory):
      raise FileNotFoundError(f'{workdir}: no checkpoints (train first with bloom_jax.train)')
    if create:  # here, not in Orbax's save thread, where a failure only shows as a timeout
      os.makedirs(self.directory, exist_ok=True)
    self.best_metric = best_metric
    self._in_flight = None  # the step whose asynchronous write may still fail
    self.manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=('state', 'data', 'config'))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_state: dict, config_json: str, metrics=None) -> None:
    """Starts writing `step` in the background; raises CheckpointWriteError if this or the
    previous asynchronous write failed.

    Of the saves that carry `metrics` (with `best_metric` among them), the best one is kept
    beside the newest `keep`. The trainer passes metrics only where an evaluation improved
    on every earlier one (`BestRecord.update`), so the step kept is the one best.json names.

    A failed write leaves only `<step>.orbax-checkpoint-tmp` behind: Orbax renames a step
    into place once all of it is on disk, and deletes old steps only after that, so the
    earlier checkpoints stay whole and the next start resumes from the newest of them.
    """
    if self.best_metric and (metrics is None or self.best_metric not in metrics):
      metrics = {}  # ranks last; None would leave the step out of best-keeping's records
    with self._write_errors(step):
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=ocp.args.JsonSave(data_state),
          config=ocp.args.JsonSave(json.loads(config_json)),
      ), metrics=metrics, force=True)

  @contextlib.contextmanager
  def _write_errors(self, step: int | None):
    # An asynchronous write fails at the next save() or wait(): name the step in flight.
    in_flight = self._in_flight
    self._in_flight = step if step is not None else in_flight
    try:
      yield
    except Exception as e:  # noqa: BLE001 - Orbax wraps tensorstore's OS errors in many types
      failed = in_flight if in_flight is not None else step
      reason = ' '.join(f'{type(e).__name__}: {e}'.split())
      code = _OS_ERROR_CODE.search(reason)
      reason = f'{os.strerror(int(code[1]))} [errno {code[1]}]' if code else reason[:400]
      intact = ', '.join(map(str, self._committed_steps())) or 'none'
      raise CheckpointWriteError(
          f'{self.directory}: checkpoint {failed} could not be written ({reason}); the earlier '
          f'checkpoints are untouched (intact steps: {intact})') from e

  def _committed_steps(self) -> list[int]:
    try:
      names = os.listdir(self.directory)
    except OSError:
      return []
    return sorted(int(n) for n in names if n.isdigit())

  def restore(self, step: int, abstract_state):
    """(state, data_state) of `step`, laid out as `abstract_state`'s shardings say."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=ocp.args.JsonRestore(),
    ))
    logging.info('Restored checkpoint %d from %s', step, self.directory)
    return restored['state'], restored['data']

  def restore_latest(self, abstract_state):
    """(step, state, data_state) of the newest checkpoint that restores, or None if none exist.

    Raises CheckpointCorruptError when checkpoints exist but none of them restores.
    """
    self.manager.reload()  # the step list may have changed on disk since construction
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      return None
    failures = []
    for step in steps:
      try:
        self._check_metadata(step)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore(),  # restored only to prove the step is whole
        ))
      except Exception as e:  # noqa: BLE001 - Orbax, tensorstore and json raise many types
        reason = ' '.join(f'{type(e).__name__}: {e}'.split())[:500]
        logging.warning('Checkpoint %d in %s does not restore, skipping it: %s',
                        step, self.directory, reason)
        failures.append(step)
        continue
      if failures:
        self._move_aside(failures)
      logging.info('Restored checkpoint %d from %s', step, self.directory)
      return step, restored['state'], restored['data']
    raise CheckpointCorruptError(
        f'{self.directory}: no checkpoint restores (steps {", ".join(map(str, steps))}); '
        'see the warnings above for each step')

  def _check_metadata(self, step: int) -> None:
    # Orbax restores without these (the target supplies the tree structure), but their
    # absence means the write never finished, and the step metadata holds the metrics
    # the best-checkpoint policy ranks by.
    step_dir = os.path.join(self.directory, str(step))
    for name in ('_CHECKPOINT_METADATA', os.path.join('state', '_METADATA')):
      with open(os.path.join(step_dir, name)) as f:
        json.load(f)

  def _move_aside(self, steps) -> None:
    if jax.process_index() == 0:
      for step in steps:
        source = os.path.join(self.directory, str(step))
        n = 0
        while os.path.exists(target := os.path.join(self.directory, f'corrupt-{step}-{n}')):
          n += 1
        os.rename(source, target)
        logging.warning('Moved corrupt checkpoint %d aside to %s', step, target)
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes('bloom_jax_move_corrupt_checkpoints')
    self.manager.reload()

  def restore_config(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))['config']

  def wait(self) -> None:
    with self._write_errors(None):
      self.manager.wait_until_finished()

  def close(self) -> None:
    try:
      self.manager.close()
    except Exception as e:  # noqa: BLE001 - already raised by save() or wait() when it mattered
      logging.warning('Closing the checkpoints in %s: %s', self.directory, e)


BEST_FILE = 'best.json'


def read_best(workdir: str) -> dict | None:
  """DIR/best.json (see BestRecord), or None when the run has recorded no best."""
  try:
    with open(os.path.join(workdir, BEST_FILE), encoding='utf-8') as f:
      best = json.load(f)
  except FileNotFoundError:
    return None
  return best if best.get('step') is not None else None


class BestRecord:
  """The run's best evaluation by `metric` ('max' or 'min' `mode`), judged at every
  evaluation, and DIR/best.json, which records it for `bloom_jax.evaluate --step best` and
  the end-of-run summary:

    {"metric": ..., "mode": ..., "step": 1000, "value": 0.81,
     "metrics": {every metric of that evaluation}, "improvements": [[step, value], ...]}

  The trainer saves a checkpoint at every improvement, so the step named has one.
  `improvements` (oldest first) lets a resumed run forget the ones after the checkpoint it
  resumed from: it evaluates those steps again.
  """

  def __init__(self, workdir: str, metric: str, mode: str):
    self.path = os.path.join(workdir, BEST_FILE)
    self.metric, self.mode = metric, mode
    self.improvements: list[tuple[int, float]] = []
    self.metrics: dict[str, float] = {}

  @classmethod
  def resume(cls, workdir: str, metric: str, mode: str, up_to_step: int) -> 'BestRecord':
    """The record as of `up_to_step` (the step the run resumes from)."""
    record = cls(workdir, metric, mode)
    saved = read_best(workdir)
    if saved is None or (saved.get('metric'), saved.get('mode')) != (metric, mode):
      return record  # none yet, or judged by another metric: start afresh
    record.improvements = [(int(s), float(v)) for s, v in saved.get('improvements', [])
                           if s <= up_to_step]
    if record.step == saved['step']:
      record.metrics = dict(saved.get('metrics', {}))
    elif record.step is not None:  # the later improvements will be evaluated again
      record.metrics = {metric: record.value}
    return record

  @property
  def step(self) -> int | None:
    return self.improvements[-1][0] if self.improvements else None

  @property
  def value(self) -> float | None:
    return self.improvements[-1][1] if self.improvements else None

  def update(self, step: int, metrics: dict[str, float]) -> bool:
    """Judges the evaluation at `step`; True (and recorded) if it beats every earlier one."""
    if self.metric not in metrics:
      raise ConfigError(f'best_metric: the evaluation at step {step} has no {self.metric!r} '
                        f'(it has {", ".join(sorted(metrics))})')
    value = float(metrics[self.metric])
    better = (self.value is None or (value > self.value if self.mode == 'max'
                                     else value < self.value))
    if not (math.isfinite(value) and better):
      return False
    self.improvements.append((step, value))
    self.metrics = dict(metrics)
    return True

  def write(self) -> None:
    """Replaces best.json in one rename: readers never see half of it."""
    record = {'metric': self.metric, 'mode': self.mode, 'step': self.step, 'value': self.value,
              'metrics': self.metrics, 'improvements': self.improvements}
    tmp = f'{self.path}.tmp-{os.getpid()}'
    with open(tmp, 'w', encoding='utf-8') as f:
      json.dump(record, f, indent=2)
    os.replace(tmp, self.path)


def abstract_like(tree, shardings):
  """ShapeDtypeStructs with target shardings: the restore target, nothing allocated."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)

