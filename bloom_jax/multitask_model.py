"""One BLOOM trunk shared by every task, and each task's head on top of it.

A task with a `pos_tagger` also has a tag embedding table: its rows' `pos_tags` (tag
index + 1, 0 for none) are embedded and added to the word embeddings, before their
LayerNorm, as one more input embedding. The table starts at zero, so the model starts
as the one without tags; like biases, it has no weight decay.

With `task_uncertainty` (config `loss_balancing='uncertainty'`) the model also holds one
learned log-variance s_t = log sigma_t^2 per task, which `steps.multitask_loss` weighs
the task's loss by (Kendall et al. 2018). They are parameters like any other, so they are
trained, checkpointed and restored with the rest; the trunk, which is all the Hugging
Face export reads, does not change.

A task with `token_dropout` p > 0 trains on rows where each token inside an example has
its word embedding zeroed with probability p (`layers.token_dropout_keep`; its tag
embedding, if any, stays): the model cannot lean on any one word, and evaluation, which
passes no dropout key, sees every word.

`shared_mask` tells the trunk's parameters, which every task's gradient reaches, from the
ones a single task owns (its head, tag embeddings and log-variance), which only its own
does: `gradnorm_scope='shared'` balances the tasks over the former only (steps.py).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from bloom_jax import layers
from bloom_jax.compat import param
from bloom_jax.model import Bloom, BloomConfig, unstack_layers


class TagEmbeddings(nnx.Module):
  """[num_tags + 1, hidden] embeddings of a tagger's tags; row 0 is 'no tag'."""

  def __init__(self, cfg: BloomConfig, num_tags: int):
    self.embedding = param(jnp.zeros((num_tags + 1, cfg.hidden_size), cfg.param_dtype),
                           ('labels', 'embed'))

  def __call__(self, tags: jax.Array) -> jax.Array:
    return jnp.take(self.embedding[...], tags, axis=0)


class MultiTaskModel(nnx.Module):
  """The trunk, plus the heads the tasks' types make (`TaskType.make_head`) and the tag
  embeddings of the tasks with a part-of-speech tagger."""

  def __init__(self, cfg: BloomConfig, tasks: dict, *, rngs: nnx.Rngs,
               task_uncertainty: bool = False):
    self.bloom = Bloom(cfg, rngs=rngs)
    made = {name: task.type.make_head(cfg, task, rngs) for name, task in sorted(tasks.items())}
    self.heads = nnx.Dict({name: head for name, head in made.items() if head is not None})
    tagged = {name: task.pos_tagger.num_tags for name, task in sorted(tasks.items())
              if task.pos_tagger}
    if tagged:  # only then: the parameters of runs without taggers stay as they were
      self.tag_embeddings = nnx.Dict({name: TagEmbeddings(cfg, n) for name, n in tagged.items()})
    if task_uncertainty:
      # float32 whatever param_dtype is: bfloat16 spaces its values 2^-7 apart near 1, more
      # than an Adam step moves them. Zero: every task starts at weight 1, as with static weights.
      self.task_log_variances = nnx.Dict(
          {name: param(jnp.zeros((), jnp.float32), ()) for name in sorted(tasks)})

  def __call__(self, task, batch: dict, dropout_key=None) -> jax.Array:
    """Logits of one task's packed rows, where its type needs them."""
    trunk_key, head_key = (None, None) if dropout_key is None else jax.random.split(dropout_key)
    tags = self.tag_embeddings[task.name](batch['pos_tags']) if task.pos_tagger else None
    keep = None
    if task.token_dropout and dropout_key is not None:
      # A key of its own, so the other dropout masks are those of the run without it.
      keep = layers.token_dropout_keep(batch['segment_ids'], task.token_dropout,
                                       jax.random.fold_in(dropout_key, 1))
    hidden, _ = self.bloom.hidden_states(
        batch['input_ids'], segment_ids=batch['segment_ids'], mode=task.attention,
        prefix_mask=batch.get('prefix_mask'), added_embeddings=tags, keep_tokens=keep,
        dropout_key=trunk_key)
    return task.type.logits(self, task, hidden, batch, head_key)


# The model's per-task collections: a leaf under one of them belongs to one task alone.
TASK_OWNED = ('heads', 'tag_embeddings', 'task_log_variances')


def shared_mask(params) -> dict:
  """A tree like `params`: True for each parameter every task's gradient reaches, False for
  one a single task owns."""
  return {name: jax.tree.map(lambda _, shared=name not in TASK_OWNED: shared, part)
          for name, part in params.items()}


def unstacked_trunk(graphdef: nnx.GraphDef, state: nnx.State) -> tuple[nnx.GraphDef, nnx.State]:
  """The same multi-task model with its trunk's layers unstacked (`model.unstack_layers`),
  for decoding many batches with fixed weights (`TaskType.generate`)."""
  model = nnx.merge(graphdef, state)
  model.bloom = unstack_layers(model.bloom)
  return nnx.split(model)
