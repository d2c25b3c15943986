"""Autoregressive decoding with a key/value cache: greedy search, sampling, beam search.

    out = generate(graphdef, state, prompt_ids, prompt_mask, max_new_tokens=32,
                   eos_id=2, pad_id=3, method='beam', num_beams=4)
    out['tokens']   # [B, max_new_tokens] int32, pad after EOS; also 'lengths', 'scores'

Prompts are left-padded, so every row's last prompt token sits in the last column. The
prompt goes through the model once, filling the cache; each later step feeds one token
per row. The loop is a `jax.lax.while_loop` that exits as soon as every row is finished,
and everything is plain jnp, so it runs under whatever sharding the caller's `state` has.

`generate` decodes a `Bloom` (or any module with its `cfg`, `hidden_states` and `logits`).
`decode` is the same loop around any step function

    logits_fn(state, ids, mask, cache, mode, prefix_mask) -> (logits [B, S', V], cache)

whose last logits position predicts the token after `ids`, plus a cache factory
`new_cache(batch, length)`: that is how a model with a wrapped LM head reuses it.

Conventions. `lengths` counts the generated tokens including the EOS. `scores` is the
sum of the model's log-probabilities of those tokens (before temperature, filtering or
`min_new_tokens`);
for beam search it is that sum divided by the GNMT length penalty
((5 + length) / 6) ** length_penalty (Wu et al., 2016, as in t5x and tensor2tensor).
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from bloom_jax.model import init_cache, unstack_layers

Cache = Any
LogitsFn = Callable[..., tuple[jax.Array, Cache]]
CacheFn = Callable[[int, int], Cache]

METHODS = ('greedy', 'sample', 'beam')
PROMPT_MODES = ('causal', 'prefix')
# `generate`'s options that shape the program (static under jit); `seed` is not one.
OPTIONS = ('max_new_tokens', 'eos_id', 'pad_id', 'method', 'temperature', 'top_k', 'top_p',
           'num_beams', 'length_penalty', 'min_new_tokens', 'prompt_mode')


def generate(graphdef: nnx.GraphDef, state: nnx.State, prompt_ids: jax.Array,
             prompt_mask: jax.Array, *, max_new_tokens: int, eos_id: int, pad_id: int,
             method: str = 'greedy', temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, num_beams: int = 4, length_penalty: float = 1.0,
             min_new_tokens: int = 0, seed: int | jax.Array = 0,
             prompt_mode: str = 'causal') -> dict[str, jax.Array]:
  """Continues left-padded prompts [B, Lp] (mask 1 = token) by up to `max_new_tokens`.

  Every option but `seed` is static: a new value compiles a new program, a new seed
  does not. See `decode` for what they mean. The layers are unstacked for the token loop
  inside every call (`model.unstack_layers`); to decode many batches with the same weights,
  pass them unstacked once instead (`unstacked`).
  """
  cfg = nnx.merge(graphdef, state).cfg
  return _generate(graphdef, cfg, state, prompt_ids, prompt_mask, seed,
                   max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id, method=method,
                   temperature=temperature, top_k=top_k, top_p=top_p, num_beams=num_beams,
                   length_penalty=length_penalty, min_new_tokens=min_new_tokens,
                   prompt_mode=prompt_mode)


def unstacked(graphdef: nnx.GraphDef, state: nnx.State) -> tuple[nnx.GraphDef, nnx.State]:
  """The same model with its layers unstacked, for `generate` calls with fixed weights."""
  return nnx.split(unstack_layers(nnx.merge(graphdef, state)))


@functools.partial(jax.jit, static_argnames=('graphdef', 'cfg', *OPTIONS))
def _generate(graphdef, cfg, state, prompt_ids, prompt_mask, seed, **options):
  # Outside the token loop (a no-op for an unstacked model): each step then reads every
  # weight in place.
  graphdef, state = unstacked(graphdef, state)
  new_cache = functools.partial(init_cache, cfg, per_layer=True)
  return decode(module_logits_fn(graphdef), new_cache, state, prompt_ids, prompt_mask,
                seed=seed, **options)


def module_logits_fn(graphdef: nnx.GraphDef) -> LogitsFn:
  """The step function of a module with Bloom's `hidden_states` and `logits` methods."""

  def logits_fn(state, ids, mask, cache, mode, prefix_mask):
    model = nnx.merge(graphdef, state)
    hidden, cache = model.hidden_states(ids, mask, mode=mode, prefix_mask=prefix_mask,
                                        cache=cache)
    # Only the last position is ever sampled from; projecting a whole prompt onto a
    # 250k-token vocabulary would take more memory than the rest of decoding.
    return model.logits(hidden[:, -1:]), cache

  return logits_fn


