"""Label smoothing (`tasks.<name>.label_smoothing`): in training, a classifier's or
tagger's target puts 1 - e on its label and e evenly on every label; evaluation and the
logged accuracy stay on the plain label. Only labelled task types take it."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from bloom_jax import losses, steps, tasks, tokenizer
from bloom_jax.errors import ConfigError
from bloom_jax.model import BloomConfig
from bloom_jax.multitask_model import MultiTaskModel
from bloom_jax.task_types import CLASSIFICATION, REGRESSION, TAGGING

EPSILON = 0.2
TEXTS = ['a warm and very funny film', 'dull', 'the plot goes nowhere', 'one of the best']


def test_the_loss_is_cross_entropy_against_the_smoothed_target():
  logits = jax.random.normal(jax.random.key(0), (3, 5, 7)) * 3
  targets = jax.random.randint(jax.random.key(1), (3, 5), 0, 7)
  want = optax.softmax_cross_entropy(
      logits, optax.smooth_labels(jax.nn.one_hot(targets, 7), EPSILON))
  got, correct = losses.token_nll(logits, targets, EPSILON)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  plain, plain_correct = losses.token_nll(logits, targets)
  np.testing.assert_array_equal(correct, plain_correct)
  assert not np.allclose(got, plain)


@pytest.mark.parametrize('task_type', [CLASSIFICATION, TAGGING])
def test_training_smooths_and_evaluation_does_not(task_type):
  tok = tokenizer.train(TEXTS * 5, 300)
  if task_type is CLASSIFICATION:
    rows = [{'text': t, 'label': 'ab'[i % 2]} for i, t in enumerate(TEXTS)]
  else:
    rows = [{'words': t.split(), 'tags': ['ab'[len(w) % 2] for w in t.split()]} for t in TEXTS]

  def task(smoothing):
    return tasks.TaskSpec('t', task_type, source=None, labels=('a', 'b'), max_length=32,
                          label_smoothing=smoothing)

  smoothed, plain = task(EPSILON), task(0.0)
  examples, _ = task_type.encode(plain, tok, rows, True, None)
  batch = {k: jnp.asarray(v) for k, v in task_type.rows(plain, examples, tok.pad_id, True).items()}
  cfg = BloomConfig(vocab_size=tok.vocab_size, hidden_size=24, n_head=4, n_layer=2, init_std=0.5)
  model = MultiTaskModel(cfg, {'t': plain}, rngs=nnx.Rngs(0))

  logits = model(plain, batch, jax.random.key(0))
  nll, _ = losses.token_nll(logits, batch['targets'], EPSILON)
  want = float(jnp.sum(nll * batch['weights']))
  trained = steps.task_statistics(model, smoothed, batch, jax.random.key(0))
  np.testing.assert_allclose(trained['loss_sum'], want, rtol=1e-5)
  unsmoothed = steps.task_statistics(model, plain, batch, jax.random.key(0))
  assert not np.isclose(trained['loss_sum'], unsmoothed['loss_sum'])
  assert trained['correct'] == unsmoothed['correct'] and trained['count'] == unsmoothed['count']
  for key in ('loss_sum', 'count', 'correct'):  # no dropout key: evaluation, unsmoothed
    assert steps.task_statistics(model, smoothed, batch)[key] == \
        steps.task_statistics(model, plain, batch)[key], key


@pytest.mark.parametrize('name', ['summarize', 'lm'])
def test_only_labelled_task_types_take_it(name):
  config = ml_collections.ConfigDict({name: {'label_smoothing': 0.1}})
  with pytest.raises(ConfigError, match=rf'tasks.{name}.label_smoothing: not for'):
    tasks.configure(config)


def test_regression_does_not_take_it():
  spec = tasks.TaskSpec('t', REGRESSION, source=None, label_smoothing=0.1)
  with pytest.raises(ConfigError, match=r'tasks.t.label_smoothing: not for regression'):
    REGRESSION.check(spec, 'tasks.t')


@pytest.mark.parametrize('value', [-0.1, 1.0, 1.5])
def test_a_smoothing_outside_zero_to_one_is_refused(value):
  config = ml_collections.ConfigDict({'sentiment': {'label_smoothing': value}})
  with pytest.raises(ConfigError, match=r'tasks.sentiment.label_smoothing: a fraction in \[0, 1\)'):
    tasks.configure(config)
  assert tasks.configure(ml_collections.ConfigDict(
      {'sentiment': {'label_smoothing': 0.1}}))['sentiment'].label_smoothing == 0.1
