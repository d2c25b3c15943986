"""The best checkpoint by best_metric: judged at every evaluation, saved when it improves,
recorded in DIR/best.json, kept beside the newest; early stopping that survives a restart;
the test split scored on the best checkpoint at the end; errors for the new config keys.

The evaluations are scripted (the metric's value at each step is fixed here), so which
step is best does not depend on what a tiny model happens to learn.
"""

import contextlib
import io
import json
import os

import jax
import numpy as np
import pytest

from bloom_jax import checkpointing, evaluate, evaluation, runs, sharding, train
from bloom_jax.data import pipeline
from bloom_jax.errors import ConfigError
from tests.tiny import tiny_config

METRIC = 'eval/sentiment/accuracy'
# The metric at each step's evaluation: best at 2; 4 only ties it; 6 would beat it, but
# three evaluations without improvement (3, 4, 5) stop the run at step 5 first.
SCRIPT = {1: 0.5, 2: 0.7, 3: 0.6, 4: 0.7, 5: 0.65, 6: 0.9, 7: 0.9, 8: 0.9}


def _config():
  config = tiny_config()
  config.eval_every = 1
  config.checkpoint_every = 8
  config.keep_checkpoints = 1
  config.best_metric = METRIC
  config.early_stop_patience = 3
  config.eval_test_at_end = True
  return config


@pytest.fixture(scope='module')
def stopped_early(tmp_path_factory):
  """A run preempted after step 3 and resumed, which then stops early; its workdir, the
  line it returned, what it printed and the parameters the test split was scored with."""
  workdir = str(tmp_path_factory.mktemp('best') / 'run')
  validations, tested = [], []

  def scripted_evaluate(self, params, split, max_examples=None, tasks=None, prefix='eval'):
    del self, max_examples, tasks
    if split == 'test':
      tested.append(jax.device_get(params))
      return {f'{prefix}/sentiment/accuracy': 0.25}
    validations.append(len(validations) + 1)  # evaluations run at every step: this one's
    return {f'{prefix}/sentiment/loss': 1.0, METRIC: SCRIPT[validations[-1]]}

  preempt_calls = []

  def preempt_after_step_3(self, step):
    del self, step
    preempt_calls.append(1)
    return len(preempt_calls) == 3

  with pytest.MonkeyPatch.context() as m:
    m.setattr(evaluation.Evaluator, 'evaluate', scripted_evaluate)
    with pytest.MonkeyPatch.context() as preempt:
      preempt.setattr(train._PreemptionFlag, 'is_set', preempt_after_step_3)
      first = train.train_and_evaluate(_config(), workdir)
    assert first['step'] == 3 and not tested  # preempted: no test split, no summary
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      line = train.train_and_evaluate(_config(), workdir)
  return workdir, line, out.getvalue(), tested


def _steps(workdir):
  ckpt = checkpointing.Checkpointer(workdir, keep=1)
  steps = ckpt.all_steps()
  ckpt.close()
  return sorted(steps)


def _params(workdir, step):
  config = _config()
  pipe = pipeline.Pipeline(config, workdir=workdir, multiple=8)
  mesh = sharding.make_mesh(config.mesh)
  setup = runs.build(config, pipe.tasks, pipe.tokenizer.vocab_size, mesh)
  ckpt = checkpointing.Checkpointer(workdir, keep=1)
  state, _ = ckpt.restore(step, setup.abstract_train_state())
  ckpt.close()
  return jax.device_get(state['params'])


def test_best_is_judged_at_every_evaluation_and_recorded(stopped_early):
  workdir, _, _, _ = stopped_early
  with open(os.path.join(workdir, 'best.json')) as f:
    best = json.load(f)
  assert (best['metric'], best['mode'], best['step'], best['value']) == (METRIC, 'max', 2, 0.7)
  assert best['improvements'] == [[1, 0.5], [2, 0.7]]
  assert best['metrics'] == {'eval/sentiment/loss': 1.0, METRIC: 0.7}
  assert checkpointing.read_best(workdir)['step'] == 2


def test_the_best_step_is_saved_and_kept_beside_the_newest(stopped_early):
  workdir, _, _, _ = stopped_early
  # Step 2 is no checkpoint_every step; keep_checkpoints=1 keeps only the newest (5)
  # besides it. Step 1 (a best for a while) and 3 (the preemption) are gone.
  assert _steps(workdir) == [2, 5]


