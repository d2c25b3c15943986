"""Token dropout (`tasks.<name>.token_dropout`): in training, each token strictly inside an
example has its word embedding zeroed with the given probability; an example's first and
last tokens, padding and evaluation are untouched."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from bloom_jax import layers, tasks, tokenizer
from bloom_jax.errors import ConfigError
from bloom_jax.model import BloomConfig
from bloom_jax.multitask_model import MultiTaskModel
from bloom_jax.task_types import CLASSIFICATION, TAGGING

ROWS = [
    {'text': 'a warm and very funny film', 'label': 'positive'},
    {'text': 'dull', 'label': 'negative'},
    {'text': 'the plot goes nowhere and the actors know it', 'label': 'negative'},
    {'text': 'one of the best scenes this year', 'label': 'positive'},
]
RATE = 0.5


@pytest.fixture(scope='module')
def tok():
  return tokenizer.train([CLASSIFICATION.training_text(r) for r in ROWS] * 5, 300)


def _task(rate):
  return tasks.TaskSpec('t', CLASSIFICATION, source=None, labels=('negative', 'positive'),
                        max_length=24, token_dropout=rate)


def _batch(tok):
  examples, _ = CLASSIFICATION.encode(_task(0.0), tok, ROWS, True, None)
  return {k: jnp.asarray(v) for k, v in CLASSIFICATION.rows(_task(0.0), examples, tok.pad_id,
                                                             True).items()}


def _model(tok, dropout=0.0):
  cfg = BloomConfig(vocab_size=tok.vocab_size, hidden_size=24, n_head=4, n_layer=2,
                    init_std=0.5, dropout=dropout)
  return MultiTaskModel(cfg, {'t': _task(0.0)}, rngs=nnx.Rngs(0))


def test_only_tokens_inside_an_example_are_dropped_at_the_rate():
  segments = np.array([[1, 1, 1, 1, 2, 2, 2, 3, 0, 0]] * 4000)
  keep = np.asarray(layers.token_dropout_keep(jnp.asarray(segments), 0.3, jax.random.key(0)))
  inside = np.zeros(segments.shape[1], bool)
  inside[[1, 2, 5]] = True  # not a first or last token of its segment, not padding
  assert keep[:, ~inside].all()
  assert abs(1 - keep[:, inside].mean() - 0.3) < 0.01
  assert not np.array_equal(keep[:, 1], keep[:, 2])  # drawn per token
  assert np.asarray(layers.token_dropout_keep(jnp.asarray(segments), 0.0,
                                              jax.random.key(0))).all()


def test_a_dropped_token_reads_as_a_zero_embedding(tok):
  """The hidden states with token dropout are those of the rows whose dropped tokens are
  replaced by a token whose embedding row is zero."""
  batch, model = _batch(tok), _model(tok)
  keep = layers.token_dropout_keep(batch['segment_ids'], RATE, jax.random.key(1))
  assert 0 < int((~keep).sum()) < int((batch['segment_ids'] > 0).sum())
  dropped, _ = model.bloom.hidden_states(batch['input_ids'], segment_ids=batch['segment_ids'],
                                         mode='bidirectional', keep_tokens=keep)
  zero_id = tok.unk_id  # byte-level BPE never emits <unk>: its row can be zeroed freely
  model.bloom.word_embeddings[...] = model.bloom.word_embeddings[...].at[zero_id].set(0.0)
  replaced = jnp.where(keep, batch['input_ids'], zero_id)
  expected, _ = model.bloom.hidden_states(replaced, segment_ids=batch['segment_ids'],
                                          mode='bidirectional')
  np.testing.assert_allclose(dropped, expected, atol=1e-5)


def test_training_drops_tokens_and_evaluation_sees_them_all(tok):
  batch, model = _batch(tok), _model(tok)  # no other dropout: only the tokens differ
  key = jax.random.key(2)
  with_dropout, without = _task(RATE), _task(0.0)
  np.testing.assert_array_equal(model(with_dropout, batch), model(without, batch))
  np.testing.assert_array_equal(model(without, batch, key), model(without, batch))
  trained = model(with_dropout, batch, key)
  keep = layers.token_dropout_keep(batch['segment_ids'], RATE, jax.random.fold_in(key, 1))
  hidden, _ = model.bloom.hidden_states(batch['input_ids'], segment_ids=batch['segment_ids'],
                                        mode='bidirectional', keep_tokens=keep)
  np.testing.assert_allclose(trained, model.heads['t'](hidden), atol=1e-6)
  assert not np.allclose(trained, model(without, batch))


def test_the_other_dropout_masks_do_not_change(tok):
  """With the rate at zero, a run's dropout is that of a run without the option."""
  batch, model = _batch(tok), _model(tok, dropout=0.3)
  key = jax.random.key(3)
  hidden, _ = model.bloom.hidden_states(batch['input_ids'], segment_ids=batch['segment_ids'],
                                        mode='bidirectional',
                                        dropout_key=jax.random.split(key)[0])
  np.testing.assert_allclose(model(_task(0.0), batch, key),
                             model.heads['t'](hidden, jax.random.split(key)[1]), atol=1e-6)


@pytest.mark.parametrize('value', [-0.1, 1.0, 'high', True])
def test_the_rate_is_checked(value):
  config = ml_collections.ConfigDict({'sst2': {'token_dropout': value}})
  with pytest.raises(ConfigError, match='tasks.sst2.token_dropout'):
    tasks.configure(config)


def test_tagging_and_classification_tasks_take_it():
  config = ml_collections.ConfigDict({'pos': {'token_dropout': 0.1},
                                      'sst2': {'token_dropout': 0.2}})
  configured = tasks.configure(config, data_dir='unused')
  assert configured['pos'].type is TAGGING and configured['pos'].token_dropout == 0.1
  assert configured['sst2'].token_dropout == 0.2
