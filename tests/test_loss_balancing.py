"""loss_balancing: 'static' is the plain weighted sum, 'gradnorm_per_task' gives every task's
gradient one norm, 'uncertainty' learns a log-variance per task that trains, checkpoints,
resumes and leaves the exported trunk alone; micro-batches agree with one batch."""

import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from bloom_jax import compat, config_lib, hf, runs, sharding, steps, tasks, train
from bloom_jax.data import pipeline
from bloom_jax.errors import ConfigError
from bloom_jax.model import BloomConfig
from bloom_jax.multitask_model import MultiTaskModel, shared_mask
from bloom_jax.sweeps import definitions
from bloom_jax.task_types import LM
from bloom_jax.tasks import TaskSpec
from configs import real_multitask
from tests import test_nonfinite_blame as nonfinite_blame
from tests.multiprocess import untimed
from tests.tiny import tiny_config


class _ScaledLM(type(LM)):
  """LM whose per-position loss is `factor` times the usual: a task on another scale."""

  def __init__(self, factor):
    self.factor = factor

  def losses(self, logits, batch):
    nll, weights, correct = super().losses(logits, batch)
    return self.factor * nll, weights, correct


def _gradient_keeper():
  """An optimizer that leaves the parameters as they are and keeps, as its state, the
  gradient the step gave it."""
  return optax.GradientTransformation(
      lambda params: jax.tree.map(jnp.zeros_like, params),
      lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


def _setup(factors, balancing, optimizer, grad_accum=1, types=None, max_gain=0.0):
  """A jitted train step over LM tasks 'a', 'b', ... with losses scaled by `factors`, its
  first state and a batch, and (graphdef, abstract_state, specs)."""
  cfg = BloomConfig(vocab_size=nonfinite_blame.VOCAB, hidden_size=16, n_head=2, n_layer=1)
  types = types or [_ScaledLM(f) for f in factors]
  specs = tuple(TaskSpec(name, t, source=None, max_length=nonfinite_blame.LENGTH)
                for name, t in zip('ab', types, strict=True))
  make_model = lambda: MultiTaskModel(cfg, {s.name: s for s in specs}, rngs=nnx.Rngs(0),
                                      task_uncertainty=balancing == 'uncertainty')
  graphdef, abstract_state = nnx.split(nnx.eval_shape(make_model))
  params = compat.to_pure_dict(nnx.state(make_model()))
  step = jax.jit(functools.partial(
      steps.train_step, graphdef=graphdef, abstract_state=abstract_state, tasks=specs,
      optimizer=optimizer, schedule=lambda _: 0.0, seed=0, grad_accum=grad_accum,
      balancing=balancing, max_gain=max_gain))
  _, _, batch, _ = nonfinite_blame._setup(types)  # its tasks' batch: random LM rows
  state = {'params': params, 'opt_state': optimizer.init(params), 'step': jnp.int32(0),
           'nonfinite': jnp.full((2,), -1, jnp.int32)}
  return step, state, batch, (graphdef, abstract_state, specs)


def _task_gradients(state, batch, graphdef, abstract_state, specs):
  """grad(w_t * L_t) of each task alone, outside the step."""
  counts = {s.name: jnp.sum(batch[s.name]['weights']) for s in specs}
  grads = jax.jit(lambda params: [jax.grad(steps.multitask_loss, has_aux=True)(
      params, graphdef, abstract_state, specs, batch, None, counts, only=i)[0]
      for i in range(len(specs))])
  return grads(state['params'])


def _norm(tree):
  return float(optax.tree.norm(tree))


def test_static_is_the_weighted_sum_of_the_task_gradients():
  step, state, batch, (graphdef, abstract_state, specs) = _setup(
      (1.0, 100.0), 'static', _gradient_keeper())
  after, metrics = step(state, batch)
  ga, gb = _task_gradients(state, batch, graphdef, abstract_state, specs)
  jax.tree.map(lambda g, a, b: np.testing.assert_allclose(g, a + b, rtol=1e-5, atol=1e-8),
               after['opt_state'], ga, gb)
  assert float(metrics['a/weight']) == float(metrics['b/weight']) == 1.0
  assert 50 < _norm(gb) / _norm(ga)   # the 100x task dominates the sum
  assert 'a/log_variance' not in metrics


def test_gradnorm_per_task_gives_every_task_the_same_gradient_norm():
  step, state, batch, (graphdef, abstract_state, specs) = _setup(
      (1.0, 100.0), 'gradnorm_per_task', _gradient_keeper())
  after, metrics = step(state, batch)
  ga, gb = _task_gradients(state, batch, graphdef, abstract_state, specs)
  wa, wb = float(metrics['a/weight']), float(metrics['b/weight'])
  # Each weighted contribution has the mean of the raw norms; the 100x task is turned down.
  mean = (_norm(ga) + _norm(gb)) / 2
  assert _norm(ga) * wa == pytest.approx(mean, rel=1e-5)
  assert _norm(gb) * wb == pytest.approx(mean, rel=1e-5)
  assert wb < 1 < wa and wa / wb > 50
  jax.tree.map(lambda g, a, b: np.testing.assert_allclose(g, wa * a + wb * b, rtol=1e-4,
                                                          atol=1e-7),
               after['opt_state'], ga, gb)
  # The step's grad_norm is the balanced gradient's; the loss stays the plain sum.
  assert float(metrics['grad_norm']) == pytest.approx(_norm(after['opt_state']), rel=1e-5)
  assert float(metrics['loss']) == pytest.approx(
      float(metrics['a/loss']) + float(metrics['b/loss']), rel=1e-6)


def test_max_gain_caps_how_far_a_small_gradient_is_scaled_up():
  step, state, batch, (graphdef, abstract_state, specs) = _setup(
      (1.0, 100.0), 'gradnorm_per_task', _gradient_keeper(), max_gain=5.0)
  after, metrics = step(state, batch)
  ga, gb = _task_gradients(state, batch, graphdef, abstract_state, specs)
  mean = (_norm(ga) + _norm(gb)) / 2
  gain_b = mean / _norm(gb)
  assert mean / _norm(ga) > 40 and gain_b < 5.0  # the cap binds on task a only
  # Task a is scaled by the cap instead of m / |G_a|; task b as without one.
  assert float(metrics['a/weight']) == pytest.approx(5.0)
  assert float(metrics['b/weight']) == pytest.approx(gain_b, rel=1e-5)
  jax.tree.map(lambda g, a, b: np.testing.assert_allclose(g, 5.0 * a + gain_b * b,
                                                          rtol=1e-4, atol=1e-7),
               after['opt_state'], ga, gb)
  # A cap above every gain gives the uncapped step.
  none, loose = (jax.device_get(_setup((1.0, 100.0), 'gradnorm_per_task', _gradient_keeper(),
                                       max_gain=gain)[0](state, batch)) for gain in (0.0, 1e3))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-8), loose, none)


