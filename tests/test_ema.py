"""`optimizer.ema_decay`: a moving average of the parameters, kept beside them in the train
state. It follows its recurrence, leaves training as it is, checkpoints and resumes
exactly, and is what evaluation, prediction, export and a POS tagger read."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bloom_jax import (
    checkpointing,
    compat,
    config_lib,
    evaluation,
    pos_features,
    runs,
    steps,
    train,
)
from bloom_jax.errors import ConfigError
from tests.multiprocess import untimed
from tests.tiny import tiny_config


def test_the_average_follows_its_recurrence_with_the_warm_up():
  rng = np.random.default_rng(0)
  trajectory = [{'w': rng.normal(size=(3, 2)).astype(np.float32), 'b': np.float32(t)}
                for t in range(40)]
  decay = 0.5  # the ramp (1 + t) / (10 + t) sets the decay for t < 8, the cap after
  average = jax.tree.map(jnp.asarray, trajectory[0])
  expected = {k: np.float64(v) for k, v in trajectory[0].items()}
  for t, params in enumerate(trajectory[1:]):
    average = steps.ema_update(average, params, jnp.int32(t), decay)
    d = min(decay, (1 + t) / (10 + t))
    expected = {k: d * expected[k] + (1 - d) * params[k] for k in params}
  for k in expected:
    np.testing.assert_allclose(average[k], expected[k], rtol=1e-5)


@pytest.mark.parametrize('bad', [1.0, -0.1, 1.5, True])
def test_a_decay_outside_zero_to_one_is_a_config_error(bad):
  config = tiny_config()
  config.optimizer.ema_decay = bad
  with pytest.raises(ConfigError, match=r'optimizer\.ema_decay: must be in \[0, 1\)'):
    config_lib.validate(config)


def _config(**fields):
  config = tiny_config()
  config.tasks = ml_collections.ConfigDict({n: config.tasks[n].to_dict()
                                            for n in ('sentiment', 'tagging')})
  config.update(dict(total_steps=6, log_every=2, checkpoint_every=2, eval_every=6,
                     best_metric=''))
  config.optimizer.update(fields)
  return config


def _state(workdir, step):
  run = runs.load_run(workdir, step)
  ckpt = checkpointing.Checkpointer(workdir, keep=1_000_000, create=False)
  state, _ = ckpt.restore(step, run.setup.abstract_train_state())
  ckpt.close()
  return run, jax.device_get(state)


@pytest.fixture(scope='module')
def averaged(tmp_path_factory):
  """Workdirs of one config without and with the average, and with it, preempted at step
  2 and resumed."""
  tmp = tmp_path_factory.mktemp('ema')
  plain, full, resumed = (str(tmp / n) for n in ('plain', 'full', 'resumed'))
  train.train_and_evaluate(_config(), plain)
  line = train.train_and_evaluate(_config(ema_decay=0.5), full)

  calls = {'n': 0}

  def preempt_at_2(self, step):
    del self, step
    calls['n'] += 1
    return calls['n'] == 2

  with pytest.MonkeyPatch.context() as m:
    m.setattr(train._PreemptionFlag, 'is_set', preempt_at_2)
    train.train_and_evaluate(_config(ema_decay=0.5), resumed)
  resumed_line = train.train_and_evaluate(_config(ema_decay=0.5), resumed)
  return plain, full, resumed, line, resumed_line


def test_the_average_leaves_training_alone_and_is_what_is_evaluated(averaged):
  plain, full, _, line, _ = averaged
  _, plain_state = _state(plain, 6)
  run, state = _state(full, 6)
  assert 'ema_params' not in plain_state
  # The same updates with and without the average: it only watches them.
  jax.tree.map(np.testing.assert_array_equal, state['params'], plain_state['params'])
  jax.tree.map(np.testing.assert_array_equal, state['opt_state'], plain_state['opt_state'])
  # The run is evaluated, predicted and exported with the average, which differs from the
  # last parameters and from its own value two steps earlier.
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(run.params), state['ema_params'])
  _, earlier = _state(full, 4)
  moved = lambda a, b: max(float(np.max(np.abs(x - y))) for x, y in
                           zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
  assert moved(state['ema_params'], state['params']) > 0
  assert moved(state['ema_params'], earlier['ema_params']) > 0
  # The final evaluation in training read the same parameters as `evaluate` does.
  evaluator = evaluation.Evaluator(run.config, run.pipe, run.setup.graphdef,
                                   run.setup.abstract_state, run.mesh)
  again = evaluator.evaluate(run.params, 'validation')
  lines = [json.loads(x) for x in open(f'{full}/metrics.jsonl')]
  logged = [x for x in lines if 'eval/sentiment/accuracy' in x][-1]
  assert line['step'] == 6
  for key, value in again.items():
    assert logged[key] == pytest.approx(value, rel=1e-6), key


def test_a_preempted_run_resumes_its_average_exactly(averaged):
  _, full, resumed, line, resumed_line = averaged
  assert untimed(resumed_line) == untimed(line)
  _, a = _state(full, 6)
  _, b = _state(resumed, 6)
  jax.tree.map(np.testing.assert_array_equal, a['ema_params'], b['ema_params'])


def test_a_tagger_run_tags_with_its_average(averaged):
  _, full, _, _, _ = averaged
  run, state = _state(full, 6)
  where, step, config = pos_features.finished_run(full, 'pos_tagger')
  tagger = pos_features.Tagger(where, step, task=run.pipe.tasks['tagging'], config=config)
  restored = pos_features._restore_params(tagger, compat.to_pure_dict(run.setup.abstract_state))
  jax.tree.map(np.testing.assert_array_equal, restored, state['ema_params'])


@pytest.mark.parametrize('key, change', [
    ('optimizer.ema_decay', dict(ema_decay=0.5)),
    ('optimizer.ngram_optimizer', dict(ngram_optimizer='sgd', ngram_learning_rate=1.0)),
    ('loss_balancing', dict(loss_balancing='uncertainty'))])
def test_resuming_with_another_state_is_refused_naming_the_key(averaged, key, change):
  plain = averaged[0]
  before = {p: open(os.path.join(plain, p), 'rb').read() for p in ('config.json',
                                                                   'metrics.jsonl')}
  config = _config(**{k: v for k, v in change.items() if k != 'loss_balancing'})
  config.update({k: v for k, v in change.items() if k == 'loss_balancing'})
  config.total_steps = 8
  with pytest.raises(ConfigError, match=rf'{key}: {plain} holds a run saved with'):
    train.train_and_evaluate(config, plain)
  # Nothing saved was touched: the run resumes with its own config.
  assert {p: open(os.path.join(plain, p), 'rb').read() for p in before} == before
  assert sorted(os.listdir(os.path.join(plain, 'checkpoints'))) == ['4', '6']
