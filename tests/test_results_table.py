"""scripts/results_table.py and scripts/real_results.sh on run directories written here, in
the formats the trainer and bloom_jax.evaluate write (metrics.jsonl, eval/<split>_<step>.json,
best.json, the checkpoint's array metadata): the step selected on validation, the scores at
that step, the models section beside an untouched baselines section, and the page. Nothing
is trained.
"""

import copy
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from scripts import results_table as rt
from tests import fake_runs
from tests.fake_runs import fake_value, key, write_run

REPO = pathlib.Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------ the fakes


def test_fake_files_are_the_trainers_and_evaluates(tmp_path):
  from bloom_jax import checkpointing, reporting
  curve = {400: {'pos': 0.8}, 800: {'pos': 0.9}, 1200: {'pos': 0.85}}
  write_run(tmp_path / 'fake', curve, best=True)
  record = checkpointing.BestRecord(str(tmp_path), key('pos'), 'max')
  for step, values in curve.items():
    record.update(step, {'eval/pos/loss': 1.0, key('pos'): values['pos']})
  record.write()
  reporting.write_eval(str(tmp_path), 'test', 800, {'test/pos/word_accuracy': 0.9 - 0.02})
  for name in ('best.json', 'eval/test_800.json'):
    assert (json.loads((tmp_path / name).read_text())
            == json.loads((tmp_path / 'fake' / name).read_text())), name


# ------------------------------------------------------------------------ collect


BASELINES = {
    'description': 'classic baselines', 'command': 'python scripts/baselines.py', 'seed': 0,
    'rows': [
        {'task': 'pos', 'split': s, 'metric': 'word_accuracy', 'value': v, 'method': 'mft'}
        for s, v in (('validation', 0.889), ('test', 0.892))] + [
        {'task': 'sst2', 'split': 'validation', 'metric': m, 'value': v, 'method': method}
        for m, v, method in (('accuracy', 0.82, 'svm'), ('accuracy', 0.823, 'logreg'),
                             ('macro_f1', 0.9, 'logreg'))] + [
        {'task': 'trec', 'split': 'test', 'metric': 'accuracy', 'value': 0.91, 'method': 'svm'}
    ] + [
        {'task': 'aeslc', 'split': s, 'metric': 'rougeL', 'value': v, 'method': method}
        for s, v, method in (('validation', 21.15, 'lead-4'), ('test', 20.16, 'lead-4'),
                             ('validation', 35.17, 'lead-k'), ('test', 33.02, 'lead-k'))] + [
        {'task': 'shakespeare', 'split': 'validation', 'metric': 'nats_per_character',
         'value': v, 'method': method} for v, method in ((1.79, '5-gram'), (1.59, '7-gram'))],
}
# The mixture's in-training evaluations at steps 400, 800 and 1200, seeds 0 and 1.
MULTI = {
    0: {'pos': [0.80, 0.86, 0.85], 'sst2': [0.70, 0.74, 0.76], 'trec': [0.70, 0.80, 0.80],
        'aeslc': [10, 9, 11], 'shakespeare': [2.6, 2.3, 2.4]},
    1: {'pos': [0.81, 0.83, 0.88], 'sst2': [0.72, 0.75, 0.73], 'trec': [0.75, 0.74, 0.73],
        'aeslc': [12, 13, 11], 'shakespeare': [2.5, 2.4, 2.2]},
}
POS_ALONE = {0: [0.84, 0.90, 0.89], 1: [0.85, 0.88, 0.91]}
POS_EQUAL = {0: [0.86, 0.93, 0.92, 0.91]}  # 1,600 steps, evaluated every 400


def curve_of(values: dict[str, list[float]]) -> dict:
  return {400 * (i + 1): {t: v[i] for t, v in values.items()}
          for i in range(len(next(iter(values.values()))))}


