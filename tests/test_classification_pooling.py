"""`pooling`: which states a classifier's (or a regression's) label is read from.

'last' (the default) reads the head at each example's last token; 'mean' reads the head's
mean over the example's tokens, which for a linear head is the head of the mean state.
Packed rows give each example exactly what it gets alone.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bloom_jax import layers, tasks, tokenizer
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
TOLERANCE = 1e-5


@pytest.fixture(scope='module')
def tok():
  return tokenizer.train([CLASSIFICATION.training_text(r) for r in ROWS] * 5, 400)


def _task(pooling):
  return tasks.TaskSpec('t', CLASSIFICATION, source=None, labels=('negative', 'positive'),
                        max_length=24, pooling=pooling)


def _batch(task, tok, packed=True):
  examples, _ = CLASSIFICATION.encode(task, tok, ROWS, True, None)
  out = CLASSIFICATION.rows(task, examples, tok.pad_id, packed)
  return out, {k: jnp.asarray(v) for k, v in out.items()}


@functools.cache
def _model(vocab_size: int) -> MultiTaskModel:
  cfg = BloomConfig(vocab_size=vocab_size, hidden_size=24, n_head=4, n_layer=2, init_std=0.5)
  return MultiTaskModel(cfg, {'t': _task('last')}, rngs=nnx.Rngs(3))


def test_segment_mean_averages_each_segment_and_zeroes_padding():
  segment_ids = np.array([[1, 1, 2, 2, 2, 0], [0, 1, 1, 0, 2, 3]])  # padding between, too
  values = np.random.default_rng(0).normal(size=(2, 6, 3)).astype(np.float32)
  want = np.zeros_like(values)
  for b, row in enumerate(segment_ids):
    for k in set(row[row > 0].tolist()):
      want[b, row == k] = values[b, row == k].mean(0)
  got = jax.jit(layers.segment_mean)(jnp.asarray(values), jnp.asarray(segment_ids))
  np.testing.assert_allclose(np.asarray(got), want, rtol=TOLERANCE, atol=TOLERANCE)


def test_mean_pooling_reads_the_head_of_each_examples_mean_state(tok):
  rows, batch = _batch(_task('mean'), tok)
  model = _model(tok.vocab_size)
  hidden, _ = model.bloom.hidden_states(batch['input_ids'], segment_ids=batch['segment_ids'],
                                        mode='bidirectional')
  hidden = np.asarray(hidden)
  mean_logits = np.asarray(model(_task('mean'), batch))
  last_logits = np.asarray(model(_task('last'), batch))
  checked = 0
  for r, segments in enumerate(rows['segment_ids']):
    for k in range(1, segments.max() + 1):
      at = np.flatnonzero(segments == k)
      assert rows['weights'][r, at[-1]] == 1  # the label is read at the last token
      want = model.heads['t'](jnp.asarray(hidden[r, at].mean(0))[None, None], None)
      np.testing.assert_allclose(mean_logits[r, at[-1]], np.asarray(want)[0, 0],
                                 rtol=TOLERANCE, atol=TOLERANCE)
      checked += 1
  assert checked == len(ROWS)
  scored = rows['weights'] > 0
  assert not np.allclose(mean_logits[scored], last_logits[scored])


@pytest.mark.parametrize('pooling', ['last', 'mean'])
def test_packed_examples_get_the_logits_they_get_alone(tok, pooling):
  model = _model(tok.vocab_size)

  def scored(packed):
    rows, batch = _batch(_task(pooling), tok, packed)
    logits = np.asarray(model(_task(pooling), batch))
    return sorted(logits[rows['weights'] > 0].tolist()), len(rows['weights'])

  packed, packed_rows = scored(True)
  alone, alone_rows = scored(False)
  assert packed_rows < alone_rows
  np.testing.assert_allclose(packed, alone, rtol=TOLERANCE, atol=TOLERANCE)


def test_pooling_is_checked_by_name_and_task_type():
  with pytest.raises(ConfigError, match=r"tasks.sentiment.pooling: 'max' is not one of"):
    tasks.configure({'sentiment': dict(pooling='max')})
  assert tasks.configure({'sentiment': dict(pooling='mean')})['sentiment'].pooling == 'mean'
  assert tasks.configure({'sentiment': {}})['sentiment'].pooling == 'last'
  for name in ('tagging', 'lm', 'summarize'):
    with pytest.raises(ConfigError, match=f'tasks.{name}.pooling: not for'):
      tasks.configure({name: dict(pooling='mean')})
  with pytest.raises(ConfigError, match='tasks.sentiment.pooling: expected str'):
    tasks.configure({'sentiment': dict(pooling=1)})
  scores = tasks.TaskSpec('scores', REGRESSION, source=None, pooling='mean')
  REGRESSION.check(scores, 'tasks.scores')  # regression reads its score the same ways
