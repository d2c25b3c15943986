"""Pure train and eval steps: the weighted sum of per-task losses, one jitted update.

    loss = sum_t w_t * L_t,   L_t = weighted mean loss of task t's sub-batch (its type's)

`loss_balancing` (LOSS_BALANCING) chooses how the tasks' terms combine beyond the static
weights w_t (docs/multitask.md): 'static' sums them as above; 'gradnorm_per_task' rescales
each task's gradient to a common norm before summing (`max_gain` caps how far a vanishing
one is scaled up; with a `shared` mask, over the shared parameters only); 'uncertainty'
learns a log-variance s_t per task,
sum_t w_t * (exp(-s_t) * L_t + s_t / 2).

The train state is a plain pytree {params, opt_state, step, nonfinite}, plus `ema_params`
when `optimizer.ema_decay` > 0: a moving average of the parameters that evaluation,
prediction and export read instead (`inference_params`). The model is rebuilt from
(graphdef, params) inside the trace, so nothing walks Python objects per step. A
non-finite loss or gradient never reaches the parameters: the update is skipped and
`nonfinite` records the first step where it happened and the task whose loss or
gradient was non-finite, for the host to report.
"""

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from bloom_jax import compat

LOSS_BALANCING = ('static', 'gradnorm_per_task', 'uncertainty')
GRADNORM_SCOPES = ('all', 'shared')  # config gradnorm_scope: 'shared' passes a `shared` mask


def task_statistics(model, task, batch, dropout_key=None):
  """Loss sums and prediction counts of one task's sub-batch of packed rows. A
  `dropout_key` means training, and only training smooths labels: the argument goes only
  to the types that take it (`takes_label_smoothing`), only when it is set."""
  logits = model(task, batch, dropout_key)
  smoothing = task.label_smoothing if dropout_key is not None else 0.0
  options = {'label_smoothing': smoothing} if smoothing else {}
  loss, weights, correct = task.type.losses(logits, batch, **options)
  stats = {'loss_sum': jnp.sum(loss * weights), 'count': jnp.sum(weights),
           'examples': count_segments(batch['segment_ids'])}
  if correct is not None:
    stats['correct'] = jnp.sum(correct * weights)
  return stats


def count_segments(segment_ids: jax.Array) -> jax.Array:
  """Examples in a batch of packed rows: the positions where a new segment starts."""
  previous = jnp.pad(segment_ids[:, :-1], ((0, 0), (1, 0)))
  return jnp.sum((segment_ids > 0) & (segment_ids != previous)).astype(jnp.float32)


def multitask_loss(params, graphdef, abstract_state, tasks, batch, dropout_key, counts,
                   only=None, balancing='static'):
  """sum_t w_t * L_t (with 'uncertainty' balancing, its learned form) and per-task
  statistics. `tasks`: the mixture's TaskSpecs, in order; `only`: the index of the one task
  whose term to compute, or None for all of them.

  L_t is task t's summed loss over `counts[t]`, the weight of its whole sub-batch, so
  summing this over micro-batches gives exactly the full batch's loss.
  """
  model = nnx.merge(graphdef, compat.from_pure_dict(abstract_state, params))
  total, stats = 0.0, {}
  for i, task in enumerate(tasks):
    if only is not None and i != only:
      continue
    key = None if dropout_key is None else jax.random.fold_in(dropout_key, i)
    s = task_statistics(model, task, batch[task.name], key)
    denominator = jnp.maximum(counts[task.name], 1.0)
    s['loss'] = s['loss_sum'] / denominator
    term = s['loss']
    if balancing == 'uncertainty':
      term = uncertainty_term(model.task_log_variances[task.name][...], s, denominator)
    total = total + task.loss_weight * term
    stats[task.name] = s
  return total, stats


def uncertainty_term(log_variance, stats, denominator):
  """exp(-s) * L + s / 2: Kendall et al. (2018)'s loss of a softmax classifier with learned
  homoscedastic uncertainty sigma^2 = exp(s). Its minimum over s, at s = log(2 L), weighs
  the task by 1 / (2 L). Their Gaussian (regression) form, exp(-s) * L / 2 + s / 2, is this
  one with s shifted by log 2, so one form serves every task type; this one puts weight 1
  at s = 0, where static weighting starts.

  The s / 2 is spread over the task's weighted positions like its loss (a share
  `count / denominator` per micro-batch), so that micro-batches add up to one s / 2.
  """
  return (jnp.exp(-log_variance) * stats['loss_sum']
          + 0.5 * log_variance * stats['count']) / denominator


