r"""docs/results.json's `models` section and docs/results.md, from the runs of real_results.sh.

  python scripts/results_table.py collect runs/results --machine "2-core x86-64 CPU, no GPU"
  python scripts/results_table.py render     # docs/results.md again (after editing the analysis)

The runs under the root: `multi-seed<N>` (the five-task mixture), `<task>-seed<N>` (the task
alone, data-matched: the same rows of it per step and the same steps as in the mixture) and
`<task>-equal-seed<N>` (the task alone, equal compute: as many steps as the mixture's
step-loop time buys it, `equal-steps` below).

Model selection, one rule for every run and task: the step whose in-training validation
evaluation of the task's headline metric is best (the `eval/<task>/<metric>` lines of
metrics.jsonl, over the first data.eval_examples examples of the split), the earliest on a
tie. A task trained alone also names that step in best.json (its best_metric); the two must
agree. Reported are the whole validation and test splits at that step, scored by
`bloom_jax.evaluate --split S --step N` (eval/<split>_<step>.json). A generating task's
decoding is chosen the same way, at that step: each setting of DECODINGS on the whole
validation split, test with the best (`evaluate --decoding`, eval/<split>_decoding_<step>.json).

`collect` replaces only the `models` key of docs/results.json (scripts/baselines.py writes
`baselines`, read here for each task's baseline and AESLC's lead-4 target), then renders
docs/results.md from it, the learning curves of scripts/plot_metrics.py and the hand-written
docs/results_analysis.md, included verbatim. What real_results.sh asks while it runs:

  python scripts/results_table.py selection                 # TASK eval/<task>/<metric> max|min
  python scripts/results_table.py evaluations WORKDIR       # SPLIT STEP: the scores to compute
  python scripts/results_table.py decodings WORKDIR SPLIT   # STEP SETTING...: decodings to score
  python scripts/results_table.py equal-steps MULTI SINGLE  # the equal-compute total_steps
  python scripts/results_table.py logs WORKDIR DEST         # a finished run's logs (LOGS)
"""

import argparse
import collections
import dataclasses
import glob
import json
import math
import os
import pathlib
import re
import shlex
import shutil
import statistics
import textwrap

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = REPO / 'docs'


@dataclasses.dataclass(frozen=True)
class Headline:
  """A task's headline metric and its targets (issue #22)."""
  dataset: str
  metric: str               # in the eval files: eval/<task>/<metric>, <split>/<task>/<metric>
  reported: str             # its name in results.json, the one the baselines use
  factor: float             # reported value = factor x metric
  units: str                # as the baselines' units: fraction, x100 or nats
  mode: str                 # 'max' or 'min': which way is better
  splits: tuple[str, ...]   # scored at the selected step
  targets: dict             # split: a value in `units`, or the baseline method to match
  decoded: bool = False     # generated: scored with the decoding chosen on validation


HEADLINES = {
    'pos': Headline('UD EWT POS', 'word_accuracy', 'word_accuracy', 1, 'fraction', 'max',
                    ('validation', 'test'), {'test': 0.93}),
    'sst2': Headline('SST-2', 'accuracy', 'accuracy', 1, 'fraction', 'max',  # test labels hidden
                     ('validation',), {'validation': 0.83}),
    'trec': Headline('TREC-6', 'accuracy', 'accuracy', 1, 'fraction', 'max',
                     ('validation', 'test'), {'test': 0.91}),
    'aeslc': Headline('AESLC', 'rougeL', 'rougeL', 1, 'x100', 'max', ('validation', 'test'),
                      {'validation': 'lead-4', 'test': 'lead-4'}, decoded=True),
    # Tiny Shakespeare is ASCII, so bits per byte x ln 2 is nats per character.
    'shakespeare': Headline('Tiny Shakespeare', 'bits_per_byte', 'nats_per_character',
                            math.log(2), 'nats', 'min', ('validation',), {'validation': 1.50}),
}
LABELS = {'word_accuracy': 'UPOS accuracy (%)', 'accuracy': 'accuracy (%)',
          'rougeL': 'ROUGE-L', 'nats_per_character': 'nats/char'}
