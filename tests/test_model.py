"""The model on its own: positions, masks, cache, attention modes, remat, dropout, dtypes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bloom_jax import compat, layers
from bloom_jax.model import Bloom, BloomConfig, init_cache, tied_projection, unstack_layers

VOCAB = 61


def _config(**overrides):
  return BloomConfig(**{'vocab_size': VOCAB, 'hidden_size': 24, 'n_head': 6, 'n_layer': 2,
                        **overrides})


@functools.cache
def _random_model(seed=0, **overrides) -> Bloom:
  """Every parameter random (LayerNorms and biases too) and logits of order one, so a
  mistake in any tensor's role shows up well above the tolerances used here. Cached:
  tests only read the model. Filled from numpy, since eager init compiles every op."""
  abstract = nnx.eval_shape(lambda: Bloom(_config(**overrides), rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  rng = np.random.default_rng(seed)
  state = jax.tree.map(
      lambda x: jnp.asarray(0.25 * rng.standard_normal(x.shape), x.dtype), state)
  return nnx.merge(graphdef, state)


# Jitted once per config and shape: eager calls cost ~0.3 s each on CPU.
@functools.partial(nnx.jit, static_argnames=('mode',))
def _forward(model, ids, mask, prefix_mask=None, dropout_key=None, mode='causal'):
  return model(ids, mask, mode=mode, prefix_mask=prefix_mask, dropout_key=dropout_key)


@functools.partial(nnx.jit, static_argnames=('mode',))
def _step(model, ids, mask, cache, prefix_mask=None, mode='causal'):
  return model(ids, mask, mode=mode, prefix_mask=prefix_mask, cache=cache)


def _logits(model, ids, mask=None, **kwargs):
  mask = np.ones(np.shape(ids), np.int32) if mask is None else mask
  return np.asarray(_forward(model, jnp.asarray(ids), jnp.asarray(mask), **kwargs))


def _ids(seed, shape):
  return np.random.default_rng(seed).integers(0, VOCAB, shape)


# --------------------------------------------------------------------------------------
# ALiBi slopes: the worked values
# --------------------------------------------------------------------------------------


def test_alibi_slopes_n12_worked_values():
  slopes = layers.alibi_slopes(12)
  # The main block's base is exactly 1/2, so its powers are exact.
  np.testing.assert_array_equal(slopes[:8], 2.0 ** -np.arange(1, 9))
  np.testing.assert_allclose(slopes[8:], 2.0 ** -np.array([0.5, 1.5, 2.5, 3.5]), rtol=1e-6)


@pytest.mark.parametrize('n_head,expected', [
    (1, 2.0 ** -np.array([8.0])),
    (8, 2.0 ** -np.arange(1, 9.0)),
    (16, 2.0 ** -(np.arange(1, 17) / 2)),
    (32, 2.0 ** -(np.arange(1, 33) / 4)),
    (112, np.concatenate([2.0 ** -(np.arange(1, 65) / 8),
                          2.0 ** -((2 * np.arange(1, 49) - 1) / 16)])),
])
def test_alibi_slopes_worked_values(n_head, expected):
  slopes = layers.alibi_slopes(n_head)
  assert slopes.dtype == np.float32
  # The float32 base costs a few ulp against the correctly rounded 2^(-8i/p).
  np.testing.assert_allclose(slopes, expected, rtol=1e-6)


def test_alibi_slopes_176b_last():
  assert abs(float(layers.alibi_slopes(112)[-1]) - 0.016317) < 1e-6


# --------------------------------------------------------------------------------------
# Attention masks
# --------------------------------------------------------------------------------------


def _reference_allowed(key_mask, offset, num_queries, mode, prefix_mask=None):
  batch, num_keys = key_mask.shape
  out = np.zeros((batch, 1, num_queries, num_keys), bool)
  for b in range(batch):
    for i in range(num_queries):
      q = offset + i
      for j in range(num_keys):
        if not key_mask[b, j]:
          continue
        if mode == 'bidirectional':
          out[b, 0, i, j] = True
        elif mode == 'causal':
          out[b, 0, i, j] = j <= q
        else:
          out[b, 0, i, j] = j <= q or bool(prefix_mask[b, j])
  return out


KEY_MASK = np.array([
    [1, 1, 1, 1, 1, 1, 1, 1],   # no padding
    [0, 0, 0, 1, 1, 1, 1, 1],   # left padding
    [1, 1, 1, 1, 1, 0, 0, 0],   # right padding
    [0, 1, 1, 1, 1, 1, 1, 0],   # both
])
PREFIX_MASK = np.array([
    [1, 1, 1, 0, 0, 0, 0, 0],
    [0, 0, 0, 1, 1, 1, 1, 0],
    [1, 0, 0, 0, 0, 0, 0, 0],
    [0, 1, 1, 1, 1, 1, 0, 0],
])


@pytest.mark.parametrize('mode', ['causal', 'bidirectional', 'prefix'])
@pytest.mark.parametrize('offset,num_queries', [(0, 8), (3, 5), (7, 1), (2, 3)])
def test_attention_allowed_matches_reference(mode, offset, num_queries):
  prefix = jnp.asarray(PREFIX_MASK) if mode == 'prefix' else None
  got = layers.attention_allowed(jnp.asarray(KEY_MASK), jnp.asarray(offset, jnp.int32),
                                 num_queries, mode, prefix)
  assert got.shape == (4, 1, num_queries, 8) and got.dtype == jnp.bool_
  np.testing.assert_array_equal(
      np.asarray(got), _reference_allowed(KEY_MASK, offset, num_queries, mode, PREFIX_MASK))


def test_attention_allowed_under_jit_with_traced_offset():
  fn = jax.jit(lambda m, o: layers.attention_allowed(m, o, 3, 'causal'))
  np.testing.assert_array_equal(np.asarray(fn(jnp.asarray(KEY_MASK), jnp.int32(4))),
                                _reference_allowed(KEY_MASK, 4, 3, 'causal'))


def test_attention_allowed_rejects_unknown_mode():
  with pytest.raises(ValueError, match='encoder'):
    layers.attention_allowed(jnp.asarray(KEY_MASK), 0, 8, 'encoder')


SEGMENT_IDS = np.array([
    [1, 1, 1, 2, 2, 2, 2, 0],   # two examples, then padding
    [1, 1, 1, 1, 1, 1, 1, 1],   # one example filling the row
    [1, 2, 2, 3, 3, 3, 0, 0],   # a one-token example first
    [0, 0, 0, 1, 1, 1, 1, 1],   # one left-padded example
])
SEGMENT_PREFIX = np.array([     # each example's own prefix
    [1, 1, 0, 1, 1, 0, 0, 0],
    [1, 1, 1, 1, 0, 0, 0, 0],
    [1, 1, 0, 1, 1, 0, 0, 0],
    [0, 0, 0, 1, 1, 0, 0, 0],
])


def _reference_segment_allowed(segment_ids, mode, prefix_mask=None):
  """Within one segment, the mode's rule; across segments and to padding, nothing."""
  batch, length = segment_ids.shape
  out = _reference_allowed(segment_ids > 0, 0, length, mode, prefix_mask)
  same = segment_ids[:, :, None] == segment_ids[:, None, :]
  return out & same[:, None]


