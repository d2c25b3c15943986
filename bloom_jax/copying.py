"""A copy mechanism for generation (pointer-generator, See et al. 2017).

At a position t that predicts the next token (hidden state h_t), one attention head
reads the source positions j of its own example (hidden states h_j, tokens x_j), and a
gate decides between generating from the vocabulary and copying one of them:

    a_tj  = softmax_j(q(h_t) . k(h_j) / sqrt(d))
    p_gen = sigmoid(w . h_t + b)
    P(w)  = p_gen * softmax(lm_logits_t)(w) + (1 - p_gen) * sum_{j: x_j = w} a_tj

The head returns log P, which serves as the task's logits: log_softmax leaves
log-probabilities as they are, so cross-entropy, metrics and every decoding method read
them unchanged. The mixture is formed in log space, with log(0) (a token that is not in
the source) a large negative number rather than -inf, so that padded positions, which
copy from nothing, stay finite.

In decoding, the prompt is the source: the step function (`decoder`) keeps the prompt's
copy keys and tokens in the cache, beside the trunk's keys and values, and every later
step attends over them.
"""

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from bloom_jax import decoding, multitask_model
from bloom_jax.compat import param
from bloom_jax.model import BloomConfig, init_cache

# log(0): exp of it is 0 in float32, and sums with it stay finite.
LOG_ZERO = -1e9


class CopyHead(nnx.Module):
  """Query and key projections of one attention head of the trunk's head size, and the
  generation gate. The gate starts at p_gen = 1/2 for every position."""

  def __init__(self, cfg: BloomConfig, *, rngs: nnx.Rngs):
    shape = (cfg.hidden_size, cfg.head_dim)
    self.query_kernel = param(
        cfg.init_std * jax.random.normal(rngs.params(), shape, cfg.param_dtype), ('embed', 'kv'))
    self.key_kernel = param(
        cfg.init_std * jax.random.normal(rngs.params(), shape, cfg.param_dtype), ('embed', 'kv'))
    self.gate_kernel = param(jnp.zeros((cfg.hidden_size,), cfg.param_dtype), ('embed',))
    self.gate_bias = param(jnp.zeros((), cfg.param_dtype), ())

  def keys(self, hidden: jax.Array) -> jax.Array:
    """[B, S, H] source states -> [B, S, d] copy keys."""
    return _f32(hidden) @ _f32(self.key_kernel[...])

  def __call__(self, lm_logits: jax.Array, hidden: jax.Array, keys: jax.Array,
               source_ids: jax.Array, allowed: jax.Array) -> jax.Array:
    """log P [B, P, V] at the predicting positions (states `hidden` [B, P, H], vocabulary
    logits `lm_logits` [B, P, V]), copying from the positions `allowed` [B, P, S] of
    `source_ids` [B, S] (their copy `keys` [B, S, d])."""
    query = _f32(hidden) @ _f32(self.query_kernel[...])
    scores = jnp.einsum('bpd,bsd->bps', query, keys) / math.sqrt(query.shape[-1])
    gate = _f32(hidden) @ _f32(self.gate_kernel[...]) + _f32(self.gate_bias[...])
    return mixture(lm_logits, masked_softmax(scores, allowed), source_ids, gate)


def _f32(x: jax.Array) -> jax.Array:
  # The head is small; float32 keeps the attention and the gate exact in a bf16 model.
  return x.astype(jnp.float32)


def masked_softmax(scores: jax.Array, allowed: jax.Array) -> jax.Array:
  """softmax over the last axis among the `allowed` entries; 0 elsewhere, and 0 in a row
  that allows nothing (a padded position)."""
  weights = jax.nn.softmax(jnp.where(allowed, scores, jnp.finfo(scores.dtype).min), axis=-1)
  return jnp.where(allowed, weights, 0.0)


def safe_log(x: jax.Array) -> jax.Array:
  """log x, LOG_ZERO where x is 0 (with a zero gradient there, not NaN)."""
  positive = x > 0
  return jnp.where(positive, jnp.log(jnp.where(positive, x, 1.0)), LOG_ZERO)