# A generating task's decoding is chosen per run, as its step is: each of these settings
# (`bloom_jax.evaluate --decoding`) scores the whole validation split at the selected step,
# and test is scored with the best. Greedy and 4-beam search under GNMT length penalties
# from t5x's 0.6 to 1.4 (higher: longer outputs).
DECODINGS = ('method=greedy', 'method=beam,num_beams=4,length_penalty=0.6',
             'method=beam,num_beams=4,length_penalty=1.0',
             'method=beam,num_beams=4,length_penalty=1.4')
KINDS = {'single': 'single, data-matched', 'single_equal_compute': 'single, equal compute',
         'multi': 'multi-task'}
RUN = re.compile(r'(?P<task>[a-z0-9_]+?)(?P<equal>-equal)?-seed(?P<seed>\d+)$')
FIGURES = {'learning-curves.png': 'the mixture (solid) and each task alone, data-matched '
                                  '(dashed)',
           'learning-curves-equal-compute.png': 'the mixture (solid) and each task alone with '
                                                "the mixture's compute (dashed)"}


# --------------------------------------------------------------------------------------
# One run: its evaluations, the selected step, its cost
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  kind: str                 # a key of KINDS
  seed: int
  tasks: tuple[str, ...]
  path: str


def run_at(path: str) -> Run | None:
  """The run in `path`, by the name real_results.sh gives it; None if it is not one."""
  match = RUN.match(os.path.basename(os.path.normpath(path)))
  if not match or not os.path.exists(os.path.join(path, 'metrics.jsonl')):
    return None
  task, seed = match['task'], int(match['seed'])
  if task == 'multi' and not match['equal']:
    return Run(match[0], 'multi', seed, tuple(HEADLINES), path)
  if task in HEADLINES:
    kind = 'single_equal_compute' if match['equal'] else 'single'
    return Run(match[0], kind, seed, (task,), path)
  return None


def find_runs(root: str) -> list[Run]:
  """The runs under `root`: the mixture's first, then each task's alone, then by seed."""
  runs = [run for path in glob.glob(os.path.join(root, '*-seed*')) if (run := run_at(path))]
  order = ('multi', 'single', 'single_equal_compute')
  return sorted(runs, key=lambda r: (r.kind != 'multi', list(HEADLINES).index(r.tasks[0]),
                                     order.index(r.kind), r.seed))


def read_metrics(path: str) -> tuple[dict, dict]:
  """({step: training line}, {step: evaluation line}) of a run's metrics.jsonl; a step
  logged twice (a resumed run repeats the steps after its checkpoint) keeps its last line."""
  train, evals = {}, {}
  with open(os.path.join(path, 'metrics.jsonl')) as f:
    for text in f:
      try:
        line = json.loads(text)
      except ValueError:  # a line cut short by a killed process
        continue
      if 'steps_per_s' in line:
        train[line['step']] = line
      elif any(k.startswith('eval/') for k in line):
        evals[line['step']] = line
  return train, evals


def select(path: str, task: str) -> tuple[int, float]:
  """(step, value): the task's best in-training validation evaluation, the earliest on a
  tie; checked against best.json when the run judged the same metric."""
  headline = HEADLINES[task]
  key = f'eval/{task}/{headline.metric}'
  scored = [(step, line[key]) for step, line in sorted(read_metrics(path)[1].items())
            if math.isfinite(line.get(key, math.nan))]
  if not scored:
    raise SystemExit(f'{path}: metrics.jsonl has no {key} evaluation')
  sign = 1 if headline.mode == 'max' else -1
  step, value = max(scored, key=lambda s: (sign * s[1], -s[0]))
  try:
    with open(os.path.join(path, 'best.json')) as f:
      best = json.load(f)
  except FileNotFoundError:
    best = {}
  if best.get('metric') == key and best.get('step') != step:
    raise SystemExit(f'{path}: best.json names step {best.get("step")} for {key}, its '
                     f'evaluations in metrics.jsonl step {step}')
  return step, value


def evaluations(run: Run) -> list[tuple[str, int]]:
  """(split, step) of every whole-split score the run's tasks report."""
  pairs = {(split, select(run.path, task)[0])
           for task in run.tasks for split in HEADLINES[task].splits}
  return sorted(pairs, key=lambda p: (p[1], p[0] != 'validation'))


