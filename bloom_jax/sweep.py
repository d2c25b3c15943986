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
`Choice`. A trial's directory is named after its overrides. Rerunning the command skips
finished trials and resumes the others from their checkpoints (failed ones are retried);
afterwards DIR/results.csv, results.md and results.png summarise every trial. More in
docs/sweeps.md.
"""

import copy
import csv
import dataclasses
import hashlib
import importlib.util
import itertools
import json
import math
import os
import random
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import ml_collections
from absl import app, flags

from bloom_jax import cli, config_lib, workdir_lock

FLAGS = flags.FLAGS

POLL_S = 0.5                # how often running trials are checked for exit
KEPT_LINES = 10             # log lines of a failed attempt kept in its status.json
MAX_NAME = 120              # characters of a trial directory name
# Metric names (the last part of eval/<task>/<metric>) for which smaller is better.
LOWER_IS_BETTER = ('loss', 'perplexity', 'bits_per_byte')


# -------------------------------------------------------------------------- building trials


def grid(axes: dict[str, list]) -> list[dict]:
  """Every combination of the axes' values; the last key varies fastest."""
  return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


def zipped(axes: dict[str, list]) -> list[dict]:
  """The i-th value of every axis together (e.g. a learning rate with its warmup)."""
  lengths = {key: len(values) for key, values in axes.items()}
  if len(set(lengths.values())) > 1:
    raise config_lib.ConfigError(f'zipped: the axes differ in length: {lengths}')
  return [dict(zip(axes, values, strict=True)) for values in zip(*axes.values(), strict=True)]


def product(*sweeps: list[dict]) -> list[dict]:
  """One trial from each sweep, merged, in every combination: e.g. a grid over zipped pairs."""
  trials = []
  for parts in itertools.product(*sweeps):
    merged = {}
    for part in parts:
      shared = set(merged) & set(part)
      if shared:
        raise config_lib.ConfigError(f'product: {sorted(shared)[0]} is set by two sweeps')
      merged.update(part)
    trials.append(merged)
  return trials


def _significant(x: float) -> float:
  # Three significant digits: trial names and commands then carry the exact value.
  return float(f'{x:.3g}')


@dataclasses.dataclass(frozen=True)
class LogUniform:
  """A scale-like value (a learning rate): uniform in log space over [low, high]."""

  low: float
  high: float

  def __post_init__(self):
    if not 0 < self.low < self.high:
      raise config_lib.ConfigError(f'LogUniform: need 0 < low < high, got {self.low}, {self.high}')

  def sample(self, rng: random.Random) -> float:
    return _significant(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))

  def suggest(self, trial, key: str) -> float:
    return trial.suggest_float(key, self.low, self.high, log=True)


@dataclasses.dataclass(frozen=True)
class Uniform:
  """A value uniform over [low, high]."""

  low: float
  high: float

  def __post_init__(self):
    if not self.low < self.high:
      raise config_lib.ConfigError(f'Uniform: need low < high, got {self.low}, {self.high}')

  def sample(self, rng: random.Random) -> float:
    return _significant(rng.uniform(self.low, self.high))

  def suggest(self, trial, key: str) -> float:
    return trial.suggest_float(key, self.low, self.high)


@dataclasses.dataclass(frozen=True)
class Choice:
  """One of a few values (batch sizes, schedules, on/off)."""

  values: tuple

  def sample(self, rng: random.Random):
    return rng.choice(self.values)

  def suggest(self, trial, key: str):
    return trial.suggest_categorical(key, self.values)


def sample(space: dict, n: int, seed: int) -> list[dict]:
  """`n` random trials from a search space {key: LogUniform | Uniform | Choice}."""
  rng = random.Random(seed)
  return [{key: dist.sample(rng) for key, dist in space.items()} for _ in range(n)]


# -------------------------------------------------------------------------- trial names


