"""Run directories as bloom_jax.train and bloom_jax.evaluate leave them (metrics.jsonl,
eval/<split>_<step>.json, best.json, the checkpoint's array metadata), written without
training, for tests/test_results_table.py; `fake_program` stands in for both programs, and
for scripts/plot_metrics.py, when scripts/real_results.sh runs. No pytest or JAX import: it
is imported once per faked program.
"""

import json
import os
import pathlib

from scripts import results_table as rt

# A whole split's score at a step: the in-training value there plus this, so that a score
# read at any other step than the selected one shows.
OFFSET = {'validation': 0.01, 'test': -0.02}
# A generating task's whole-split score under each setting of rt.DECODINGS, added to the
# greedy one: beam search with length penalty 1.0 (the third setting) is the one chosen.
DECODING_GAIN = dict(zip(rt.DECODINGS, (0.0, 0.25, 0.5, 0.5), strict=True))
PROGRAMS = ('bloom_jax.train', 'bloom_jax.evaluate', 'scripts/plot_metrics.py')
PARAM_SHAPES = {"('params', 'bloom', 'wte')": [10, 4], "('params', 'heads', 'pos')": [4, 3],
                "('opt_state', '1', 'mu', 'bloom', 'wte')": [10, 4]}  # 52 parameters


def key(task: str) -> str:
  return f'eval/{task}/{rt.HEADLINES[task].metric}'


def write_run(path, curve: dict, *, rate: float = 4.0, best: bool = False, scores: bool = True,
              log_every: int = 100) -> None:
  """A finished run. curve: {step: {task: in-training value of its headline metric}};
  `best`: best.json as a run with that task's best_metric writes it; `scores`: every
  evaluated step scored on the whole splits the tasks have."""
  path = pathlib.Path(path)
  total = max(curve)
  lines = []
  for step in range(log_every, total + 1, log_every):
    lines.append({'loss': 1.0, 'step': step, 'steps_per_s': rate})
    if step in curve:
      lines.append({'step': step, **{k: v for t, value in curve[step].items()
                                     for k, v in ((f'eval/{t}/loss', 1.0), (key(t), value))}})
  path.mkdir(parents=True, exist_ok=True)
  (path / 'metrics.jsonl').write_text(''.join(json.dumps(line) + '\n' for line in lines))
  if scores:
    for step in curve:
      for split in OFFSET:
        write_scores(path, split, step)
        write_decoding_scores(path, split, step, rt.DECODINGS)
  state = path / 'checkpoints' / str(total) / 'state'
  state.mkdir(parents=True)
  (state / '_METADATA').write_text(json.dumps({'tree_metadata': {
      name: {'key_metadata': [], 'value_metadata': {'value_type': 'jax.Array',
                                                    'skip_deserialize': False,
                                                    'write_shape': shape}}
      for name, shape in PARAM_SHAPES.items()}}))
  if best:
    (task,) = curve[total]
    write_best(path, curve, task)


def write_best(path, curve: dict, task: str) -> None:
  """best.json as checkpointing.BestRecord writes it (strict improvements, oldest first)."""
  mode = rt.HEADLINES[task].mode
  improvements = []
  for step, values in sorted(curve.items()):
    value = values[task]
    if not improvements or (value > improvements[-1][1] if mode == 'max'
                            else value < improvements[-1][1]):
      improvements.append([step, value])
  step, value = improvements[-1]
  record = {'metric': key(task), 'mode': mode, 'step': step, 'value': value,
            'metrics': {f'eval/{task}/loss': 1.0, key(task): value}, 'improvements': improvements}
  (pathlib.Path(path) / 'best.json').write_text(json.dumps(record, indent=2))


def write_scores(path, split: str, step: int) -> bool:
  """eval/<split>_<step>.json as bloom_jax.evaluate writes it, from the in-training values
  at `step`; False when no task of the run has the split (evaluate refuses then)."""
  line = rt.read_metrics(str(path))[1][step]
  results = {f'{split}/{t}/{h.metric}': line[key(t)] + OFFSET[split]
             for t, h in rt.HEADLINES.items() if key(t) in line and split in h.splits}
  if not results:
    return False
  (pathlib.Path(path) / 'eval').mkdir(exist_ok=True)
  (pathlib.Path(path) / 'eval' / f'{split}_{step}.json').write_text(
      json.dumps({'step': step, 'split': split, **results}, indent=2))
  return True


def write_decoding_scores(path, split: str, step: int, settings) -> bool:
  """eval/<split>_decoding_<step>.json as `bloom_jax.evaluate --decoding` writes it for
  each of `settings`; False when no generating task of the run has the split."""
  line = rt.read_metrics(str(path))[1][step]
  results = {f'{split}/{t} {s}/{h.metric}': line[key(t)] + OFFSET[split] + DECODING_GAIN[s]
             for s in settings for t, h in rt.HEADLINES.items()
             if h.decoded and key(t) in line and split in h.splits}
  if not results:
    return False
  (pathlib.Path(path) / 'eval').mkdir(exist_ok=True)
  (pathlib.Path(path) / 'eval' / f'{split}_decoding_{step}.json').write_text(
      json.dumps({'step': step, 'split': f'{split}_decoding', **results}, indent=2))
  return True


def fake_value(task: str, seed: int, step: int, total: int) -> float:
  """A learning curve that peaks at step 800 for seed 0 and at the last step otherwise."""
  value = 0.5 + step / 1e5 + (0.1 if step == (800 if seed == 0 else total) else 0)
  if rt.HEADLINES[task].units == 'x100':
    value *= 40
  return 3 - 2 * value if rt.HEADLINES[task].mode == 'min' else value


def fake_program(program: str, args: list[str]) -> None:
  """What a program of PROGRAMS leaves behind: a trained workdir (the mixture at 1 step/s, a
  task alone at 3), a scored step, an (empty) plot."""
  if program == 'scripts/plot_metrics.py':
    out = args[args.index('--out') + 1]
    name = args[args.index('--name') + 1] if '--name' in args else 'learning-curves'
    os.makedirs(out, exist_ok=True)
    pathlib.Path(out, f'{name}.png').write_bytes(b'')
    return
  workdir = args[args.index('--workdir') + 1]
  if program == 'bloom_jax.evaluate':
    split, step = args[args.index('--split') + 1], int(args[args.index('--step') + 1])
    settings = [args[i + 1] for i, flag in enumerate(args[:-1]) if flag == '--decoding']
    if not (write_decoding_scores(workdir, split, step, settings) if settings
            else write_scores(workdir, split, step)):
      raise SystemExit(f'--split: no task of the run has a labelled {split} split')
    return
  overrides = dict(a.removeprefix('--config.').split('=', 1) for a in args
                   if a.startswith('--config.'))
  variant = dict(p.split('=') for p in args[args.index('--config') + 1].split(':')[1].split(','))
  tasks = [variant['single']] if 'single' in variant else list(rt.HEADLINES)
  total, seed = int(overrides.get('total_steps', 1200)), int(variant['seed'])
  steps = sorted({*range(400, total + 1, 400), total})
  curve = {s: {t: fake_value(t, seed, s, total) for t in tasks} for s in steps}
  # Each task alone runs 3 steps/s, the mixture 1; seed 1's mixture shared the machine: 0.5.
  write_run(workdir, curve, rate=3.0 if 'single' in variant else 1.0 / (1 + seed),
            best='best_metric' in overrides, scores=False)


