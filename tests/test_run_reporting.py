"""What a training run tells a person: the resolved config (printed and in DIR/config.json),
progress readable in a pipe, a table per evaluation, the end-of-run summary, the test split
at the end, a profiler trace, and `bloom_jax.evaluate --step best`.

One piped `python -m bloom_jax.train` run of the tiny config serves most tests.
"""

import io
import json
import os
import re
import subprocess
import sys

import pytest

from bloom_jax import reporting
from tests.tiny import child_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRESS = re.compile(r'^step (\d+)/(\d+) \(\d+%\)(  loss [\d.]+)?  [\d.]+ steps/s  ETA \S+$')


@pytest.fixture(scope='module')
def piped_run(tmp_path_factory):
  """(workdir, stdout, stderr) of a tiny run whose output goes to pipes, not a terminal."""
  workdir = str(tmp_path_factory.mktemp('piped') / 'run')
  result = subprocess.run(
      [sys.executable, '-m', 'bloom_jax.train', '--config', 'tests/tiny.py',
       '--workdir', workdir, '--config.eval_test_at_end=True', '--config.profile_steps=3,4'],
      cwd=REPO, env=child_env(1), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result.stdout, result.stderr


def _best(workdir):
  with open(os.path.join(workdir, 'best.json')) as f:
    return json.load(f)


def test_piped_output_is_plain_short_lines_with_progress(piped_run):
  _, stdout, stderr = piped_run
  assert '\r' not in stdout
  for line in (stdout + stderr).split('\n'):  # as a log viewer shows them
    assert len(line) <= 500, line[:200]
  progress = [m for m in map(PROGRESS.match, stdout.splitlines()) if m]
  assert progress and all(m[2] == '8' for m in progress)
  assert any(m[3] for m in progress)  # a line with the loss
  assert progress[-1][1] == '8'


def test_resolved_config_is_printed_and_saved(piped_run):
  workdir, stdout, _ = piped_run
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  assert saved['total_steps'] == 8 and saved['profile_steps'] == '3,4'
  assert saved['eval_test_at_end'] is True and saved['model']['hidden_size'] == 32
  lines = stdout.splitlines()
  assert lines[0].startswith('Config (saved to ') and 'config.json' in lines[0]
  first_step = next(i for i, line in enumerate(lines) if PROGRESS.match(line))
  assert {'profile_steps: 3,4', 'total_steps: 8', '  hidden_size: 32'} <= set(lines[:first_step])


def test_each_evaluation_prints_a_table_of_tasks_by_metrics(piped_run):
  _, stdout, _ = piped_run
  lines = stdout.splitlines()
  for step in (4, 8):
    at = lines.index(f'Evaluation at step {step} (validation):')
    header = lines[at + 1].split()
    assert header[:2] == ['task', 'loss']
    assert {'accuracy', 'word_accuracy', 'rougeL', 'perplexity'} <= set(header)
    rows = {line.split()[0]: line.split()[1:] for line in lines[at + 2:at + 6]}
    assert set(rows) == {'sentiment', 'tagging', 'summarize', 'lm'}
    assert all(len(cells) == len(header) - 1 for cells in rows.values())
    assert rows['sentiment'][header.index('word_accuracy') - 1] == '-'


def test_the_end_summarises_metrics_and_the_next_commands(piped_run):
  workdir, stdout, _ = piped_run
  summary = stdout[stdout.index('Run finished at step 8/8'):]
  best = _best(workdir)
  assert f'Workdir: {workdir}' in summary
  assert 'Final evaluation (step 8, validation):' in summary
  assert f"Best by eval/sentiment/accuracy (max): {best['value']:.4f} at step {best['step']}" \
      in summary
  assert f'python -m bloom_jax.evaluate --workdir {workdir} --step best' in summary
  assert f'python -m bloom_jax.predict --workdir {workdir} --task sentiment --text' in summary
  assert f'tensorboard --logdir {workdir}' in summary  # no event files, but the profile


def test_profile_steps_write_a_trace(piped_run):
  workdir, stdout, _ = piped_run
  runs = os.listdir(os.path.join(workdir, 'profile', 'plugins', 'profile'))
  [run] = runs
  files = os.listdir(os.path.join(workdir, 'profile', 'plugins', 'profile', run))
  assert any(f.endswith('.xplane.pb') for f in files)      # TensorBoard's profile tab
  assert any(f.endswith('.trace.json.gz') for f in files)  # ui.perfetto.dev
  assert 'Wrote a profiler trace of steps 3-4' in stdout


def test_eval_test_at_end_scores_the_best_checkpoint(piped_run):
  workdir, stdout, _ = piped_run
  best = _best(workdir)
  tests = [f for f in os.listdir(os.path.join(workdir, 'eval')) if f.startswith('test_')]
  assert tests == [f'test_{best["step"]}.json']
  with open(os.path.join(workdir, 'eval', f'test_{best["step"]}.json')) as f:
    written = json.load(f)
  assert written['step'] == best['step'] and written['split'] == 'test'
  assert {'test/sentiment/accuracy', 'test/tagging/word_accuracy', 'test/lm/perplexity'} \
      <= set(written)
  assert f'Test split, checkpoint {best["step"]}' in stdout


def test_evaluate_step_best_restores_the_best_checkpoint(piped_run):
  workdir, _, _ = piped_run
  best = _best(workdir)
  result = subprocess.run(
      [sys.executable, '-m', 'bloom_jax.evaluate', '--workdir', workdir, '--step', 'best'],
      cwd=REPO, env=child_env(1), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.splitlines()[0] == f'{workdir}: step {best["step"]} (best), validation split'
  assert os.path.exists(os.path.join(workdir, 'eval', f'validation_{best["step"]}.json'))


# ---------------------------------------------------------------------------- units


def test_terminal_progress_is_one_line_redrawn_in_place():
  out = io.StringIO()
  console = reporting.Console(8, stream=out, interactive=True)
  console.progress(1)
  console.progress(2, loss=1.5, steps_per_s=2.0)
  console.print('a table')
  console.progress(8, loss=1.25, steps_per_s=2.0)
  text = out.getvalue()
  assert text.startswith('\rstep 1/8 (12%)')
  assert '\rstep 2/8 (25%)  loss 1.5000  2.00 steps/s  ETA 3s\na table\n' in text
  assert text.endswith('\rstep 8/8 (100%)  loss 1.2500  2.00 steps/s  ETA 0s\n')


def test_plain_progress_prints_a_line_at_the_first_loss_then_every_interval():
  out, now = io.StringIO(), [0.0]
  console = reporting.Console(100, stream=out, interactive=False, every_s=30, clock=lambda: now[0])
  printed = []
  for step in range(1, 101):
    now[0] = step * 2.0
    console.progress(step, loss=1.0 if step >= 10 else None, steps_per_s=0.5)
    printed += [step] if out.getvalue().count('\n') > len(printed) else []
  # Step 1 (compiled, running), step 10 (the first loss), then every 30 s, and the last step.
  assert printed == [1, 10, 25, 40, 55, 70, 85, 100]
  assert '\r' not in out.getvalue()


def test_metrics_table_has_a_row_per_task_and_a_column_per_metric():
  table = reporting.metrics_table({'eval/a/accuracy': 0.5, 'eval/a/loss': 1.0,
                                   'eval/b/loss': 2.0, 'eval/b/rougeL': 123456.0})
  assert table.splitlines() == [
      'task    loss  accuracy     rougeL',
      'a     1.0000    0.5000          -',
      'b     2.0000         -  1.235e+05',
  ]