def scored(path: str, task: str, step: int) -> dict[str, float]:
  """{split: the task's reported value at `step`} from eval/<split>_<step>.json, or for a
  generating task from eval/<split>_decoding_<step>.json under the decoding chosen."""
  headline, out = HEADLINES[task], {}
  chosen = headline.decoded and chosen_decoding(path, task, step)
  if headline.decoded and not chosen:
    raise SystemExit(f'{path}: {task} at step {step} has no decoding chosen on validation; '
                     f'score it with: python -m bloom_jax.evaluate --workdir {path} --split '
                     f'validation --step {step} ' + decoding_flags(DECODINGS))
  for split in headline.splits:
    if chosen:
      key, name = f'{split}/{task} {chosen}/{headline.metric}', f'{split}_decoding_{step}'
      flags = ' ' + decoding_flags([chosen])
    else:
      key, name, flags = f'{split}/{task}/{headline.metric}', f'{split}_{step}', ''
    found = read_eval(path, name)
    if key not in found:
      raise SystemExit(f'{os.path.join(path, "eval", name)}.json: no {key}; score it with: '
                       f'python -m bloom_jax.evaluate --workdir {path} --split {split} '
                       f'--step {step}{flags}')
    out[split] = found[key] * headline.factor
  return out


def read_eval(path: str, name: str) -> dict:
  """eval/<name>.json of a run, {} when it does not exist."""
  try:
    with open(os.path.join(path, 'eval', f'{name}.json')) as f:
      return json.load(f)
  except FileNotFoundError:
    return {}


def chosen_decoding(path: str, task: str, step: int) -> str | None:
  """The setting of DECODINGS whose whole-validation score of the task's headline metric at
  `step` is best, the first on a tie; None until every setting has been scored."""
  headline = HEADLINES[task]
  found = read_eval(path, f'validation_decoding_{step}')
  values = [found.get(f'validation/{task} {setting}/{headline.metric}') for setting in DECODINGS]
  if None in values:
    return None
  sign = 1 if headline.mode == 'max' else -1
  return max(zip(DECODINGS, values, strict=True), key=lambda p: sign * p[1])[0]


def decodings(run: Run, split: str) -> list[tuple[int, list[str]]]:
  """(step, settings) of the decoding comparisons the run has yet to score on `split`: on
  validation every setting at each generating task's selected step, on test the setting
  chosen there."""
  needed = collections.defaultdict(list)
  for task in run.tasks:
    if not HEADLINES[task].decoded:
      continue
    step = select(run.path, task)[0]
    found = read_eval(run.path, f'{split}_decoding_{step}')
    if split == 'validation':
      settings = DECODINGS
    elif chosen := chosen_decoding(run.path, task, step):
      settings = [chosen]
    else:
      raise SystemExit(f'{run.path}: {task} has no decoding chosen on validation at step '
                       f'{step}; compare them there first')
    key = f'{split}/{task} {{}}/{HEADLINES[task].metric}'
    if any(key.format(s) not in found for s in settings):
      needed[step] += [s for s in settings if s not in needed[step]]
  return sorted(needed.items())


def decoding_flags(settings) -> str:
  return ' '.join(f'--decoding {setting}' for setting in settings)


def cost(path: str) -> dict:
  """The run's steps, step-loop wall time (the sum of its log windows: compilation and
  in-training evaluations included; data preparation and bloom_jax.evaluate not), its
  median steps/s and its parameter count."""
  train = read_metrics(path)[0]
  seconds, previous = 0.0, 0
  for step, line in sorted(train.items()):
    seconds += (step - previous) / line['steps_per_s']
    previous = step
  rates = [line['steps_per_s'] for line in train.values()]
  return {'steps': previous, 'wall_seconds': round(seconds, 1),
          'median_steps_per_s': round(statistics.median(rates), 4) if rates else None,
          'params': count_params(path)}


def count_params(path: str) -> int:
  """Parameters in the newest checkpoint's array metadata."""
  steps = [int(s) for s in os.listdir(os.path.join(path, 'checkpoints')) if s.isdigit()]
  with open(os.path.join(path, 'checkpoints', str(max(steps)), 'state', '_METADATA')) as f:
    tree = json.load(f)['tree_metadata']
  return sum(math.prod(v['value_metadata']['write_shape']) for k, v in tree.items()
             if k.startswith("('params',"))


