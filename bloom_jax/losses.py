"""Per-position losses shared by the task types."""

import jax
import jax.numpy as jnp


def token_nll(logits, targets, smoothing: float = 0.0):
  """-log softmax(logits)[target] at every position, and whether the target is a top logit.

  With `smoothing` e > 0, the first is the cross-entropy against the label-smoothed target,
  1 - e on the target and e spread evenly over every class (Szegedy et al. 2016):
  logsumexp - (1 - e) * target logit - e * mean logit.

  The target's logit is picked by a one-hot product, whose gradient is elementwise;
  take_along_axis's is a scatter into a zeroed [..., V] buffer, a large extra pass over
  the vocabulary-sized gradient. The max is the one logsumexp computes anyway (ties,
  which random float logits do not have, count as correct).
  """
  logits = logits.astype(jnp.float32)
  one_hot = jax.nn.one_hot(targets, logits.shape[-1], dtype=jnp.float32)
  target = jnp.sum(logits * one_hot, axis=-1)
  nll = jax.nn.logsumexp(logits, axis=-1) - target
  if smoothing:
    nll = nll + smoothing * (target - jnp.mean(logits, axis=-1))
  return nll, target >= jnp.max(logits, axis=-1)