def _fixed_gradients():
  """Parameters of a trunk and two tasks' heads, and a `loss_and_grad` whose task gradients
  are fixed: task a's is 3 on the trunk and 4 on its head, task b's 1 and 10."""
  params = {'bloom': {'w': jnp.zeros(3)},
            'heads': {'a': {'k': jnp.zeros(2)}, 'b': {'k': jnp.zeros(2)}}}
  grads = [{'bloom': {'w': jnp.array([3.0, 0, 0])},
            'heads': {'a': {'k': jnp.array([4.0, 0])}, 'b': {'k': jnp.zeros(2)}}},
           {'bloom': {'w': jnp.array([0, 1.0, 0])},
            'heads': {'a': {'k': jnp.zeros(2)}, 'b': {'k': jnp.array([0, 10.0])}}}]
  specs = [TaskSpec(name, LM, source=None) for name in 'ab']
  return params, (lambda _, only: ((jnp.float32(only), {'ab'[only]: {}}), grads[only])), specs


@pytest.mark.parametrize('max_gain', [0.0, 1.5])
def test_gradnorm_scope_shared_balances_the_trunk_and_leaves_each_head_its_gradient(max_gain):
  params, loss_and_grad, specs = _fixed_gradients()
  shared = shared_mask(params)
  assert shared == {'bloom': {'w': True}, 'heads': {'a': {'k': False}, 'b': {'k': False}}}
  _, grads, weights = steps.per_task_normalised(loss_and_grad, params, specs, max_gain, shared)
  # Trunk norms 3 and 1, mean 2: gains 2/3 and 2 (the cap, 1.5, binds on b); heads unscaled.
  gain_b = min(2.0, max_gain or 2.0)
  np.testing.assert_allclose(grads['bloom']['w'], [2.0, gain_b, 0.0], rtol=1e-6)
  np.testing.assert_allclose(grads['heads']['a']['k'], [4.0, 0.0])
  np.testing.assert_allclose(grads['heads']['b']['k'], [0.0, 10.0])
  assert float(weights['a']) == pytest.approx(2 / 3) and float(weights['b']) == gain_b

  # Over every parameter (the default) the heads count and take the gain: norms 5 and
  # sqrt(101); b's large head turns its trunk gradient down.
  _, grads, _ = steps.per_task_normalised(loss_and_grad, params, specs, max_gain)
  mean = (5 + np.sqrt(101)) / 2
  gain_a, gain_b = min(mean / 5, max_gain or np.inf), mean / np.sqrt(101)
  np.testing.assert_allclose(grads['bloom']['w'], [3 * gain_a, gain_b, 0.0], rtol=1e-6)
  np.testing.assert_allclose(grads['heads']['b']['k'], [0.0, 10 * gain_b], rtol=1e-6)