@pytest.mark.parametrize('mode', ['causal', 'bidirectional', 'prefix'])
def test_attention_allowed_with_segments_matches_reference(mode):
  prefix = jnp.asarray(SEGMENT_PREFIX) if mode == 'prefix' else None
  got = np.asarray(layers.attention_allowed(
      jnp.asarray(SEGMENT_IDS > 0), 0, 8, mode, prefix, segment_ids=jnp.asarray(SEGMENT_IDS)))
  assert got.shape == (4, 1, 8, 8) and got.dtype == np.bool_
  np.testing.assert_array_equal(got, _reference_segment_allowed(SEGMENT_IDS, mode, SEGMENT_PREFIX))
  # Each segment's block is what its example would get alone in a row of its own.
  for b, row in enumerate(SEGMENT_IDS):
    for segment in set(row[row > 0].tolist()):
      where = np.flatnonzero(row == segment)
      alone = layers.attention_allowed(
          jnp.ones((1, len(where)), jnp.int32), 0, len(where), mode,
          None if prefix is None else jnp.asarray(SEGMENT_PREFIX[b:b + 1, where]))
      np.testing.assert_array_equal(got[b, 0][np.ix_(where, where)], np.asarray(alone)[0, 0])
  # Padding neither attends nor is attended to.
  pad = SEGMENT_IDS == 0
  assert not got[:, 0][pad].any() and not got[:, 0].transpose(0, 2, 1)[pad].any()