def decode(logits_fn: LogitsFn, new_cache: CacheFn, state: Any, prompt_ids: jax.Array,
           prompt_mask: jax.Array, *, max_new_tokens: int, eos_id: int, pad_id: int,
           method: str = 'greedy', temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, num_beams: int = 4, length_penalty: float = 1.0,
           min_new_tokens: int = 0, seed: int | jax.Array = 0,
           prompt_mode: str = 'causal') -> dict[str, jax.Array]:
  """Traceable decoding loop; call it under `jax.jit` with the options static.

  method: 'greedy' (argmax), 'sample' (ancestral sampling from the logits divided by
    `temperature`, restricted to the `top_k` most likely tokens (0: all) and then to the
    smallest set whose probability reaches `top_p` (nucleus; 1.0: all), seeded by
    `seed`) or 'beam' (`num_beams` beams scored with `length_penalty`; see `beam_search`).
  min_new_tokens: tokens every row generates before EOS may end it (EOS is never chosen
    earlier; the other tokens keep their probabilities).
  prompt_mode: 'causal', or 'prefix' to read the prompt bidirectionally (prefix LM).
  Rows stop at `eos_id` and are then filled with `pad_id`.
  """
  _check_options(method, max_new_tokens, temperature, top_k, top_p, num_beams, min_new_tokens,
                 prompt_mode)
  batch, prompt_length = prompt_ids.shape
  # The last generated token is never fed back, so it needs no cache slot.
  cache_length = prompt_length + max_new_tokens - 1
  prefix_mask = prompt_mask if prompt_mode == 'prefix' else None
  logits, cache = logits_fn(state, prompt_ids, prompt_mask, new_cache(batch, cache_length),
                            prompt_mode, prefix_mask)

  def step(state, ids, cache):
    logits, cache = logits_fn(state, ids[:, None], jnp.ones_like(ids[:, None]), cache,
                              'causal', None)
    return logits[:, -1], cache

  if method == 'beam':
    cache = _map_batch_axis(lambda x, axis: jnp.repeat(x, num_beams, axis), cache, new_cache,
                            cache_length)
    map_batch_axis = functools.partial(_map_batch_axis, new_cache=new_cache,
                                       length=cache_length)
    return beam_search(step, state, jnp.repeat(logits[:, -1], num_beams, axis=0), cache,
                       map_batch_axis, num_beams=num_beams, max_new_tokens=max_new_tokens,
                       eos_id=eos_id, pad_id=pad_id, length_penalty=length_penalty,
                       min_new_tokens=min_new_tokens)
  if method == 'greedy':
    pick = lambda logits, i: jnp.argmax(logits, axis=-1).astype(jnp.int32)
  else:
    key = jax.random.key(seed)
    pick = lambda logits, i: sample_token(jax.random.fold_in(key, i), logits, temperature,
                                          top_k, top_p)
  return greedy_or_sample(step, state, logits[:, -1], cache, pick,
                          max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id,
                          min_new_tokens=min_new_tokens)


