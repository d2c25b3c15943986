r"""The single-task vs multi-task table of docs/results.md, from the runs of real_results.sh.

  python scripts/results_table.py runs/results --out docs/results_table.md

Reads `<root>/<multi|TASK>-seed<N>/` (metrics.jsonl, eval/<split>_<step>.json written by
`bloom_jax.evaluate` over whole splits, and the checkpoint's array metadata for the
parameter count) and writes a Markdown table: mean and spread (min-max) over seeds.
"""

import argparse
import collections
import glob
import json
import math
import os
import re
import statistics

# (dataset, metric shown, file key, scale, higher is better, target)
ROWS = [
    ('UD EWT POS', 'UPOS accuracy, dev (%)', ('pos', 'validation', 'word_accuracy'), 100, True, 93),
    ('UD EWT POS', 'UPOS accuracy, test (%)', ('pos', 'test', 'word_accuracy'), 100, True, 93),
    ('SST-2', 'accuracy, dev (%)', ('sst2', 'validation', 'accuracy'), 100, True, 82),
    ('TREC-6', 'accuracy, test (%)', ('trec', 'test', 'accuracy'), 100, True, 90),
    ('AESLC', 'ROUGE-1, dev', ('aeslc', 'validation', 'rouge1'), 1, True, None),
    ('AESLC', 'ROUGE-2, dev', ('aeslc', 'validation', 'rouge2'), 1, True, None),
    ('AESLC', 'ROUGE-L, dev', ('aeslc', 'validation', 'rougeL'), 1, True, 20),
    ('AESLC', 'ROUGE-1, test', ('aeslc', 'test', 'rouge1'), 1, True, None),
    ('AESLC', 'ROUGE-2, test', ('aeslc', 'test', 'rouge2'), 1, True, None),
    ('AESLC', 'ROUGE-L, test', ('aeslc', 'test', 'rougeL'), 1, True, 20),
    # Tiny Shakespeare is ASCII, so bits per byte x ln 2 is nats per character.
    ('Tiny Shakespeare', 'validation loss (nats/char)',
     ('shakespeare', 'validation', 'bits_per_byte'), math.log(2), False, 1.6),
]
RUN = re.compile(r'(?P<name>[a-z0-9_]+)-seed(?P<seed>\d+)$')


def read_run(path: str) -> dict:
  """{(task, split, metric): value, 'seconds': s, 'params': n, 'steps': n} of one run."""
  out = {}
  for name in glob.glob(os.path.join(path, 'eval', '*_*.json')):
    with open(name) as f:
      results = json.load(f)
    for key, value in results.items():
      if key.count('/') == 2:
        split, task, metric = key.split('/')
        out[task, split, metric] = value
  seconds, steps = 0.0, 0
  with open(os.path.join(path, 'metrics.jsonl')) as f:
    previous = 0
    for line in map(json.loads, f):
      if 'steps_per_s' in line:  # a training line: the steps since the previous one
        seconds += (line['step'] - previous) / line['steps_per_s']
        previous = steps = line['step']
  out['seconds'], out['steps'] = seconds, steps
  out['params'] = count_params(path)
  return out


def count_params(path: str) -> int:
  steps = [int(s) for s in os.listdir(os.path.join(path, 'checkpoints')) if s.isdigit()]
  with open(os.path.join(path, 'checkpoints', str(max(steps)), 'state', '_METADATA')) as f:
    tree = json.load(f)['tree_metadata']
  return sum(math.prod(v['value_metadata']['write_shape']) for k, v in tree.items()
             if k.startswith("('params',"))


def summary(values: list[float], digits: int) -> str:
  if not values:
    return 'n/a'
  mean = statistics.fmean(values)
  if len(values) == 1:
    return f'{mean:.{digits}f}'
  return f'{mean:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})'


def table(runs: dict) -> str:
  """runs: {(name, seed): read_run(...)}, name 'multi' or a task."""
  seeds = sorted({seed for _, seed in runs})
  lines = [f'Mean over seeds {", ".join(map(str, seeds))}; (min-max) in brackets.', '',
           '| dataset | metric | target | single-task | multi-task | multi - single |',
           '| --- | --- | --- | --- | --- | --- |']
  for dataset, metric, key, scale, higher, target in ROWS:
    task = key[0]
    single = [r[key] * scale for (n, _), r in sorted(runs.items()) if n == task and key in r]
    multi = [r[key] * scale for (n, _), r in sorted(runs.items()) if n == 'multi' and key in r]
    digits = {100: 1, 1: 2}.get(scale, 3)  # percent, ROUGE, nats
    delta = 'n/a'
    if single and multi:
      d = statistics.fmean(multi) - statistics.fmean(single)
      better = (d > 0) == higher
      delta = f'{d:+.{digits}f} ({"better" if better else "worse"})' if d else '0'
    goal = 'n/a' if target is None else f'{">=" if higher else "<="} {target}'
    lines.append(f'| {dataset} | {metric} | {goal} | {summary(single, digits)} | '
                 f'{summary(multi, digits)} | {delta} |')
  lines += ['', '| run | seeds | steps | parameters | training minutes (mean) | command |',
            '| --- | --- | --- | --- | --- | --- |']
  names = collections.defaultdict(list)
  for (name, seed), r in sorted(runs.items()):
    names[name].append((seed, r))
  for name in ['multi'] + sorted(n for n in names if n != 'multi'):
    if name not in names:
      continue
    rs = [r for _, r in names[name]]
    arg = 'seed=S' if name == 'multi' else f'single={name},seed=S'
    command = (f'`python -m bloom_jax.train --config configs/real_multitask.py:{arg} '
               f'--workdir runs/results/{name}-seedS`')
    lines.append(f'| {name} | {", ".join(str(s) for s, _ in names[name])} | {rs[0]["steps"]} | '
                 f'{rs[0]["params"]:,} | {statistics.fmean(r["seconds"] for r in rs) / 60:.1f} | '
                 f'{command} |')
  return '\n'.join(lines) + '\n'


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('root', help='directory holding the <name>-seed<N> runs')
  parser.add_argument('--out', help='Markdown file to write (default: print)')
  args = parser.parse_args()
  runs = {}
  for path in sorted(glob.glob(os.path.join(args.root, '*-seed*'))):
    match = RUN.match(os.path.basename(path))
    if match and glob.glob(os.path.join(path, 'eval', '*_*.json')):  # evaluated runs only
      runs[match['name'], int(match['seed'])] = read_run(path)
  if not runs:
    raise SystemExit(f'{args.root}: no evaluated <name>-seed<N> runs (bloom_jax.evaluate '
                     'writes their eval/*.json)')
  text = table(runs)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text)
  print(text, end='')


if __name__ == '__main__':
  main()