def _reference_segment_positions(segment_ids):
  out = np.zeros_like(segment_ids)
  for b, row in enumerate(segment_ids):
    count = 0
    for s in range(len(row)):
      count = count + 1 if s and row[s] == row[s - 1] else 0
      out[b, s] = count if row[s] else 0
  return out


def test_segment_positions_restart_at_each_segment():
  got = np.asarray(layers.segment_positions(jnp.asarray(SEGMENT_IDS)))
  np.testing.assert_array_equal(got, _reference_segment_positions(SEGMENT_IDS))
  np.testing.assert_array_equal(got[2], [0, 0, 1, 0, 1, 2, 0, 0])
  gapped = np.array([[1, 1, 0, 2, 2, 2, 0, 3]])  # padding between examples
  np.testing.assert_array_equal(np.asarray(layers.segment_positions(jnp.asarray(gapped))),
                                [[0, 1, 0, 0, 1, 2, 0, 0]])
  under_jit = jax.jit(layers.segment_positions)(jnp.asarray(SEGMENT_IDS))
  np.testing.assert_array_equal(np.asarray(under_jit), got)


def test_segment_positions_of_one_example_are_token_positions():
  # One contiguous example per row, padded left, right, both or not at all.
  np.testing.assert_array_equal(
      np.asarray(layers.segment_positions(jnp.asarray(KEY_MASK))),
      np.asarray(layers.token_positions(jnp.asarray(KEY_MASK))))


def test_prefix_mode_needs_prefix_mask():
  with pytest.raises(ValueError, match='prefix_mask'):
    layers.attention_allowed(jnp.asarray(KEY_MASK), 0, 8, 'prefix')
  model = _random_model()
  with pytest.raises(ValueError, match='prefix_mask'):
    model(jnp.asarray(_ids(0, (1, 4))), mode='prefix')


# --------------------------------------------------------------------------------------
# Sinusoidal positions
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize('dim', [7, 8, 24, 64, 256])
def test_sinusoidal_matches_closed_form(dim):
  positions = np.arange(513)
  i = np.arange(dim) // 2
  angles = positions[:, None] / 10000.0 ** (2 * i / dim)[None, :]
  expected = np.where(np.arange(dim) % 2 == 0, np.sin(angles), np.cos(angles))
  got = np.asarray(layers.sinusoidal_embedding(jnp.asarray(positions), dim), np.float64)
  assert got.shape == (513, dim)
  error = np.abs(got - expected)
  # Float32 angles are good to half an ulp each for the frequency and the product: a
  # position of 512 alone allows ~3e-5. Below that, the table must be far tighter.
  assert np.all(error <= 2e-6 + np.abs(angles) * 2.0 ** -23)
  assert error[:65].max() <= 1e-5
  if dim <= 8:
    assert error.max() <= 1e-5


def test_sinusoidal_keeps_batch_shape():
  positions = jnp.asarray([[0, 0, 1, 2], [0, 1, 2, 3]])
  table = layers.sinusoidal_embedding(positions, 10)
  assert table.shape == (2, 4, 10)
  np.testing.assert_array_equal(np.asarray(table[0, 2]), np.asarray(table[1, 1]))


# --------------------------------------------------------------------------------------
# Left padding
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize('position', ['alibi', 'sinusoidal', 'none'])
def test_left_padding_invariance(position):
  model = _random_model(position=position)
  row = _ids(1, (1, 6))
  pad = 3
  padded = np.concatenate([np.full((1, pad), 5), row], axis=1)
  mask = np.concatenate([np.zeros((1, pad)), np.ones((1, 6))], axis=1).astype(np.int32)
  both = _logits(model, np.concatenate([padded, np.concatenate([row, row[:, :pad]], 1)]),
                 np.concatenate([mask, mask[:, ::-1]]))
  alone = _logits(model, row)
  assert np.isfinite(both).all()
  np.testing.assert_allclose(both[0, pad:], alone[0], atol=1e-5)
  np.testing.assert_allclose(both[1, :6], alone[0], atol=1e-5)