def equal_steps(multi: str, single: str) -> int:
  """Steps of the task alone that cost the mixture's step loop: the mixture's steps times
  the ratio of the median steps/s (medians: the windows holding a compilation or an
  evaluation, and moments of shared cores, do not count)."""
  m, s = cost(multi), cost(single)
  return round(m['steps'] * s['median_steps_per_s'] / m['median_steps_per_s'])


def commands(path: str) -> list[str]:
  """The commands real_results.sh ran for the run (WORKDIR/commands.sh), in order."""
  try:
    with open(os.path.join(path, 'commands.sh')) as f:
      return [line.strip() for line in f if line.strip()]
  except FileNotFoundError:
    return []


def copy_logs(workdir: str, dest: str) -> None:
  """A finished run's logs, all that `collect` and `equal-steps` read: metrics.jsonl,
  best.json, eval/ (the whole-split scores and the `done` mark), commands.sh, config.json
  and the newest checkpoint's array metadata (the parameter count), without the arrays.
  They take a few hundred kB, so they can be published beside results.json; copied into a
  root on another machine, they let real_results.sh skip the run there."""
  if not os.path.exists(os.path.join(workdir, 'eval', 'done')):
    raise SystemExit(f'{workdir}: not a finished run (no eval/done): its logs are not final')
  steps = [int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit()]
  metadata = os.path.join('checkpoints', str(max(steps)), 'state', '_METADATA')
  names = ['metrics.jsonl', metadata]
  names += [n for n in ('best.json', 'commands.sh', 'config.json')
            if os.path.exists(os.path.join(workdir, n))]
  names += [os.path.join('eval', n) for n in sorted(os.listdir(os.path.join(workdir, 'eval')))]
  partial = f'{dest}.partial'  # a copy cut short never looks finished
  shutil.rmtree(partial, ignore_errors=True)
  for name in names:
    os.makedirs(os.path.dirname(os.path.join(partial, name)), exist_ok=True)
    shutil.copy2(os.path.join(workdir, name), os.path.join(partial, name))
  shutil.rmtree(dest, ignore_errors=True)
  os.rename(partial, dest)


# --------------------------------------------------------------------------------------
# results.json: the models section
# --------------------------------------------------------------------------------------


def spread(values: dict[str, float]) -> dict:
  return {'mean': round(statistics.fmean(values.values()), 6),
          'min': round(min(values.values()), 6), 'max': round(max(values.values()), 6),
          'per_seed': {seed: round(v, 6) for seed, v in values.items()}}


def best_baseline(rows: list[dict], task: str, split: str) -> dict | None:
  """The best classic baseline on the task's headline metric and split, or None."""
  headline = HEADLINES[task]
  found = [r for r in rows
           if (r['task'], r['split'], r['metric']) == (task, split, headline.reported)]
  if not found:
    return None
  sign = 1 if headline.mode == 'max' else -1
  row = max(found, key=lambda r: sign * r['value'])
  return {'value': row['value'], 'method': row['method']}


def target(rows: list[dict], task: str, split: str) -> dict:
  headline = HEADLINES[task]
  goal = headline.targets[split]
  comparison = '>=' if headline.mode == 'max' else '<='
  if not isinstance(goal, str):
    return {'value': goal, 'comparison': comparison, 'source': 'issue #22'}
  found = [r['value'] for r in rows if (r['task'], r['split'], r['metric'], r['method'])
           == (task, split, headline.reported, goal)]
  if not found:
    raise SystemExit(f'results.json: no {goal} baseline row for {task} {split} '
                     f'{headline.reported}; run python scripts/baselines.py --tasks {task}')
  return {'value': found[0], 'comparison': comparison, 'source': f'the {goal} baseline'}


def model_scores(task: str, runs: list[Run]) -> dict:
  """One kind of run of a task over its seeds: selected steps, the value each selection
  saw, the decoding chosen (a generating task), and each split's spread."""
  headline = HEADLINES[task]
  steps, seen, chosen, values = {}, {}, {}, collections.defaultdict(dict)
  for run in sorted(runs, key=lambda r: r.seed):
    seed = str(run.seed)
    steps[seed], value = select(run.path, task)
    seen[seed] = round(value * headline.factor, 6)
    if headline.decoded:
      chosen[seed] = chosen_decoding(run.path, task, steps[seed])
    for split, v in scored(run.path, task, steps[seed]).items():
      values[split][seed] = v
  return {'selected_step': steps, 'selection_value': seen,
          **({'decoding': chosen} if headline.decoded else {}),
          **{split: spread(values[split]) for split in headline.splits}}


