r"""Multi-task training of a BLOOM trunk: the main job.

  python -m bloom_jax.train --config configs/default.py --workdir /tmp/run
  python -m bloom_jax.train --config configs/real_multitask.py:single=sst2 --workdir ... \
      --config.optimizer.learning_rate=3e-4

Rerunning the same command on the same workdir resumes exactly where it stopped
(parameters, optimizer, step and input position come from the newest checkpoint).
Read top to bottom: config, mesh, data, model and optimizer, sharding, restore, step,
loop (log, evaluate, checkpoint).
"""

import contextlib
import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from bloom_jax import checkpointing, cli, config_lib, evaluation, runs, sharding, workdir_lock
from bloom_jax.errors import NonFiniteError

FLAGS = flags.FLAGS


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) the run in `workdir`; returns the final metrics line."""
  with contextlib.ExitStack() as cleanup:
    # ---------------------------------------------------------------------- config, mesh
    config_lib.validate(config)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
      cleanup.callback(workdir_lock.acquire(workdir).release)
    mesh = sharding.make_mesh(config.mesh)
    is_chief = jax.process_index() == 0
    ckpt = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints,
                                      best_metric=config.get('best_metric', ''),
                                      best_mode=config.get('best_mode', 'max'))
    cleanup.callback(ckpt.close)  # also on errors: in-flight saves of good states finish

    # ---------------------------------------------------------------------- input
    pipe = runs.prepare_data(config, workdir, mesh)

    # ---------------------------------------------------------------------- model, step
    setup = runs.build(config, pipe.tasks, pipe.tokenizer.vocab_size, mesh)
    logging.info('Model: %s, %.2fM parameters', setup.model_config, setup.num_params / 1e6)

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

    # ---------------------------------------------------------------------- loop
    writer = _summary_writer(workdir, is_chief) if config.get('tensorboard', True) else None
    metrics_file = None
    if is_chief:
      metrics_file = cleanup.enter_context(open(os.path.join(workdir, 'metrics.jsonl'), 'a'))
    progress = _Progress(start, config.total_steps)
    preempted = _PreemptionFlag()
    sums, last_line, window_start = None, {}, (start, time.time())

    def save(step, eval_metrics=None):
      _check_finite(state, setup.tasks, config)
      ckpt.save(step, state, train_iter.get_state(), config.to_json(), eval_metrics)

    for step in range(start + 1, config.total_steps + 1):
      local_batch = next(train_iter)
      batch = sharding.global_batch(local_batch, mesh)
      state, metrics = setup.train_step(state, batch)
      sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)

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
        _check_finite(state, setup.tasks, config)
        sums, window_start = None, (step, time.time())
        last_line = _write(writer, metrics_file, line)

      eval_metrics = None
      if step % config.eval_every == 0 or step == config.total_steps:
        eval_metrics = evaluator.evaluate(state['params'], 'validation')
        last_line = _write(writer, metrics_file, {'step': step, **eval_metrics})
      if step % config.checkpoint_every == 0 or step == config.total_steps:
        save(step, eval_metrics)
      progress.update(step, last_line)
      if preempted.is_set():
        logging.warning('SIGTERM received: saving step %d and exiting.', step)
        if ckpt.latest_step() != step:
          save(step)
        break

    ckpt.wait()
    if writer:
      writer.flush()
    return last_line


# -------------------------------------------------------------------------- helpers


def _tokens(local_batch, nonpad: bool = False) -> int:
  """Token positions one step processes on this host (with `nonpad`: those holding a token)."""
  return sum(int(np.sum(b['segment_ids'] > 0)) if nonpad else int(np.prod(b['input_ids'].shape))
             for b in local_batch.values())


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


class _Progress:
  """One terminal line with the step, throughput, ETA and the latest losses."""

  def __init__(self, start, total):
    self.start, self.total, self.t0 = start, total, time.time()

  def update(self, step, line):
    done = step - self.start
    rate = done / max(time.time() - self.t0, 1e-9)
    eta = (self.total - step) / max(rate, 1e-9)
    loss = f" loss {line['loss']:.4f}" if 'loss' in line else ''
    print(f'\rstep {step}/{self.total}  {rate:.2f} steps/s  ETA {eta:5.0f}s{loss}', end='',
          flush=True)
    if step == self.total:
      print()


class _PreemptionFlag:
  """Set by SIGTERM (how schedulers preempt); the loop saves and exits at the next step."""

  def __init__(self):
    self._set = False
    signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self._set = True

  def is_set(self) -> bool:
    return self._set


def initialize_distributed() -> None:
  """Joins a multi-process run when launched as one (env JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES, JAX_PROCESS_ID); on TPU pods and SLURM jax finds these itself."""
  address = os.environ.get('JAX_COORDINATOR_ADDRESS')
  if not address:
    return
  if jax.config.jax_platforms in (None, '', 'cpu'):
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(address, int(os.environ['JAX_NUM_PROCESSES']),
                             int(os.environ['JAX_PROCESS_ID']))


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