def test_positions_matter():
  # With ALiBi or a sin/cos table, reordering the context changes the last position;
  # without positions a bidirectional model cannot tell orders apart.
  ids = _ids(2, (1, 6))
  swapped = ids[:, [1, 0, 2, 3, 4, 5]]
  for position, changes in [('alibi', True), ('sinusoidal', True), ('none', False)]:
    model = _random_model(position=position)
    a = _logits(model, ids, mode='bidirectional')[0, -1]
    b = _logits(model, swapped, mode='bidirectional')[0, -1]
    assert (np.abs(a - b).max() > 1e-3) == changes, position


def test_symmetric_alibi_reads_a_row_and_its_reversal_alike():
  # One slope both ways: at each token of the reversed row a bidirectional reader computes
  # what it computed at the mirror-image token of the row. Split heads tell them apart.
  ids = _ids(2, (1, 6))
  for split_heads, blind in [(False, True), (True, False)]:
    model = _random_model(split_heads=split_heads)
    forward = _logits(model, ids, mode='bidirectional')[0]
    backward = _logits(model, ids[:, ::-1], mode='bidirectional')[0, ::-1]
    assert (np.abs(forward - backward).max() < 1e-5) == blind, split_heads


@pytest.mark.parametrize('mode', ['causal', 'prefix'])
def test_split_heads_leave_causal_and_prefix_calls_unchanged(mode):
  ids, mask = _prompt_batch()
  prefix_mask = (np.arange(12) < 8)[None].repeat(3, 0).astype(np.int32)
  kwargs = dict(mode=mode, prefix_mask=jnp.asarray(prefix_mask) if mode == 'prefix' else None)
  plain, split = (_logits(_random_model(split_heads=s), ids, mask, **kwargs)
                  for s in (False, True))
  np.testing.assert_array_equal(split, plain)


def test_split_alibi_bias_worked_values():
  n_head, positions = 4, jnp.asarray([[0, 1, 2, 3, 0]])  # a second segment starts at 4
  slopes = layers.alibi_slopes(n_head)  # 0.25, 0.0625, 0.015625, 0.00390625
  bias = np.asarray(layers.symmetric_alibi_bias(positions, positions, n_head, split=True))
  assert bias.shape == (1, n_head, 5, 5)
  for h in range(n_head):
    back, ahead = bias[0, h, 2, 1], bias[0, h, 1, 3]  # one key back, two keys ahead
    if h % 2 == 0:  # reads leftward
      np.testing.assert_allclose(back, -slopes[h])
      assert ahead <= -1e8
    else:           # reads rightward
      np.testing.assert_allclose(ahead, -2 * slopes[h])
      assert back <= -1e8
    np.testing.assert_allclose(bias[0, h, 3, 3], 0.0)
    np.testing.assert_allclose(bias[0, h, 0, 4], 0.0)  # the same position, either side


# --------------------------------------------------------------------------------------
# KV cache
# --------------------------------------------------------------------------------------


def _prompt_batch():
  ids = _ids(3, (3, 12))
  mask = np.ones((3, 12), np.int32)
  mask[1, :3] = 0   # left-padded prompt
  mask[2, :1] = 0
  return ids, mask


def _decode(model, ids, mask, chunks, step, max_length=16, **prompt_kwargs):
  """Logits of `ids` fed through a cache in `chunks`; prompt_kwargs apply to the first."""
  cache = init_cache(model.cfg, batch_size=ids.shape[0], max_length=max_length,
                     per_layer=isinstance(model.h, nnx.List))
  pieces, start = [], 0
  for i, size in enumerate(chunks):
    kwargs = prompt_kwargs if i == 0 else {}
    kwargs = {k: (v[:, start:start + size] if k == 'prefix_mask' else v)
              for k, v in kwargs.items()}
    logits, cache = step(model, jnp.asarray(ids[:, start:start + size]),
                         jnp.asarray(mask[:, start:start + size]), cache, **kwargs)
    pieces.append(np.asarray(logits))
    start += size
  assert start == ids.shape[1]
  return np.concatenate(pieces, axis=1), cache


