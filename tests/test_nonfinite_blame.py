"""A skipped step names the task whose loss or gradient is non-finite, also when every
task's loss is finite and only one task's gradient is not."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bloom_jax import compat, steps
from bloom_jax.model import BloomConfig
from bloom_jax.multitask_model import MultiTaskModel
from bloom_jax.task_types import LM
from bloom_jax.tasks import TaskSpec

VOCAB, LENGTH = 31, 6


class _NanGradientLM(type(LM)):
  """LM whose loss keeps its value but whose gradient is NaN: sqrt's slope at 0 (inf)
  times the slope of 0 * logits (0)."""

  def losses(self, logits, batch):
    nll, weights, correct = super().losses(logits, batch)
    return nll + jnp.sqrt(0.0 * jnp.sum(logits)), weights, correct


def _setup(types, grad_accum=1):
  """A jitted train step over tasks 'a', 'b', ... of the given types, its state, a batch."""
  cfg = BloomConfig(vocab_size=VOCAB, hidden_size=16, n_head=2, n_layer=1)
  specs = tuple(TaskSpec(name, t, source=None, max_length=LENGTH)
                for name, t in zip('ab', types, strict=True))
  make_model = lambda: MultiTaskModel(cfg, {s.name: s for s in specs}, rngs=nnx.Rngs(0))
  graphdef, abstract_state = nnx.split(nnx.eval_shape(make_model))
  params = compat.to_pure_dict(nnx.state(make_model()))
  optimizer = optax.adamw(1e-2)
  step = jax.jit(functools.partial(
      steps.train_step, graphdef=graphdef, abstract_state=abstract_state, tasks=specs,
      optimizer=optimizer, schedule=lambda _: 1e-2, seed=0, grad_accum=grad_accum))
  rng = np.random.default_rng(0)
  batch = {}
  for s in specs:
    ids = rng.integers(0, VOCAB, (4, LENGTH)).astype(np.int32)
    batch[s.name] = {'input_ids': ids, 'segment_ids': np.ones_like(ids),
                     'targets': np.roll(ids, -1, axis=1),
                     'weights': np.ones(ids.shape, np.float32)}
  state = {'params': params, 'opt_state': optimizer.init(params), 'step': jnp.int32(0),
           'nonfinite': jnp.full((2,), -1, jnp.int32)}
  return step, state, batch, (graphdef, abstract_state, specs, optimizer)


def _assert_skipped(before, after, metrics):
  assert int(metrics['skipped']) == 1 and int(after['step']) == int(before['step']) + 1
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(after['params']),
               jax.device_get(before['params']))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(after['opt_state']),
               jax.device_get(before['opt_state']))


@pytest.mark.parametrize(('bad', 'grad_accum'), [(0, 1), (1, 1), (1, 2)])
def test_a_gradient_alone_nonfinite_blames_its_task(bad, grad_accum):
  types = [LM, LM]
  types[bad] = _NanGradientLM()
  step, state, batch, _ = _setup(types, grad_accum)
  after, metrics = step(state, batch)
  assert np.isfinite(float(metrics['a/loss'])) and np.isfinite(float(metrics['b/loss']))
  assert not np.isfinite(float(metrics['grad_norm']))
  _assert_skipped(state, after, metrics)
  assert after['nonfinite'].tolist() == [0, bad]

  # The first record stays: a later non-finite step changes nothing but the step.
  later, metrics = step(after, batch)
  _assert_skipped(after, later, metrics)
  assert later['nonfinite'].tolist() == [0, bad]


@pytest.mark.parametrize('bad', [0, 1])
def test_a_nonfinite_loss_blames_its_task(bad):
  step, state, batch, _ = _setup([LM, LM])
  state, metrics = step(state, batch)   # one finite step first: the record names step 1
  assert int(metrics['skipped']) == 0 and state['nonfinite'].tolist() == [-1, -1]
  batch['ab'[bad]]['weights'][0, 0] = np.nan
  after, metrics = step(state, batch)
  assert np.isfinite(float(metrics[f'{"ab"[1 - bad]}/loss']))
  _assert_skipped(state, after, metrics)
  assert after['nonfinite'].tolist() == [1, bad]


@pytest.mark.parametrize('grad_accum', [1, 2])
def test_finite_steps_apply_the_plain_update(grad_accum):
  step, state, batch, (graphdef, abstract_state, specs, optimizer) = _setup([LM, LM],
                                                                            grad_accum)
  counts = {s.name: jnp.float32(batch[s.name]['weights'].sum()) for s in specs}
  params, opt_state = state['params'], state['opt_state']

  @jax.jit
  def reference(params, opt_state):
    # One backward pass over the whole batch (this model has no dropout), one Adam update.
    loss, grads = jax.value_and_grad(lambda p: steps.multitask_loss(
        p, graphdef, abstract_state, specs, batch, None, counts)[0])(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return loss, optax.apply_updates(params, updates), opt_state

  for _ in range(3):
    state, metrics = step(state, batch)
    loss, params, opt_state = reference(params, opt_state)
    assert int(metrics['skipped']) == 0 and state['nonfinite'].tolist() == [-1, -1]
    np.testing.assert_allclose(float(metrics['loss']), float(loss), rtol=1e-5)
    jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-5),
                 jax.device_get(state['params']), jax.device_get(params))
  assert int(state['step']) == 3