@pytest.fixture
def results(tmp_path):
  """(root of the runs, docs dir with results.json and the analysis)."""
  root = tmp_path / 'runs'
  for seed, values in MULTI.items():
    write_run(root / f'multi-seed{seed}', curve_of(values), rate=1.0)
    (root / f'multi-seed{seed}' / 'commands.sh').write_text(
        f'python -m bloom_jax.train --config configs/real_multitask.py:seed={seed} \n')
    write_run(root / f'pos-seed{seed}', curve_of({'pos': POS_ALONE[seed]}), rate=5.0, best=True)
  write_run(root / 'pos-equal-seed0', curve_of({'pos': POS_EQUAL[0]}), rate=5.0, best=True)
  write_run(root / 'shakespeare-seed0', curve_of({'shakespeare': [2.2, 2.1, 2.15]}), best=True)
  (root / 'notes-seed0').mkdir()  # not a run: no metrics.jsonl
  docs = tmp_path / 'docs'
  docs.mkdir()
  (docs / 'results.json').write_text(json.dumps({'baselines': BASELINES}))
  (docs / 'results_analysis.md').write_text('### Which tasks gain\n\nTREC gains; POS loses.\n')
  return root, docs


def collect(root, docs, *extra) -> dict:
  rt.main(['collect', str(root), '--machine', 'a test machine', '--json',
           str(docs / 'results.json'), '--analysis', str(docs / 'results_analysis.md'),
           '--figures', str(docs / 'results'), '--markdown', str(docs / 'results.md'), *extra])
  return json.loads((docs / 'results.json').read_text())


def test_collect_selects_on_validation_and_reports_test_there(results):
  document = collect(*results)
  assert document['baselines'] == BASELINES  # untouched
  models = document['models']
  pos = models['tasks']['pos']
  assert pos['splits'] == ['validation', 'test'] and pos['units'] == 'fraction'
  assert pos['selected_by'] == 'eval/pos/word_accuracy'
  # Mixture: seed 0 best at 800 (0.86), seed 1 at 1200 (0.88); test = value - 0.02 there.
  assert pos['multi']['selected_step'] == {'0': 800, '1': 1200}
  assert pos['multi']['selection_value'] == {'0': 0.86, '1': 0.88}
  assert pos['multi']['test']['per_seed'] == pytest.approx({'0': 0.84, '1': 0.86})
  assert pos['multi']['test']['mean'] == pytest.approx(0.85)
  assert (pos['multi']['test']['min'], pos['multi']['test']['max']) == pytest.approx((0.84, 0.86))
  assert pos['multi']['validation']['per_seed'] == pytest.approx({'0': 0.87, '1': 0.89})
  assert pos['single']['selected_step'] == {'0': 800, '1': 1200}
  assert pos['single']['test']['per_seed'] == pytest.approx({'0': 0.88, '1': 0.89})
  equal = pos['single_equal_compute']
  assert equal['selected_step'] == {'0': 800} and equal['test']['mean'] == pytest.approx(0.91)
  assert pos['target'] == {'test': {'value': 0.93, 'comparison': '>=', 'source': 'issue #22'}}
  assert pos['baseline']['test'] == {'value': 0.892, 'method': 'mft'}

  trec = models['tasks']['trec']
  assert trec['multi']['selected_step'] == {'0': 800, '1': 400}  # a tie goes to the earlier
  assert 'single' not in trec and trec['baseline'] == {'validation': None,
                                                       'test': {'value': 0.91, 'method': 'svm'}}
  sst2 = models['tasks']['sst2']
  assert sst2['splits'] == ['validation'] and 'test' not in sst2['multi']
  assert sst2['baseline']['validation'] == {'value': 0.823, 'method': 'logreg'}
  assert sst2['target']['validation']['value'] == 0.83
  aeslc = models['tasks']['aeslc']
  assert aeslc['target']['test'] == {'value': 20.16, 'comparison': '>=',
                                     'source': 'the lead-4 baseline'}
  assert aeslc['target']['validation']['value'] == 21.15
  assert aeslc['baseline']['validation'] == {'value': 35.17, 'method': 'lead-k'}

  # Tiny Shakespeare: lower is better, bits per byte reported as nats per character.
  shakespeare = models['tasks']['shakespeare']
  assert shakespeare['metric'] == 'nats_per_character' and shakespeare['better'] == 'lower'
  assert shakespeare['multi']['selected_step'] == {'0': 800, '1': 1200}
  assert shakespeare['multi']['validation']['per_seed'] == pytest.approx(
      {'0': 2.31 * math.log(2), '1': 2.21 * math.log(2)})
  assert shakespeare['single']['selected_step'] == {'0': 800}
  assert shakespeare['target']['validation'] == {'value': 1.5, 'comparison': '<=',
                                                 'source': 'issue #22'}
  assert shakespeare['baseline']['validation'] == {'value': 1.59, 'method': '7-gram'}

  assert pos['commands']['multi'] == {
      '0': ['python -m bloom_jax.train --config configs/real_multitask.py:seed=0'],
      '1': ['python -m bloom_jax.train --config configs/real_multitask.py:seed=1']}
  assert pos['commands']['single'] == {'0': [], '1': []}  # no commands.sh
  assert models['seeds'] == [0, 1] and models['machine'] == 'a test machine'
  assert list(models['runs']) == ['multi-seed0', 'multi-seed1', 'pos-seed0', 'pos-seed1',
                                  'pos-equal-seed0', 'shakespeare-seed0']
  assert models['runs']['multi-seed0'] == {
      'kind': 'multi', 'seed': 0, 'tasks': list(rt.HEADLINES), 'steps': 1200,
      'wall_seconds': 1200.0, 'median_steps_per_s': 1.0, 'params': 52}
  assert models['runs']['pos-equal-seed0']['kind'] == 'single_equal_compute'
  assert models['runs']['pos-equal-seed0']['steps'] == 1600


