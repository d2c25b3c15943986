r"""Scores a trained run on every task of its config.

  python -m bloom_jax.evaluate --workdir DIR [--split validation|test] [--step N|best]

Restores the checkpoint (the latest unless --step; `best`: the one the run marked best by
its best_metric, DIR/best.json), evaluates each task on the whole split, prints a table
(a row per task, a column per metric) and writes DIR/eval/<split>_<step>.json.

Decoding options are chosen on the validation split: each --decoding is one setting of
`tasks.<name>.decoding` (docs/multitask.md), and every task that takes one (generation)
is evaluated with each setting in turn:

  python -m bloom_jax.evaluate --workdir DIR --decoding method=greedy \
      --decoding method=beam,num_beams=4 --decoding method=beam,num_beams=4,length_penalty=0.6

prints a row per task and setting and writes DIR/eval/<split>_decoding_<step>.json. Put
the best setting into the config (`tasks.<name>.decoding`) before scoring on test.
"""

import dataclasses

from absl import flags

from bloom_jax import checkpointing, cli, evaluation, reporting, runs, tasks
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


def parse_decoding(text: str) -> dict:
  """'method=beam,num_beams=4' -> {'method': 'beam', 'num_beams': 4}."""
  options = {}
  for item in text.split(','):
    name, equals, value = (part.strip() for part in item.partition('='))
    if not (name and equals and value):
      raise ConfigError(f'--decoding: {text!r} is not name=value[,name=value...]')
    options[name] = _number_or_text(value)
  return options


def _number_or_text(value: str):
  for kind in (int, float):
    try:
      return kind(value)
    except ValueError:
      pass
  return value


def _restore(workdir: str, split: str, step: str | None):
  if split not in ('validation', 'test'):
    raise ConfigError(f'--split: must be validation or test, got {split!r}')
  run = runs.load_run(workdir, checkpoint_step(workdir, step))
  return run, evaluation.Evaluator(run.config, run.pipe, run.setup.graphdef,
                                   run.setup.abstract_state, run.mesh)


def evaluate_run(workdir: str, split: str, step: str | None) -> tuple[runs.Run, dict, str]:
  """(the restored run, its metrics on the whole `split`, the JSON file written)."""
  run, evaluator = _restore(workdir, split, step)
  results = evaluator.evaluate(run.params, split, max_examples=0, prefix=split)
  if not results:
    raise ConfigError(f'--split: no task of the run in {workdir} has a labelled '
                      f'{split} split (tasks: {", ".join(run.pipe.tasks)})')
  return run, results, reporting.write_eval(workdir, split, run.step, results)


def compare_decoding(workdir: str, split: str, step: str | None,
                     settings: list[str]) -> tuple[runs.Run, dict, str]:
  """(the restored run, {'<split>/<task> <setting>/<metric>': value} for every task that
  takes decoding options and every setting, the JSON file written)."""
  parsed = [parse_decoding(text) for text in settings]  # malformed: fail before restoring
  run, evaluator = _restore(workdir, split, step)
  names = [n for n, s in run.pipe.tasks.items() if s.type.takes_decoding and
           run.pipe.has_split(n, split)]
  if not names:
    raise ConfigError(f'--decoding: no task of the run in {workdir} takes decoding options '
                      f'and has a labelled {split} split (tasks: {", ".join(run.pipe.tasks)})')
  specs = []  # every setting checked before the first (long) evaluation
  for text, options in zip(settings, parsed, strict=True):
    for name in names:
      spec = dataclasses.replace(run.pipe.tasks[name],
                                 decoding=tasks.decoding_pairs(options, '--decoding'))
      try:
        spec.type.check(spec, f'tasks.{name}')
      except ConfigError as e:
        raise ConfigError(f'--decoding {text}: {e}') from None
      specs.append((f'{name} {text}', spec))
  results = {}
  for label, spec in specs:
    for metric, value in evaluator.evaluate_task(run.params, spec.name, split, 0, spec).items():
      results[f'{split}/{label}/{metric}'] = value
  return run, results, reporting.write_eval(workdir, f'{split}_decoding', run.step, results)


def main(argv):
  del argv
  if FLAGS.decoding:
    run, results, path = compare_decoding(FLAGS.workdir, FLAGS.split, FLAGS.step,
                                          FLAGS.decoding)
  else:
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
  flags.DEFINE_multi_string('decoding', [], 'A decoding setting to compare, as '
                            'name=value[,name=value...] (tasks.<name>.decoding); repeat it.')
  cli.run(main)
