"""AdamW with warmup and decay, gradient clipping, and no weight decay on norms/biases.

With `optimizer.ngram_optimizer` 'sgd' or 'adagrad', the classifiers' bags of n-grams
(`heads.NgramBag`) are trained by that optimizer instead, at their own peak learning rate
`optimizer.ngram_learning_rate` on the same schedule, without weight decay or clipping.
Adam moves every coordinate by about the learning rate whatever its gradient's size, so an
n-gram seen once weighs, after a few steps of momentum, about as much as one seen in every
batch; a linear model of sparse features is trained by SGD (fastText) or Adagrad instead.
"""

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ('cosine', 'linear', 'constant')
NGRAM_OPTIMIZERS = {'adamw': None, 'sgd': optax.sgd, 'adagrad': optax.adagrad}


def learning_rate_schedule(opt_config, total_steps: int, peak: float | None = None
                           ) -> optax.Schedule:
  """Linear warmup to `peak` (default the config's learning rate), then the decay."""
  peak = opt_config.learning_rate if peak is None else peak
  warmup = opt_config.warmup_steps
  decay_steps = max(total_steps - warmup, 1)
  if opt_config.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(peak, decay_steps)
  elif opt_config.schedule == 'linear':
    decay = optax.linear_schedule(peak, 0.0, decay_steps)
  else:
    decay = optax.constant_schedule(peak)
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def _names(path) -> list[str]:
  return [str(getattr(k, 'key', k)) for k in path]


def ngram_labels(params):
  """'ngrams' for the parameters of the bags of n-grams, 'rest' for every other one."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: 'ngrams' if 'ngrams' in _names(path) else 'rest', params)


def decay_mask(params):
  """Weight decay on matrices only: kernels and the embedding table, never on LayerNorm
  scales or biases (stacked layers make those 2-D, so the name decides, not the rank)."""
  def decays(path, _):
    name = _names(path)[-1]
    return name.endswith('kernel') or name == 'word_embeddings'

  return jax.tree_util.tree_map_with_path(decays, params)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
  """optax.clip_by_global_norm as one scalar factor, min(1, max_norm / norm).

  optax selects between each gradient and a rescaled copy of it, and XLA materialises
  that copy: every gradient is then written once more and read three more times by the
  moment updates (1-3% of the benchmark's CPU train step). A factor of exactly 1
  below the threshold leaves the gradients as they are.

  The train step has the norm already (it logs it and skips non-finite steps by it) and
  passes it as `update(..., grad_norm=norm)`, so the gradients are not read once more to
  recompute it; without it the norm is computed here. Chain this first, so that the norm
  is the one of the gradients it receives.
  """
  def update(updates, state, params=None, *, grad_norm=None, **extra_args):
    del params, extra_args
    norm = optax.tree.norm(updates) if grad_norm is None else grad_norm
    factor = jnp.minimum(1.0, max_norm / norm)
    return jax.tree.map(lambda g: g * factor.astype(g.dtype), updates), state

  return optax.GradientTransformationExtraArgs(lambda _: optax.EmptyState(), update)


def make_optimizer(opt_config, total_steps: int) -> optax.GradientTransformation:
  optimizer = optax.chain(
      clip_by_global_norm(opt_config.clip_norm),
      optax.adamw(learning_rate_schedule(opt_config, total_steps), b1=opt_config.b1,
                  b2=opt_config.b2, eps=1e-8, weight_decay=opt_config.weight_decay,
                  mask=decay_mask),
  )
  bag_optimizer = NGRAM_OPTIMIZERS[getattr(opt_config, 'ngram_optimizer', 'adamw')]
  if bag_optimizer is None:
    return optimizer
  # Unclipped: a clip factor cancels in Adam's update, in SGD's it would scale the bags'
  # learning rate by the norm of every other gradient.
  bag = bag_optimizer(learning_rate_schedule(opt_config, total_steps,
                                             opt_config.ngram_learning_rate))
  return optax.partition({'rest': optimizer, 'ngrams': bag}, ngram_labels)
