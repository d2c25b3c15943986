"""`python -m bloom_jax.predict` end to end, for every head type and decoding option.

One tiny run (the built-in sentiment, tagging, summarize and lm tasks, and a regression
task declared in the config) answers every call. The command-line calls run as children
with the test process's 8 devices, so the programs they compile are those the in-process
references compile: their answers must agree exactly.
"""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from bloom_jax import decoding, predict, runs, train
from bloom_jax.data import synthetic
from tests.tiny import child_env, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = ['the big dog sees a happy child .', 'a cat .', 'the old teacher likes the red car .']


def _write_scores(path, n: int, seed: int) -> None:
  """Synthetic sentences scored by their positive minus their negative adjectives."""
  rng = np.random.default_rng(seed)
  lines = ['text,score']
  for _ in range(n):
    words = [w for w, _ in synthetic.sentence(rng, int(rng.integers(0, 2)))]
    score = sum(w in synthetic.POS_ADJ for w in words) - sum(w in synthetic.NEG_ADJ for w in words)
    lines.append(f'{" ".join(words)},{score}')
  path.write_text('\n'.join(lines) + '\n')


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('predict')
  (root / 'scores').mkdir()
  _write_scores(root / 'scores' / 'train.csv', 200, 0)
  _write_scores(root / 'scores' / 'dev.csv', 20, 1)
  config = tiny_config()
  config.total_steps = 2
  config.data.dir = str(root)
  config.data.batch_size = 40  # a row per device for each of the five tasks
  config.tasks.scores = ml_collections.ConfigDict(dict(
      type='regression', reader='csv', max_length=24,
      files=dict(train='scores/train.csv', validation='scores/dev.csv'),
      options=dict(text_column='text', label_column='score')))
  workdir = str(root / 'run')
  train.train_and_evaluate(config, workdir)
  (root / 'run' / 'texts.txt').write_text('\n'.join(TEXTS) + '\n')
  return workdir


@pytest.fixture(scope='module')
def reference(run_dir):
  """Predictions in this process: answers(task, texts, **options), and what decoding.generate
  returned for each call (tokens [B, max_new_tokens] and lengths)."""
  run = runs.load_run(run_dir)
  predictor, generated = predict.Predictor(run), []
  generate = decoding.generate

  def recording(*args, **kwargs):
    result = generate(*args, **kwargs)
    generated.append({k: np.asarray(v) for k, v in result.items()})
    return result

  def answers(name, texts=TEXTS, **options):
    task = run.pipe.tasks[name]
    before = len(generated)
    out = task.type.predict(predictor, task, texts, **options)
    return json.loads(json.dumps(out)), generated[before:]

  mp = pytest.MonkeyPatch()
  mp.setattr(decoding, 'generate', recording)
  yield run, answers
  mp.undo()


# Every command-line call the tests read, started together in the module's first test
# (two at a time: they are independent) and read by name.
CALLS = {
    'sentiment': ['--task', 'sentiment'],
    'tagging': ['--task', 'tagging'],
    'scores': ['--task', 'scores', '--text', TEXTS[0]],
    'lm_greedy': ['--task', 'lm', '--max_new_tokens', '5'],
    'lm_beam1': ['--task', 'lm', '--max_new_tokens', '5', '--method', 'beam', '--num_beams', '1'],
    'lm_top_k1': ['--task', 'lm', '--text', TEXTS[0], '--max_new_tokens', '5', '--method',
                  'sample', '--top_k', '1', '--temperature', '0.7', '--seed', '3'],
    'lm_top_p': ['--task', 'lm', '--max_new_tokens', '5', '--method', 'sample', '--top_p',
                 '0.001', '--temperature', '1.3', '--seed', '1'],
    'summarize_sample': ['--task', 'summarize', '--method', 'sample', '--top_k', '20',
                         '--top_p', '0.9', '--temperature', '1.3', '--seed', '1'],
    'summarize_beam': ['--task', 'summarize', '--method', 'beam', '--num_beams', '3',
                       '--length_penalty', '0.6', '--max_new_tokens', '3'],
    'sentiment_decoding': ['--task', 'sentiment', '--text', 'x', '--max_new_tokens', '4',
                           '--method', 'sample', '--top_k', '2'],
    # Checked before the run is read.
    'num_beams_greedy': ['--task', 'lm', '--text', 'x', '--num_beams', '2'],
    'length_penalty_sample': ['--task', 'lm', '--text', 'x', '--method', 'sample',
                              '--length_penalty', '0.6'],
    'temperature_0': ['--task', 'lm', '--text', 'x', '--method', 'sample', '--temperature', '0'],
}