def _check_options(method, max_new_tokens, temperature, top_k, top_p, num_beams,
                   min_new_tokens, prompt_mode):
  errors = []
  if method not in METHODS:
    errors.append(f'method must be one of {METHODS}, got {method!r}')
  if prompt_mode not in PROMPT_MODES:
    errors.append(f'prompt_mode must be one of {PROMPT_MODES}, got {prompt_mode!r}')
  if max_new_tokens < 1:
    errors.append(f'max_new_tokens must be positive, got {max_new_tokens}')
  if temperature <= 0:
    errors.append(f'temperature must be positive, got {temperature}')
  if top_k < 0:
    errors.append(f'top_k must be >= 0 (0 turns it off), got {top_k}')
  if not 0 < top_p <= 1:
    errors.append(f'top_p must be in (0, 1], got {top_p}')
  if num_beams < 1:
    errors.append(f'num_beams must be positive, got {num_beams}')
  if not 0 <= min_new_tokens <= max_new_tokens:
    errors.append(f'min_new_tokens must be in [0, max_new_tokens], got {min_new_tokens}')
  if errors:
    raise ValueError('decoding: ' + '; '.join(errors))


def _map_batch_axis(fn, cache: Cache, new_cache: CacheFn, length: int) -> Cache:
  """Applies fn(leaf, axis) to each cache leaf along its batch axis, leaving the others.

  The batch axis is the one whose size differs between the (shape-only) caches for
  batch sizes 1 and 2, so no cache layout has to be known here.
  """
  one = jax.eval_shape(lambda: new_cache(1, length))
  two = jax.eval_shape(lambda: new_cache(2, length))

  def apply(leaf, a, b):
    axes = [i for i, (m, n) in enumerate(zip(a.shape, b.shape, strict=True)) if m != n]
    return fn(leaf, axes[0]) if axes else leaf

  return jax.tree.map(apply, cache, one, two)


def _without_eos(logits: jax.Array, forbid: jax.Array, eos_id: int) -> jax.Array:
  """The logits with EOS's at -inf where `forbid` (a row has not reached min_new_tokens)."""
  return jnp.where(forbid & (jnp.arange(logits.shape[-1]) == eos_id), -jnp.inf, logits)


# --------------------------------------------------------------------------------------
# Greedy search and sampling
# --------------------------------------------------------------------------------------


def sample_token(key: jax.Array, logits: jax.Array, temperature: float, top_k: int,
                 top_p: float) -> jax.Array:
  """One token per row from softmax(logits / temperature), after top-k, then top-p.

  Top-p keeps the most likely tokens until their probability reaches `top_p`: a token
  stays if the tokens ranked above it hold less than `top_p` of the (top-k) mass.
  """
  logits = logits.astype(jnp.float32) / temperature
  if top_k == 0 and top_p == 1.0:
    return jax.random.categorical(key, logits).astype(jnp.int32)
  vocab = logits.shape[-1]
  values, tokens = jax.lax.top_k(logits, min(top_k or vocab, vocab))
  if top_p < 1.0:
    probs = jax.nn.softmax(values, axis=-1)
    mass_above = jnp.cumsum(probs, axis=-1) - probs
    values = jnp.where(mass_above < top_p, values, -jnp.inf)
  choice = jax.random.categorical(key, values)
  return jnp.take_along_axis(tokens, choice[:, None], axis=-1)[:, 0]


class _Rows(NamedTuple):
  state: Any          # carried, not closed over: NNX refuses Variables of an outer trace
  i: jax.Array        # tokens emitted so far
  tokens: jax.Array   # [B, N]
  lengths: jax.Array  # [B]
  scores: jax.Array   # [B]
  done: jax.Array     # [B] emitted EOS
  cache: Cache


