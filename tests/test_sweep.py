"""Sweeps: trial builders, names, results read from trial directories, and real sweeps."""

import csv
import json
import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest

from bloom_jax import config_lib
from bloom_jax.sweeps import definitions, reports, search
from configs import sweep_default
from tests.tiny import child_env

REPO = pathlib.Path(__file__).resolve().parents[1]
LR, BATCH = 'optimizer.learning_rate', 'data.batch_size'
PPL = 'eval/lm/perplexity'


# -------------------------------------------------------------------------- building trials


def test_grid_is_every_combination_last_key_fastest():
  assert definitions.grid({'a': [1, 2], 'b': ['x', 'y']}) == [
      {'a': 1, 'b': 'x'}, {'a': 1, 'b': 'y'}, {'a': 2, 'b': 'x'}, {'a': 2, 'b': 'y'}]


def test_zipped_pairs_values_and_needs_equal_lengths():
  assert definitions.zipped({'a': [1, 2], 'b': [3, 4]}) == [{'a': 1, 'b': 3}, {'a': 2, 'b': 4}]
  with pytest.raises(config_lib.ConfigError, match='differ in length'):
    definitions.zipped({'a': [1, 2], 'b': [3]})


def test_product_merges_one_trial_of_each_sweep():
  pairs = definitions.zipped({LR: [1e-3, 1e-2], 'optimizer.warmup_steps': [10, 0]})
  trials = definitions.product(pairs, definitions.grid({BATCH: [16, 32]}))
  assert len(trials) == 4
  assert trials[1] == {LR: 1e-3, 'optimizer.warmup_steps': 10, BATCH: 32}
  with pytest.raises(config_lib.ConfigError, match='set by two sweeps'):
    definitions.product(pairs, [{LR: 1.0}])


def test_sample_is_seeded_rounded_and_log_uniform():
  space = {LR: definitions.LogUniform(1e-4, 1e-2), BATCH: definitions.Choice((16, 32))}
  trials = definitions.sample(space, 200, seed=1)
  assert trials == definitions.sample(space, 200, seed=1)
  assert trials != definitions.sample(space, 200, seed=2)
  rates = [t[LR] for t in trials]
  assert all(1e-4 <= r <= 1e-2 and float(f'{r:.3g}') == r for r in rates)
  # Log-uniform puts half the draws below the geometric mean 1e-3 (uniform: under 10%).
  assert 0.4 < sum(r < 1e-3 for r in rates) / len(rates) < 0.6
  assert {t[BATCH] for t in trials} == {16, 32}
  with pytest.raises(config_lib.ConfigError, match='LogUniform'):
    definitions.LogUniform(0.0, 1.0)


# -------------------------------------------------------------------------- names, config


def test_labels_are_the_shortest_unambiguous_suffix():
  keys = [LR, BATCH, 'tasks.lm.rate', 'tasks.sentiment.rate', 'a.b', 'c.a.b']
  assert definitions.labels(keys) == {
      LR: 'learning_rate', BATCH: 'batch_size', 'tasks.lm.rate': 'lm.rate',
      'tasks.sentiment.rate': 'sentiment.rate', 'a.b': 'a.b', 'c.a.b': 'c.a.b'}


def test_trial_names_are_readable_safe_and_unique():
  names = [t.name for t in definitions.name_trials(sweep_default.get_sweep())]
  assert names[1] == 'learning_rate=0.001,batch_size=32'
  paths = definitions.name_trials([{'tokenizer.path': '/a b/t.json'},
                                   {'tokenizer.path': '_a_b_t.json'},
                                   {'tokenizer.path': 'x' * 500}, {}])
  assert paths[0].name != paths[1].name
  assert all(p.name.startswith('path=_a_b_t.json-') for p in paths[:2])
  assert len(paths[2].name) == definitions.MAX_NAME and paths[3].name == 'base'
  assert all('/' not in p.name and ' ' not in p.name for p in paths)
  with pytest.raises(config_lib.ConfigError, match='trials 0 and 1 are the same'):
    definitions.name_trials([{LR: 0.1}, {LR: 0.1}])


