r"""Scores a trained run on every task of its config.

  python -m bloom_jax.evaluate --workdir DIR [--split validation|test] [--step N|best]

Restores the checkpoint (the latest unless --step; `best`: the one the run marked best by
its best_metric, DIR/best.json), evaluates each task on the whole split, prints a table
(a row per task, a column per metric) and writes DIR/eval/<split>_<step>.json.
"""

from absl import flags

from bloom_jax import checkpointing, cli, evaluation, reporting, runs
from bloom_jax.errors import ConfigError

FLAGS = flags.FLAGS


def format_table(results: dict[str, float]) -> str:
  return reporting.metrics_table(results)


def checkpoint_step(workdir: str, step: str | None) -> int | None:
  """--step as a step number: None (the latest), a number, or 'best' (DIR/best.json)."""
  if step in (None, '', 'latest'):
    return None
  if step == 'best':
    best = checkpointing.read_best(workdir)
    if best is None:
      raise ConfigError(f'--step best: the run in {workdir} has no best checkpoint (its config '
                        'sets no best_metric, or it has not evaluated yet); give --step N')
    return int(best['step'])
  try:
    return int(step)
  except ValueError:
    raise ConfigError(f"--step: a step number or 'best', got {step!r}") from None


def evaluate_run(workdir: str, split: str, step: str | None) -> tuple[runs.Run, dict, str]:
  """(the restored run, its metrics on the whole `split`, the JSON file written)."""
  if split not in ('validation', 'test'):
    raise ConfigError(f'--split: must be validation or test, got {split!r}')
  run = runs.load_run(workdir, checkpoint_step(workdir, step))
  evaluator = evaluation.Evaluator(run.config, run.pipe, run.setup.graphdef,
                                   run.setup.abstract_state, run.mesh)
  results = evaluator.evaluate(run.params, split, max_examples=0, prefix=split)
  if not results:
    raise ConfigError(f'--split: no task of the run in {workdir} has a labelled '
                      f'{split} split (tasks: {", ".join(run.pipe.tasks)})')
  return run, results, reporting.write_eval(workdir, split, run.step, results)


def main(argv):
  del argv
  run, results, path = evaluate_run(FLAGS.workdir, FLAGS.split, FLAGS.step)
  which = ' (best)' if FLAGS.step == 'best' else ''
  print(f'{FLAGS.workdir}: step {run.step}{which}, {FLAGS.split} split')
  print(format_table(results))
  print(f'wrote {path}')


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'A bloom_jax.train workdir.', required=True)
  flags.DEFINE_string('split', 'validation', "'validation' or 'test'.")
  flags.DEFINE_string('step', None, "Checkpoint step, or 'best' (the run's best by its "
                      'best_metric); default: the latest.')
  cli.run(main)