@pytest.fixture(scope='module')
def calls(run_dir):
  env = child_env(8)
  pending, done = list(CALLS.items()), {}
  while pending:
    batch, pending = pending[:2], pending[2:]
    started = {}
    for name, args in batch:
      if '--text' not in args:
        args = [*args, '--input', os.path.join(run_dir, 'texts.txt'), '--output', f'{name}.jsonl']
      started[name] = subprocess.Popen(
          [sys.executable, '-m', 'bloom_jax.predict', '--workdir', run_dir, *args], cwd=REPO,
          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for name, process in started.items():
      stdout, stderr = process.communicate(timeout=600)
      done[name] = (process.returncode, stdout, stderr)
  return done


def _answers(calls, run_dir, name) -> list[dict]:
  code, _, stderr = calls[name]
  assert code == 0, stderr[-3000:]
  with open(os.path.join(run_dir, f'{name}.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def test_classification_tagging_and_regression(calls, run_dir, reference):
  run, answers = reference
  labels = run.pipe.tasks['sentiment'].labels
  sentiment = _answers(calls, run_dir, 'sentiment')
  assert [p['text'] for p in sentiment] == TEXTS
  for p in sentiment:
    assert p['label'] in labels and set(p['probabilities']) == set(labels)
    assert abs(sum(p['probabilities'].values()) - 1) < 1e-4
    assert p['label'] == max(p['probabilities'], key=p['probabilities'].get)
  assert sentiment == answers('sentiment')[0]

  tagging = _answers(calls, run_dir, 'tagging')
  for p, text in zip(tagging, TEXTS, strict=True):
    assert [w for w, _ in p['tags']] == text.split()
    tags = [t for _, t in p['tags']]
    tagged = [t for t in tags if t is not None]  # words past max_length get none, only they
    assert tagged and all(t in run.pipe.tasks['tagging'].labels for t in tagged)
    assert all(t is None for t in tags[len(tagged):])
  assert tagging == answers('tagging')[0]

  code, stdout, stderr = calls['scores']
  assert code == 0, stderr[-3000:]
  [score] = answers('scores', [TEXTS[0]])[0]
  assert np.isfinite(score['score'])
  task = run.pipe.tasks['scores']
  assert stdout.strip() == task.type.format_prediction(task, score)


def test_greedy_is_deterministic_and_bounded_by_max_new_tokens(calls, run_dir, reference):
  _, answers = reference
  cli = _answers(calls, run_dir, 'lm_greedy')
  assert [p['text'] for p in cli] == TEXTS and all(isinstance(p['generated'], str) for p in cli)
  first, [result] = answers('lm', max_new_tokens=5)
  again, _ = answers('lm', max_new_tokens=5)
  assert cli == first == again
  # At most 5 tokens each, and the text is theirs.
  assert result['tokens'].shape[1] == 5 and (result['lengths'] <= 5).all()
  assert (result['lengths'] > 0).all()
  _, [result] = answers('lm', max_new_tokens=2)
  assert result['tokens'].shape[1] == 2 and (result['lengths'] <= 2).all()
  # Without the flag, the task's own length: max_length 24 // 4 tokens.
  _, [result] = answers('lm')
  assert result['tokens'].shape[1] == 6


def test_one_beam_top_k_1_and_a_tiny_top_p_are_greedy(calls, run_dir):
  greedy = _answers(calls, run_dir, 'lm_greedy')
  assert _answers(calls, run_dir, 'lm_beam1') == greedy
  # top_p keeps the likeliest token however small it is, whatever the temperature.
  assert _answers(calls, run_dir, 'lm_top_p') == greedy
  code, stdout, stderr = calls['lm_top_k1']  # --text prints the generated text alone
  assert code == 0, stderr[-3000:]
  assert stdout.rstrip('\n') == greedy[0]['generated']


def test_sampling_and_beam_search_options(calls, run_dir, reference):
  _, answers = reference
  sampled = _answers(calls, run_dir, 'summarize_sample')
  expected, [result] = answers('summarize', method='sample', top_k=20, top_p=0.9,
                               temperature=1.3, seed=1)
  assert sampled == expected and all(isinstance(p['generated'], str) for p in sampled)
  assert result['tokens'].shape[1] == 6  # summarize's own target length: 24 // 4
  beams = _answers(calls, run_dir, 'summarize_beam')
  expected, [result] = answers('summarize', max_new_tokens=3, method='beam', num_beams=3,
                               length_penalty=0.6)
  assert beams == expected and result['tokens'].shape[-1] == 3
  assert all(isinstance(p['generated'], str) for p in beams)


@pytest.mark.parametrize('name, message', [
    ('sentiment_decoding', "--max_new_tokens, --method, --top_k: 'sentiment' is a classification "
                           'task, which generates no text (decoding options apply to generation, '
                           'lm tasks)'),
    ('num_beams_greedy', '--num_beams: applies to --method=beam only (this is --method=greedy)'),
    ('length_penalty_sample',
     '--length_penalty: applies to --method=beam only (this is --method=sample)'),
    ('temperature_0', '--temperature: must be positive, got 0.0'),
])
def test_decoding_options_that_cannot_apply_are_one_line_errors(calls, name, message):
  code, _, stderr = calls[name]
  assert code == 2
  [line] = [line for line in stderr.splitlines() if 'error:' in line]
  assert line == stderr.strip().splitlines()[-1] == f'predict.py: error: {message}'
