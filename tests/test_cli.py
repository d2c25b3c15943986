"""evaluate / predict / hf import-export on a trained tiny run, and their one-line errors."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from bloom_jax import cli, config_lib, evaluate, evaluation, hf, predict, runs, train
from tests.tiny import child_env, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run'))
  config = tiny_config()
  config.total_steps = 4
  config.tensorboard = True
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope='module')
def restored(run_dir):
  return runs.load_run(run_dir)


def _cli(*args, cwd=REPO):
  env = child_env(1)
  return subprocess.run([sys.executable, '-m', *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=600)


def test_tensorboard_events_hold_the_logged_metrics(run_dir):
  import tensorflow as tf
  [events] = [f for f in os.listdir(run_dir) if f.startswith('events.out.tfevents')]
  tags = {v.tag for e in tf.compat.v1.train.summary_iterator(os.path.join(run_dir, events))
          for v in e.summary.value}
  assert {'loss', 'train/sentiment/loss', 'eval/summarize/rougeL'} <= tags


def test_evaluate_scores_every_task(restored):
  assert restored.step == 4
  evaluator = evaluation.Evaluator(restored.config, restored.pipe, restored.setup.graphdef,
                                   restored.setup.abstract_state, restored.mesh)
  results = evaluator.evaluate(restored.params, 'test', max_examples=8, prefix='test')
  expected = {'test/sentiment/accuracy', 'test/sentiment/macro_f1', 'test/tagging/word_accuracy',
              'test/summarize/rougeL', 'test/lm/perplexity', 'test/lm/bits_per_byte'}
  assert expected <= set(results)
  assert all(np.isfinite(v) for v in results.values())
  table = evaluate.format_table(results)
  assert 'sentiment' in table and 'rougeL' in table


def test_predict_answers_for_every_head(restored):
  pipe, predictor = restored.pipe, predict.Predictor(restored)

  def answers(name, texts, **options):
    task = pipe.tasks[name]
    return task.type.predict(predictor, task, texts, **options)

  text = 'the big dog sees a happy child .'
  [cls] = answers('sentiment', [text])
  assert cls['label'] in pipe.tasks['sentiment'].labels
  assert abs(sum(cls['probabilities'].values()) - 1) < 1e-4
  [tags] = answers('tagging', [text])
  assert [w for w, _ in tags['tags']] == text.split()
  labels = [t for _, t in tags['tags']]
  # Words beyond max_length (24 tokens with this tiny vocabulary) get no tag, and only those.
  tagged = labels[:labels.index(None)] if None in labels else labels
  assert tagged and all(t in pipe.tasks['tagging'].labels for t in tagged)
  assert all(t is None for t in labels[len(tagged):])
  for task in ('summarize', 'lm'):
    a = answers(task, [text, 'a dog .'], method='sample', seed=3, temperature=1.0)
    b = answers(task, [text, 'a dog .'], method='sample', seed=3, temperature=1.0)
    assert a == b and all(isinstance(p['generated'], str) for p in a)


def test_export_loads_in_transformers(restored, run_dir, tmp_path):
  transformers = pytest.importorskip('transformers')
  torch = pytest.importorskip('torch')
  pipe, setup, params = restored.pipe, restored.setup, restored.params
  result = _cli('bloom_jax.hf', 'export', '--workdir', run_dir, '--hf_dir', 'hf')
  assert result.returncode == 0, result.stderr
  out = os.path.join(run_dir, 'hf')
  assert os.path.exists(os.path.join(out, 'tokenizer.json'))
  theirs = transformers.BloomForCausalLM.from_pretrained(out).eval()
  ours = hf.from_params(setup.model_config, jax.device_get(params['bloom']))
  ids = np.array([pipe.tokenizer.encode('the big dog sees a child .')])
  with torch.no_grad():
    ref = theirs(input_ids=torch.tensor(ids)).logits.numpy()
  np.testing.assert_allclose(np.asarray(ours(ids)), ref, atol=1e-4)


def test_import_starts_a_run_from_a_hf_trunk(restored, tmp_path):
  trunk = hf.from_params(restored.setup.model_config, jax.device_get(restored.params['bloom']))
  hf.save(trunk, str(tmp_path / 'trunk'))
  restored.pipe.tokenizer.save(str(tmp_path / 'trunk' / 'tokenizer.json'))
  workdir = str(tmp_path / 'ft')
  args = ('bloom_jax.hf', 'import', '--hf_dir', str(tmp_path / 'trunk'), '--config',
          'tests/tiny.py', f'--config.tokenizer.path={tmp_path}/trunk/tokenizer.json',
          '--workdir', workdir)
  result = _cli(*args)
  assert result.returncode == 0, result.stderr
  imported = runs.load_run(workdir)
  assert imported.step == 0
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(imported.params['bloom']),
               jax.device_get(restored.params['bloom']))
  assert set(imported.params) == set(restored.params)  # the task heads start fresh beside it
  again = _cli(*args)
  assert again.returncode == 2
  assert 'already holds checkpoints' in again.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize('args, message', [
    (['--task', 'no_such_task', '--text', 'x'], "no head for 'no_such_task'"),
    (['--task', 'pos', '--text', 'x'], "no head for 'pos'"),
    (['--task', 'lm'], 'exactly one of --text or --input'),
])
def test_predict_errors_are_one_line(run_dir, args, message):
  result = _cli('bloom_jax.predict', '--workdir', run_dir, *args)
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert message in last and last.startswith('predict.py: error:')


def test_predict_input_file_errors(run_dir, tmp_path):
  empty = tmp_path / 'empty.txt'
  empty.write_text('\n\n')
  result = _cli('bloom_jax.predict', '--workdir', run_dir, '--task', 'lm', '--input', str(empty))
  assert result.returncode == 2 and f'{empty}: no input texts' in result.stderr


def test_evaluate_without_checkpoints_is_one_line(tmp_path):
  result = _cli('bloom_jax.evaluate', '--workdir', str(tmp_path))
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].endswith(
      f'{tmp_path}: no checkpoints (train first with bloom_jax.train)')


def test_evaluate_cli_writes_json(run_dir):
  result = _cli('bloom_jax.evaluate', '--workdir', run_dir, '--split', 'validation')
  assert result.returncode == 0, result.stderr
  written = json.load(open(os.path.join(run_dir, 'eval', 'validation_4.json')))
  assert written['step'] == 4 and 'validation/lm/perplexity' in written
  assert 'word_accuracy' in result.stdout and 'rougeL' in result.stdout


@pytest.mark.parametrize('path', ['{outside}/preds.jsonl', '../preds.jsonl', 'link/preds.jsonl',
                                  'link', '.', 'a/../../b'])
def test_output_paths_outside_the_workdir_are_refused(tmp_path, path):
  workdir, outside = tmp_path / 'run', tmp_path / 'outside'
  workdir.mkdir()
  outside.mkdir()
  os.symlink(outside, workdir / 'link')  # a symlink inside the workdir that leads out of it
  with pytest.raises(config_lib.ConfigError, match='--output: .* is not inside the workdir'):
    cli.inside_workdir(str(workdir), path.format(outside=outside), '--output')
  assert cli.inside_workdir(str(workdir), 'sub/preds.jsonl', '--output') == \
      os.path.join(os.path.realpath(workdir), 'sub', 'preds.jsonl')


@pytest.mark.parametrize('program, args', [
    ('bloom_jax.predict', ['--task', 'lm', '--text', 'x', '--output', '../preds.jsonl']),
    ('bloom_jax.hf', ['export', '--hf_dir', '../exported']),
    ('bloom_jax.evaluate', ['--split', '../../escaped']),
])
def test_cli_paths_cannot_write_outside_the_workdir(run_dir, program, args):
  parent = os.path.dirname(run_dir)
  before = sorted(os.listdir(parent))
  result = _cli(program, '--workdir', run_dir, *args)
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert 'error:' in last and ('not inside the workdir' in last or '--split' in last), last
  assert sorted(os.listdir(parent)) == before
