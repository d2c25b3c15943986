"""The loss at the heart of every task: token_nll against a float64 reference."""

import jax
import jax.numpy as jnp
import numpy as np

from bloom_jax import steps


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
