"""Task heads on the shared BLOOM trunk's final hidden states.

Generation and LM tasks use the LM head tied to the word embeddings (`Bloom.logits`; a
generation task with `copy` adds its copy head, `bloom_jax.copying`); classification and
tagging tasks each have a linear head of their own.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from bloom_jax.compat import param
from bloom_jax.layers import dropout
from bloom_jax.model import BloomConfig


class LinearHead(nnx.Module):
  """Hidden states -> per-position outputs (float32), e.g. label logits."""

  def __init__(self, cfg: BloomConfig, num_outputs: int, *, rngs: nnx.Rngs):
    self.dtype, self.dropout = cfg.dtype, cfg.dropout
    self.kernel = param(cfg.init_std * jax.random.normal(
        rngs.params(), (cfg.hidden_size, num_outputs), cfg.param_dtype), ('embed', 'labels'))
    self.bias = param(jnp.zeros((num_outputs,), cfg.param_dtype), ('labels',))

  def __call__(self, hidden, dropout_key=None):
    hidden = dropout(hidden, self.dropout, dropout_key)
    logits = hidden @ self.kernel[...].astype(self.dtype) + self.bias[...].astype(self.dtype)
    return logits.astype(jnp.float32)