def test_shared_mask_marks_what_one_task_owns():
  specs = tasks.configure({'sentiment': dict(ngrams=2, ngram_buckets=64), 'lm': {}})
  cfg = BloomConfig(vocab_size=50, hidden_size=16, n_head=2, n_layer=1)
  model = MultiTaskModel(cfg, specs, rngs=nnx.Rngs(0), task_uncertainty=True)
  mask = shared_mask(compat.to_pure_dict(nnx.state(model)))
  assert all(jax.tree.leaves(mask['bloom']))
  for owned in ('heads', 'task_log_variances'):
    assert mask[owned] and not any(jax.tree.leaves(mask[owned]))
  assert set(mask) == {'bloom', 'heads', 'task_log_variances'}


def test_with_gradnorm_scope_shared_a_bag_by_sgd_steps_as_with_static_weights(tmp_path):
  """The bag of n-grams, trained by SGD, is owned by its task: 'shared' leaves its update
  as static weights make it, where 'all' scales it by the task's gain."""
  config = tiny_config()
  config.tasks.sentiment.update(ngrams=2, ngram_buckets=1000)
  config.optimizer.update(ngram_optimizer='sgd', ngram_learning_rate=0.5, warmup_steps=0,
                          schedule='constant')  # a step that moves the parameters
  pipe = pipeline.Pipeline(config, workdir=str(tmp_path))
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  batch = sharding.global_batch(next(pipe.train_iterator()), mesh)

  def bag_and_trunk(**change):
    setup = runs.build(definitions.resolve(config, change), pipe.tasks,
                       pipe.tokenizer.vocab_size, mesh)
    state, _ = setup.train_step(setup.init_train_state(), batch)
    params = jax.device_get(state['params'])
    return params['heads']['sentiment']['ngrams']['kernel'], params['bloom']

  static_bag, static_trunk = bag_and_trunk(loss_balancing='static')
  shared_bag, shared_trunk = bag_and_trunk(loss_balancing='gradnorm_per_task',
                                           gradnorm_scope='shared')
  all_bag, _ = bag_and_trunk(loss_balancing='gradnorm_per_task', gradnorm_scope='all')
  assert np.abs(static_bag).max() > 0
  np.testing.assert_allclose(shared_bag, static_bag, rtol=1e-5, atol=1e-8)
  assert not np.allclose(all_bag, static_bag, rtol=1e-3)
  # The trunk is balanced: its update differs from the static sum's.
  assert not all(jax.tree.leaves(jax.tree.map(np.allclose, shared_trunk, static_trunk)))


def test_a_negative_max_gain_is_a_config_error():
  config = tiny_config()
  config.gradnorm_max_gain = -1.0
  with pytest.raises(ConfigError, match=r"^gradnorm_max_gain: must be >= 0 \(0: no cap\), "
                                        r"got -1.0$"):
    config_lib.validate(config)


def test_uncertainty_learns_a_larger_log_variance_for_the_larger_loss():
  # Losses near 34 and 0.34: s_t heads for log(2 L_t), up for one task, down for the other.
  step, state, batch, _ = _setup((10.0, 0.1), 'uncertainty', optax.adam(1e-2))
  assert state['params']['task_log_variances']['a'].dtype == jnp.float32
  for _ in range(5):
    state, metrics = step(state, batch)
  s = {name: float(state['params']['task_log_variances'][name]) for name in 'ab'}
  assert s['a'] > 0.02 and s['b'] < -0.02
  assert float(metrics['a/weight']) < 1 < float(metrics['b/weight'])
  # Logged before the update: the weight is exp(-s_t) of the parameters the step read.
  previous = float(metrics['a/log_variance'])
  assert float(metrics['a/weight']) == pytest.approx(np.exp(-previous), rel=1e-6)


@pytest.mark.parametrize('balancing', ['gradnorm_per_task', 'uncertainty'])
def test_micro_batches_agree_with_one_batch(balancing):
  results = []
  for grad_accum in (1, 2):
    step, state, batch, _ = _setup((1.0, 100.0), balancing, _gradient_keeper(), grad_accum)
    if balancing == 'uncertainty':  # away from s = 0, so exp(-s) and s / 2 both show
      state['params']['task_log_variances'] = {'a': jnp.float32(0.5), 'b': jnp.float32(-1.0)}
    results.append(jax.device_get(step(state, batch)))
  (one, metrics_one), (two, metrics_two) = results
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               two['opt_state'], one['opt_state'])
  for key, value in metrics_one.items():
    np.testing.assert_allclose(metrics_two[key], value, rtol=1e-5, err_msg=key)


