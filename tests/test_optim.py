"""Global-norm clipping as one scalar factor (bloom_jax.optim) agrees with optax's."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bloom_jax import optim


def _clip(transform, grads):
  return transform.update(grads, transform.init(grads))[0]


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('scale', [0.0, 0.01, 0.5, 3.0, 1e4])
def test_clipping_matches_optax(scale, dtype):
  rng = np.random.default_rng(0)
  grads = {'kernel': jnp.asarray(rng.standard_normal((8, 16)) * scale / 12, dtype),
           'bias': jnp.asarray(rng.standard_normal(16) * scale / 12, dtype)}
  ours = _clip(optim.clip_by_global_norm(1.0), grads)
  theirs = _clip(optax.clip_by_global_norm(1.0), grads)
  norm = float(optax.tree.norm(grads))
  for a, b, g in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), jax.tree.leaves(grads),
                     strict=True):
    assert a.dtype == g.dtype
    if norm < 1.0:  # below the threshold both leave the gradients exactly as they are
      np.testing.assert_array_equal(a, g)
      np.testing.assert_array_equal(b, g)
    else:
      tol = 1e-6 if dtype == jnp.float32 else 1e-2
      np.testing.assert_allclose(np.float32(a), np.float32(b), rtol=tol, atol=tol * 1e-3)
  if norm >= 1.0:
    assert float(optax.tree.norm(ours)) == pytest.approx(1.0, rel=1e-2)


def test_optimizer_state_has_the_same_structure_as_with_optax_clipping():
  # Checkpoints written with optax's clipping restore into this optimizer and back.
  params = {'kernel': jnp.ones((4, 4)), 'bias': jnp.zeros(4)}
  ours = optim.clip_by_global_norm(1.0).init(params)
  theirs = optax.clip_by_global_norm(1.0).init(params)
  assert jax.tree.structure(ours) == jax.tree.structure(theirs)


def test_a_given_norm_is_used_instead_of_recomputing_it():
  grads = {'kernel': jnp.full((4, 4), 2.0), 'bias': jnp.full(4, 2.0)}
  norm = optax.tree.norm(grads)
  clip = optim.clip_by_global_norm(1.0)
  state = clip.init(grads)
  computed = clip.update(grads, state)[0]
  given = clip.update(grads, state, grad_norm=norm)[0]
  jax.tree.map(np.testing.assert_array_equal, computed, given)
  # The norm given is the one applied (here twice the true one: half the clipped size).
  halved = clip.update(grads, state, grad_norm=2 * norm)[0]
  assert float(optax.tree.norm(halved)) == pytest.approx(0.5, rel=1e-6)


def test_the_optimizer_passes_the_norm_to_the_clipping_and_ignores_it_elsewhere():
  config = type('OptConfig', (), dict(learning_rate=1e-2, warmup_steps=0, schedule='constant',
                                      b1=0.9, b2=0.999, weight_decay=0.1, clip_norm=1.0))
  optimizer = optim.make_optimizer(config, total_steps=10)
  params = {'kernel': jnp.ones((4, 4)), 'bias': jnp.zeros(4)}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 3.0), params)
  state = optimizer.init(params)
  computed = optimizer.update(grads, state, params)[0]
  given = optimizer.update(grads, state, params, grad_norm=optax.tree.norm(grads))[0]
  jax.tree.map(np.testing.assert_array_equal, computed, given)


def _bag_config(kind, bag_lr=0.5):
  return type('OptConfig', (), dict(learning_rate=1e-2, warmup_steps=0, schedule='constant',
                                    b1=0.9, b2=0.999, weight_decay=0.1, clip_norm=1.0,
                                    ngram_optimizer=kind, ngram_learning_rate=bag_lr))


@pytest.mark.parametrize('kind', ['sgd', 'adagrad'])
def test_the_ngram_bags_have_their_own_unclipped_optimizer(kind):
  """With ngram_optimizer 'sgd' or 'adagrad' the bags' rows take that optimizer's step at
  their own learning rate, unclipped and without weight decay; every other parameter
  takes the step it takes without the option (clipped by the norm of all gradients)."""
  rng = np.random.default_rng(0)
  params = {'heads': {'t': {'kernel': jnp.ones((4, 2)), 'bias': jnp.zeros(2),
                            'ngrams': {'kernel': jnp.ones((16, 2))}}}}
  grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape) * 3, p.dtype), params)
  norm = optax.tree.norm(grads)  # well above clip_norm: the rest is clipped
  assert optim.ngram_labels(params) == {'heads': {'t': {
      'kernel': 'rest', 'bias': 'rest', 'ngrams': {'kernel': 'ngrams'}}}}
  optimizer = optim.make_optimizer(_bag_config(kind), total_steps=10)
  updates = optimizer.update(grads, optimizer.init(params), params, grad_norm=norm)[0]
  bag_grads = grads['heads']['t']['ngrams']
  alone = {'sgd': optax.sgd(0.5), 'adagrad': optax.adagrad(0.5)}[kind]
  np.testing.assert_allclose(updates['heads']['t']['ngrams']['kernel'],
                             alone.update(bag_grads, alone.init(bag_grads))[0]['kernel'],
                             rtol=1e-6)
  plain = optim.make_optimizer(_bag_config('adamw'), total_steps=10)
  reference = plain.update(grads, plain.init(params), params, grad_norm=norm)[0]
  for name in ('kernel', 'bias'):
    np.testing.assert_allclose(updates['heads']['t'][name], reference['heads']['t'][name],
                               rtol=1e-6)


def test_adamw_for_the_bags_keeps_the_optimizer_of_configs_without_the_option():
  # Runs saved before the option restore into the optimizer their config now makes.
  params = {'kernel': jnp.ones((4, 4)), 'ngrams': {'kernel': jnp.ones((8, 2))}}
  old = type('OptConfig', (), dict(learning_rate=1e-2, warmup_steps=0, schedule='constant',
                                   b1=0.9, b2=0.999, weight_decay=0.1, clip_norm=1.0))
  states = [optim.make_optimizer(c, total_steps=10).init(params)
            for c in (old, _bag_config('adamw'), _bag_config('sgd'))]
  assert jax.tree.structure(states[0]) == jax.tree.structure(states[1])
  assert jax.tree.structure(states[0]) != jax.tree.structure(states[2])