def test_logs_are_all_that_collect_reads_without_the_arrays(results, tmp_path):
  root, docs = results
  before = collect(root, docs)['models']
  arrays = root / 'multi-seed0' / 'checkpoints' / '1200' / 'state' / 'ocdbt.process_0'
  arrays.mkdir()
  (arrays / 'data').write_bytes(b'arrays')
  (root / 'multi-seed0' / 'tokenizer.json').write_text('{}')
  logs = tmp_path / 'logs'
  for run in rt.find_runs(str(root)):
    (pathlib.Path(run.path) / 'eval' / 'done').touch()
    rt.main(['logs', run.path, str(logs / run.name)])
  multi = {str(p.relative_to(logs / 'multi-seed0')) for p in (logs / 'multi-seed0').rglob('*')
           if p.is_file()}
  assert multi == {'metrics.jsonl', 'commands.sh', 'checkpoints/1200/state/_METADATA',
                   'eval/done', *(f'eval/{s}{d}_{n}.json' for s in ('validation', 'test')
                                  for d in ('', '_decoding') for n in (400, 800, 1200))}
  assert (logs / 'pos-seed0' / 'best.json').exists()
  after = collect(logs, docs)['models']
  assert after.pop('command') == f'EQUAL_SEEDS=0 scripts/real_results.sh {logs} 0 1'
  assert after == {k: v for k, v in before.items() if k != 'command'}

  rt.main(['logs', str(root / 'multi-seed1'), str(logs / 'multi-seed0')])  # replaced whole
  assert not list(logs.glob('*.partial'))
  assert json.loads((logs / 'multi-seed0' / 'eval' / 'test_1200.json').read_text()) == (
      json.loads((root / 'multi-seed1' / 'eval' / 'test_1200.json').read_text()))


def test_logs_of_an_unfinished_run_are_refused(results, tmp_path):
  root, _ = results
  with pytest.raises(SystemExit, match='multi-seed0: not a finished run'):
    rt.main(['logs', str(root / 'multi-seed0'), str(tmp_path / 'logs' / 'multi-seed0')])
  assert not (tmp_path / 'logs').exists()


def test_collect_replaces_only_the_models_section(results):
  root, docs = results
  document = json.loads((docs / 'results.json').read_text())
  document['models'] = {'old': True}
  document['other'] = [1]
  (docs / 'results.json').write_text(json.dumps(document))
  after = collect(root, docs)
  assert after['baselines'] == BASELINES and after['other'] == [1]
  assert 'old' not in after['models'] and list(after) == ['baselines', 'models', 'other']