def models_section(root: str, baselines: dict, machine: str, logs: str = '',
                   equal_steps_seed: int | None = None) -> dict:
  runs = find_runs(root)
  if not runs:
    raise SystemExit(f'{root}: no multi-seed<N>, <task>-seed<N> or <task>-equal-seed<N> run '
                     'with a metrics.jsonl')
  rows = baselines['rows']
  tasks = {}
  for task, headline in HEADLINES.items():
    by_kind = {kind: [r for r in runs if r.kind == kind and task in r.tasks] for kind in KINDS}
    if not any(by_kind.values()):
      continue
    entry = {'dataset': headline.dataset, 'metric': headline.reported, 'units': headline.units,
             'better': 'higher' if headline.mode == 'max' else 'lower',
             'selected_by': f'eval/{task}/{headline.metric}', 'splits': list(headline.splits),
             'target': {split: target(rows, task, split) for split in headline.targets},
             'baseline': {split: best_baseline(rows, task, split) for split in headline.splits}}
    entry.update({kind: model_scores(task, rs) for kind, rs in by_kind.items() if rs})
    entry['commands'] = {kind: {str(r.seed): commands(r.path) for r in rs}
                         for kind, rs in by_kind.items() if rs}
    tasks[task] = entry
  seeds = sorted({r.seed for r in runs})
  equal_seeds = sorted({r.seed for r in runs if r.kind == 'single_equal_compute'})
  env = f'LOGS={logs} ' if logs else ''
  if equal_seeds != seeds:  # real_results.sh's default is every seed's
    env += 'EQUAL_SEEDS=' + shlex.quote(' '.join(map(str, equal_seeds))) + ' '
  if equal_steps_seed is not None:
    env += f'EQUAL_STEPS_SEED={equal_steps_seed} '
  return {
      'description': (
          'Each task trained in the mixture (multi), alone with the same rows per step and '
          'steps (single, data-matched) and alone for the step-loop time of the mixture '
          '(single_equal_compute). Per task and kind: the step selected on validation per '
          'seed (selected_step; selection_value is the in-training validation value it was '
          'chosen by), then per split the whole-split value at that step: mean, min, max '
          'and per seed. Units as in baselines: fractions for accuracies, x100 for ROUGE, '
          'nats per character for Tiny Shakespeare.'),
      'selection': (
          'per task, the best in-training validation evaluation of its headline metric '
          '(metrics.jsonl, the first data.eval_examples examples of the split), the '
          'earliest step on a tie; best.json agrees for runs trained with best_metric; '
          'scores at that step from bloom_jax.evaluate --step N over whole splits; a '
          'generating task (AESLC) is scored there with each decoding setting on the whole '
          'validation split (decoding_settings), and on test with the best of them '
          '(decoding, per seed)'),
      'decoding_settings': list(DECODINGS),
      'command': f'{env}scripts/real_results.sh {root} {" ".join(map(str, seeds))}',
      'logs': logs,
      'machine': machine,
      'seeds': seeds,
      'tasks': tasks,
      'runs': {r.name: {'kind': r.kind, 'seed': r.seed, 'tasks': list(r.tasks), **cost(r.path)}
               for r in runs},
  }


def read_document(path: str) -> dict:
  """docs/results.json, which must hold the baselines section."""
  if not os.path.exists(path):
    raise SystemExit(f'{path}: no such file; python scripts/baselines.py --out {path} writes '
                     'it with the baselines section that collect and render add to')
  with open(path) as f:
    document = json.load(f)
  if 'baselines' not in document:
    raise SystemExit(f'{path}: no baselines section; run python scripts/baselines.py first')
  return document


def write_json(path: str, document: dict) -> None:
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(document, f, indent=2)
    f.write('\n')
  os.replace(tmp, path)


# --------------------------------------------------------------------------------------
# results.md
# --------------------------------------------------------------------------------------


def number(value: float, units: str, signed: bool = False) -> str:
  scale, digits = {'fraction': (100, 1), 'x100': (1, 2), 'nats': (1, 3)}[units]
  return f'{value * scale:{"+" if signed else ""}.{digits}f}'