@pytest.mark.parametrize('position,chunks', [
    ('alibi', [5, 1, 1, 1, 1, 1, 1, 1]),
    ('alibi', [4, 3, 5]),
    ('sinusoidal', [5, 1, 1, 1, 1, 1, 1, 1]),
    ('sinusoidal', [4, 3, 5]),
    ('none', [4, 3, 5]),
])
def test_cached_decoding_equals_full_forward(position, chunks):
  model = _random_model(position=position)
  ids, mask = _prompt_batch()
  full = _logits(model, ids, mask)
  stepped, cache = _decode(model, ids, mask, chunks, _step)
  assert int(cache['index']) == 12
  np.testing.assert_array_equal(np.asarray(cache['mask']),
                                np.pad(mask, ((0, 0), (0, 4))))
  real = mask > 0
  np.testing.assert_allclose(stepped[real], full[real], atol=1e-5)


def test_unstacked_layers_compute_the_same_model():
  model = _random_model()
  unstacked = unstack_layers(model)
  assert len(unstacked.h) == model.cfg.n_layer and not isinstance(model.h, nnx.List)
  ids, mask = _prompt_batch()
  full = _logits(model, ids, mask)
  np.testing.assert_allclose(_logits(unstacked, ids, mask), full, atol=1e-5)
  stepped, cache = _decode(unstacked, ids, mask, [5, 4, 3], _step)
  np.testing.assert_allclose(stepped[mask > 0], full[mask > 0], atol=1e-5)
  _, stacked_cache = _decode(model, ids, mask, [5, 4, 3], _step)
  for name in ('k', 'v'):
    np.testing.assert_allclose(np.stack(cache[name]), stacked_cache[name], atol=1e-5)
  with pytest.raises(ValueError, match='per_layer=True'):
    unstacked(jnp.asarray(ids), jnp.asarray(mask), cache=init_cache(model.cfg, 3, 16))


def test_cached_decoding_eagerly():
  model = _random_model()
  ids, mask = _prompt_batch()
  full = _logits(model, ids, mask)

  def eager(model, ids, mask, cache):
    return model(ids, mask, cache=cache)

  stepped, _ = _decode(model, ids, mask, [7, 5], eager, max_length=12)
  np.testing.assert_allclose(stepped[mask > 0], full[mask > 0], atol=1e-5)


def test_prefix_prompt_then_causal_steps_equals_prefix_forward():
  model = _random_model()
  ids, mask = _prompt_batch()
  prompt = 6
  prefix = np.zeros_like(mask)
  prefix[:, :prompt] = mask[:, :prompt]
  full = _logits(model, ids, mask, mode='prefix', prefix_mask=jnp.asarray(prefix))
  stepped, _ = _decode(model, ids, mask, [prompt] + [1] * (12 - prompt), _step,
                       mode='prefix', prefix_mask=prefix)
  np.testing.assert_allclose(stepped[mask > 0], full[mask > 0], atol=1e-5)
  # The prefix really was bidirectional: a causal forward differs inside it.
  causal = _logits(model, ids, mask)
  inside = mask[:, :prompt - 1] > 0
  assert np.abs(causal[:, :prompt - 1] - full[:, :prompt - 1])[inside].max() > 1e-3


# --------------------------------------------------------------------------------------
# Attention modes end to end
# --------------------------------------------------------------------------------------


def _changed_positions(model, ids, at, **kwargs):
  other = ids.copy()
  other[:, at] = (other[:, at] + 1) % VOCAB
  delta = np.abs(_logits(model, ids, **kwargs) - _logits(model, other, **kwargs)).max(-1)[0]
  return delta


def test_causal_mode_never_looks_ahead():
  model = _random_model()
  delta = _changed_positions(model, _ids(4, (1, 8)), 5)
  assert delta[:5].max() <= 1e-6
  assert delta[5:].min() > 1e-3


def test_bidirectional_mode_looks_ahead():
  model = _random_model()
  delta = _changed_positions(model, _ids(4, (1, 8)), 7, mode='bidirectional')
  assert delta.min() > 1e-3


def test_prefix_mode():
  model = _random_model()
  ids = _ids(5, (1, 8))
  prefix = jnp.asarray([[1, 1, 1, 1, 0, 0, 0, 0]])
  inside = _changed_positions(model, ids, 1, mode='prefix', prefix_mask=prefix)
  assert inside.min() > 1e-3
  after = _changed_positions(model, ids, 6, mode='prefix', prefix_mask=prefix)
  assert after[:6].max() <= 1e-6
  assert after[6:].min() > 1e-3


# --------------------------------------------------------------------------------------
# Remat and dropout
# --------------------------------------------------------------------------------------


def _loss(model, ids, mask, weights):
  return jnp.sum(model(ids, mask) * weights)