@dataclasses.dataclass(frozen=True)
class Trial:
  name: str                   # its directory under the sweep's workdir
  overrides: dict             # {'dotted.config.key': value}
  number: int | None = None   # the Optuna trial number (--search optuna)


def labels(keys) -> dict[str, str]:
  """Each key's shortest dotted suffix that no other swept key ends with, else the key:
  `optimizer.learning_rate` -> `learning_rate`, but `tasks.lm.rate` and `tasks.sentiment.rate`
  keep their task."""
  keys = list(dict.fromkeys(keys))
  out = {}
  for key in keys:
    parts = key.split('.')
    others = [k for k in keys if k != key]
    suffixes = ('.'.join(parts[-n:]) for n in range(1, len(parts)))
    out[key] = next((s for s in suffixes
                     if not any(o == s or o.endswith('.' + s) for o in others)), key)
  return out


def _shown(value) -> str:
  return f'{value:.4g}' if isinstance(value, float) else str(value)


def _digest(overrides: dict) -> str:
  canonical = json.dumps(sorted((k, repr(v)) for k, v in overrides.items()))
  return hashlib.sha256(canonical.encode()).hexdigest()[:8]


def trial_name(overrides: dict, label: dict[str, str]) -> str:
  """`learning_rate=0.001,batch_size=32`: readable, and safe as one directory name."""
  name = ','.join(f'{label[k]}={_shown(v)}' for k, v in overrides.items()) or 'base'
  name = re.sub(r'[^A-Za-z0-9._,=+-]', '_', name)
  if len(name) > MAX_NAME:
    name = f'{name[:MAX_NAME - 9]}-{_digest(overrides)}'
  return name


def name_trials(sweep: list[dict]) -> list[Trial]:
  """Trials with unique names; trials whose names collide get their overrides' digest."""
  label = labels(k for overrides in sweep for k in overrides)
  names = [trial_name(overrides, label) for overrides in sweep]
  seen = {}
  for i, overrides in enumerate(sweep):
    digest = _digest(overrides)
    if digest in seen:
      raise config_lib.ConfigError(f'get_sweep: trials {seen[digest]} and {i} are the same '
                                   f'({overrides})')
    seen[digest] = i
  taken = {n for n in names if names.count(n) > 1}
  return [Trial(f'{n}-{_digest(o)}' if n in taken else n, o) for n, o in zip(names, sweep,
                                                                               strict=True)]


# -------------------------------------------------------------------------- config


def split_spec(spec: str) -> tuple[str, str | None]:
  """`configs/x.py:arg` -> (absolute path, 'arg'), as `bloom_jax.train --config` reads it."""
  path, sep, arg = spec.partition(':')
  return os.path.abspath(path), (arg if sep else None)


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