def meets(value: float, goal: dict) -> bool:
  return value >= goal['value'] if goal['comparison'] == '>=' else value <= goal['value']


def seeds_named(seeds, all_seeds) -> str:
  """'seed 0' or 'seeds 0, 2' when `seeds` are not all of the table's; else ''."""
  seeds = sorted(seeds, key=int)
  if len(seeds) == len(all_seeds):
    return ''
  return f'seed{"s" if len(seeds) > 1 else ""} {", ".join(seeds)}'


def cell(stats: dict | None, units: str, goal: dict | None, all_seeds) -> str:
  """'mean (min-max)', in bold when the mean meets the target, and the seeds behind it
  when they are not all of the table's."""
  if stats is None:
    return 'n/a'
  text = number(stats['mean'], units)
  if len(stats['per_seed']) > 1:
    text += f' ({number(stats["min"], units)}-{number(stats["max"], units)})'
  text = f'**{text}**' if goal and meets(stats['mean'], goal) else text
  named = seeds_named(stats['per_seed'], all_seeds)
  return f'{text} ({named})' if named else text


def difference(entry: dict, split: str, kind: str) -> str:
  """The mixture's mean minus `kind`'s over the seeds both have: a kind run for fewer
  seeds is compared with the mixture's runs of the same seeds, named."""
  if 'multi' not in entry or kind not in entry:
    return 'n/a'
  multi, other = entry['multi'][split]['per_seed'], entry[kind][split]['per_seed']
  seeds = [seed for seed in multi if seed in other]
  if not seeds:
    return 'n/a'
  d = (statistics.mean(multi[seed] for seed in seeds)
       - statistics.mean(other[seed] for seed in seeds))
  named = seeds_named(seeds, multi)
  if not d:
    return f'0 ({named})' if named else '0'
  better = (d > 0) == (entry['better'] == 'higher')
  words = ', '.join(filter(None, ['better' if better else 'worse', named]))
  return f'{number(d, entry["units"], signed=True)} ({words})'


def results_table(models: dict) -> list[str]:
  header = ['dataset', 'metric', 'split', 'target', 'baseline', *KINDS.values(),
            'multi - single, data-matched', 'multi - single, equal compute']
  seeds = [str(seed) for seed in models['seeds']]
  lines = [prose(f'Mean over seeds {", ".join(seeds)}; (min-max) in brackets, in bold where '
                 'the mean meets the target; a column run for fewer seeds names them. '
                 'Accuracies in %. The baseline is the best classic one (below). Multi - '
                 'single compares the means over the seeds both have.'),
           '',
           '| ' + ' | '.join(header) + ' |', '| --- ' * len(header) + '|']
  for entry in models['tasks'].values():
    units = entry['units']
    for split in entry['splits']:
      goal, base = entry['target'].get(split), entry['baseline'][split]
      cells = [entry['dataset'], LABELS[entry['metric']], split,
               f'{goal["comparison"]} {number(goal["value"], units)}' if goal else '-',
               number(base['value'], units) if base else 'n/a',
               *(cell(entry[k][split] if k in entry else None, units, goal, seeds)
                 for k in KINDS),
               difference(entry, split, 'single'), difference(entry, split, 'single_equal_compute')]
      lines.append('| ' + ' | '.join(cells) + ' |')
  return lines


def steps_table(models: dict) -> list[str]:
  lines = ['| dataset | ' + ' | '.join(KINDS.values()) + ' |', '| --- ' * (1 + len(KINDS)) + '|']
  for entry in models['tasks'].values():
    cells = [', '.join(f'{s} (seed {seed})' for seed, s in entry[k]['selected_step'].items())
             if k in entry else 'n/a' for k in KINDS]
    lines.append(f'| {entry["dataset"]} | ' + ' | '.join(cells) + ' |')
    if any('decoding' in entry.get(k, {}) for k in KINDS):  # chosen at that step
      cells = [', '.join(f'{d} (seed {seed})' for seed, d in entry[k]['decoding'].items())
               if k in entry else 'n/a' for k in KINDS]
      lines.append(f'| {entry["dataset"]}, decoding | ' + ' | '.join(cells) + ' |')
  return lines


