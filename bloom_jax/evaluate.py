r"""Scores a trained run on every task of its config.

  python -m bloom_jax.evaluate --workdir DIR [--split validation|test] [--step N]

Restores the checkpoint (the latest unless --step), evaluates each task on the whole
split, prints a table and writes DIR/eval/<split>_<step>.json.
"""

import json
import os

import jax
import ml_collections
from absl import flags, logging

from bloom_jax import checkpointing, cli, config_lib, evaluation, sharding, train
from bloom_jax import data as data_lib

FLAGS = flags.FLAGS


def load_run(workdir: str, step: int | None = None):
  """(config, pipeline, setup, mesh, params, step) of a trained run's checkpoint."""
  workdir = os.path.abspath(workdir)
  ckpt = checkpointing.Checkpointer(workdir, keep=1_000_000, create=False)
  steps = ckpt.all_steps()
  if not steps:
    raise FileNotFoundError(f'{workdir}: no checkpoints (train first with bloom_jax.train)')
  if step is None:
    step = max(steps)
  elif step not in steps:
    raise FileNotFoundError(f'{workdir}: no checkpoint for step {step} (have {sorted(steps)})')
  config = ml_collections.ConfigDict(ckpt.restore_config(step))
  try:
    mesh = sharding.make_mesh(config.mesh)
  except ValueError:
    logging.warning('The run\'s mesh does not fit %d devices; evaluating data-parallel.',
                    jax.device_count())
    mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1))
  multiple = sharding.data_parallel_size(mesh) * config.optimizer.grad_accum
  pipe = data_lib.Pipeline(config, workdir=workdir, multiple=multiple)
  setup = train.build(config, pipe, mesh)
  state, _ = ckpt.restore(step, setup.abstract_train_state())
  ckpt.close()
  return config, pipe, setup, mesh, state['params'], step


def format_table(results: dict[str, float]) -> str:
  rows = [key.split('/', 2)[1:] + [value] for key, value in sorted(results.items())]
  width = max(len(task) for task, _, _ in rows)
  lines = [f'{"task":<{width}}  {"metric":<16} value', '-' * (width + 30)]
  lines += [f'{task:<{width}}  {metric:<16} {value:.4f}' for task, metric, value in rows]
  return '\n'.join(lines)


def main(argv):
  del argv
  if FLAGS.split not in ('validation', 'test'):
    raise config_lib.ConfigError(f'--split: must be validation or test, got {FLAGS.split!r}')
  config, pipe, setup, mesh, params, step = load_run(FLAGS.workdir, FLAGS.step)
  evaluator = evaluation.Evaluator(config, pipe, setup.graphdef, setup.abstract_state, mesh)
  results = evaluator.evaluate(params, FLAGS.split, max_examples=0, prefix=FLAGS.split)
  if not results:
    raise config_lib.ConfigError(f'--split: no task of the run in {FLAGS.workdir} has a '
                                 f'labelled {FLAGS.split} split (tasks: {", ".join(pipe.tasks)})')
  print(f'{FLAGS.workdir}: step {step}, {FLAGS.split} split')
  print(format_table(results))
  out_dir = os.path.join(FLAGS.workdir, 'eval')
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f'{FLAGS.split}_{step}.json')
  with open(path, 'w', encoding='utf-8') as f:
    json.dump({'step': step, 'split': FLAGS.split, **results}, f, indent=2)
  print(f'wrote {path}')


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'A bloom_jax.train workdir.', required=True)
  flags.DEFINE_string('split', 'validation', "'validation' or 'test'.")
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  cli.run(main)