def test_early_stop_counts_evaluations_across_a_restart(stopped_early):
  workdir, line, out, _ = stopped_early
  assert line['step'] == 5  # without the count from before the restart: step 8
  assert (f'early stop: {METRIC} did not improve in 3 evaluations' in out)
  assert 'Run finished at step 5/8' in out
  lines = [json.loads(x) for x in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert max(x['step'] for x in lines) == 5


def test_test_split_is_scored_on_the_best_checkpoint(stopped_early):
  workdir, _, out, tested = stopped_early
  [params] = tested
  jax.tree.map(np.testing.assert_array_equal, params, _params(workdir, 2))
  last = jax.tree.leaves(_params(workdir, 5))
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), last, strict=True))
  with open(os.path.join(workdir, 'eval', 'test_2.json')) as f:
    assert json.load(f) == {'step': 2, 'split': 'test', 'test/sentiment/accuracy': 0.25}
  assert 'Test split, checkpoint 2' in out


def test_rerunning_a_run_that_stopped_early_trains_no_further(stopped_early, monkeypatch):
  workdir, _, _, _ = stopped_early
  config = _config()
  config.eval_test_at_end = False
  monkeypatch.setattr(evaluation.Evaluator, 'evaluate', lambda *a, **k: pytest.fail('evaluated'))
  assert train.train_and_evaluate(config, workdir) == {}
  assert _steps(workdir) == [2, 5]


def test_evaluate_step_best_names_the_best_step_or_says_there_is_none(stopped_early, tmp_path):
  workdir, _, _, _ = stopped_early
  assert evaluate.checkpoint_step(workdir, 'best') == 2
  assert evaluate.checkpoint_step(workdir, '5') == 5
  assert evaluate.checkpoint_step(workdir, None) is None
  with pytest.raises(ConfigError, match=r'^--step best: the run in .* has no best checkpoint'):
    evaluate.checkpoint_step(str(tmp_path), 'best')
  with pytest.raises(ConfigError, match=r"^--step: a step number or 'best', got 'last'"):
    evaluate.checkpoint_step(str(tmp_path), 'last')


def test_the_best_checkpoint_outlives_a_restart(tmp_path):
  state = lambda step: {'w': jax.numpy.full((3,), step, jax.numpy.float32)}
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=1, best_metric=METRIC)
  ckpt.save(1, state(1), {}, '{}', metrics={METRIC: 0.5})
  ckpt.save(2, state(2), {}, '{}', metrics={METRIC: 0.9})
  ckpt.save(3, state(3), {}, '{}')
  ckpt.wait()
  ckpt.close()
  again = checkpointing.Checkpointer(str(tmp_path), keep=1, best_metric=METRIC)  # a restart
  again.save(4, state(4), {}, '{}')
  again.wait()
  assert again.all_steps() == [2, 4]  # Orbax used to hold the metrics in memory only
  again.close()


def test_a_resumed_run_forgets_improvements_past_its_checkpoint(tmp_path):
  record = checkpointing.BestRecord(str(tmp_path), METRIC, 'max')
  for step, value in [(2, 0.5), (4, 0.4), (6, 0.8)]:
    record.update(step, {METRIC: value, 'eval/sentiment/loss': 1.0})
  record.write()
  resumed = checkpointing.BestRecord.resume(str(tmp_path), METRIC, 'max', up_to_step=5)
  assert (resumed.step, resumed.value, resumed.metrics) == (2, 0.5, {METRIC: 0.5})
  assert resumed.update(6, {METRIC: 0.6}) and resumed.step == 6
  other = checkpointing.BestRecord.resume(str(tmp_path), METRIC, 'min', up_to_step=9)
  assert other.step is None  # judged the other way round: starts afresh
  assert not record.update(8, {METRIC: float('nan')})
  with pytest.raises(ConfigError, match=f'^best_metric: the evaluation at step 9 has no '
                                        f"'{METRIC}'"):
    record.update(9, {'eval/lm/loss': 1.0})


@pytest.mark.parametrize('key, value, message', [
    ('profile_steps', 'x', "profile_steps: must be 'FIRST,LAST'"),
    ('profile_steps', '5,3', "profile_steps: must be 'FIRST,LAST'"),
    ('profile_steps', '3,99', 'profile_steps: .* total_steps \\(8\\)'),
    ('early_stop_patience', -1, 'early_stop_patience: must be an integer >= 0'),
    ('best_metric', 'eval/nosuch/accuracy', 'best_metric: must be eval/<task>/<metric>'),
    ('best_metric', 'sentiment/accuracy', 'best_metric: must be eval/<task>/<metric>'),
])
def test_bad_new_keys_fail_before_anything_is_written(tmp_path, key, value, message):
  config = tiny_config()
  config[key] = value
  with pytest.raises(ConfigError, match=f'^{message}'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_early_stopping_needs_a_best_metric(tmp_path):
  config = tiny_config()
  config.best_metric = ''
  config.early_stop_patience = 2
  with pytest.raises(ConfigError, match='^early_stop_patience: needs best_metric'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