_grad = nnx.jit(nnx.grad(_loss))


@pytest.mark.parametrize('remat', ['full', 'dots'])
def test_remat_changes_neither_forward_nor_gradients(remat):
  ids, mask = _prompt_batch()
  ids, mask = jnp.asarray(ids), jnp.asarray(mask)
  weights = jax.random.normal(jax.random.key(9), (3, 12, VOCAB))
  plain, rematted = _random_model(remat='none'), _random_model(remat=remat)
  np.testing.assert_allclose(_logits(rematted, ids, mask), _logits(plain, ids, mask), atol=1e-6)
  grad_plain = nnx.to_pure_dict(_grad(plain, ids, mask, weights))
  grad_remat = nnx.to_pure_dict(_grad(rematted, ids, mask, weights))
  assert any(float(jnp.abs(g).max()) > 1e-2 for g in jax.tree.leaves(grad_plain))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
               grad_remat, grad_plain)


@pytest.mark.parametrize('shape', [(3, 5), (5,)])
@pytest.mark.parametrize('dtype, tolerance', [('float32', 1e-5), ('bfloat16', 2e-2)])
def test_tied_projection_gradients_are_autodiffs(shape, dtype, tolerance):
  # Its hand-written backward pass against autodiff of the same product, with a loss
  # that weights every logit differently.
  keys = jax.random.split(jax.random.key(4), 3)
  hidden = jax.random.normal(keys[0], (*shape, 16), dtype)
  embeddings = jax.random.normal(keys[1], (VOCAB, 16), dtype)
  weights = jax.random.normal(keys[2], (*shape, VOCAB), dtype)
  loss = lambda project: jax.jit(jax.grad(
      lambda h, e: jnp.sum((project(h, e) * weights).astype(jnp.float32)), argnums=(0, 1)))
  ours = loss(tied_projection)(hidden, embeddings)
  reference = loss(lambda h, e: jnp.einsum('...h,vh->...v', h, e))(hidden, embeddings)
  for a, b in zip(ours, reference, strict=True):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               atol=tolerance, rtol=tolerance)
  assert float(jnp.abs(ours[1]).max()) > 1.0


def _dropout_loss(model, ids, weights, key):
  return jnp.sum(model(ids, dropout_key=key) * weights)


_dropout_grad = nnx.jit(nnx.value_and_grad(_dropout_loss))


def test_remat_with_attention_dropout_matches_plain():
  # The backward pass recomputes the attention: it must draw the same dropout mask.
  ids = jnp.asarray(_ids(7, (2, 7)))
  weights = jax.random.normal(jax.random.key(8), (2, 7, VOCAB))
  key = jax.random.key(3)
  (loss, grads), (loss_remat, grads_remat) = [
      _dropout_grad(_random_model(remat=r, attention_dropout=0.3), ids, weights, key)
      for r in ('none', 'full')]
  no_dropout = float(jnp.sum(_logits(_random_model(), ids) * weights))
  assert abs(float(loss) - no_dropout) > 1e-3
  np.testing.assert_allclose(float(loss_remat), float(loss), rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
               nnx.to_pure_dict(grads_remat), nnx.to_pure_dict(grads))


@pytest.mark.parametrize('rates', [(0.3, 0.0), (0.0, 0.3)])
def test_dropout(rates):
  dropout, attention_dropout = rates
  ids = jnp.asarray(_ids(7, (2, 7)))
  model = _random_model(dropout=dropout, attention_dropout=attention_dropout)
  baseline = _logits(_random_model(), ids)
  np.testing.assert_array_equal(_logits(model, ids), _logits(model, ids))
  np.testing.assert_allclose(_logits(model, ids), baseline, atol=1e-6)
  first = _logits(model, ids, dropout_key=jax.random.key(0))
  assert np.abs(first - baseline).max() > 1e-3
  np.testing.assert_array_equal(first, _logits(model, ids, dropout_key=jax.random.key(0)))
  assert np.abs(first - _logits(model, ids, dropout_key=jax.random.key(1))).max() > 1e-3


# --------------------------------------------------------------------------------------
# Parameters and dtypes
# --------------------------------------------------------------------------------------


