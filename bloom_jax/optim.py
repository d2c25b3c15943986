"""AdamW with warmup and decay, gradient clipping, and no weight decay on norms/biases."""

import jax
import optax

SCHEDULES = ('cosine', 'linear', 'constant')


def learning_rate_schedule(opt_config, total_steps: int) -> optax.Schedule:
  peak, warmup = opt_config.learning_rate, opt_config.warmup_steps
  decay_steps = max(total_steps - warmup, 1)
  if opt_config.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(peak, decay_steps)
  elif opt_config.schedule == 'linear':
    decay = optax.linear_schedule(peak, 0.0, decay_steps)
  else:
    decay = optax.constant_schedule(peak)
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params):
  """Weight decay on matrices only: kernels and the embedding table, never on LayerNorm
  scales or biases (stacked layers make those 2-D, so the name decides, not the rank)."""
  def decays(path, _):
    name = str(getattr(path[-1], 'key', path[-1]))
    return name.endswith('kernel') or name == 'word_embeddings'

  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(opt_config, total_steps: int) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(opt_config.clip_norm),
      optax.adamw(learning_rate_schedule(opt_config, total_steps), b1=opt_config.b1,
                  b2=opt_config.b2, eps=1e-8, weight_decay=opt_config.weight_decay,
                  mask=decay_mask),
  )