def resolve(base: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """The base config with a trial's overrides; an unknown key or a wrong type is an error."""
  config = copy.deepcopy(base)
  for key, value in overrides.items():
    node = config
    *parents, field = key.split('.')
    for part in parents:
      node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or field not in node:
      raise config_lib.ConfigError(f'{key}: not a key of the config (swept in get_sweep)')
    if isinstance(node[field], ml_collections.ConfigDict):
      raise config_lib.ConfigError(f'{key}: a section, not a value; sweep its fields')
    try:
      node[field] = value
    except TypeError:
      raise config_lib.ConfigError(f'{key}: {value!r} does not fit its type '
                                   f'{type(node[field]).__name__}') from None
  return config


def train_command(config_spec: str, workdir: str, trial: Trial) -> list[str]:
  """The `bloom_jax.train` command of a trial; dry runs print exactly this."""
  path, arg = split_spec(config_spec)
  return [sys.executable, '-m', 'bloom_jax.train',
          '--config', path if arg is None else f'{path}:{arg}',
          '--workdir', os.path.join(workdir, trial.name),
          *(f'--config.{key}={value}' for key, value in trial.overrides.items())]


# -------------------------------------------------------------------------- trial state


@dataclasses.dataclass
class Result:
  """What a trial's directory says about it."""

  trial: Trial
  status: str                 # done | failed | incomplete (running or stopped) | pending
  step: int
  total_steps: int
  steps_per_s: float | None   # median over log windows: the first one includes compilation
  final: dict[str, float]     # eval/<task>/<metric> at the last evaluation
  best: dict[str, float]      # the best of each over all evaluations
  error: str                  # why the last attempt failed


def lower_is_better(metric: str) -> bool:
  return metric.rsplit('/', 1)[-1] in LOWER_IS_BETTER


def read_metrics(path: str) -> list[dict]:
  try:
    with open(path) as f:
      raw = f.read().splitlines()
  except FileNotFoundError:
    return []
  lines = []
  for text in raw:
    try:
      lines.append(json.loads(text))
    except json.JSONDecodeError:
      continue  # a line cut short when the trainer was killed mid-write
  return lines


def read_status(trial_dir: str) -> dict | None:
  try:
    with open(os.path.join(trial_dir, 'status.json')) as f:
      return json.load(f)
  except FileNotFoundError:
    return None


def summarize(trial: Trial, trial_dir: str, total_steps: int) -> Result:
  lines = read_metrics(os.path.join(trial_dir, 'metrics.jsonl'))
  step = lines[-1]['step'] if lines else 0
  final, best = {}, {}
  for line in lines:
    for key, value in line.items():
      if key.startswith('eval/'):
        final[key] = value
        pick = min if lower_is_better(key) else max
        best[key] = pick(best.get(key, value), value)
  rates = [line['steps_per_s'] for line in lines if 'steps_per_s' in line]
  status_file = read_status(trial_dir)
  error = ''
  if step >= total_steps:
    status = 'done'
  elif status_file and status_file['returncode'] != 0:
    status = 'failed'
    error = status_file['error']
  else:
    status = 'incomplete' if lines else 'pending'
  return Result(trial, status, step, total_steps, statistics.median(rates) if rates else None,
                final, best, error)


# -------------------------------------------------------------------------- running


def _exit_text(returncode: int) -> str:
  if returncode < 0:
    return f'killed by {signal.Signals(-returncode).name}'
  return f'exit code {returncode}'


def _tail(path: str, offset: int) -> list[str]:
  """The last lines the current attempt wrote to its log (it starts at `offset`)."""
  with open(path, errors='replace') as f:
    f.seek(offset)
    return [line for line in f.read().splitlines() if line.strip()][-KEPT_LINES:]


def run_trials(trials: Iterator[Trial], parallel: int, config_spec: str, workdir: str,
               on_exit: Callable[[Trial], None]) -> None:
  """Runs the trials as `bloom_jax.train` processes, `parallel` at a time.

  Each writes its log to DIR/<trial>/train.log and, when it exits by itself, its return
  code and last log lines to status.json; `on_exit` then sees the trial. On Ctrl-C or
  SIGTERM the running trainers get SIGTERM (they save a checkpoint first) and are waited for.
  """
  running = {}   # Popen -> (trial, where its log starts, start time)
  try:
    while True:
      while len(running) < parallel and (trial := next(trials, None)) is not None:
        proc, offset = _launch(trial, config_spec, workdir)
        running[proc] = (trial, offset, time.time())
      if not running:
        return
      time.sleep(POLL_S)
      for proc in [p for p in running if p.poll() is not None]:
        trial, offset, started = running.pop(proc)
        _record_exit(workdir, trial, proc.returncode, offset, time.time() - started)
        on_exit(trial)
  except KeyboardInterrupt:
    print(f'stopping {len(running)} running trial(s); they save a checkpoint first', flush=True)
    for proc in running:
      proc.send_signal(signal.SIGTERM)
    for proc in running:
      proc.wait()
    raise


def _launch(trial: Trial, config_spec: str, workdir: str) -> tuple[subprocess.Popen, int]:
  trial_dir = os.path.join(workdir, trial.name)
  os.makedirs(trial_dir, exist_ok=True)
  if os.path.exists(os.path.join(trial_dir, 'status.json')):
    os.remove(os.path.join(trial_dir, 'status.json'))   # a retry: the old failure is stale
  command = train_command(config_spec, workdir, trial)
  with open(os.path.join(trial_dir, 'train.log'), 'a') as log:
    log.write(f'==> {time.strftime("%Y-%m-%d %H:%M:%S")} {shlex.join(command)}\n')
    log.flush()
    print(f'start  {trial.name}', flush=True)
    # stdout only carries the trainer's progress line, which metrics.jsonl already holds.
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log), log.tell()