def per_task_normalised(loss_and_grad, params, tasks, max_gain=0.0, shared=None):
  """((loss, stats), gradient, effective weights) of 'gradnorm_per_task' balancing:

      g = sum_t w_t * a_t * G_t,   a_t = m / |G_t|,   G_t = grad(w_t * L_t),   m = mean_t |G_t|

  so every task's gradient has norm w_t * m whatever its loss's scale, and none alone sets
  Adam's second moment for the shared trunk; m keeps the sum near the size of an unweighted
  one, for clipping and the logged grad_norm. The weight on L_t is w_t^2 * a_t.

  The gain a_t grows without bound as a task's gradient vanishes: a task whose training
  set is fitted (loss near 0) would have its last, memorising gradients scaled up to a
  full share of every update. `max_gain` c > 0 caps it, a_t = min(m / |G_t|, c), so such a
  task fades out of the update instead. Then m must be known before any term is summed,
  and every task's gradient is kept until the last norm is: T gradient-sized buffers. With
  no cap m factors out of the sum, and one running sum of G_t / |G_t| is enough.

  `shared` (a tree of bools like `params`, multitask_model.shared_mask; config
  `gradnorm_scope='shared'`): |G_t|, and so a_t and m, are norms over the shared parameters
  only, and only those take the gain; a task's own parameters (its head, n-gram bag, tag
  embeddings) keep G_t, as with static weights. GradNorm (Chen et al. 2018) measures its
  norms at shared weights for the same reason: a task's head is not competing with
  anyone, and over every parameter a large head gradient (TREC-6's is as large as its
  trunk's at initialisation) or a bag of n-grams makes its task look louder than it is on
  the trunk. It also leaves a head trained by SGD at the step size it has alone. None:
  every parameter counts and is scaled.

  One backward pass per task. Each task already had its own forward pass through the
  trunk (its own sub-batch), so the passes cost what the joint one does; the extra is a
  norm and a scaled add per task over the gradient. A task with no gradient (no weighted
  position, or w_t = 0) adds nothing; a non-finite norm makes m, and so the step,
  non-finite, which skips it as with static weights.
  """
  if shared is None:
    shared = jax.tree.map(lambda _: True, params)

  def scaled(tree, factor):  # the shared leaves times `factor`, the task-owned ones as they are
    return jax.tree.map(lambda g, s: g * factor.astype(g.dtype) if s else g, tree, shared)

  loss, stats, norms, kept = 0.0, {}, [], []
  for i, task in enumerate(tasks):
    (task_loss, task_stats), grads = loss_and_grad(params, only=i)
    norm = optax.tree.norm([g for g, s in zip(jax.tree.leaves(grads), jax.tree.leaves(shared),
                                              strict=True) if s])
    if max_gain:
      kept.append(grads)
    else:
      term = scaled(grads, jnp.where(norm > 0, task.loss_weight / norm, 0.0))
      kept = [term if not kept else jax.tree.map(jnp.add, kept[0], term)]
    loss, norms = loss + task_loss, norms + [norm]
    stats.update(task_stats)
  mean = jnp.mean(jnp.stack(norms))
  gains = [jnp.where(n > 0, mean / n, 0.0) for n in norms]
  if max_gain:
    gains = [jnp.minimum(a, max_gain) for a in gains]
    scales = [t.loss_weight * a for t, a in zip(tasks, gains, strict=True)]
    grads = jax.tree.map(
        lambda s, *gs: sum((f.astype(g.dtype) * g if s else g)
                           for f, g in zip(scales, gs, strict=True)), shared, *kept)
  else:
    grads = scaled(kept[0], mean)
  weights = {t.name: t.loss_weight ** 2 * a for t, a in zip(tasks, gains, strict=True)}
  return (loss, stats), grads, weights


def _micro_batches(batch, n):
  """Splits every sub-batch's rows into n micro-batches: [n, rows/n, ...], micro-batch i
  holding rows i, i+n, i+2n, ...

  Rows are sharded over the devices in contiguous blocks, so strided micro-batches take
  rows from every device. Contiguous ones would sit on a few devices each: for a
  BLOOM-176b plan (grad_accum 11 on a TPU v5p slice, bloom_jax.plan) XLA asked for 231.8
  GiB of temporaries per device with them, 32.9 GiB with strided ones.
  """
  return jax.tree.map(
      lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1), batch)


def inference_params(state: dict) -> dict:
  """The parameters a trained state is evaluated with: their moving average if it has one."""
  return state.get('ema_params', state['params'])


def ema_update(average, params, step, decay):
  """One step of the parameters' exponential moving average (Polyak averaging).

  The decay ramps up as min(decay, (1 + t) / (10 + t)), the schedule of TensorFlow's
  ExponentialMovingAverage with `num_updates`: early on the average follows the
  parameters closely instead of holding on to their random initialisation: the horizon
  1 / (1 - d) is at most (10 + t) / 9 steps.
  """
  t = step.astype(jnp.float32)
  d = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
  return jax.tree.map(lambda a, p: (d * a + (1.0 - d) * p).astype(a.dtype), average, params)