def test_every_parameter_has_logical_axes():
  cfg = _config(n_layer=3)
  model = nnx.eval_shape(lambda: Bloom(cfg, rngs=nnx.Rngs(0)))
  variables = jax.tree.leaves_with_path(nnx.state(model, nnx.Param),
                                        is_leaf=lambda x: isinstance(x, nnx.Param))
  assert len(variables) == 17
  for path, variable in variables:
    name = jax.tree_util.keystr(path)
    axes = compat.logical_axes(variable)
    shape = variable.get_value().shape
    assert axes is not None and len(axes) == len(shape), name
    stacked = path[0].key == 'h'
    assert (axes[0] == 'layers') == stacked, name
    assert ('layers' in axes[1:]) is False, name
    if stacked:
      assert shape[0] == cfg.n_layer, name


def test_num_params_matches_the_model():
  cfg = _config(n_layer=3)
  model = nnx.eval_shape(lambda: Bloom(cfg, rngs=nnx.Rngs(0)))
  count = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert count == cfg.num_params


@pytest.mark.parametrize('param_dtype,alibi_fp32', [('float32', False), ('bfloat16', True)])
def test_bfloat16_is_close_to_float32(param_dtype, alibi_fp32):
  ids, mask = _prompt_batch()
  reference = _logits(_random_model(), ids, mask)
  model = _random_model(dtype='bfloat16', param_dtype=param_dtype, alibi_fp32=alibi_fp32)
  logits = _forward(model, jnp.asarray(ids), jnp.asarray(mask))
  assert logits.dtype == jnp.float32
  logits = np.asarray(logits)
  assert np.isfinite(logits).all()
  real = mask > 0
  scale = np.abs(reference[real]).max()
  assert scale > 0.5
  assert np.abs(logits[real] - reference[real]).max() <= 0.1 * scale
  assert np.abs(logits[real] - reference[real]).max() > 0  # it really ran in bf16


def _reference_in_place_of_cudnn(monkeypatch) -> list:
  """CPUs have no cuDNN: run JAX's reference implementation of the same fused call."""
  fused, calls = jax.nn.dot_product_attention, []

  def reference(*args, implementation=None, **kwargs):
    calls.append(implementation)
    return fused(*args, implementation='xla', **kwargs)

  monkeypatch.setattr(jax.nn, 'dot_product_attention', reference)
  return calls


@pytest.mark.parametrize('mode', ['causal', 'bidirectional', 'prefix'])
def test_cudnn_kernel_computes_the_same_attention(monkeypatch, mode):
  calls = _reference_in_place_of_cudnn(monkeypatch)
  ids, mask = _prompt_batch()  # left padding
  prefix = np.broadcast_to(np.arange(ids.shape[1]) < ids.shape[1] - 3, ids.shape).astype(np.int32)
  kwargs = {'mode': mode, 'prefix_mask': jnp.asarray(prefix) if mode == 'prefix' else None}
  reference = _logits(_random_model(), ids, mask, **kwargs)
  errors = {}
  for kernel in ('einsum', 'cudnn'):
    logits = _logits(_random_model(dtype='bfloat16', attention_kernel=kernel), ids, mask,
                     **kwargs)
    errors[kernel] = np.abs(logits - reference)[mask > 0].max()
  assert calls == ['cudnn']
  # Both run in bf16; a wrong bias or mask would be off by the logits' own scale (~4).
  assert errors['cudnn'] <= max(1.5 * errors['einsum'], 0.05), errors


# --------------------------------------------------------------------------------------
# Config validation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize('overrides,field', [
    ({'hidden_size': 10, 'n_head': 3}, 'hidden_size'),
    ({'position': 'rope'}, 'position'),
    ({'remat': 'everything'}, 'remat'),
    ({'dtype': 'float64'}, 'dtype'),
    ({'dropout': 1.0}, 'dropout'),
    ({'n_layer': 0}, 'n_layer'),
    ({'attention_kernel': 'flash'}, 'attention_kernel'),
    ({'attention_kernel': 'cudnn'}, 'attention_kernel'),  # needs a 16-bit dtype
])
def test_config_validation_names_the_field(overrides, field):
  with pytest.raises(ValueError) as info:
    _config(**overrides)
  assert f'model.{field}' in str(info.value)


def test_config_validation_reports_every_error():
  with pytest.raises(ValueError) as info:
    _config(position='rope', remat='everything')
  assert 'model.position' in str(info.value) and 'model.remat' in str(info.value)
