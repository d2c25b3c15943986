r"""Hyperparameter sweeps: every trial is its own `bloom_jax.train` run in `DIR/<trial>/`.

  python -m bloom_jax.sweep --config configs/sweep_default.py --workdir runs/sweep --parallel 2
  python -m bloom_jax.sweep --config configs/sweep_default.py --workdir runs/sweep --dry_run
  python -m bloom_jax.sweep --config configs/sweep_default.py --workdir runs/sweep --report \
      --metric eval/lm/perplexity
  python -m bloom_jax.sweep --config configs/sweep_default.py --workdir runs/optuna \
      --search optuna --trials 20 --parallel 2

The config file's `get_sweep(arg)` returns the trials as override dicts ({'dotted.key':
value}), built with `grid`, `zipped`, `product`, `sample` or written out as a list; for
`--search optuna`, `get_search_space(arg)` maps keys to `LogUniform`, `Uniform` or
`Choice` (all in bloom_jax/sweeps/definitions.py). A trial's directory is named after its
overrides. Rerunning the command skips finished trials and resumes the others from their
checkpoints (failed ones are retried); afterwards DIR/results.csv, results.md and
results.png summarise every trial. More in docs/sweeps.md.
"""

import importlib.util
import os
import shlex
import signal
import sys

from absl import app, flags

from bloom_jax import cli, config_lib, workdir_lock
from bloom_jax.sweeps import definitions, reports, runner, search

FLAGS = flags.FLAGS


# -------------------------------------------------------------------------- config