def greedy_or_sample(step, state: Any, logits: jax.Array, cache: Cache, pick, *,
                     max_new_tokens: int, eos_id: int, pad_id: int,
                     min_new_tokens: int = 0) -> dict[str, jax.Array]:
  """Greedy search or sampling: `pick(logits [B, V], i)` chooses every row's token i.

  `logits` predict the first token; `step(state, tokens [B], cache)` feeds one token
  per row and returns the next logits and cache.
  """
  batch = logits.shape[0]

  def emit(rows: _Rows, logits) -> _Rows:
    allowed = _without_eos(logits, rows.i < min_new_tokens, eos_id)
    token = jnp.where(rows.done, pad_id, pick(allowed, rows.i))
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    logp = jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]
    return _Rows(
        state=rows.state,
        i=rows.i + 1,
        tokens=rows.tokens.at[:, rows.i].set(token),
        lengths=rows.lengths + ~rows.done,
        scores=rows.scores + jnp.where(rows.done, 0.0, logp),
        done=rows.done | (token == eos_id),
        cache=rows.cache)

  def feed_and_emit(rows: _Rows) -> _Rows:
    last = jax.lax.dynamic_index_in_dim(rows.tokens, rows.i - 1, axis=1, keepdims=False)
    logits, cache = step(rows.state, last, rows.cache)
    return emit(rows._replace(cache=cache), logits)

  def running(rows: _Rows):
    return (rows.i < max_new_tokens) & ~jnp.all(rows.done)

  rows = _Rows(
      state=state,
      i=jnp.zeros((), jnp.int32),
      tokens=jnp.full((batch, max_new_tokens), pad_id, jnp.int32),
      lengths=jnp.zeros((batch,), jnp.int32),
      scores=jnp.zeros((batch,), jnp.float32),
      done=jnp.zeros((batch,), bool),
      cache=cache)
  rows = jax.lax.while_loop(running, feed_and_emit, emit(rows, logits))
  return {'tokens': rows.tokens, 'lengths': rows.lengths, 'scores': rows.scores}


# --------------------------------------------------------------------------------------
# Beam search
# --------------------------------------------------------------------------------------


def gnmt_length_penalty(length: jax.Array, alpha: float) -> jax.Array:
  """((5 + length) / 6) ** alpha, the divisor of a hypothesis' log-probability."""
  return ((5.0 + length) / 6.0) ** alpha


class _Beams(NamedTuple):
  state: Any                # carried, not closed over: NNX refuses Variables of an outer trace
  i: jax.Array              # tokens emitted so far by every alive beam
  alive_tokens: jax.Array   # [B, K, N]
  alive_logp: jax.Array     # [B, K] summed log-probs; -inf marks an empty beam
  ended_tokens: jax.Array   # [B, K, N] the best hypotheses that emitted EOS
  ended_scores: jax.Array   # [B, K] length-penalised, best first; -inf marks an empty slot
  ended_lengths: jax.Array  # [B, K]
  done: jax.Array           # [B] the example is decided; its slots no longer change
  cache: Cache              # batch B*K, row b*K + k holds alive beam k of example b


