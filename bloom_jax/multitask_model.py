"""One BLOOM trunk shared by every task, and each task's head on top of it."""

import jax
from flax import nnx

from bloom_jax.model import Bloom, BloomConfig


class MultiTaskModel(nnx.Module):
  """The trunk, plus the heads the tasks' types make (`TaskType.make_head`)."""

  def __init__(self, cfg: BloomConfig, tasks: dict, *, rngs: nnx.Rngs):
    self.bloom = Bloom(cfg, rngs=rngs)
    made = {name: task.type.make_head(cfg, task, rngs) for name, task in sorted(tasks.items())}
    self.heads = nnx.Dict({name: head for name, head in made.items() if head is not None})

  def __call__(self, task, batch: dict, dropout_key=None) -> jax.Array:
    """Logits of one task's packed rows, where its type needs them."""
    trunk_key, head_key = (None, None) if dropout_key is None else jax.random.split(dropout_key)
    hidden, _ = self.bloom.hidden_states(
        batch['input_ids'], segment_ids=batch['segment_ids'], mode=task.attention,
        prefix_mask=batch.get('prefix_mask'), dropout_key=trunk_key)
    return task.type.logits(self, task, hidden, batch, head_key)