def test_gradnorm_per_task_skips_and_blames_a_nonfinite_gradient():
  step, state, batch, _ = _setup(None, 'gradnorm_per_task', optax.adam(1e-2),
                                 types=[LM, nonfinite_blame._NanGradientLM()])
  after, metrics = step(state, batch)
  assert int(metrics['skipped']) == 1 and after['nonfinite'].tolist() == [0, 1]
  jax.tree.map(np.testing.assert_array_equal, after['params'], state['params'])


@pytest.mark.parametrize(('key', 'value', 'choices'), [
    ('loss_balancing', 'gradnorm', 'static, gradnorm_per_task, uncertainty'),
    ('gradnorm_scope', 'trunk', 'all, shared')])
def test_an_unknown_method_or_scope_is_a_config_error_naming_the_choices(key, value, choices):
  config = tiny_config()
  config[key] = value
  with pytest.raises(ConfigError, match=f"^{key}: must be one of {choices}, got '{value}'$"):
    config_lib.validate(config)


def test_the_ablation_sweep_covers_every_method_with_two_seeds_or_one_trial():
  trials = definitions.name_trials(real_multitask.get_sweep())
  assert len(trials) == 2 * len(steps.LOSS_BALANCING)
  assert trials[2].name == 'loss_balancing=gradnorm_per_task,seed=0'
  for arg in (None, 'steps=450'):   # the full ablation and the pilot
    for trial in trials:
      config = definitions.resolve(real_multitask.get_config(arg), trial.overrides)
      config_lib.validate(config)
  assert real_multitask.get_config('steps=450').eval_every == 150
  one_seed = definitions.name_trials(real_multitask.get_sweep('seed=1'))  # one seed's half
  assert [t.overrides for t in one_seed] == [
      {'loss_balancing': m, 'seed': 1} for m in steps.LOSS_BALANCING]
  one_trial = definitions.name_trials(real_multitask.get_sweep('balancing=uncertainty,seed=0'))
  assert [t.name for t in one_trial] == ['loss_balancing=uncertainty,seed=0']  # the same dir
  assert real_multitask.get_config('balancing=static').loss_balancing == 'static'
  with pytest.raises(ValueError, match='balancing=METHOD .one of static, gradnorm_per_task, '):
    real_multitask.get_sweep('balancing=gradnorm')
  rates = definitions.name_trials(real_multitask.get_sweep('sweep=lr'))
  assert [t.overrides for t in rates] == [
      {'optimizer.learning_rate': r, 'seed': 0} for r in (1e-3, 2e-3, 4e-3)]
  config_lib.validate(definitions.resolve(real_multitask.get_config('sweep=lr'),
                                          rates[0].overrides))



def test_uncertainty_run_resumes_exactly_and_exports_its_trunk(tmp_path, monkeypatch):
  config = tiny_config()
  config.tasks = ml_collections.ConfigDict({n: config.tasks[n].to_dict()
                                            for n in ('sentiment', 'lm')})
  config.update(dict(loss_balancing='uncertainty', total_steps=4, log_every=2,
                     checkpoint_every=2, eval_every=4, best_metric=''))
  full = train.train_and_evaluate(config, str(tmp_path / 'full'))

  calls = {'n': 0}

  def preempt_at_2(self, step):
    del self, step
    calls['n'] += 1
    return calls['n'] == 2

  with monkeypatch.context() as m:
    m.setattr(train._PreemptionFlag, 'is_set', preempt_at_2)
    train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  resumed = train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  assert untimed(resumed) == untimed(full)

  a, b = runs.load_run(str(tmp_path / 'full')), runs.load_run(str(tmp_path / 'resumed'))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a.params),
               jax.device_get(b.params))
  lines = [json.loads(x) for x in (tmp_path / 'full' / 'metrics.jsonl').read_text().splitlines()]
  last = [line for line in lines if 'train/lm/log_variance' in line][-1]
  # The log-variances moved, are in the checkpoint, and the weight follows them.
  s = float(a.params['task_log_variances']['lm'])
  assert s != 0.0 and last['train/lm/log_variance'] != 0.0
  assert last['train/lm/weight'] == pytest.approx(np.exp(-last['train/lm/log_variance']))
  # The Hugging Face export (bloom_jax.hf export) writes the trunk, which reads back.
  trunk = jax.device_get(a.params['bloom'])
  hf.save(hf.from_params(a.setup.model_config, trunk), str(tmp_path / 'hf'))
  jax.tree.map(np.testing.assert_array_equal,
               hf.load_params(str(tmp_path / 'hf'), a.setup.model_config), trunk)
