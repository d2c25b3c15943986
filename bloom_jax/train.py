r"""Multi-task training of a BLOOM trunk: the main job.

  python -m bloom_jax.train --config configs/default.py --workdir /tmp/run
  python -m bloom_jax.train --config configs/real_multitask.py:single=sst2 --workdir ... \
      --config.optimizer.learning_rate=3e-4

Rerunning the same command on the same workdir resumes exactly where it stopped
(parameters, optimizer, step and input position come from the newest checkpoint).
Read top to bottom: config, mesh, data, model and optimizer, sharding, restore, step,
loop (log, evaluate, checkpoint), end of the run (test split, summary). What it prints
lives in bloom_jax/reporting.py.
"""

import contextlib
import functools
import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from jax.experimental import multihost_utils
from ml_collections import config_flags

from bloom_jax import (
  checkpointing,
  cli,
  config_lib,
  evaluation,
  flops,
  reporting,
  runs,
  sharding,
  steps,
  workdir_lock,
)
from bloom_jax.errors import ConfigError, NonFiniteError

FLAGS = flags.FLAGS


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) the run in `workdir`; returns the final metrics line."""
  with contextlib.ExitStack() as cleanup:
    # ---------------------------------------------------------------------- config, mesh
    config_lib.validate(config)
    _check_run_keys(config)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    is_chief = jax.process_index() == 0
    if is_chief:
      cleanup.callback(workdir_lock.acquire(workdir).release)
    mesh = sharding.make_mesh(config.mesh)
    ckpt = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints,
                                      best_metric=config.get('best_metric', ''),
                                      best_mode=config.get('best_mode', 'max'))
    cleanup.callback(ckpt.close)  # also on errors: in-flight saves of good states finish
    _check_same_state(config, ckpt, workdir)

    # ---------------------------------------------------------------------- input
    pipe = runs.prepare_data(config, workdir, mesh)  # also completes the config's tasks
    _check_best_metric(config, pipe)
    console = reporting.Console(config.total_steps, enabled=is_chief)
    if is_chief:
      path = reporting.write_config(workdir, config)
      console.print(f'Config (saved to {path}):\n' + reporting.config_text(config))

    # ---------------------------------------------------------------------- model, step
    setup = runs.build(config, pipe.tasks, pipe.tokenizer.vocab_size, mesh)
    logging.info('Model: %s, %.2fM parameters', setup.model_config, setup.num_params / 1e6)
    step_flops = flops.multitask_flops_per_step(setup.model_config, setup.tasks)
    peak, peak_source = _peak_flops(config, mesh)
    console.print(f'MFU is model FLOPs ({step_flops / 1e9:.3g} GFLOP per step) against '
                  f'{peak / 1e12:.3g} TFLOP/s per device ({peak_source}).')

    # ---------------------------------------------------------------------- restore or init
    train_iter = pipe.train_iterator(jax.process_index(), jax.process_count())
    restored = ckpt.restore_latest(setup.abstract_train_state())  # skips corrupt steps
    if restored is not None:
      _, state, data_state = restored
      train_iter.set_state(data_state)
    else:
      state = setup.init_train_state()
    start = int(jax.device_get(state['step']))
    evaluator = evaluation.Evaluator(config, pipe, setup.graphdef, setup.abstract_state, mesh)

    # ---------------------------------------------------------------------- best, early stop
    # "Best" is judged at every evaluation; an improvement is saved at once, whether or not
    # a checkpoint falls on that step.
    best, patience = None, config.get('early_stop_patience', 0)
    if config.get('best_metric'):
      best = checkpointing.BestRecord.resume(workdir, config.best_metric, config.best_mode, start)
      if is_chief and os.path.exists(best.path):
        best.write()  # without the improvements past `start`, which will be evaluated again
    stale = _evaluations_after(config, best.step or 0, start) if best is not None else 0
    stopped_early = bool(patience) and stale >= patience  # also when rerun after stopping
    last_step = start if stopped_early else config.total_steps

    # ---------------------------------------------------------------------- loop
    writer = _summary_writer(workdir, is_chief) if config.get('tensorboard', True) else None
    metrics_path = os.path.join(workdir, 'metrics.jsonl')
    final_eval = reporting.last_evaluation(metrics_path, start) if is_chief else {}
    metrics_file = cleanup.enter_context(open(metrics_path, 'a')) if is_chief else None
    trace = reporting.Trace(reporting.profile_window(config.get('profile_steps', ''),
                                                     config.total_steps),
                            os.path.join(workdir, 'profile'), start)
    cleanup.callback(trace.stop)
    preempted, was_preempted = _PreemptionFlag(), False
    sums, train_line, last_line, window_start = None, {}, {}, (start, time.time())
    console.start(start)

    def save(step, best_metrics=None):
      _check_finite(state, setup.tasks, config)
      ckpt.save(step, state, _input_state(train_iter), config.to_json(), best_metrics)

    for step in range(start + 1, last_step + 1):
      trace.begin(step)
      local_batch = next(train_iter)
      batch = sharding.global_batch(local_batch, mesh)
      state, metrics = setup.train_step(state, batch)
      sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
      if message := trace.end(step, state):
        console.print(message)

      if step % config.log_every == 0 or step == config.total_steps:
        elapsed = time.time() - window_start[1]
        n = step - window_start[0]
        line = {k: float(v) / n for k, v in jax.device_get(sums).items()}
        line = {**{('train/' + k if '/' in k else k): v for k, v in line.items()},
                'step': step, 'steps_per_s': n / elapsed,
                'tokens_per_s': n * _tokens(local_batch) * jax.process_count() / elapsed,
                'nonpad_tokens_per_s':
                    n * _tokens(local_batch, nonpad=True) * jax.process_count() / elapsed}
        line['skipped'] = round(line['skipped'] * n)
        per_device = step_flops * line['steps_per_s'] / jax.device_count()
        line.update(model_tflops_per_s_per_device=per_device / 1e12, mfu=per_device / peak)
        _check_finite(state, setup.tasks, config)
        sums, window_start = None, (step, time.time())
        last_line = train_line = _write(writer, metrics_file, line)

      eval_metrics, improved = None, False
      if step % config.eval_every == 0 or step == config.total_steps:
        eval_metrics = evaluator.evaluate(steps.inference_params(state), 'validation')
        last_line = final_eval = _write(writer, metrics_file, {'step': step, **eval_metrics})
        if best is not None:
          improved = best.update(step, eval_metrics)
          stale = 0 if improved else stale + 1
          stopped_early = bool(patience) and stale >= patience
        console.print(reporting.evaluation_text(step, eval_metrics, best, improved, stale,
                                                patience))
      if (improved or stopped_early or step % config.checkpoint_every == 0
          or step == config.total_steps):
        save(step, eval_metrics if improved else None)
        if improved and is_chief:
          best.write()
      console.progress(step, train_line.get('loss'), train_line.get('steps_per_s'),
                       force=stopped_early)
      if stopped_early:
        break
      if preempted.is_set(step):
        console.end_line()
        logging.warning('SIGTERM received: saving step %d and exiting.', step)
        if ckpt.latest_step() != step:
          save(step)
        was_preempted = True
        break

    ckpt.wait()
    if writer:
      writer.flush()
    final_step = int(jax.device_get(state['step']))
    if was_preempted:
      console.print(f'Stopped at step {final_step} (SIGTERM), checkpoint saved: run the same '
                    'command again to resume.')
      return last_line

    # ---------------------------------------------------------------------- end of the run
    test = None
    if config.get('eval_test_at_end', False):
      test_step = best.step if best is not None and best.step is not None else final_step
      test = _evaluate_test_split(evaluator, ckpt, setup, state, final_step, test_step,
                                  workdir if is_chief else None)
    ending = 'total_steps reached'
    if stopped_early and final_step < config.total_steps:
      ending = f'early stop: {config.best_metric} did not improve in {patience} evaluations'
    console.print(reporting.summary(
        workdir=workdir, step=final_step, total_steps=config.total_steps, ending=ending,
        final=final_eval, best=best, test=test,
        task=best.metric.split('/')[1] if best is not None else next(iter(pipe.tasks), None),
        tensorboard=config.get('tensorboard', True) or bool(config.get('profile_steps'))))
    return last_line


# -------------------------------------------------------------------------- helpers


def _input_state(train_iter) -> dict:
  """Every input shard's position. Orbax writes a checkpoint's JSON items from process 0
  alone, so the processes' positions are gathered first (a collective: every process
  saves)."""
  if jax.process_count() == 1:
    return train_iter.get_state()
  every = np.asarray(multihost_utils.process_allgather(train_iter.positions()))
  return train_iter.state_of(every.reshape(-1, *every.shape[2:]))


def _tokens(local_batch, nonpad: bool = False) -> int:
  """Token positions one step processes on this host (with `nonpad`: those holding a token)."""
  return sum(int(np.sum(b['segment_ids'] > 0)) if nonpad else int(np.prod(b['input_ids'].shape))
             for b in local_batch.values())


def _evaluate_test_split(evaluator, ckpt, setup, state, final_step, step, workdir):
  """(step, metrics, path) of checkpoint `step` on every task's whole test split; the
  metrics go to DIR/eval/test_<step>.json when `workdir` is given (process 0)."""
  params = steps.inference_params(state)
  if step != final_step:
    params = steps.inference_params(ckpt.restore(step, setup.abstract_train_state())[0])
  results = evaluator.evaluate(params, 'test', max_examples=0, prefix='test')
  path = reporting.write_eval(workdir, 'test', step, results) if workdir and results else None
  return step, results, path


def _peak_flops(config, mesh) -> tuple[float, str]:
  """(FLOP/s per device, its source) that MFU is measured against."""
  given = config.get('peak_tflops_per_device', 0.0)
  if given:
    return given * 1e12, 'peak_tflops_per_device in the config'
  return flops.device_peak(mesh.devices.flat[0], config.model.dtype)


# Keys whose value decides which arrays the train state holds: ema_params, the bags of
# n-grams' own optimizer state, and the uncertainty method's log-variances among the
# parameters.
_STATE_KEYS = {
    'optimizer.ema_decay': config_lib.keeps_average,
    'optimizer.ngram_optimizer': lambda c: (c.get('optimizer') or {}).get('ngram_optimizer',
                                                                          'adamw'),
    'loss_balancing': lambda c: c.get('loss_balancing', 'static') == 'uncertainty',
}


def _check_same_state(config, ckpt, workdir: str) -> None:
  """A resumed run must build the state its checkpoints hold: a key that adds or removes
  part of it is a ConfigError naming the key, before anything is written."""
  step = ckpt.latest_step()
  if step is None:
    return
  try:
    saved = ckpt.restore_config(step)
  except Exception:  # noqa: BLE001 - a damaged checkpoint: restore_latest reports it
    return
  current = config.to_dict()
  value = lambda c, key: functools.reduce(lambda d, k: d.get(k, {}), key.split('.'), c)
  for key, holds in _STATE_KEYS.items():
    if holds(saved) != holds(current):
      raise ConfigError(
          f'{key}: {workdir} holds a run saved with {value(saved, key)!r}, and '
          f'{value(current, key)!r} changes which arrays its train state holds; resume with '
          'the saved value or train in a new workdir')


def _check_run_keys(config) -> None:
  """The keys only the trainer reads (config_lib.validate checks the shared ones)."""
  peak = config.get('peak_tflops_per_device', 0.0)
  if isinstance(peak, bool) or not isinstance(peak, int | float) or peak < 0:
    raise ConfigError(f'peak_tflops_per_device: must be a number >= 0 (0: the datasheet peak, '
                      f'or a measured one on CPU), got {peak!r}')
  patience = config.get('early_stop_patience', 0)
  if not isinstance(patience, int) or isinstance(patience, bool) or patience < 0:
    raise ConfigError(f'early_stop_patience: must be an integer >= 0 (0: never stop early), '
                      f'got {patience!r}')
  if patience and not config.get('best_metric'):
    raise ConfigError('early_stop_patience: needs best_metric, the metric it watches')
  if not isinstance(config.get('eval_test_at_end', False), bool):
    raise ConfigError(f'eval_test_at_end: must be True or False, got {config.eval_test_at_end!r}')
  reporting.profile_window(config.get('profile_steps', ''), config.total_steps)
  metric = config.get('best_metric', '')
  parts = metric.split('/') if metric else []
  if metric and (len(parts) != 3 or parts[0] != 'eval' or parts[1] not in config.tasks):
    raise ConfigError(f'best_metric: must be eval/<task>/<metric> for a task of the run '
                      f'({", ".join(config.tasks)}), or empty; got {metric!r}')


def _check_best_metric(config, pipe) -> None:
  task = config.get('best_metric', '').split('/')[1:2]
  if task and not pipe.has_split(task[0], 'validation'):
    raise ConfigError(f'best_metric: task {task[0]!r} has no validation split to judge it on')


def _evaluations_after(config, step: int, until: int) -> int:
  """How many evaluations the schedule holds in steps (step, until]."""
  every, total = config.eval_every, config.total_steps
  return until // every - step // every + (1 if step < total <= until and total % every else 0)


def _check_finite(state, tasks, config):
  step, task = (int(x) for x in jax.device_get(state['nonfinite']))
  if step >= 0 and not config.skip_nonfinite:
    raise NonFiniteError(f'non-finite loss or gradient at step {step + 1} '
                         f'(task {tasks[task].name!r}); the update was not applied and no '
                         'checkpoint holds it. Set skip_nonfinite=True to skip such updates.')


def _summary_writer(workdir: str, is_chief: bool):
  # Imported here: clu's writers load TensorFlow (seconds), which a run with
  # `tensorboard=False` never needs.
  from clu import metric_writers
  return metric_writers.create_default_writer(workdir, just_logging=not is_chief)


def _write(writer, metrics_file, line: dict) -> dict:
  if writer:
    writer.write_scalars(line['step'], {k: v for k, v in line.items() if k != 'step'})
  if metrics_file:
    metrics_file.write(json.dumps(line) + '\n')
    metrics_file.flush()
  return line


class _PreemptionFlag:
  """SIGTERM (how schedulers preempt): the loop saves and exits.

  With one process, a handler of ours sets a flag. With several, a host signalled alone
  must not stop alone (the others would wait in the next collective forever): JAX's
  preemption service, started by `jax.distributed.initialize`, catches SIGTERM, tells
  every process, and they agree on the step after the furthest one, at which all of them
  save and exit (`multihost_utils.reached_preemption_sync_point`, asked at every step).
  """

  def __init__(self):
    self._set = False
    self._agreed = jax.process_count() > 1
    if not self._agreed:
      signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self._set = True

  def is_set(self, step: int) -> bool:
    if self._agreed:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._set


def initialize_distributed() -> None:
  """Joins a multi-process run when launched as one: explicitly (env JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES, JAX_PROCESS_ID), or as one task of a multi-task SLURM job or one
  worker of a multi-host TPU slice, whose settings JAX reads from their environment."""
  address = os.environ.get('JAX_COORDINATOR_ADDRESS')
  detected = (int(os.environ.get('SLURM_NTASKS', '1')) > 1
              or ',' in os.environ.get('TPU_WORKER_HOSTNAMES', ''))
  if not address and not detected:
    return
  if jax.config.jax_platforms in (None, '', 'cpu'):
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if address:
    jax.distributed.initialize(address, int(os.environ['JAX_NUM_PROCESSES']),
                               int(os.environ['JAX_PROCESS_ID']))
  else:
    jax.distributed.initialize()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  initialize_distributed()
  train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'Training config file.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and logs.')
  flags.mark_flags_as_required(['config', 'workdir'])
  cli.run(main)
