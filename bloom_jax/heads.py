"""Task heads on the shared BLOOM trunk, and the multi-task model that holds them.

Every head reads the trunk's final hidden states. Following Hugging Face's BLOOM heads:
classification pools the right-most real token (padding on either side works);
tagging is a linear layer on every token; `generation` and `lm` use the LM head tied
to the word embeddings. Each head type also fixes how the trunk attends: encoders read
both ways, generation reads its source both ways and its target left to right.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from bloom_jax.compat import param
from bloom_jax.layers import dropout
from bloom_jax.model import Bloom, BloomConfig

HEAD_TYPES = ('classification', 'tagging', 'generation', 'lm')
ATTENTION_MODE = {
    'classification': 'bidirectional',
    'tagging': 'bidirectional',
    'generation': 'prefix',
    'lm': 'causal',
}


class LinearHead(nnx.Module):
  """Hidden states -> label logits (float32)."""

  def __init__(self, cfg: BloomConfig, num_labels: int, *, rngs: nnx.Rngs):
    self.dtype, self.dropout = cfg.dtype, cfg.dropout
    self.kernel = param(cfg.init_std * jax.random.normal(
        rngs.params(), (cfg.hidden_size, num_labels), cfg.param_dtype), ('embed', 'labels'))
    self.bias = param(jnp.zeros((num_labels,), cfg.param_dtype), ('labels',))

  def __call__(self, hidden, dropout_key=None):
    hidden = dropout(hidden, self.dropout, dropout_key)
    logits = hidden @ self.kernel[...].astype(self.dtype) + self.bias[...].astype(self.dtype)
    return logits.astype(jnp.float32)


def last_token(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """[B, S, H] -> [B, H] at the right-most real token of each row."""
  index = jnp.max(jnp.where(attention_mask > 0, jnp.arange(attention_mask.shape[1]), 0), axis=1)
  return jnp.take_along_axis(hidden, index[:, None, None], axis=1)[:, 0]


class MultiTaskModel(nnx.Module):
  """One BLOOM trunk, a label head per classification/tagging task, the tied LM head
  for generation and LM tasks."""

  def __init__(self, cfg: BloomConfig, label_counts: dict[str, int], *, rngs: nnx.Rngs):
    self.bloom = Bloom(cfg, rngs=rngs)
    self.heads = nnx.Dict({name: LinearHead(cfg, count, rngs=rngs)
                           for name, count in sorted(label_counts.items())})

  def __call__(self, task: str, head: str, batch: dict, dropout_key=None):
    """Logits for one task's sub-batch: [B, labels] (classification), [B, S, labels]
    (tagging) or [B, S, vocab] (generation, lm)."""
    trunk_key, head_key = (None, None) if dropout_key is None else jax.random.split(dropout_key)
    hidden, _ = self.bloom.hidden_states(
        batch['input_ids'], batch['attention_mask'], mode=ATTENTION_MODE[head],
        prefix_mask=batch.get('prefix_mask'), dropout_key=trunk_key)
    if head == 'classification':
      return self.heads[task](last_token(hidden, batch['attention_mask']), head_key)
    if head == 'tagging':
      return self.heads[task](hidden, head_key)
    return self.bloom.logits(hidden)
