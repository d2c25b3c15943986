r"""Learning curves per task from the metrics.jsonl of bloom_jax.train runs.

  python scripts/plot_metrics.py runs/results --out docs/results       # all runs under a root
  python scripts/plot_metrics.py runs/a runs/b --out plots --name ab      # given workdirs

It writes `<out>/<name>.png` (default learning-curves.png), a row per task: the training loss
and each validation metric against the step, one line per run that trained the task (the run's
directory name is its label, so `multi-seed0` and `pos-seed0` compare directly; the mixture's
lines are solid, the others dashed). Needs matplotlib (`pip install -e '.[plots]'`).
"""

import argparse
import collections
import json
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the file-only backend


def read_curves(workdir: str) -> dict:
  """{task: {series: ([steps], [values])}}; series 'train/loss' or 'eval/<metric>'."""
  curves = collections.defaultdict(lambda: collections.defaultdict(lambda: ([], [])))
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in map(json.loads, f):
      for key, value in line.items():
        parts = key.split('/')
        if len(parts) != 3 or parts[0] not in ('train', 'eval') or \
            parts[0] == 'train' and parts[2] != 'loss':
          continue
        kind, task, metric = parts
        steps, values = curves[task][f'{kind}/{metric}']
        steps.append(line['step'])
        values.append(value)
  return curves


def runs_under(paths: list[str]) -> list[str]:
  """The workdirs among `paths`, or directly under them."""
  found = []
  for path in paths:
    if os.path.exists(os.path.join(path, 'metrics.jsonl')):
      found.append(path)
    else:
      found += sorted(os.path.join(path, d) for d in os.listdir(path)
                      if os.path.exists(os.path.join(path, d, 'metrics.jsonl')))
  return found


def plot(runs: dict[str, dict], out_dir: str, stem: str = 'learning-curves') -> str:
  """One PNG, a row per task; returns its path."""
  os.makedirs(out_dir, exist_ok=True)
  tasks = sorted({task for curves in runs.values() for task in curves})
  series = {task: sorted({s for curves in runs.values() for s in curves.get(task, {})},
                         key=lambda s: (s != 'train/loss', s)) for task in tasks}
  columns = max(len(names) for names in series.values())
  fig, axes = plt.subplots(len(tasks), columns, figsize=(4.2 * columns, 3.4 * len(tasks)),
                           squeeze=False)
  for row, task in zip(axes, tasks, strict=True):
    for ax in row[len(series[task]):]:
      ax.set_visible(False)
    for ax, name in zip(row, series[task], strict=False):
      for label, curves in sorted(runs.items()):
        if name in curves.get(task, {}):
          steps, values = curves[task][name]
          ax.plot(steps, values, label=label, linestyle='-' if 'multi' in label else '--',
                  marker='' if name.startswith('train') else 'o', markersize=3)
      ax.set_title(f'{task}: {name}')
      ax.set_xlabel('step')
      ax.grid(alpha=0.3)
    row[0].legend(fontsize=7)
  fig.tight_layout()
  path = os.path.join(out_dir, f'{stem}.png')
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('paths', nargs='+', help='workdirs, or directories holding workdirs')
  parser.add_argument('--out', required=True, help='directory for the PNG')
  parser.add_argument('--name', default='learning-curves', help='the PNG file name, less .png')
  args = parser.parse_args()
  workdirs = runs_under(args.paths)
  if not workdirs:
    raise SystemExit(f'{", ".join(args.paths)}: no workdir with a metrics.jsonl')
  runs = {os.path.basename(os.path.normpath(w)): read_curves(w) for w in workdirs}
  print(f'wrote {plot(runs, args.out, args.name)}')


if __name__ == '__main__':
  main()