def train_step(state, batch, *, graphdef, abstract_state, tasks, optimizer, schedule,
               seed, grad_accum, balancing='static', max_gain=0.0, shared=None,
               ema_decay=0.0):
  step = state['step']
  dropout_key = jax.random.fold_in(jax.random.key(seed), step)
  counts = {t.name: jnp.sum(batch[t.name]['weights'].astype(jnp.float32)) for t in tasks}

  def loss_and_grad(params, only=None):
    """((loss, stats), gradient) of the whole batch; `only`: one task's term alone."""
    loss_fn = functools.partial(jax.value_and_grad(multitask_loss, has_aux=True),
                                graphdef=graphdef, abstract_state=abstract_state, tasks=tasks,
                                counts=counts, only=only, balancing=balancing)
    if grad_accum == 1:
      return loss_fn(params, batch=batch, dropout_key=dropout_key)
    # Gradients of per-micro-batch sums add up to the full batch's gradient; only the
    # activations of one micro-batch are alive at a time.
    micro_batches = _micro_batches(batch, grad_accum)

    def accumulate(carry, micro):
      i, micro_batch = micro
      out = loss_fn(params, batch=micro_batch, dropout_key=jax.random.fold_in(dropout_key, i))
      return jax.tree.map(jnp.add, carry, out), None

    first = jax.tree.map(lambda x: x[0], micro_batches)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(
        lambda: loss_fn(params, batch=first, dropout_key=dropout_key)))
    summed, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accum), micro_batches))
    return summed

  # `weights`: the weight each L_t has in this step's gradient, logged as <task>/weight.
  if balancing == 'gradnorm_per_task':
    (loss, stats), grads, weights = per_task_normalised(loss_and_grad, state['params'], tasks,
                                                        max_gain, shared)
  else:
    (loss, stats), grads = loss_and_grad(state['params'])
    weights = {t.name: t.loss_weight for t in tasks}
    if balancing == 'uncertainty':
      log_variances = state['params']['task_log_variances']
      weights = {name: w * jnp.exp(-log_variances[name]) for name, w in weights.items()}
  grad_norm = optax.tree.norm(grads)
  task_finite = jnp.stack([jnp.isfinite(stats[t.name]['loss']) for t in tasks])
  finite = jnp.all(task_finite) & jnp.isfinite(grad_norm)

  def update(_):
    # The clipping reuses grad_norm (optim.clip_by_global_norm); other transforms ignore it.
    updates, new_opt_state = optax.with_extra_args_support(optimizer).update(
        grads, state['opt_state'], state['params'], grad_norm=grad_norm)
    return optax.apply_updates(state['params'], updates), new_opt_state

  # Only the taken branch runs, in place. Selecting between the new and the old values
  # instead reads both and makes XLA keep copies of the moments: twice the update's time.
  new_params, new_opt_state = jax.lax.cond(
      finite, update, lambda _: (state['params'], state['opt_state']), None)

  def first_bad_task(params):
    """The first task whose loss or own gradient (of w_t * L_t) is non-finite, by a backward
    pass per task. If each is finite and only their sum overflowed: the largest gradient's."""
    bad, norms = [], []
    for i in range(len(tasks)):
      _, task_grads = loss_and_grad(params, only=i)
      norms.append(optax.tree.norm(task_grads))
      bad.append(~task_finite[i] | ~jnp.isfinite(norms[-1]))
    bad = jnp.stack(bad)
    return jnp.where(jnp.any(bad), jnp.argmax(bad), jnp.argmax(jnp.stack(norms)))

  # The per-task passes run only for the step that is recorded (the first non-finite one),
  # so finite steps never pay for them. They read `new_params`, which a skipped step left
  # unchanged: reading `state['params']` would make XLA keep a copy of the old parameters
  # beside the in-place update on every step.
  nonfinite = jax.lax.cond(
      (state['nonfinite'][0] < 0) & ~finite,
      lambda params: jnp.stack([step, first_bad_task(params)]).astype(jnp.int32),
      lambda _: state['nonfinite'], new_params)
  new_state = {
      'params': new_params,
      'opt_state': new_opt_state,
      'step': step + 1,
      'nonfinite': nonfinite,
  }
  if ema_decay:
    new_state['ema_params'] = ema_update(state['ema_params'], new_params, step, ema_decay)
  metrics = {'loss': loss, 'grad_norm': grad_norm, 'learning_rate': schedule(step),
             'skipped': (~finite).astype(jnp.int32)}
  for name, s in stats.items():
    metrics[f'{name}/loss'] = s['loss']
    metrics[f'{name}/examples'] = s['examples']
    metrics[f'{name}/weight'] = jnp.asarray(weights[name], jnp.float32)
    if balancing == 'uncertainty':
      metrics[f'{name}/log_variance'] = log_variances[name]
    if 'correct' in s:
      metrics[f'{name}/accuracy'] = s['correct'] / jnp.maximum(counts[name], 1.0)
  return new_state, metrics


def eval_step(params, batch, *, graphdef, abstract_state, task):
  """Per-row predictions and loss sums of one eval batch (no dropout)."""
  model = nnx.merge(graphdef, compat.from_pure_dict(abstract_state, params))
  logits = model(task, batch)
  loss, weights, _ = task.type.losses(logits, batch)
  position_axes = tuple(range(1, loss.ndim))
  return {
      'predictions': task.type.predictions(logits),
      'loss_sum': jnp.sum(loss * weights, axis=position_axes),
      'count': jnp.sum(weights, axis=position_axes),
  }