def _record_exit(workdir: str, trial: Trial, returncode: int, offset: int,
                 seconds: float) -> None:
  trial_dir = os.path.join(workdir, trial.name)
  lines = _tail(os.path.join(trial_dir, 'train.log'), offset) if returncode else []
  error = f'{_exit_text(returncode)}: {lines[-1] if lines else "(no output)"}' if returncode else ''
  status = {'returncode': returncode, 'seconds': round(seconds, 1), 'error': error,
            'last_lines': lines}
  tmp = os.path.join(trial_dir, 'status.json.tmp')
  with open(tmp, 'w') as f:
    json.dump(status, f, indent=1)
  os.replace(tmp, os.path.join(trial_dir, 'status.json'))   # whole even if the sweep is killed
  print(f'FAILED {trial.name} after {seconds:.0f}s: {error}' if returncode
        else f'exit   {trial.name} after {seconds:.0f}s', flush=True)


# -------------------------------------------------------------------------- report


def ranked(results: list[Result], metric: str, mode: str) -> list[Result]:
  """Finished trials that report `metric`, best first (by their best evaluation)."""
  scored = [r for r in results if r.status == 'done' and metric in r.best]
  return sorted(scored, key=lambda r: r.best[metric], reverse=mode == 'max')


def write_csv(path: str, results: list[Result]) -> None:
  keys = list(dict.fromkeys(k for r in results for k in r.trial.overrides))
  metrics = sorted({m for r in results for m in r.final})
  header = (['trial', 'status', 'step', *keys, 'steps_per_s']
            + [f'{m}.{kind}' for m in metrics for kind in ('final', 'best')] + ['error'])
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    for r in results:
      writer.writerow([r.trial.name, r.status, r.step,
                       *(r.trial.overrides.get(k, '') for k in keys),
                       '' if r.steps_per_s is None else r.steps_per_s,
                       *(source.get(m, '') for m in metrics for source in (r.final, r.best)),
                       r.error])


def _cell(value) -> str:
  return '' if value is None else f'{value:.4g}'


def _row(cells: list) -> str:
  return '| ' + ' | '.join(str(c) for c in cells) + ' |'


def markdown(results: list[Result], metric: str, mode: str, plot: str | None) -> str:
  counts = {s: sum(r.status == s for r in results) for s in
            ('done', 'failed', 'incomplete', 'pending')}
  lines = ['# Sweep results', '',
           f'Trials: {len(results)} ('
           + ', '.join(f'{n} {s}' for s, n in counts.items() if n) + ').', '']
  order = ranked(results, metric, mode)
  if order:
    lines.append(f'Best by `{metric}` ({mode}, best evaluation of each finished trial): '
                 f'**{order[0].trial.name}** with {order[0].best[metric]:.4g}.')
  else:
    lines.append(f'No finished trial reports `{metric}` yet.')
  if plot:
    lines += ['', f'![{metric} against each swept key]({plot})']
  metrics = sorted({m for r in results for m in r.final})
  header = ['trial', 'status', 'step', 'steps/s', *metrics]
  lines += ['', 'Metric cells: value at the last evaluation (best over all evaluations).', '',
            _row(header), _row(['---'] * len(header))]
  for r in results:
    cells = [f'{_cell(r.final[m])} ({_cell(r.best[m])})' if m in r.final else ''
             for m in metrics]
    lines.append(_row([r.trial.name, r.status, f'{r.step}/{r.total_steps}',
                       _cell(r.steps_per_s), *cells]))
  failed = [r for r in results if r.status == 'failed']
  if failed:
    lines += ['', '## Failed trials', '']
    lines += [f'- {r.trial.name}: `{r.error}` (log: {r.trial.name}/train.log)' for r in failed]
  return '\n'.join(lines) + '\n'


