"""Two options of a text classifier: its source loss and its pooling.

`source_lm_weight`: in training, every token of an example is also predicted from the ones
before it, weighted beside the label's term; evaluation, the logged accuracy and the
prediction path are the label's alone. The loss needs causal attention, and packed rows
give each example the loss it has alone. The configuration checks here are those of both
types that take the loss (generation's other tests: test_generation_options.py).

`pooling`: 'last' (the default) reads the head at each example's last token; 'mean' reads
the head's mean over the example's tokens, which for a linear head is the head of the mean
state; 'max' reads the head of the example's elementwise max state; 'attention' reads the
head of a softmax-weighted mean of its states, per head (`heads.AttentionPool`). Packed
rows give each example exactly what it gets alone.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from bloom_jax import heads, layers, losses, steps, tasks, tokenizer
from bloom_jax.errors import ConfigError
from bloom_jax.model import BloomConfig
from bloom_jax.multitask_model import MultiTaskModel
from bloom_jax.task_types import CLASSIFICATION, REGRESSION

ROWS = [
    {'text': 'a warm and very funny film', 'label': 'positive'},
    {'text': 'dull', 'label': 'negative'},
    {'text': 'the plot goes nowhere and the actors know it', 'label': 'negative'},
    {'text': 'one of the best scenes this year', 'label': 'positive'},
    {'text': 'it never finds its story', 'label': 'negative'},
]
WEIGHT = 0.25  # exact in float32
TOLERANCE = 1e-5


@pytest.fixture(scope='module')
def tok():
  return tokenizer.train([CLASSIFICATION.training_text(r) for r in ROWS] * 5, 400)


def _task(**fields):
  fields = {'attention': 'causal', **fields}
  return tasks.TaskSpec('t', CLASSIFICATION, source=None, labels=('negative', 'positive'),
                        max_length=24, **fields)


def _pooled(pooling):
  return _task(attention='bidirectional', pooling=pooling)


def _batch(task, tok, packed=True):
  examples, _ = CLASSIFICATION.encode(task, tok, ROWS, True, None)
  out = CLASSIFICATION.rows(task, examples, tok.pad_id, packed)
  return out, {k: jnp.asarray(v) for k, v in out.items()}


@functools.cache
def _model(vocab_size: int, pooling: str = 'last') -> MultiTaskModel:
  cfg = BloomConfig(vocab_size=vocab_size, hidden_size=24, n_head=4, n_layer=2, init_std=0.5)
  model = MultiTaskModel(cfg, {'t': _pooled(pooling)}, rngs=nnx.Rngs(3))
  if pooling == 'attention':  # queries away from their start at zero, where the pool is the mean
    pool = model.heads['t'].pool
    pool.kernel[...] = jax.random.normal(jax.random.key(4), pool.kernel[...].shape)
  return model


def test_every_token_but_an_examples_last_predicts_the_next(tok):
  rows, _ = _batch(_task(source_lm_weight=WEIGHT), tok)
  plain, _ = _batch(_task(), tok)
  assert set(rows) - set(plain) == {'source_weights', 'source_targets'}
  found = []
  for r in range(len(rows['input_ids'])):
    for k in range(1, rows['segment_ids'][r].max() + 1):
      at = np.flatnonzero(rows['segment_ids'][r] == k)
      # <s> and every text token predict; </s>, where the label is read, does not.
      np.testing.assert_array_equal(rows['source_weights'][r, at[:-1]], WEIGHT)
      assert rows['source_weights'][r, at[-1]] == 0
      assert rows['source_targets'][r, at[:-1]].tolist() == rows['input_ids'][r, at[1:]].tolist()
      found.append(rows['input_ids'][r, at].tolist())
  assert sorted(found) == sorted([tok.bos_id, *ids, tok.eos_id]
                                 for ids in tok.encode_batch([r['text'] for r in ROWS]))
  padding = rows['segment_ids'] == 0
  assert padding.any() and (rows['source_weights'][padding] == 0).all()
  assert (rows['source_targets'][rows['source_weights'] == 0] == tok.pad_id).all()


def test_training_adds_the_weighted_token_loss_and_evaluation_does_not(tok):
  aux, plain = _task(source_lm_weight=WEIGHT), _task()
  rows, batch = _batch(aux, tok)
  model = _model(tok.vocab_size)
  hidden, _ = model.bloom.hidden_states(batch['input_ids'], segment_ids=batch['segment_ids'],
                                        mode='causal')
  next_nll, _ = losses.token_nll(model.bloom.logits(hidden), batch['source_targets'])
  label_nll, _ = losses.token_nll(model.heads['t'](hidden), batch['targets'])
  want = np.sum(np.asarray(label_nll) * rows['weights']
                + np.asarray(next_nll) * rows['source_weights'])
  trained = steps.task_statistics(model, aux, batch, jax.random.key(0))
  np.testing.assert_allclose(trained['loss_sum'], want, rtol=TOLERANCE)
  np.testing.assert_allclose(trained['count'], rows['weights'].sum() + rows['source_weights'].sum())
  alone = steps.task_statistics(model, plain, batch, jax.random.key(0))
  assert trained['correct'] == alone['correct']  # accuracy stays the label's
  assert not np.isclose(trained['loss_sum'], alone['loss_sum'])
  evaluated = steps.task_statistics(model, aux, batch)
  for key in ('loss_sum', 'count', 'correct'):
    assert evaluated[key] == alone[key], key
  assert CLASSIFICATION.vocab_positions(aux) == aux.max_length
  assert CLASSIFICATION.vocab_positions(plain) == 0


def test_packed_losses_equal_losses_alone(tok):
  aux = _task(source_lm_weight=WEIGHT)
  model = _model(tok.vocab_size)

  def per_example(packed):
    rows, batch = _batch(aux, tok, packed)
    loss, weights, _ = CLASSIFICATION.losses(model(aux, batch, jax.random.key(0)), batch)
    weighted = np.asarray(loss * weights)
    segment = np.concatenate([rows['segment_ids']] * 2, axis=1)  # label terms, then tokens'
    totals = [float(np.sum(weighted[r][segment[r] == k]))
              for r in range(len(segment)) for k in range(1, segment[r].max() + 1)]
    return sorted(totals), len(segment)

  packed, packed_rows = per_example(True)
  alone, alone_rows = per_example(False)
  assert packed_rows < alone_rows
  np.testing.assert_allclose(packed, alone, atol=TOLERANCE * 10, rtol=TOLERANCE)


@pytest.mark.parametrize('name', ['sentiment', 'summarize'])  # classification, generation
def test_the_loss_needs_causal_attention(name):
  entry = ml_collections.ConfigDict(dict(source_lm_weight=0.1))
  with pytest.raises(ConfigError, match=rf"tasks.{name}.source_lm_weight: needs "
                                        rf"tasks.{name}.attention='causal'"):
    tasks.configure({name: entry})
  entry.attention = 'causal'
  assert tasks.configure({name: entry})[name].source_lm_weight == 0.1
  with pytest.raises(ConfigError, match=f'tasks.{name}.source_lm_weight: must be >= 0'):
    tasks.configure({name: dict(source_lm_weight=-0.5, attention='causal')})


def test_types_without_a_token_loss_refuse_it():
  for name in ('tagging', 'lm'):
    with pytest.raises(ConfigError, match=f'tasks.{name}.source_lm_weight: not for {name}'):
      tasks.configure({name: dict(source_lm_weight=0.1, attention='causal')})
  scores = tasks.TaskSpec('scores', REGRESSION, source=None, attention='causal',
                          source_lm_weight=0.1)
  with pytest.raises(ConfigError, match='tasks.scores.source_lm_weight: not for regression'):
    REGRESSION.check(scores, 'tasks.scores')


@pytest.mark.parametrize('pool,reduce', [(layers.segment_mean, np.mean),
                                         (layers.segment_max, np.max)])
def test_segment_pooling_reduces_each_segment_and_zeroes_padding(pool, reduce):
  segment_ids = np.array([[1, 1, 2, 2, 2, 0], [0, 1, 1, 0, 2, 3]])  # padding between, too
  values = np.random.default_rng(0).normal(size=(2, 6, 3)).astype(np.float32)
  want = np.zeros_like(values)
  for b, row in enumerate(segment_ids):
    for k in set(row[row > 0].tolist()):
      want[b, row == k] = reduce(values[b, row == k], axis=0)
  got = jax.jit(pool)(jnp.asarray(values), jnp.asarray(segment_ids))
  np.testing.assert_allclose(np.asarray(got), want, rtol=TOLERANCE, atol=TOLERANCE)


def test_segment_max_sends_the_gradient_to_each_segments_maximum():
  segment_ids = jnp.asarray([[1, 1, 1, 2, 2, 0]])
  values = jnp.asarray([[[0.5], [2.0], [-1.0], [3.0], [4.0], [9.0]]])
  grad = jax.grad(lambda v: layers.segment_max(v, segment_ids).sum())(values)
  # Each segment's maximum is copied to its 3 and 2 positions; padding gets nothing.
  np.testing.assert_array_equal(np.asarray(grad)[0, :, 0], [0, 3, 0, 0, 2, 0])


@pytest.mark.parametrize('pooling,reduce', [('mean', np.mean), ('max', np.max)])
def test_pooling_reads_the_head_of_each_examples_pooled_state(tok, pooling, reduce):
  rows, batch = _batch(_pooled(pooling), tok)
  model = _model(tok.vocab_size)
  hidden, _ = model.bloom.hidden_states(batch['input_ids'], segment_ids=batch['segment_ids'],
                                        mode='bidirectional')
  hidden = np.asarray(hidden)
  pooled_logits = np.asarray(model(_pooled(pooling), batch))
  last_logits = np.asarray(model(_pooled('last'), batch))
  checked = 0
  for r, segments in enumerate(rows['segment_ids']):
    for k in range(1, segments.max() + 1):
      at = np.flatnonzero(segments == k)
      assert rows['weights'][r, at[-1]] == 1  # the label is read at the last token
      want = model.heads['t'](jnp.asarray(reduce(hidden[r, at], axis=0))[None, None], None)
      np.testing.assert_allclose(pooled_logits[r, at[-1]], np.asarray(want)[0, 0],
                                 rtol=TOLERANCE, atol=TOLERANCE)
      checked += 1
  assert checked == len(ROWS)
  scored = rows['weights'] > 0
  assert not np.allclose(pooled_logits[scored], last_logits[scored])


def _attention_pool_reference(values, segment_ids, query, n_head):
  """Per example and head: the softmax over its tokens of x . q_h weighting their h-th slice."""
  want = np.zeros_like(values)
  width = values.shape[-1] // n_head
  for b, row in enumerate(segment_ids):
    for k in set(row[row > 0].tolist()):
      x = values[b, row == k]
      for h in range(n_head):
        scores = x @ query[:, h]
        w = np.exp(scores - scores.max())
        part = slice(h * width, (h + 1) * width)
        want[b, row == k, part] = (w / w.sum()) @ x[:, part]
  return want


def test_attention_pool_is_a_softmax_weighted_mean_per_head_and_starts_as_the_mean():
  cfg = BloomConfig(vocab_size=8, hidden_size=6, n_head=2, n_layer=1)
  pool = heads.AttentionPool(cfg)
  segment_ids = np.array([[1, 1, 2, 2, 2, 0], [0, 1, 1, 0, 2, 3]])  # padding between, too
  rng = np.random.default_rng(0)
  values = rng.normal(size=(2, 6, 6)).astype(np.float32)
  args = jnp.asarray(values), jnp.asarray(segment_ids)
  start = pool(*args)  # queries at zero: every token weighs the same
  np.testing.assert_allclose(np.asarray(start), np.asarray(layers.segment_mean(*args)),
                             rtol=TOLERANCE, atol=TOLERANCE)
  # ... and the queries' gradient there is not zero, so training moves them off the mean.
  probe = jnp.asarray(rng.normal(size=values.shape), jnp.float32)
  grad = nnx.grad(lambda p: jnp.sum(p(*args) * probe))(pool)
  assert np.abs(np.asarray(grad.kernel[...])).min() > 0
  query = 3 * rng.normal(size=(6, 2)).astype(np.float32)  # sharp weights, far from the mean
  pool.kernel[...] = jnp.asarray(query)
  got = np.asarray(nnx.jit(lambda p, v, s: p(v, s))(pool, *args))
  want = _attention_pool_reference(values, segment_ids, query, 2)
  np.testing.assert_allclose(got, want, rtol=TOLERANCE, atol=TOLERANCE)
  assert not np.allclose(got, np.asarray(start), atol=0.1)
  assert (got[segment_ids == 0] == 0).all()


def test_attention_pooling_reads_the_head_of_each_examples_pooled_state(tok):
  rows, batch = _batch(_pooled('attention'), tok)
  model = _model(tok.vocab_size, 'attention')
  hidden, _ = model.bloom.hidden_states(batch['input_ids'], segment_ids=batch['segment_ids'],
                                        mode='bidirectional')
  head = model.heads['t']
  pooled = _attention_pool_reference(np.asarray(hidden), rows['segment_ids'],
                                     np.asarray(head.pool.kernel[...]), 4)
  logits = np.asarray(model(_pooled('attention'), batch))
  scored = rows['weights'] > 0
  want = np.asarray(head(jnp.asarray(pooled), None))
  np.testing.assert_allclose(logits[scored], want[scored], rtol=1e-4, atol=1e-4)
  assert scored.sum() == len(ROWS)


@pytest.mark.parametrize('pooling', ['last', 'mean', 'max', 'attention'])
def test_packed_examples_get_the_logits_they_get_alone(tok, pooling):
  model = _model(tok.vocab_size, pooling)

  def scored(packed):
    rows, batch = _batch(_pooled(pooling), tok, packed)
    logits = np.asarray(model(_pooled(pooling), batch))
    return sorted(logits[rows['weights'] > 0].tolist()), len(rows['weights'])

  packed, packed_rows = scored(True)
  alone, alone_rows = scored(False)
  assert packed_rows < alone_rows
  np.testing.assert_allclose(packed, alone, rtol=TOLERANCE, atol=TOLERANCE)


def test_pooling_is_checked_by_name_and_task_type():
  with pytest.raises(ConfigError, match=r"tasks.sentiment.pooling: 'median' is not one of"):
    tasks.configure({'sentiment': dict(pooling='median')})
  for pooling in ('mean', 'max', 'attention'):
    assert tasks.configure({'sentiment': dict(pooling=pooling)})['sentiment'].pooling == pooling
  assert tasks.configure({'sentiment': {}})['sentiment'].pooling == 'last'
  for name in ('tagging', 'lm', 'summarize'):
    with pytest.raises(ConfigError, match=f'tasks.{name}.pooling: not for'):
      tasks.configure({name: dict(pooling='mean')})
  with pytest.raises(ConfigError, match='tasks.sentiment.pooling: expected str'):
    tasks.configure({'sentiment': dict(pooling=1)})
  scores = tasks.TaskSpec('scores', REGRESSION, source=None, pooling='mean')
  REGRESSION.check(scores, 'tasks.scores')  # regression reads its score the same ways