def test_page_holds_the_numbers_the_baselines_and_the_analysis(results):
  root, docs = results
  (docs / 'results').mkdir()
  (docs / 'results' / 'learning-curves.png').write_bytes(b'png')
  collect(root, docs)
  page = (docs / 'results.md').read_text()
  assert '\nMachine: a test machine.\n' in page
  # pos test: single 88.0 (seed 0) and 89.0 (seed 1), mixture 84.0 and 86.0; equal compute
  # 91.0, seed 0 only, so it is compared with the mixture's seed 0 (84.0), not its mean.
  row = next(line for line in page.splitlines()
             if line.startswith('| UD EWT POS | UPOS accuracy (%) | test |'))
  assert row == ('| UD EWT POS | UPOS accuracy (%) | test | >= 93.0 | 89.2 | 88.5 (88.0-89.0) '
                 '| 91.0 (seed 0) | 85.0 (84.0-86.0) | -3.5 (worse) | -7.0 (worse, seed 0) |')
  # Lower is better: the task alone (2.11 bits/byte, 1.463 nats/char) meets the target.
  # Alone for seed 0 only: compared with the mixture's seed 0 (2.31 bits/byte, 1.601).
  assert ('| Tiny Shakespeare | nats/char | validation | <= 1.500 | 1.590 | **1.463** (seed 0) | '
          'n/a | 1.567 (1.532-1.601) | +0.139 (worse, seed 0) | n/a |') in page
  assert '| AESLC | ROUGE-L | test | >= 20.16 | 33.02 |' in page
  assert '| UD EWT POS | 800 (seed 0), 1200 (seed 1) |' in page  # selected steps
  assert '| multi-seed0 | 1,200 | 52 | 20.0 | 1.00 |' in page
  assert ('```bash\n# multi-seed0\npython -m bloom_jax.train --config '
          'configs/real_multitask.py:seed=0\n# multi-seed1\n') in page
  assert '# pos-seed0\n# (no commands.sh in the workdir)\n' in page
  assert '| SST-2 | logreg | accuracy (%) | 82.3 | - |' in page  # baselines
  assert '![learning curves: the mixture (solid)' in page
  assert '(results/learning-curves.png)' in page
  assert 'learning-curves-equal-compute.png' not in page  # not drawn
  assert page.endswith('## Analysis\n\n### Which tasks gain\n\nTREC gains; POS loses.\n')


def test_bold_where_the_mean_meets_the_target(results):
  root, docs = results
  models = collect(root, docs)['models']
  entry = copy.deepcopy(models['tasks']['pos'])
  entry['single']['test']['mean'] = 0.95
  lines = rt.results_table({**models, 'tasks': {'pos': entry}})
  assert '| **95.0 (88.0-89.0)** |' in lines[-1]


def test_render_needs_the_analysis_and_works_without_models(results):
  _, docs = results
  args = ['render', '--json', str(docs / 'results.json'), '--analysis',
          str(docs / 'missing.md'), '--markdown', str(docs / 'results.md')]
  with pytest.raises(SystemExit, match='missing.md: missing. Write the analysis'):
    rt.main(args)
  args[4] = str(docs / 'results_analysis.md')
  rt.main(args)
  page = (docs / 'results.md').read_text()
  assert 'No model runs are recorded in results.json yet' in page
  assert '| TREC-6 | svm | accuracy (%) | - | 91.0 |' in page
  assert '## Learning curves' not in page


def test_a_missing_results_json_names_the_command_that_makes_it(results):
  root, docs = results
  missing = docs / 'other.json'
  for command in (['render'], ['collect', str(root), '--machine', 'm']):
    with pytest.raises(SystemExit, match=f'{missing}: no such file; python scripts/baselines'):
      rt.main([*command, '--json', str(missing), '--analysis', str(docs / 'results_analysis.md'),
               '--markdown', str(docs / 'results.md')])
  assert not missing.exists()


