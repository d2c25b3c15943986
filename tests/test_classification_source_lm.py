"""Classification's source loss: `source_lm_weight` on a text classifier.

In training, every token of an example is also predicted from the ones before it, weighted
beside the label's term; evaluation, the logged accuracy and the prediction path are the
label's alone. The loss needs causal attention, and packed rows give each example the
loss it has alone. The configuration checks here are those of both types that take the
loss (generation's other tests: test_generation_options.py).
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from bloom_jax import losses, steps, tasks, tokenizer
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


def _batch(task, tok, packed=True):
  examples, _ = CLASSIFICATION.encode(task, tok, ROWS, True, None)
  out = CLASSIFICATION.rows(task, examples, tok.pad_id, packed)
  return out, {k: jnp.asarray(v) for k, v in out.items()}


@functools.cache
def _model(vocab_size: int) -> MultiTaskModel:
  cfg = BloomConfig(vocab_size=vocab_size, hidden_size=24, n_head=4, n_layer=2, init_std=0.5)
  return MultiTaskModel(cfg, {'t': _task()}, rngs=nnx.Rngs(3))


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