def write_plot(path: str, results: list[Result], metric: str, mode: str) -> bool:
  """The metric (each trial's best evaluation) against every swept key; False if no point."""
  import matplotlib  # noqa: PLC0415 - an optional dependency, only reports need it
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # noqa: PLC0415

  points = ranked(results, metric, mode)
  keys = list(dict.fromkeys(k for r in points for k in r.trial.overrides))
  if not keys:
    return False
  fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5), squeeze=False,
                           sharey=True)
  for ax, key in zip(axes[0], keys, strict=True):
    having = [r for r in points if key in r.trial.overrides]
    xs = [r.trial.overrides[key] for r in having]
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in xs):
      categories = sorted({str(x) for x in xs})
      xs = [categories.index(str(x)) for x in xs]
      ax.set_xticks(range(len(categories)), categories)
    else:
      if min(xs) > 0 and max(xs) >= 10 * min(xs):
        ax.set_xscale('log')
      distinct = sorted(set(xs))
      if len(distinct) < len(xs) and len(distinct) <= 8:   # a grid: tick exactly its values
        ax.set_xticks(distinct, [_shown(x) for x in distinct])
      ax.tick_params(axis='x', labelrotation=30)   # long rates would run into each other
    ax.scatter(xs, [r.best[metric] for r in having], color='C0')
    if having[0] is points[0]:
      ax.scatter(xs[:1], [points[0].best[metric]], marker='*', s=250, color='C3', label='best')
      ax.legend()
    ax.set_xlabel(key)
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel(metric)
  fig.suptitle(f'{metric} (best evaluation per finished trial; {mode} is better)')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True


def write_report(workdir: str, results: list[Result], metric: str, mode: str) -> None:
  write_csv(os.path.join(workdir, 'results.csv'), results)
  try:
    plotted = write_plot(os.path.join(workdir, 'results.png'), results, metric, mode)
  except ImportError:
    print("no results.png: matplotlib is missing (pip install 'bloom_jax[sweep]')")
    plotted = False
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(markdown(results, metric, mode, 'results.png' if plotted else None))
  print(f'wrote {workdir}/results.csv and results.md' + (' and results.png' if plotted else ''))


# -------------------------------------------------------------------------- optuna


def _optuna():
  try:
    import optuna  # noqa: PLC0415 - an optional dependency
  except ImportError:
    raise app.UsageError("--search optuna needs optuna: pip install 'bloom_jax[sweep]'") from None
  return optuna


def open_study(workdir: str, mode: str, sampler: str, seed: int):
  """The sweep's study in DIR/optuna.db, created or resumed."""
  optuna = _optuna()
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  direction = 'maximize' if mode == 'max' else 'minimize'
  study = optuna.create_study(study_name='sweep', storage=f'sqlite:///{workdir}/optuna.db',
                              load_if_exists=True, direction=direction)
  if study.direction.name.lower() != direction:
    raise app.UsageError(f'--mode: the study in {workdir} was created to '
                         f'{study.direction.name.lower()}')
  # Reseeded by progress: a resumed random search must not repeat its first draws.
  seed += len(study.trials)
  study.sampler = (optuna.samplers.TPESampler(seed=seed) if sampler == 'tpe'
                   else optuna.samplers.RandomSampler(seed=seed))
  return study


def study_trial(number: int, params: dict, label: dict[str, str]) -> Trial:
  return Trial(f'{number:03d},{trial_name(params, label)}', dict(params), number)