def runs_table(models: dict) -> list[str]:
  lines = ['| run | steps | parameters | step-loop minutes | median steps/s |',
           '| --- | --- | --- | --- | --- |']
  for name, run in models['runs'].items():
    rate = run['median_steps_per_s']
    lines.append(f'| {name} | {run["steps"]:,} | {run["params"]:,} | '
                 f'{run["wall_seconds"] / 60:.1f} | {"n/a" if rate is None else f"{rate:.2f}"} |')
  return lines


def command_lines(models: dict) -> list[str]:
  """Every run's commands, in the order of the runs."""
  by_run = {}
  for task, entry in models['tasks'].items():
    for kind, by_seed in entry['commands'].items():
      name = {'multi': 'multi', 'single': task, 'single_equal_compute': f'{task}-equal'}[kind]
      by_run.update({f'{name}-seed{seed}': lines for seed, lines in by_seed.items()})
  out = ['```bash']
  for name in models['runs']:
    out += [f'# {name}', *(by_run[name] or ['# (no commands.sh in the workdir)'])]
  return out + ['```']


def baselines_table(baselines: dict) -> list[str]:
  """Each task's baselines on its headline metric, a row per method."""
  lines = ['| dataset | method | metric | validation | test |', '| --- | --- | --- | --- | --- |']
  for task, headline in HEADLINES.items():
    values = collections.defaultdict(dict)
    for r in baselines['rows']:
      if r['task'] == task and r['metric'] == headline.reported:
        values[r['method']][r['split']] = number(r['value'], headline.units)
    for method, by_split in values.items():
      lines.append(f'| {headline.dataset} | {method} | {LABELS[headline.reported]} | '
                   f'{by_split.get("validation", "-")} | {by_split.get("test", "-")} |')
  return lines


def prose(text: str) -> str:
  return textwrap.fill(text, width=92, break_on_hyphens=False)


def render(document: dict, analysis: str, figures: dict[str, str]) -> str:
  """docs/results.md. `figures`: {path relative to the page: caption}."""
  models = document.get('models')
  command = (models or {}).get('command', 'scripts/real_results.sh runs/results 0 1')
  lines = ['# Real-data results: multi-task vs single-task', '',
           '<!-- Generated by scripts/results_table.py from results.json and results_analysis.md:',
           '     edit those, then run `python scripts/results_table.py render`. -->', '',
           prose('One BLOOM trunk trained from scratch on five public datasets at once (the '
                 'mixture) against the same trunk trained on each dataset alone, in two ways: '
                 'data-matched (the same rows of the task per step and the same steps as in the '
                 "mixture) and equal compute (as many steps as the mixture's step-loop time buys "
                 'the task alone, from the ratio of their median steps/s). Every number is in '
                 '[results.json](results.json): `models` for the runs, `baselines` for the '
                 'classic baselines. The runs, their scores, this page and the learning curves '
                 'come from:'),
           '', '```bash', f'BLOOM_JAX_DATA=../shared/data MACHINE="..." {command}', '```', '']
  if (models or {}).get('logs'):
    logs = models['logs']
    lines += [prose(f"Each run's logs are in `{logs}/<run>` "
                    '(metrics.jsonl, the whole-split scores in eval/, commands.sh, config.json; '
                    'the checkpoints without their arrays): `python scripts/results_table.py '
                    f'collect {logs} --machine ...` writes this page again from them.'), '']
  if models:
    lines += [f'Machine: {models["machine"]}.', '', '## Model selection', '',
              prose('Each task is scored at its own step, selected on validation: '
                    f'{models["selection"]}. Validation values at a step chosen on validation '
                    'are optimistic; test values are not (SST-2 and Tiny Shakespeare have no '
                    'labelled test split).'), '',
              '## Results', '', *results_table(models), '',
              '### Selected steps', '', *steps_table(models), '',
              '### Runs', '',
              prose('Step-loop minutes: the sum of the log windows (compilation and in-training '
                    'evaluations included; data preparation and the whole-split scoring not).'),
              '', *runs_table(models), '', *command_lines(models), '']
  else:
    lines += ['## Results', '',
              prose('No model runs are recorded in results.json yet: the command above trains '
                    'and scores them, then writes them with `python scripts/results_table.py '
                    'collect ROOT --machine ...`.'), '']
  lines += ['## Classic baselines on the same splits', '',
            prose(f'`{document["baselines"]["command"]}` (needs scikit-learn, in the test extra) '
                  "reads the same splits through the project's readers and scores them with its "
                  'metric code; methods, chosen hyperparameters and the other metrics are in '
                  'results.json (`baselines`).'), '',
            *baselines_table(document['baselines']), '']
  if models and figures:
    lines += ['## Learning curves', '',
              prose('Training loss and the in-training validation metrics (the first '
                    'data.eval_examples examples of each split) against the step.'), '']
    for path, caption in figures.items():
      lines += [f'![learning curves: {caption}]({path})', '']
  return '\n'.join(lines) + '\n## Analysis\n\n' + analysis.strip() + '\n'