@pytest.mark.parametrize('overrides, message', [
    ({'optimizer.lr': 0.1}, r'optimizer\.lr: not a key'),
    ({'model.hidden_size.x': 1}, r'model\.hidden_size\.x: not a key'),
    ({BATCH: 1.5}, r'data\.batch_size: 1\.5 does not fit'),
    ({'model': 1}, 'a section'),
])
def test_resolve_names_the_bad_key(overrides, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    definitions.resolve(sweep_default.get_config(), overrides)


def test_resolve_leaves_the_base_config_alone():
  base = sweep_default.get_config()
  assert definitions.resolve(base, {BATCH: 16, 'total_steps': 7}).total_steps == 7
  assert base.data.batch_size == 32 and base.total_steps == 40


# -------------------------------------------------------------------------- results


def _write_trial(root, trial, lines, status=None, tail=''):
  path = root / trial.name
  path.mkdir(parents=True)
  (path / 'metrics.jsonl').write_text(''.join(json.dumps(x) + '\n' for x in lines) + tail)
  if status:
    (path / 'status.json').write_text(json.dumps(status))


def _train(step, rate):
  return {'step': step, 'loss': 1.0, 'steps_per_s': rate}


def _eval(step, ppl, acc):
  return {'step': step, PPL: ppl, 'eval/sentiment/accuracy': acc}


@pytest.fixture
def trial_dirs(tmp_path):
  """Five trials, one in each state, written as a trainer and the sweep would."""
  trials = definitions.name_trials(sweep_default.get_sweep() + [{LR: 0.01, BATCH: 64}])
  _write_trial(tmp_path, trials[0], [_train(10, 1.0), _train(20, 5.0), _eval(20, 60.0, 0.5),
                                     _train(30, 6.0), _train(40, 7.0), _eval(40, 70.0, 0.6)])
  _write_trial(tmp_path, trials[1], [_train(20, 3.0), _eval(20, 65.0, 0.7), _train(40, 3.0),
                                     _eval(40, 64.0, 0.4)])
  _write_trial(tmp_path, trials[2], [_train(10, 2.0)],
               {'returncode': 1, 'error': 'exit code 1: FloatingPointError: non-finite loss'})
  # Killed mid-write: the cut line is skipped, the trial resumes.
  _write_trial(tmp_path, trials[3], [_train(10, 2.0), _eval(20, 90.0, 0.5)], tail='{"step": 3')
  return tmp_path, [reports.summarize(t, str(tmp_path / t.name), 40) for t in trials]


def test_trial_state_comes_from_its_directory(trial_dirs):
  _, results = trial_dirs
  assert [r.status for r in results] == ['done', 'done', 'failed', 'incomplete', 'pending']
  first = results[0]
  assert (first.final[PPL], first.best[PPL]) == (70.0, 60.0)
  assert first.best['eval/sentiment/accuracy'] == 0.6 and first.steps_per_s == 5.5
  assert results[3].step == 20 and results[2].error.endswith('non-finite loss')
  # Ranked by each trial's best evaluation: 60 beats 64, though 70 > 64 at the end.
  assert [r.trial.name for r in reports.ranked(results, PPL, 'min')] == [
      results[0].trial.name, results[1].trial.name]


def test_report_has_a_row_per_trial_and_names_the_best(trial_dirs):
  root, results = trial_dirs
  reports.write_report(str(root), results, PPL, 'min')
  with open(root / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['trial'] for r in rows] == [r.trial.name for r in results]
  assert rows[0][LR] == '0.001' and rows[0][BATCH] == '16'
  assert float(rows[0][f'{PPL}.final']) == 70.0 and float(rows[0][f'{PPL}.best']) == 60.0
  assert rows[4]['status'] == 'pending' and rows[4][f'{PPL}.best'] == ''
  md = (root / 'results.md').read_text()
  assert f'**{results[0].trial.name}** with 60' in md
  assert 'FloatingPointError: non-finite loss' in md.split('## Failed trials')[1]
  assert f'| {results[3].trial.name} | incomplete | 20/40 |' in md


def test_plot_shows_the_metric_against_each_swept_key(trial_dirs):
  pytest.importorskip('matplotlib')
  root, results = trial_dirs
  assert reports.write_plot(str(root / 'plot.png'), results, PPL, 'min')
  assert (root / 'plot.png').read_bytes()[:4] == b'\x89PNG'
  assert not reports.write_plot(str(root / 'none.png'), results[2:], PPL, 'min')


def test_optuna_study_resumes_its_unfinished_trials(tmp_path):
  pytest.importorskip('optuna')
  space = sweep_default.get_search_space()
  label = definitions.labels(space)
  trials = search.ask(search.open_study(str(tmp_path), 'min', 'random', seed=0), space, label, 3)
  first, second = next(trials), next(trials)
  done = reports.Result(first, 'done', 40, 40, None, {PPL: 80.0}, {PPL: 70.0}, '')
  study = search.open_study(str(tmp_path), 'min', 'random', seed=0)
  search.tell(study, done, PPL)

  # A new sweep process: the trial left running comes first, under the same directory.
  study = search.open_study(str(tmp_path), 'min', 'random', seed=0)
  resumed = list(search.ask(study, space, label, 3))
  assert resumed[0] == second and [t.number for t in resumed] == [1, 2]
  assert resumed[1].overrides[LR] != first.overrides[LR]   # reseeded, not replayed
  assert resumed[1].name.startswith('002,learning_rate=')
  assert study.trials[0].value == 70.0


# -------------------------------------------------------------------------- command line


def _sweep(root, config, *flags, env=None):
  return subprocess.run(
      [sys.executable, '-m', 'bloom_jax.sweep', '--config', str(config), '--workdir', str(root),
       *flags], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def _rows(root):
  with open(root / 'results.csv') as f:
    return list(csv.DictReader(f))


def test_dry_run_prints_each_trials_train_command(tmp_path):
  run = _sweep(tmp_path / 'sweep', 'configs/sweep_default.py', '--dry_run')
  assert run.returncode == 0, run.stderr[-2000:]
  lines = run.stdout.splitlines()
  trials = definitions.name_trials(sweep_default.get_sweep())
  assert len(lines) == len(trials)
  for line, trial in zip(lines, trials, strict=True):
    cd, command = line.split(' && ')
    args = shlex.split(command)
    assert cd == f'cd {REPO}' and args[1:3] == ['-m', 'bloom_jax.train']
    assert args[args.index('--workdir') + 1] == str(tmp_path / 'sweep' / trial.name)
    assert args[-2:] == [f'--config.{LR}={trial.overrides[LR]}',
                         f'--config.{BATCH}={trial.overrides[BATCH]}']
  assert not (tmp_path / 'sweep').exists()


def test_a_sweep_definition_error_is_one_line(tmp_path):
  config = tmp_path / 'typo.py'
  config.write_text('from configs import sweep_default\n'
                    'get_config = sweep_default.get_config\n'
                    "get_sweep = lambda: [{'optimizer.lr': 0.1}]\n")
  run = _sweep(tmp_path / 'sweep', config)
  assert run.returncode == 2
  assert run.stderr.strip().splitlines()[-1] == (
      'sweep.py: error: optimizer.lr: not a key of the config (swept in get_sweep)')


@pytest.mark.slow
def test_sweep_runs_resumes_reports_and_survives_a_crash(tmp_path):
  # One CPU device per trainer; trials with the same shapes share compilations through
  # the session's compilation cache (conftest.py).
  env = child_env(1)
  root = tmp_path / 'sweep'
  run = _sweep(root, 'configs/sweep_default.py', '--parallel', '2', env=env)
  assert run.returncode == 0, run.stderr[-3000:]
  rows = _rows(root)
  assert [r['status'] for r in rows] == ['done'] * 4 and all(float(r[f'{PPL}.best']) > 1
                                                             for r in rows)
  names = [r['trial'] for r in rows]
  first_run = {r['trial']: r for r in rows}
  best = min(rows, key=lambda r: float(r[f'{PPL}.best']))['trial']
  assert f'**{best}**' in (root / 'results.md').read_text()
  assert (root / 'results.png').exists() == ('results.png' in (root / 'results.md').read_text())

  # --report rebuilds the same tables from the trial directories alone.
  table = (root / 'results.csv').read_text()
  (root / 'results.csv').unlink()
  (root / 'results.md').unlink()
  assert _sweep(root, 'configs/sweep_default.py', '--report', env=env).returncode == 0
  assert (root / 'results.csv').read_text() == table and (root / 'results.md').exists()

  # Trial 0 lost and a trial added that cannot build: only those two run, the others are
  # left alone, and the crash does not stop trial 0.
  untouched = {n: (root / n / 'status.json').stat().st_mtime_ns for n in names[1:]}
  shutil.rmtree(root / names[0])
  config = tmp_path / 'with_crash.py'
  config.write_text('from configs import sweep_default\n'
                    'get_config = sweep_default.get_config\n'
                    "get_sweep = lambda: sweep_default.get_sweep() + [{'model.n_head': 5}]\n")
  run = _sweep(root, config, '--parallel', '2', env=env)
  assert run.returncode == 1
  started = [line.split()[1] for line in run.stdout.splitlines() if line.startswith('start')]
  assert sorted(started) == sorted([names[0], 'n_head=5'])
  assert {n: (root / n / 'status.json').stat().st_mtime_ns for n in names[1:]} == untouched
  rows = {r['trial']: r for r in _rows(root)}
  assert rows[names[0]]['status'] == 'done'
  assert rows[names[0]][f'{PPL}.final'] == first_run[names[0]][f'{PPL}.final']  # deterministic
  assert rows['n_head=5']['status'] == 'failed'
  assert 'must be divisible by n_head (5)' in rows['n_head=5']['error']
  status = json.loads((root / 'n_head=5' / 'status.json').read_text())
  assert status['returncode'] == 2 and 'n_head (5)' in status['last_lines'][-1]
