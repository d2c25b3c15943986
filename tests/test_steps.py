"""The loss at the heart of every task (token_nll against a float64 reference), and the
train step's skipping of non-finite updates."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from bloom_jax import compat, steps
from bloom_jax.heads import MultiTaskModel
from bloom_jax.model import BloomConfig


def _reference(logits, targets):
  logits = logits.astype(np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  return -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0], log_probs


def test_token_nll_matches_log_softmax_and_argmax():
  rng = np.random.default_rng(0)
  logits = (4 * rng.standard_normal((3, 7, 50))).astype(np.float32)
  targets = rng.integers(0, 50, (3, 7))
  targets[0] = logits[0].argmax(-1)  # some positions predicted right
  nll, correct = jax.jit(steps.token_nll)(jnp.asarray(logits), jnp.asarray(targets))
  expected, _ = _reference(logits, targets)
  np.testing.assert_allclose(np.asarray(nll), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(correct), logits.argmax(-1) == targets)
  assert np.asarray(correct)[0].all() and not np.asarray(correct).all()


def test_token_nll_gradient_is_softmax_minus_one_hot():
  rng = np.random.default_rng(1)
  logits = rng.standard_normal((4, 9)).astype(np.float32)
  targets = rng.integers(0, 9, (4,))
  grad = jax.grad(lambda x: jnp.sum(steps.token_nll(x, jnp.asarray(targets))[0]))(logits)
  _, log_probs = _reference(logits, targets)
  expected = np.exp(log_probs) - np.eye(9)[targets]
  np.testing.assert_allclose(np.asarray(grad), expected, atol=1e-6)


def test_a_nonfinite_step_leaves_parameters_and_moments_untouched():
  cfg = BloomConfig(vocab_size=31, hidden_size=16, n_head=2, n_layer=1)
  make_model = lambda: MultiTaskModel(cfg, {}, rngs=nnx.Rngs(0))
  graphdef, abstract_state = nnx.split(nnx.eval_shape(make_model))
  params = compat.to_pure_dict(nnx.state(make_model()))
  optimizer = optax.adamw(1e-2)
  step = jax.jit(functools.partial(
      steps.train_step, graphdef=graphdef, abstract_state=abstract_state,
      tasks=(('lm', 'lm', 1.0),), optimizer=optimizer, schedule=lambda _: 1e-2, seed=0,
      grad_accum=1))
  ids = np.random.default_rng(0).integers(0, 31, (2, 6))
  batch = {'lm': {'input_ids': ids, 'attention_mask': np.ones_like(ids), 'targets': ids,
                  'weights': np.ones(ids.shape, np.float32)}}
  state = {'params': params, 'opt_state': optimizer.init(params), 'step': jnp.int32(0),
           'nonfinite': jnp.full((2,), -1, jnp.int32)}
  state, metrics = step(state, batch)
  assert int(metrics['skipped']) == 0 and int(state['step']) == 1
  before = jax.device_get(state)

  batch['lm']['weights'][0, 0] = np.nan   # a NaN loss
  after, metrics = step(state, batch)
  assert int(metrics['skipped']) == 1 and int(after['step']) == 2
  assert after['nonfinite'].tolist() == [1, 0]   # (step, task) of the first skip
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(after['params']), before['params'])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(after['opt_state']),
               before['opt_state'])

  batch['lm']['weights'][0, 0] = 1.0      # and the next finite step updates again
  resumed, metrics = step(after, batch)
  assert int(metrics['skipped']) == 0
  moved = jax.tree.map(lambda a, b: not np.array_equal(a, b),
                       jax.device_get(resumed['params']), before['params'])
  assert all(jax.tree.leaves(moved))