def write_markdown(json_path: str, analysis_path: str, figures_dir: str, out: str) -> None:
  try:
    with open(analysis_path) as f:
      analysis = f.read()
  except FileNotFoundError:
    raise SystemExit(f'{analysis_path}: missing. Write the analysis there first (which tasks '
                     'gain from sharing, which lose, and the mechanism measured); '
                     'docs/results.md includes it verbatim.') from None
  document = read_document(json_path)
  here = os.path.dirname(os.path.abspath(out))
  figures = {os.path.relpath(os.path.join(figures_dir, name), here): caption
             for name, caption in FIGURES.items()
             if os.path.exists(os.path.join(figures_dir, name))}
  with open(out, 'w') as f:
    f.write(render(document, analysis, figures))


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parsers = parser.add_subparsers(dest='command', required=True)
  collect = parsers.add_parser('collect', help='the models section from ROOT, then the page')
  collect.add_argument('root', help='the directory real_results.sh trained in')
  collect.add_argument('--machine', required=True, help='what the runs ran on, in words')
  collect.add_argument('--logs', default='', help="where real_results.sh copied the runs' logs")
  collect.add_argument('--equal-steps-seed', type=int,
                       help="the seed whose runs set every seed's equal-compute steps")
  render = parsers.add_parser('render', help='docs/results.md from results.json and the analysis')
  for sub in (collect, render):
    sub.add_argument('--json', default=str(DOCS / 'results.json'))
    sub.add_argument('--analysis', default=str(DOCS / 'results_analysis.md'),
                     help='the hand-written analysis, included verbatim')
    sub.add_argument('--figures', default=str(DOCS / 'results'),
                     help="scripts/plot_metrics.py's --out directory")
    sub.add_argument('--markdown', default=str(DOCS / 'results.md'))
  parsers.add_parser('selection', help='TASK METRIC MODE: the best_metric of each task')
  sub = parsers.add_parser('evaluations', help='SPLIT STEP: the scores a run must compute')
  sub.add_argument('workdir')
  sub = parsers.add_parser('decodings', help='STEP SETTING...: decodings a run must score')
  sub.add_argument('workdir')
  sub.add_argument('split', choices=('validation', 'test'))
  sub = parsers.add_parser('equal-steps', help="a task's steps that cost the mixture's")
  sub.add_argument('multi')
  sub.add_argument('single')
  sub = parsers.add_parser('logs', help="a finished run's logs, without its checkpoints")
  sub.add_argument('workdir')
  sub.add_argument('dest')
  args = parser.parse_args(argv)

  if args.command == 'selection':
    for task, headline in HEADLINES.items():
      print(task, f'eval/{task}/{headline.metric}', headline.mode)
  elif args.command in ('evaluations', 'decodings'):
    run = run_at(args.workdir)
    if run is None:
      raise SystemExit(f'{args.workdir}: not a multi-seed<N>, <task>-seed<N> or '
                       '<task>-equal-seed<N> run with a metrics.jsonl')
    if args.command == 'evaluations':
      for split, step in evaluations(run):
        print(split, step)
    else:
      for step, settings in decodings(run, args.split):
        print(step, *settings)
  elif args.command == 'equal-steps':
    print(equal_steps(args.multi, args.single))
  elif args.command == 'logs':
    copy_logs(args.workdir, args.dest)
  else:
    if args.command == 'collect':
      document = read_document(args.json)
      document['models'] = models_section(args.root, document['baselines'], args.machine,
                                          args.logs, args.equal_steps_seed)
      write_json(args.json, document)
    write_markdown(args.json, args.analysis, args.figures, args.markdown)
    print(f'wrote {args.markdown}')


if __name__ == '__main__':
  main()