def beam_search(step, state: Any, logits: jax.Array, cache: Cache, map_batch_axis, *,
                num_beams: int, max_new_tokens: int, eos_id: int, pad_id: int,
                length_penalty: float, min_new_tokens: int = 0) -> dict[str, jax.Array]:
  """Beam search that returns each example's best hypothesis, with the bookkeeping of
  Hugging Face's (early_stopping=False) and fairseq's.

  Each step extends the K alive beams by every token and ranks the 2K best extensions
  by log-probability. An extension ending in EOS within the first K ranks ends a
  hypothesis, which competes for the K finished slots by length-penalised score; the
  K best extensions not ending in EOS stay alive (2K always leaves K of them). An
  example is decided once its K slots are full and its worst hypothesis scores at
  least what the best alive beam would score if it ended now; if it never is, its
  alive beams compete too, as hypotheses cut at `max_new_tokens`. With one beam
  this is greedy search.

  `logits` [B*K, V] predict the first token (the K rows of an example are equal),
  `cache` holds B*K rows, `step(state, tokens [B*K], cache)` feeds one token per row,
  and `map_batch_axis(fn, cache)` applies fn(leaf, axis) along the cache's batch axis.
  """
  batch, k = logits.shape[0] // num_beams, num_beams
  penalty = lambda length: gnmt_length_penalty(length.astype(jnp.float32), length_penalty)

  def expand(beams: _Beams, logits) -> _Beams:
    vocab = logits.shape[-1]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    logp = _without_eos(logp, beams.i < min_new_tokens, eos_id).reshape(batch, k, vocab)
    logp = (beams.alive_logp[..., None] + logp).reshape(batch, k * vocab)
    top_logp, top = jax.lax.top_k(logp, 2 * k)
    parent, token = top // vocab, (top % vocab).astype(jnp.int32)
    tokens = jnp.take_along_axis(beams.alive_tokens, parent[..., None], axis=1)
    tokens = tokens.at[:, :, beams.i].set(token)
    length = beams.i + 1

    is_eos = token == eos_id
    alive_logp, alive = jax.lax.top_k(jnp.where(is_eos, -jnp.inf, top_logp), k)
    rows = (jnp.arange(batch)[:, None] * k + jnp.take_along_axis(parent, alive, 1)).reshape(-1)

    # A decided example keeps its slots as they are.
    ends = is_eos & (jnp.arange(2 * k) < k) & ~beams.done[:, None]
    scores = jnp.concatenate(
        [beams.ended_scores, jnp.where(ends, top_logp / penalty(length), -jnp.inf)], axis=1)
    ended_scores, ended = jax.lax.top_k(scores, k)
    ended_tokens = jnp.concatenate([beams.ended_tokens, tokens], axis=1)
    ended_lengths = jnp.concatenate(
        [beams.ended_lengths, jnp.full((batch, 2 * k), length, jnp.int32)], axis=1)
    return _Beams(
        state=beams.state,
        i=length,
        alive_tokens=jnp.take_along_axis(tokens, alive[..., None], axis=1),
        alive_logp=alive_logp,
        ended_tokens=jnp.take_along_axis(ended_tokens, ended[..., None], axis=1),
        ended_scores=ended_scores,
        ended_lengths=jnp.take_along_axis(ended_lengths, ended, axis=1),
        # The worst slot is -inf until all K are full.
        done=beams.done | (ended_scores[:, -1] >= alive_logp[:, 0] / penalty(length)),
        cache=map_batch_axis(lambda x, axis: jnp.take(x, rows, axis=axis), beams.cache))

  def feed_and_expand(beams: _Beams) -> _Beams:
    last = jax.lax.dynamic_index_in_dim(beams.alive_tokens, beams.i - 1, axis=2, keepdims=False)
    logits, cache = step(beams.state, last.reshape(-1), beams.cache)
    return expand(beams._replace(cache=cache), logits)

  def running(beams: _Beams):
    return (beams.i < max_new_tokens) & ~jnp.all(beams.done)

  beams = _Beams(
      state=state,
      i=jnp.zeros((), jnp.int32),
      alive_tokens=jnp.full((batch, k, max_new_tokens), pad_id, jnp.int32),
      # The K beams start as copies of one prompt: only the first may expand at first.
      alive_logp=jnp.tile(jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf), (batch, 1)),
      ended_tokens=jnp.full((batch, k, max_new_tokens), pad_id, jnp.int32),
      ended_scores=jnp.full((batch, k), -jnp.inf),
      ended_lengths=jnp.zeros((batch, k), jnp.int32),
      done=jnp.zeros((batch,), bool),
      cache=cache)
  beams = jax.lax.while_loop(running, feed_and_expand, expand(beams, logits))

  cut_scores = jnp.where(beams.done[:, None], -jnp.inf, beams.alive_logp / penalty(beams.i))
  scores = jnp.concatenate([beams.ended_scores, cut_scores], axis=1)
  tokens = jnp.concatenate([beams.ended_tokens, beams.alive_tokens], axis=1)
  lengths = jnp.concatenate(
      [beams.ended_lengths, jnp.full((batch, k), beams.i, jnp.int32)], axis=1)
  best = jnp.argmax(scores, axis=1)
  return {'tokens': jnp.take_along_axis(tokens, best[:, None, None], axis=1)[:, 0],
          'lengths': jnp.take_along_axis(lengths, best[:, None], axis=1)[:, 0],
          'scores': jnp.take_along_axis(scores, best[:, None], axis=1)[:, 0]}
