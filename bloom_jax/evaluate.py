r"""Scores a trained run on every task of its config.

  python -m bloom_jax.evaluate --workdir DIR [--split validation|test] [--step N]

Restores the checkpoint (the latest unless --step), evaluates each task on the whole
split, prints a table and writes DIR/eval/<split>_<step>.json.
"""

import json
import os

from absl import flags

from bloom_jax import cli, evaluation, runs
from bloom_jax.errors import ConfigError

FLAGS = flags.FLAGS


def format_table(results: dict[str, float]) -> str:
  rows = [key.split('/', 2)[1:] + [value] for key, value in sorted(results.items())]
  width = max(len(task) for task, _, _ in rows)
  lines = [f'{"task":<{width}}  {"metric":<16} value', '-' * (width + 30)]
  lines += [f'{task:<{width}}  {metric:<16} {value:.4f}' for task, metric, value in rows]
  return '\n'.join(lines)


def main(argv):
  del argv
  if FLAGS.split not in ('validation', 'test'):
    raise ConfigError(f'--split: must be validation or test, got {FLAGS.split!r}')
  run = runs.load_run(FLAGS.workdir, FLAGS.step)
  evaluator = evaluation.Evaluator(run.config, run.pipe, run.setup.graphdef,
                                   run.setup.abstract_state, run.mesh)
  results = evaluator.evaluate(run.params, FLAGS.split, max_examples=0, prefix=FLAGS.split)
  if not results:
    raise ConfigError(f'--split: no task of the run in {FLAGS.workdir} has a labelled '
                      f'{FLAGS.split} split (tasks: {", ".join(run.pipe.tasks)})')
  print(f'{FLAGS.workdir}: step {run.step}, {FLAGS.split} split')
  print(format_table(results))
  out_dir = os.path.join(FLAGS.workdir, 'eval')
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f'{FLAGS.split}_{run.step}.json')
  with open(path, 'w', encoding='utf-8') as f:
    json.dump({'step': run.step, 'split': FLAGS.split, **results}, f, indent=2)
  print(f'wrote {path}')


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'A bloom_jax.train workdir.', required=True)
  flags.DEFINE_string('split', 'validation', "'validation' or 'test'.")
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  cli.run(main)
