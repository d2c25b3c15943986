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