def load_module(path: str):
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such config file')
  spec = importlib.util.spec_from_file_location('bloom_jax_sweep_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def call(module, function: str, arg: str | None):
  """`module.function(arg)`, or without an argument when the spec has none (as train does)."""
  if not hasattr(module, function):
    raise config_lib.ConfigError(f'{module.__file__}: defines no {function}(arg)')
  return getattr(module, function)(*([] if arg is None else [arg]))


# -------------------------------------------------------------------------- main


def list_sweep(module, arg, base, workdir: str) -> list[reports.Result]:
  """get_sweep's trials: printed (--dry_run), run unless done, then summarised."""
  trials = call(module, 'get_sweep', arg)
  if not isinstance(trials, list) or not all(isinstance(t, dict) for t in trials):
    raise config_lib.ConfigError('get_sweep: must return a list of {config key: value} dicts')
  trials = definitions.name_trials(trials)
  for trial in trials:
    definitions.resolve(base, trial.overrides)
  if FLAGS.dry_run:
    cd = f'cd {shlex.quote(os.getcwd())} && '
    print('\n'.join(cd + shlex.join(runner.train_command(FLAGS.config, workdir, t))
                     for t in trials))
    return []
  if not FLAGS.report:
    todo = [t for t in trials if reports.result(base, workdir, t).status != 'done']
    print(f'{len(trials) - len(todo)} of {len(trials)} trials done; running {len(todo)}, '
          f'{FLAGS.parallel} at a time', flush=True)
    runner.run_trials(iter(todo), FLAGS.parallel, FLAGS.config, workdir, lambda trial: None)
  return [reports.result(base, workdir, t) for t in trials]


def optuna_sweep(module, arg, base, workdir: str, metric: str, mode: str) -> list[reports.Result]:
  """Up to --trials trials proposed by Optuna from the results so far, then summarised."""
  if FLAGS.dry_run:
    raise app.UsageError('--dry_run: Optuna picks each trial from the results so far, so '
                         'there is no list to print')
  space = call(module, 'get_search_space', arg)
  # Unknown keys and wrong types, before any run.
  definitions.resolve(base, definitions.sample(space, 1, seed=0)[0])
  label = definitions.labels(space)
  if FLAGS.trials < 1 and not FLAGS.report:
    raise app.UsageError('--trials: how many Optuna trials (at least 1)')
  study = search.open_study(workdir, mode, FLAGS.sampler, FLAGS.seed)
  if not FLAGS.report:
    for frozen in search.left_running(study):
      # Stopped after its trainer finished: told now, rather than relaunched to learn that.
      stopped = reports.result(base, workdir,
                               search.study_trial(frozen.number, frozen.params, label))
      if stopped.status == 'done':
        search.tell(study, stopped, metric)
    runner.run_trials(search.ask(study, space, label, FLAGS.trials), FLAGS.parallel,
                      FLAGS.config, workdir,
                      lambda trial: search.tell(study, reports.result(base, workdir, trial),
                                                metric))
  return [reports.result(base, workdir, search.study_trial(t.number, t.params, label))
          for t in study.trials]


def _interrupt(signum, frame):
  del signum, frame
  raise KeyboardInterrupt


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS.parallel < 1:
    raise app.UsageError(f'--parallel: must be at least 1, got {FLAGS.parallel}')
  if FLAGS.trials and FLAGS.search != 'optuna':
    raise app.UsageError('--trials: only with --search optuna (get_sweep lists the trials)')
  path, arg = runner.split_spec(FLAGS.config)
  module = load_module(path)
  base = call(module, 'get_config', arg)
  metric = FLAGS.metric or base.get('best_metric', '')
  if not metric.startswith('eval/'):
    raise app.UsageError(f'--metric: name a validation metric such as eval/sentiment/accuracy '
                         f'(got {metric!r})')
  mode = FLAGS.mode or ('min' if reports.lower_is_better(metric) else 'max')
  workdir = os.path.abspath(FLAGS.workdir)
  lock = None
  if not FLAGS.dry_run:
    os.makedirs(workdir, exist_ok=True)
  if not FLAGS.dry_run and not FLAGS.report:
    lock = workdir_lock.acquire(workdir)   # one running sweep per directory
  signal.signal(signal.SIGTERM, _interrupt)
  try:
    if FLAGS.search == 'optuna':
      results = optuna_sweep(module, arg, base, workdir, metric, mode)
    else:
      results = list_sweep(module, arg, base, workdir)
  except KeyboardInterrupt:
    print('stopped: rerun the same command to resume', file=sys.stderr)
    sys.exit(130)
  if FLAGS.dry_run:
    return
  if lock:
    lock.release()
  reports.write_report(workdir, results, metric, mode)
  failed = [r.trial.name for r in results if r.status == 'failed']
  if failed and not FLAGS.report:
    print(f'{len(failed)} trial(s) failed: {", ".join(failed)} (see results.md)',
          file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  flags.DEFINE_string('config', None, 'Config file with get_config and get_sweep (or '
                      'get_search_space), optionally with :arg.')
  flags.DEFINE_string('workdir', None, 'Sweep directory: one subdirectory per trial.')
  flags.DEFINE_integer('parallel', 1, 'Trials run at the same time.')
  flags.DEFINE_bool('dry_run', False, 'Print each trial\'s train command, one per line.')
  flags.DEFINE_bool('report', False, 'Only rewrite results.csv, results.md and results.png.')
  flags.DEFINE_string('metric', '', 'eval/<task>/<metric> that ranks the trials (default: '
                      'the config\'s best_metric).')
  flags.DEFINE_enum('mode', '', ['', 'max', 'min'], 'Whether larger or smaller --metric is '
                    'better (default: by its name; loss, perplexity and bits_per_byte: min).')
  flags.DEFINE_enum('search', 'list', ['list', 'optuna'], 'list: the trials of get_sweep; '
                    'optuna: --trials proposed from get_search_space.')
  flags.DEFINE_integer('trials', 0, 'Optuna: trials in the study, those already run included.')
  flags.DEFINE_enum('sampler', 'tpe', ['tpe', 'random'], 'Optuna sampler.')
  flags.DEFINE_integer('seed', 0, 'Optuna sampler seed.')
  flags.mark_flags_as_required(['config', 'workdir'])
  cli.run(main)