def mixture(lm_logits: jax.Array, attention: jax.Array, source_ids: jax.Array,
            gate: jax.Array) -> jax.Array:
  """log(p_gen * softmax(lm_logits) + (1 - p_gen) * copy distribution), p_gen = sigmoid(gate).

  `attention` [B, P, S] over the source tokens `source_ids` [B, S] is summed onto the
  vocabulary by a scatter-add, which never forms a [B, S, V] one-hot array.
  """
  vocab = lm_logits.shape[-1]
  copied = jax.vmap(lambda a, ids: jnp.zeros(a.shape[:-1] + (vocab,), a.dtype).at[:, ids].add(a))(
      attention, source_ids)
  generate = jax.nn.log_sigmoid(gate)[..., None] + jax.nn.log_softmax(_f32(lm_logits), axis=-1)
  return jnp.logaddexp(generate, jax.nn.log_sigmoid(-gate)[..., None] + safe_log(copied))


def packed_log_probs(head: CopyHead, lm_logits: jax.Array, hidden: jax.Array,
                     batch: dict) -> jax.Array:
  """log P at a packed batch's `target_positions`, each copying from its own example's
  prefix (`prefix_mask`, same `segment_ids`), never from another example of the row."""
  positions, segments = batch['target_positions'], batch['segment_ids']
  own = jnp.take_along_axis(segments, positions, axis=1)
  allowed = (batch['prefix_mask'][:, None, :] > 0) & (segments[:, None, :] == own[:, :, None])
  at = jnp.take_along_axis(hidden, positions[..., None], axis=1)
  return head(lm_logits, at, head.keys(hidden), batch['input_ids'], allowed)


# --------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------


def new_cache(cfg: BloomConfig, batch: int, length: int) -> dict:
  """The trunk's cache for unstacked layers, plus per slot: its copy key, its token and
  whether it may be copied. Every array but the index is batch-major, so beam search
  reorders them all alike."""
  return {'trunk': init_cache(cfg, batch, length, per_layer=True),
          'copy': {'keys': jnp.zeros((batch, length, cfg.head_dim), jnp.float32),
                   'ids': jnp.zeros((batch, length), jnp.int32),
                   'source': jnp.zeros((batch, length), bool)}}


def decoder(graphdef: nnx.GraphDef, name: str) -> decoding.LogitsFn:
  """`decoding.decode`'s step function for the state of a multi-task model (trunk layers
  unstacked) whose head for the task `name` is a CopyHead."""

  def logits_fn(state, ids, mask, cache, mode, prefix_mask):
    model = nnx.merge(graphdef, state)
    head = model.heads[name]
    offset = cache['trunk']['index']
    hidden, trunk = model.bloom.hidden_states(ids, mask, mode=mode, prefix_mask=prefix_mask,
                                              cache=cache['trunk'])
    # `decode` feeds the prompt, `<s> source <sep>`, first: its real tokens are the source.
    source = (mask > 0) & (offset == 0)
    put = lambda cached, new: jax.lax.dynamic_update_slice_in_dim(cached, new, offset, 1)
    copy = {'keys': put(cache['copy']['keys'], head.keys(hidden)),
            'ids': put(cache['copy']['ids'], ids),
            'source': put(cache['copy']['source'], source)}
    last = hidden[:, -1:]
    log_probs = head(model.bloom.logits(last), last, copy['keys'], copy['ids'],
                     copy['source'][:, None, :])
    return log_probs, {'trunk': trunk, 'copy': copy}

  return logits_fn


def generate(graphdef: nnx.GraphDef, state: nnx.State, name: str, prompt_ids: jax.Array,
             prompt_mask: jax.Array, *, seed: int | jax.Array = 0, **options) -> dict:
  """`decoding.generate` for a multi-task model whose head for the task `name` is a
  CopyHead."""
  cfg = nnx.merge(graphdef, state).bloom.cfg
  return _generate(graphdef, cfg, name, state, prompt_ids, prompt_mask, seed, **options)


@functools.partial(jax.jit, static_argnames=('graphdef', 'cfg', 'name', *decoding.OPTIONS))
def _generate(graphdef, cfg, name, state, prompt_ids, prompt_mask, seed, **options):
  graphdef, state = multitask_model.unstacked_trunk(graphdef, state)  # no-op if unstacked
  return decoding.decode(decoder(graphdef, name), functools.partial(new_cache, cfg), state,
                         prompt_ids, prompt_mask, seed=seed, **options)