def ask(study, space: dict, label: dict[str, str], total: int) -> Iterator[Trial]:
  """Trials a stopped sweep left running (they resume), then new ones up to `total`."""
  for frozen in study.get_trials(states=(_optuna().trial.TrialState.RUNNING,)):
    yield study_trial(frozen.number, frozen.params, label)
  while len(study.trials) < total:
    trial = study.ask()
    for key, dist in space.items():
      dist.suggest(trial, key)
    yield study_trial(trial.number, trial.params, label)


def tell(study, result: Result, metric: str) -> None:
  if result.status == 'done' and metric in result.best:
    study.tell(result.trial.number, result.best[metric])
  elif result.status in ('done', 'failed'):
    study.tell(result.trial.number, state=_optuna().trial.TrialState.FAIL)
  # An incomplete trial (its trainer was stopped) stays running; the next sweep resumes it.


# -------------------------------------------------------------------------- main


def list_sweep(module, arg, base, workdir: str) -> list[Result]:
  """get_sweep's trials: printed (--dry_run), run unless done, then summarised."""
  trials = call(module, 'get_sweep', arg)
  if not isinstance(trials, list) or not all(isinstance(t, dict) for t in trials):
    raise config_lib.ConfigError('get_sweep: must return a list of {config key: value} dicts')
  trials = name_trials(trials)
  for trial in trials:
    resolve(base, trial.overrides)
  if FLAGS.dry_run:
    cd = f'cd {shlex.quote(os.getcwd())} && '
    print('\n'.join(cd + shlex.join(train_command(FLAGS.config, workdir, t)) for t in trials))
    return []
  if not FLAGS.report:
    todo = [t for t in trials if result(base, workdir, t).status != 'done']
    print(f'{len(trials) - len(todo)} of {len(trials)} trials done; running {len(todo)}, '
          f'{FLAGS.parallel} at a time', flush=True)
    run_trials(iter(todo), FLAGS.parallel, FLAGS.config, workdir, lambda trial: None)
  return [result(base, workdir, t) for t in trials]


def optuna_sweep(module, arg, base, workdir: str, metric: str, mode: str) -> list[Result]:
  """Up to --trials trials proposed by Optuna from the results so far, then summarised."""
  if FLAGS.dry_run:
    raise app.UsageError('--dry_run: Optuna picks each trial from the results so far, so '
                         'there is no list to print')
  space = call(module, 'get_search_space', arg)
  resolve(base, sample(space, 1, seed=0)[0])   # unknown keys and wrong types, before any run
  label = labels(space)
  if FLAGS.trials < 1 and not FLAGS.report:
    raise app.UsageError('--trials: how many Optuna trials (at least 1)')
  study = open_study(workdir, mode, FLAGS.sampler, FLAGS.seed)
  if not FLAGS.report:
    for frozen in study.get_trials(states=(_optuna().trial.TrialState.RUNNING,)):
      # Stopped after its trainer finished: told now, rather than relaunched to learn that.
      stopped = result(base, workdir, study_trial(frozen.number, frozen.params, label))
      if stopped.status == 'done':
        tell(study, stopped, metric)
    run_trials(ask(study, space, label, FLAGS.trials), FLAGS.parallel, FLAGS.config, workdir,
               lambda trial: tell(study, result(base, workdir, trial), metric))
  return [result(base, workdir, study_trial(t.number, t.params, label)) for t in study.trials]


def result(base, workdir: str, trial: Trial) -> Result:
  return summarize(trial, os.path.join(workdir, trial.name),
                   resolve(base, trial.overrides).total_steps)


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
  path, arg = split_spec(FLAGS.config)
  module = load_module(path)
  base = call(module, 'get_config', arg)
  metric = FLAGS.metric or base.get('best_metric', '')
  if not metric.startswith('eval/'):
    raise app.UsageError(f'--metric: name a validation metric such as eval/sentiment/accuracy '
                         f'(got {metric!r})')
  mode = FLAGS.mode or ('min' if lower_is_better(metric) else 'max')
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
  write_report(workdir, results, metric, mode)
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