def test_a_missing_score_names_the_command_that_makes_it(results):
  root, docs = results
  os.remove(root / 'multi-seed1' / 'eval' / 'test_1200.json')
  with pytest.raises(SystemExit, match=r'test_1200.json: no test/pos/word_accuracy; score it '
                     r'with: python -m bloom_jax.evaluate --workdir .*multi-seed1 --split test '
                     r'--step 1200'):
    collect(root, docs)


def test_decoding_is_chosen_on_validation_and_scored_on_test_with_it(results, capsys):
  root, docs = results
  run = rt.run_at(str(root / 'multi-seed1'))  # AESLC selected at step 800 (13)
  path = root / 'multi-seed1' / 'eval' / 'validation_decoding_800.json'
  scores = json.loads(path.read_text())
  name = 'validation/aeslc {}/rougeL'.format
  assert rt.chosen_decoding(run.path, 'aeslc', 800) == rt.DECODINGS[2]  # first of a tie
  assert rt.decodings(run, 'validation') == rt.decodings(run, 'test') == []
  scores[name(rt.DECODINGS[0])] = 99.0
  path.write_text(json.dumps(scores))
  assert rt.chosen_decoding(run.path, 'aeslc', 800) == rt.DECODINGS[0]
  assert rt.decodings(run, 'test') == []  # every setting scored on test in the fixture
  os.remove(root / 'multi-seed1' / 'eval' / 'test_decoding_800.json')
  assert rt.decodings(run, 'test') == [(800, [rt.DECODINGS[0]])]
  with pytest.raises(SystemExit, match=r"test_decoding_800.json: no test/aeslc "
                     r"method=greedy/rougeL; .* --split test --step 800 --decoding method=greedy"):
    collect(root, docs)

  del scores[name(rt.DECODINGS[3])]  # a comparison cut short chooses nothing
  path.write_text(json.dumps(scores))
  assert rt.chosen_decoding(run.path, 'aeslc', 800) is None
  rt.main(['decodings', run.path, 'validation'])
  assert capsys.readouterr().out == f'800 {" ".join(rt.DECODINGS)}\n'
  with pytest.raises(SystemExit, match='no decoding chosen on validation at step 800'):
    rt.decodings(run, 'test')
  with pytest.raises(SystemExit, match=r'aeslc at step 800 has no decoding chosen on '
                     r'validation; .* --split validation --step 800 --decoding method=greedy '):
    collect(root, docs)
  assert rt.decodings(rt.run_at(str(root / 'pos-seed0')), 'validation') == []  # no AESLC


def test_best_json_must_agree_with_the_evaluations(results):
  root, _ = results
  best = json.loads((root / 'pos-seed0' / 'best.json').read_text())
  best['step'] = 1200
  (root / 'pos-seed0' / 'best.json').write_text(json.dumps(best))
  with pytest.raises(SystemExit, match='best.json names step 1200 for eval/pos/word_accuracy, '
                     'its evaluations in metrics.jsonl step 800'):
    rt.select(str(root / 'pos-seed0'), 'pos')


