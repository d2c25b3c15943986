"""Each trial's result, read from its directory alone (metrics.jsonl, status.json), and the
sweep's report: DIR/results.csv, results.md and results.png, ranked by one metric."""

import csv
import dataclasses
import json
import os
import statistics

from bloom_jax.sweeps import definitions, runner

# Metric names (the last part of eval/<task>/<metric>) for which smaller is better.
LOWER_IS_BETTER = ('loss', 'perplexity', 'bits_per_byte')


# -------------------------------------------------------------------------- trial state


@dataclasses.dataclass
class Result:
  """What a trial's directory says about it."""

  trial: definitions.Trial
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


def summarize(trial: definitions.Trial, trial_dir: str, total_steps: int) -> Result:
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
  status_file = runner.read_status(trial_dir)
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


def result(base, workdir: str, trial: definitions.Trial) -> Result:
  """The trial's result in DIR/<trial>, done once it reaches its resolved total_steps."""
  return summarize(trial, os.path.join(workdir, trial.name),
                   definitions.resolve(base, trial.overrides).total_steps)


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
        ax.set_xticks(distinct, [definitions.shown(x) for x in distinct])
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