def test_a_resumed_run_counts_each_step_once(tmp_path):
  """Killed while writing a line after step 800, resumed from its checkpoint at 400: steps
  500-800 are logged again, and their second evaluation is the one the run holds."""
  path = tmp_path / 'pos-seed0'
  write_run(path, curve_of({'pos': [0.8, 0.9, 0.85]}), rate=2.0)
  lines = [json.loads(x) for x in (path / 'metrics.jsonl').read_text().splitlines()]
  redone = [{**x, key('pos'): 0.7} if key('pos') in x else x
            for x in lines if 400 < x['step'] <= 800]
  with open(path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 8\n' + ''.join(json.dumps(x) + '\n' for x in redone))
  assert rt.select(str(path), 'pos') == (1200, 0.85)
  assert rt.cost(str(path))['wall_seconds'] == 600.0  # 1,200 steps at 2/s


def test_helpers_real_results_sh_calls(results, capsys):
  root, _ = results
  rt.main(['selection'])
  assert capsys.readouterr().out.splitlines() == [
      'pos eval/pos/word_accuracy max', 'sst2 eval/sst2/accuracy max',
      'trec eval/trec/accuracy max', 'aeslc eval/aeslc/rougeL max',
      'shakespeare eval/shakespeare/bits_per_byte min']
  rt.main(['evaluations', str(root / 'multi-seed0')])
  # Seed 0's mixture: pos, trec, shakespeare at 800; sst2 and aeslc at 1200.
  assert capsys.readouterr().out.splitlines() == [
      'validation 800', 'test 800', 'validation 1200', 'test 1200']
  rt.main(['evaluations', str(root / 'shakespeare-seed0')])
  assert capsys.readouterr().out.splitlines() == ['validation 800']
  rt.main(['equal-steps', str(root / 'multi-seed0'), str(root / 'pos-seed0')])
  assert capsys.readouterr().out == '6000\n'  # 1,200 steps at 1/s buy 6,000 at 5/s
  with pytest.raises(SystemExit, match='not a multi-seed<N>'):
    rt.main(['evaluations', str(root / 'notes-seed0')])


# ------------------------------------------------------------------------ real_results.sh


def fake_protocol(tmp_path):
  """A repository holding real_results.sh with train, evaluate and the plots faked.

  Returns (run_script, calls): run_script(*seeds, root=..., check=True, **env) runs the
  script; `calls` lists the faked programs' command lines."""
  repo = tmp_path / 'repo'
  (repo / 'scripts').mkdir(parents=True)
  for name in ('real_results.sh', 'results_table.py'):
    shutil.copy2(REPO / 'scripts' / name, repo / 'scripts' / name)
  (repo / 'docs').mkdir()
  (repo / 'docs' / 'results.json').write_text(json.dumps({'baselines': BASELINES}))
  (repo / 'docs' / 'results_analysis.md').write_text('The analysis.\n')
  calls = tmp_path / 'calls'
  python = tmp_path / 'python'  # train, evaluate and the plots faked; the rest run for real
  python.write_text(f"""#!{sys.executable}
import os, sys
program, args = (sys.argv[2], sys.argv[3:]) if sys.argv[1] == '-m' else (sys.argv[1], sys.argv[2:])
if program in {fake_runs.PROGRAMS!r}:
  sys.path.insert(0, {str(REPO)!r})
  with open({str(calls)!r}, 'a') as f:
    f.write(' '.join([program, *args]) + '\\n')
  from tests import fake_runs
  fake_runs.fake_program(program, args)
else:
  os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
""")
  python.chmod(0o755)
  env = {**os.environ, 'PYTHON': str(python), 'MACHINE': 'fake machine'}

  def run_script(*seeds, root=tmp_path / 'runs', check=True, **extra):
    done = subprocess.run(['bash', 'scripts/real_results.sh', str(root), *(seeds or ['0'])],
                          cwd=repo, env={**env, **extra}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 or not check, done.stderr
    return done

  return run_script, calls


def test_real_results_sh_trains_scores_and_skips_finished_runs(tmp_path):
  run_script, calls = fake_protocol(tmp_path)
  repo = tmp_path / 'repo'
  run_script()
  models = json.loads((repo / 'docs' / 'results.json').read_text())['models']
  assert models['machine'] == 'fake machine'
  assert set(models['runs']) == {'multi-seed0', *(f'{t}-seed0' for t in rt.HEADLINES),
                                 *(f'{t}-equal-seed0' for t in rt.HEADLINES)}
  assert models['runs']['pos-equal-seed0']['steps'] == 3600  # 1,200 at 1/s, 3,600 at 3/s
  pos = models['tasks']['pos']
  assert pos['multi']['selected_step'] == pos['single']['selected_step'] == {'0': 800}
  assert pos['single_equal_compute']['selected_step'] == {'0': 800}
  assert pos['multi']['test']['mean'] == pytest.approx(fake_value('pos', 0, 800, 1200) - 0.02)
  multi = pos['commands']['multi']['0']
  assert multi[0].endswith('--config.keep_checkpoints=1000')
  assert any(c.endswith('--split test --step 800') for c in multi)
  single = pos['commands']['single_equal_compute']['0'][0]
  assert '--config.best_metric=eval/pos/word_accuracy --config.best_mode=max' in single
  assert single.endswith('--config.total_steps=3600')
  assert 'real_multitask.py:single=pos,seed=0 ' in single
  assert models['tasks']['shakespeare']['commands']['single']['0'][1].endswith(
      '--split validation --step 800')
  page = (repo / 'docs' / 'results.md').read_text()
  assert '(results/learning-curves-equal-compute.png)' in page
  assert page.endswith('## Analysis\n\nThe analysis.\n')
  plots = [line.split() for line in calls.read_text().splitlines()
           if line.startswith('scripts/plot_metrics.py')]
  tasks = list(rt.HEADLINES)
  assert [os.path.basename(p) for p in plots[0][1:-2]] == [
      'multi-seed0', *(f'{t}-seed0' for t in tasks)]
  assert plots[0][-2:] == ['--out', 'docs/results']
  assert [os.path.basename(p) for p in plots[1][1:-4]] == [
      'multi-seed0', *(f'{t}-equal-seed0' for t in tasks)]
  assert plots[1][-4:] == ['--out', 'docs/results', '--name', 'learning-curves-equal-compute']
  # AESLC's decoding, chosen on validation at its selected step, then scored on test.
  aeslc = models['tasks']['aeslc']
  chosen = rt.DECODINGS[2]  # the fakes' best (fake_runs.DECODING_GAIN)
  assert aeslc['multi']['decoding'] == aeslc['single']['decoding'] == {'0': chosen}
  assert models['decoding_settings'] == list(rt.DECODINGS)
  assert 'decoding' not in pos['multi']
  assert (f'| AESLC, decoding | {chosen} (seed 0) | {chosen} (seed 0) | {chosen} (seed 0) |'
          in (repo / 'docs' / 'results.md').read_text())
  assert aeslc['multi']['test']['mean'] == pytest.approx(
      fake_value('aeslc', 0, 800, 1200) - 0.02 + 0.5)
  flags = ' '.join(f'--decoding {s}' for s in rt.DECODINGS)
  assert aeslc['commands']['multi']['0'][-2:] == [
      f'{tmp_path}/python -m bloom_jax.evaluate --workdir {tmp_path}/runs/multi-seed0 '
      f'--split validation --step 800 {flags}',
      f'{tmp_path}/python -m bloom_jax.evaluate --workdir {tmp_path}/runs/multi-seed0 '
      f'--split test --step 800 --decoding {chosen}']
  ran = calls.read_text()  # the mixture scores 2 (split, step) pairs; the runs alone 8 each;
  # and the three with AESLC two decoding comparisons each
  assert ran.count('bloom_jax.train') == 11 and ran.count('bloom_jax.evaluate') == 24

  run_script()  # every run finished: nothing is trained or scored again
  assert calls.read_text().count('bloom_jax.') == ran.count('bloom_jax.')
  # A run scored before its decoding was chosen gets only the decoding scores on a rerun.
  for name in ('validation', 'test'):
    os.remove(tmp_path / 'runs' / 'aeslc-seed0' / 'eval' / f'{name}_decoding_800.json')
  run_script()
  added = [line for line in calls.read_text()[len(ran):].splitlines() if 'bloom_jax.' in line]
  assert [line.split(' --split ')[1] for line in added] == [
      f'validation --step 800 {flags}', f'test --step 800 --decoding {chosen}']
  ran = calls.read_text()
  models = json.loads((repo / 'docs' / 'results.json').read_text())['models']

  # With LOGS, every run's logs are copied there; a new root made of them (another machine)
  # trains and scores nothing again and collects the same models section.
  logs = tmp_path / 'logs'
  run_script(LOGS=str(logs))
  assert sorted(os.listdir(logs)) == sorted(models['runs'])
  shutil.copytree(logs, tmp_path / 'elsewhere')
  run_script(root=tmp_path / 'elsewhere', LOGS=str(logs))
  assert calls.read_text().count('bloom_jax.') == ran.count('bloom_jax.')
  again = json.loads((repo / 'docs' / 'results.json').read_text())['models']
  assert again.pop('command') == f'LOGS={logs} scripts/real_results.sh {tmp_path}/elsewhere 0'
  assert again.pop('logs') == str(logs) and models.pop('logs') == ''
  assert again == {k: v for k, v in models.items() if k != 'command'}
  page = ' '.join((repo / 'docs' / 'results.md').read_text().split())
  assert f"Each run's logs are in `{logs}/<run>`" in page
  assert f'`python scripts/results_table.py collect {logs} --machine ...`' in page


def test_real_results_sh_equal_seeds_limits_the_equal_compute_runs(tmp_path):
  run_script, calls = fake_protocol(tmp_path)
  refused = run_script('0', '1', check=False, EQUAL_SEEDS='2')
  assert refused.returncode == 2
  assert 'EQUAL_SEEDS: seed 2 is not among the seeds given (0 1)' in refused.stderr
  assert not calls.exists()  # refused before anything was trained

  run_script('0', '1', EQUAL_SEEDS='0')
  models = json.loads((tmp_path / 'repo' / 'docs' / 'results.json').read_text())['models']
  tasks = list(rt.HEADLINES)
  assert set(models['runs']) == {'multi-seed0', 'multi-seed1',
                                 *(f'{t}-seed{s}' for t in tasks for s in (0, 1)),
                                 *(f'{t}-equal-seed0' for t in tasks)}
  assert models['seeds'] == [0, 1]
  assert models['command'] == f"EQUAL_SEEDS=0 scripts/real_results.sh {tmp_path / 'runs'} 0 1"
  assert models['tasks']['pos']['single_equal_compute']['selected_step'] == {'0': 800}
  plots = [line.split() for line in calls.read_text().splitlines()
           if line.startswith('scripts/plot_metrics.py')]
  assert [os.path.basename(p) for p in plots[1][1:-4]] == [
      'multi-seed0', *(f'{t}-equal-seed0' for t in tasks)]

  before = calls.read_text()
  run_script('0', root=tmp_path / 'none', EQUAL_SEEDS='')  # none: and no second figure
  models = json.loads((tmp_path / 'repo' / 'docs' / 'results.json').read_text())['models']
  assert models['command'] == f"EQUAL_SEEDS='' scripts/real_results.sh {tmp_path / 'none'} 0"
  assert 'single_equal_compute' not in models['tasks']['pos']
  ran = calls.read_text()[len(before):]
  assert ran.count('scripts/plot_metrics.py') == 1 and '--name' not in ran


def test_real_results_sh_equal_steps_seed_sets_every_seeds_equal_compute_steps(tmp_path):
  run_script, calls = fake_protocol(tmp_path)
  refused = run_script('0', '1', check=False, EQUAL_STEPS_SEED='2')
  assert refused.returncode == 2
  assert 'EQUAL_STEPS_SEED: seed 2 is not among the seeds given (0 1)' in refused.stderr
  assert not calls.exists()

  # By default each seed's own runs set its steps: seed 1's mixture ran at half the speed
  # (it shared the machine), so its tasks alone would get twice the steps.
  run_script('0', '1', root=tmp_path / 'own')
  models = json.loads((tmp_path / 'repo' / 'docs' / 'results.json').read_text())['models']
  assert [models['runs'][f'pos-equal-seed{s}']['steps'] for s in (0, 1)] == [3600, 7200]

  run_script('0', '1', EQUAL_STEPS_SEED='0')
  models = json.loads((tmp_path / 'repo' / 'docs' / 'results.json').read_text())['models']
  assert [models['runs'][f'pos-equal-seed{s}']['steps'] for s in (0, 1)] == [3600, 3600]
  train = models['tasks']['pos']['commands']['single_equal_compute']['1'][0]
  assert 'real_multitask.py:single=pos,seed=1 ' in train
  assert train.endswith('--config.total_steps=3600')
  assert models['command'] == (
      f"EQUAL_STEPS_SEED=0 scripts/real_results.sh {tmp_path / 'runs'} 0 1")
