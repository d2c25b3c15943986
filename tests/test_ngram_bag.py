"""A classifier's bag of hashed token n-grams (`tasks.<name>.ngrams`, `heads.NgramBag`).

Each position gets the bucket of every n-gram (orders 1..n) that ends there inside its
example; an n-gram's bucket depends on its tokens alone. The bag's output at each position
is the mean, over its example's tokens, of the kernel rows of those n-grams, so packed rows
give each example what it gets alone. With `ngram_unit='word'` the n-grams are of the
text's whitespace words (each word's tokens one unit; <s> and </s> words of their own),
they end at their last word's last token, and the mean is over the example's words. The
table starts at zero: a model with the bag starts with the logits of the model without it.
With `ngram_loss_weight` v, training adds v times the target's loss on the bag's logits
alone to the loss on the sum.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bloom_jax import config_lib, heads, runs, sharding, steps, tasks, tokenizer
from bloom_jax.data import pipeline
from bloom_jax.errors import ConfigError
from bloom_jax.model import BloomConfig
from bloom_jax.multitask_model import MultiTaskModel
from bloom_jax.task_types import CLASSIFICATION, REGRESSION
from tests.tiny import tiny_config

ROWS = [  # the same words in both labels: only their bigrams tell them apart
    {'text': 'good , not bad', 'label': 'positive'},
    {'text': 'bad , not good', 'label': 'negative'},
    {'text': 'not bad at all', 'label': 'positive'},
    {'text': 'not good at all', 'label': 'negative'},
    {'text': 'the cast is good and the story is not bad', 'label': 'positive'},
    {'text': 'the story is bad and the cast is not good', 'label': 'negative'},
]
ORDER, BUCKETS = 3, 1 << 12
TOLERANCE = 1e-5


@pytest.fixture(scope='module')
def tok():
  return tokenizer.train([CLASSIFICATION.training_text(r) for r in ROWS] * 5, 400)


@pytest.fixture(scope='module')
def small_tok():
  """Few merges: most words are several tokens, which word n-grams must hold together."""
  return tokenizer.train([CLASSIFICATION.training_text(r) for r in ROWS] * 5, 275)


def _task(max_length=48, **fields):  # every example whole, with either tokenizer
  return tasks.TaskSpec('t', CLASSIFICATION, source=None, labels=('negative', 'positive'),
                        max_length=max_length, attention='bidirectional', **fields)


def _batch(task, tok, packed=True):
  examples, _ = CLASSIFICATION.encode(task, tok, ROWS, True, None)
  out = CLASSIFICATION.rows(task, examples, tok.pad_id, packed)
  return out, {k: jnp.asarray(v) for k, v in out.items()}


def _examples(rows):
  """Each example's tokens, read from packed rows."""
  found = []
  for r, segments in enumerate(rows['segment_ids']):
    for k in range(1, segments.max() + 1):
      found.append(rows['input_ids'][r, segments == k].tolist())
  return found


@functools.cache
def _bucket(ngram: tuple[int, ...]) -> int:
  """The bucket of one n-gram, from a row that holds just it."""
  ids = jnp.asarray([ngram], jnp.int32)
  rows, inside = heads.ngram_buckets(ids, jnp.ones_like(ids), len(ngram), BUCKETS)
  assert bool(inside[0, -1, -1])
  return int(rows[0, -1, -1])


def test_each_position_gets_the_ngrams_that_end_there_inside_its_example(tok):
  rows, batch = _batch(_task(), tok)
  buckets, inside = jax.jit(heads.ngram_buckets, static_argnums=(2, 3))(
      batch['input_ids'], batch['segment_ids'], ORDER, BUCKETS)
  buckets, inside = np.asarray(buckets), np.asarray(inside)
  assert buckets.shape == inside.shape == (*rows['input_ids'].shape, ORDER)
  assert buckets.min() >= 0 and buckets.max() < BUCKETS
  assert not inside[rows['segment_ids'] == 0].any()  # padding has none
  for r, segments in enumerate(rows['segment_ids']):
    for k in range(1, segments.max() + 1):
      at = np.flatnonzero(segments == k)
      ids = rows['input_ids'][r, at].tolist()
      for n in range(1, ORDER + 1):
        # An example of L tokens has L - n + 1 n-grams of order n, each ending at its last.
        assert inside[r, at, n - 1].tolist() == [i >= n - 1 for i in range(len(at))]
        for i in range(n - 1, len(at)):
          assert buckets[r, at[i], n - 1] == _bucket(tuple(ids[i - n + 1:i + 1]))


def _words(ids, starts):
  """An example's words (token tuples), split where `starts` opens one."""
  words = []
  for i, start in zip(ids, starts, strict=True):
    if start or not words:
      words.append(())
    words[-1] += (i,)
  return words


@functools.cache
def _word_bucket(words: tuple[tuple[int, ...], ...]) -> int:
  """The bucket of one word n-gram, from a row that holds just it."""
  ids = jnp.asarray([[i for w in words for i in w]], jnp.int32)
  starts = jnp.asarray([[int(k == 0) for w in words for k in range(len(w))]], jnp.int32)
  rows, inside = heads.word_ngram_buckets(ids, jnp.ones_like(ids), starts, len(words), BUCKETS)
  assert bool(inside[0, -1, -1])
  return int(rows[0, -1, -1])


def test_word_rows_mark_where_each_whitespace_word_opens(small_tok):
  rows, _ = _batch(_task(ngrams=2, ngram_unit='word'), small_tok)
  assert set(rows) == set(_batch(_task(ngrams=2), small_tok)[0]) | {'word_starts'}
  assert not rows['word_starts'][rows['segment_ids'] == 0].any()
  texts = {r['text'] for r in ROWS}
  split = 0
  for r, segments in enumerate(rows['segment_ids']):
    for k in range(1, segments.max() + 1):
      at = segments == k
      words = _words(rows['input_ids'][r, at].tolist(), rows['word_starts'][r, at].tolist())
      assert words[0] == (small_tok.bos_id,) and words[-1] == (small_tok.eos_id,)
      decoded = [small_tok.decode(w) for w in words[1:-1]]
      assert ''.join(decoded) in texts and [d.strip() for d in decoded] == ''.join(decoded).split()
      split += sum(len(w) > 1 for w in words)
  assert split > len(ROWS)  # the tokenizer splits words, so the test tells words from tokens


def test_each_word_end_gets_the_word_ngrams_that_end_there_inside_its_example(small_tok):
  rows, batch = _batch(_task(ngrams=ORDER, ngram_unit='word'), small_tok)
  buckets, inside = jax.jit(heads.word_ngram_buckets, static_argnums=(3, 4))(
      batch['input_ids'], batch['segment_ids'], batch['word_starts'], ORDER, BUCKETS)
  buckets, inside = np.asarray(buckets), np.asarray(inside)
  assert buckets.shape == inside.shape == (*rows['input_ids'].shape, ORDER)
  assert buckets.min() >= 0 and buckets.max() < BUCKETS
  assert not inside[rows['segment_ids'] == 0].any()
  for r, segments in enumerate(rows['segment_ids']):
    for k in range(1, segments.max() + 1):
      at = np.flatnonzero(segments == k)
      words = _words(rows['input_ids'][r, at].tolist(), rows['word_starts'][r, at].tolist())
      ends = np.cumsum([len(w) for w in words]) - 1  # each word's last token in the example
      for n in range(1, ORDER + 1):
        want = np.zeros(len(at), bool)
        want[ends[n - 1:]] = True  # a text of W words has W - n + 1 n-grams of order n
        assert inside[r, at, n - 1].tolist() == want.tolist()
        for w in range(n - 1, len(words)):
          assert buckets[r, at[ends[w]], n - 1] == _word_bucket(tuple(words[w - n + 1:w + 1]))
  # A word's bucket is its tokens', not any one token's: words of several tokens differ.
  assert _word_bucket(((5, 6),)) != _word_bucket(((5,),)) != _word_bucket(((6,),))
  assert _word_bucket(((5,), (6,))) != _word_bucket(((5, 6),))


def test_the_bag_is_the_mean_of_its_examples_ngram_rows(tok):
  rows, batch = _batch(_task(), tok)
  bag = heads.NgramBag(2, ORDER, BUCKETS)
  kernel = np.asarray(jax.random.normal(jax.random.key(0), (BUCKETS, 2)))
  bag.kernel[...] = jnp.asarray(kernel)
  got = np.asarray(jax.jit(lambda b, i, s: b(i, s))(bag, batch['input_ids'], batch['segment_ids']))
  np.testing.assert_array_equal(got[rows['segment_ids'] == 0], 0)
  checked = 0
  for r, segments in enumerate(rows['segment_ids']):
    for k in range(1, segments.max() + 1):
      at = np.flatnonzero(segments == k)
      ids = rows['input_ids'][r, at].tolist()
      grams = [tuple(ids[i:i + n]) for n in range(1, ORDER + 1) for i in range(len(ids) - n + 1)]
      want = sum(kernel[_bucket(g)] for g in grams) / len(ids)
      np.testing.assert_allclose(got[r, at], np.broadcast_to(want, (len(at), 2)),
                                 rtol=TOLERANCE, atol=TOLERANCE)
      checked += 1
  assert checked == len(ROWS)


def test_the_word_bag_is_the_mean_of_its_examples_word_ngram_rows(small_tok):
  rows, batch = _batch(_task(ngrams=ORDER, ngram_unit='word'), small_tok)
  bag = heads.NgramBag(2, ORDER, BUCKETS, unit='word')
  kernel = np.asarray(jax.random.normal(jax.random.key(0), (BUCKETS, 2)))
  bag.kernel[...] = jnp.asarray(kernel)
  got = np.asarray(jax.jit(lambda b, *x: b(*x))(
      bag, batch['input_ids'], batch['segment_ids'], batch['word_starts']))
  np.testing.assert_array_equal(got[rows['segment_ids'] == 0], 0)
  checked = 0
  for r, segments in enumerate(rows['segment_ids']):
    for k in range(1, segments.max() + 1):
      at = np.flatnonzero(segments == k)
      words = _words(rows['input_ids'][r, at].tolist(), rows['word_starts'][r, at].tolist())
      grams = [tuple(words[i:i + n]) for n in range(1, ORDER + 1)
               for i in range(len(words) - n + 1)]
      want = sum(kernel[_word_bucket(g)] for g in grams) / len(words)
      np.testing.assert_allclose(got[r, at], np.broadcast_to(want, (len(at), 2)),
                                 rtol=TOLERANCE, atol=TOLERANCE)
      checked += 1
  assert checked == len(ROWS)


def _model(tok, ngrams, unit='token'):
  cfg = BloomConfig(vocab_size=tok.vocab_size, hidden_size=24, n_head=4, n_layer=2, init_std=0.5)
  return MultiTaskModel(cfg, {'t': _task(ngrams=ngrams, ngram_buckets=BUCKETS, ngram_unit=unit)},
                        rngs=nnx.Rngs(3))


@pytest.mark.parametrize('unit', ['token', 'word'])
def test_the_model_starts_as_without_the_bag_and_packing_changes_nothing(small_tok, unit):
  tok = small_tok
  plain, wide = _model(tok, 0), _model(tok, ORDER, unit)
  assert set(nnx.state(plain.heads['t'], nnx.Param)) == {'kernel', 'bias'}
  assert wide.heads['t'].ngrams.kernel[...].shape == (BUCKETS, 2)
  task = _task(ngrams=ORDER, ngram_unit=unit)
  rows, batch = _batch(task, tok)
  np.testing.assert_array_equal(np.asarray(wide(task, batch)), np.asarray(plain(_task(), batch)))
  wide.heads['t'].ngrams.kernel[...] = jax.random.normal(jax.random.key(1), (BUCKETS, 2))

  def scored(packed):
    rows, batch = _batch(task, tok, packed)
    logits = np.asarray(wide(task, batch))
    return sorted(logits[rows['weights'] > 0].tolist()), len(rows['weights'])

  packed, packed_rows = scored(True)
  alone, alone_rows = scored(False)
  assert packed_rows < alone_rows
  np.testing.assert_allclose(packed, alone, rtol=TOLERANCE, atol=TOLERANCE)


def test_the_bag_alone_learns_what_its_ngrams_say(tok):
  """A linear model of n-grams separates texts whose words are the same and whose bigrams
  are not ('good , not bad' and 'bad , not good')."""
  rows, batch = _batch(_task(), tok)
  at = rows['weights'] > 0
  where, targets = np.nonzero(at), jnp.asarray(rows['targets'][at])
  bag = heads.NgramBag(2, ORDER, BUCKETS)
  optimizer = nnx.Optimizer(bag, optax.adam(0.1), wrt=nnx.Param)

  def loss_fn(bag):
    logits = bag(batch['input_ids'], batch['segment_ids'])[where]
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

  @nnx.jit
  def step(bag, optimizer):
    loss, grads = nnx.value_and_grad(loss_fn)(bag)
    optimizer.update(bag, grads)
    return loss

  first = float(step(bag, optimizer))
  for _ in range(50):
    last = float(step(bag, optimizer))
  assert first == pytest.approx(np.log(2), rel=1e-5) and last < 0.05
  logits = np.asarray(bag(batch['input_ids'], batch['segment_ids']))[at]
  np.testing.assert_array_equal(logits.argmax(-1), rows['targets'][at])
  # Only the rows of n-grams that occur were trained.
  used = {_bucket(tuple(ids[i:i + n])) for ids in _examples(rows)
          for n in range(1, ORDER + 1) for i in range(len(ids) - n + 1)}
  moved = set(np.flatnonzero(np.abs(np.asarray(bag.kernel[...])).sum(-1) > 0).tolist())
  assert moved == used


def test_the_bags_optimizer_is_checked():
  config = tiny_config()
  config.optimizer.ngram_optimizer = 'rmsprop'
  with pytest.raises(ConfigError, match='optimizer.ngram_optimizer: must be one of adamw, sgd, '
                                        "adagrad, got 'rmsprop'"):
    config_lib.validate(config)
  config.optimizer.ngram_optimizer = 'sgd'
  with pytest.raises(ConfigError, match="optimizer.ngram_learning_rate: must be > 0 with "
                                        "ngram_optimizer='sgd', got 0.0"):
    config_lib.validate(config)
  config.optimizer.ngram_learning_rate = 1.0
  config_lib.validate(config)


@pytest.mark.parametrize('task_type', [CLASSIFICATION, REGRESSION])
def test_the_bags_own_loss_adds_its_weighted_terms_in_training_only(tok, task_type):
  weight = 0.5
  plain = tasks.TaskSpec('t', task_type, source=None, max_length=24, attention='bidirectional',
                         labels=('negative', 'positive') if task_type.needs_labels else None,
                         ngrams=ORDER, ngram_buckets=BUCKETS)
  own = dataclasses.replace(plain, ngram_loss_weight=weight)
  rows = [dict(r, label=str(k % 3)) if not task_type.needs_labels else r
          for k, r in enumerate(ROWS)]
  examples, _ = task_type.encode(own, tok, rows, True, None)
  packed = task_type.rows(own, examples, tok.pad_id, True)
  assert set(packed) - set(task_type.rows(plain, examples, tok.pad_id, True)) == {'ngram_weights'}
  np.testing.assert_array_equal(packed['ngram_weights'], weight * packed['weights'])
  batch = {k: jnp.asarray(v) for k, v in packed.items()}
  cfg = BloomConfig(vocab_size=tok.vocab_size, hidden_size=24, n_head=4, n_layer=2, init_std=0.5)
  model = MultiTaskModel(cfg, {'t': own}, rngs=nnx.Rngs(3))
  model.heads['t'].ngrams.kernel[...] = jax.random.normal(jax.random.key(1), (BUCKETS, 1 + (
      task_type is CLASSIFICATION)))

  def per_example(logits):  # the target's loss at each example's last token
    at = packed['weights'] > 0
    loss, _, _ = task_type.losses(logits, batch)
    return np.asarray(loss)[at]

  joint = model(own, batch)  # evaluation: the sum alone, as without the bag's loss
  np.testing.assert_array_equal(np.asarray(joint), np.asarray(model(plain, batch)))
  bag = model.heads['t'].ngrams(batch['input_ids'], batch['segment_ids'])
  if task_type is REGRESSION:
    bag = bag[..., 0]
  key = jax.random.key(0)
  trained, without = (steps.task_statistics(model, t, batch, key) for t in (own, plain))
  examples = packed['weights'].sum()
  np.testing.assert_allclose(trained['loss_sum'], per_example(joint).sum()
                             + weight * per_example(bag).sum(), rtol=TOLERANCE)
  np.testing.assert_allclose(trained['count'], (1 + weight) * examples)
  np.testing.assert_allclose(without['loss_sum'], per_example(joint).sum(), rtol=TOLERANCE)
  if task_type is CLASSIFICATION:  # accuracy stays the sum's
    assert trained['correct'] == without['correct']


def test_ngrams_are_checked_by_value_and_task_type():
  assert tasks.configure({'sentiment': dict(ngrams=2)})['sentiment'].ngrams == 2
  assert tasks.configure({'sentiment': {}})['sentiment'].ngrams == 0
  for bad in (dict(ngrams=-1), dict(ngrams=2, ngram_buckets=0), dict(ngrams=2, ngram_scale=0)):
    with pytest.raises(ConfigError, match='tasks.sentiment: ngrams must be >= 0'):
      tasks.configure({'sentiment': bad})
  with pytest.raises(ConfigError, match='tasks.sentiment.ngrams: expected int'):
    tasks.configure({'sentiment': dict(ngrams=True)})
  for name in ('tagging', 'lm', 'summarize'):
    with pytest.raises(ConfigError, match=f'tasks.{name}.ngrams: not for'):
      tasks.configure({name: dict(ngrams=2)})
  assert tasks.configure({'sentiment': dict(ngrams=2, ngram_unit='word')})[
      'sentiment'].ngram_unit == 'word'
  with pytest.raises(ConfigError, match="tasks.sentiment.ngram_unit: 'words' is not one of "
                                        r"\('token', 'word'\)"):
    tasks.configure({'sentiment': dict(ngrams=2, ngram_unit='words')})
  REGRESSION.check(tasks.TaskSpec('scores', REGRESSION, source=None, ngrams=2), 'tasks.scores')
  for bad in (dict(ngram_loss_weight=1.0), dict(ngrams=2, ngram_loss_weight=-1.0)):
    with pytest.raises(ConfigError, match='tasks.sentiment.ngram_loss_weight: must be >= 0, '
                                          'and needs tasks.sentiment.ngrams > 0'):
      tasks.configure({'sentiment': bad})


def test_sharded_steps_with_the_bag_match_one_device(tmp_path):
  config = tiny_config()
  config.tasks.sentiment.update(ngrams=2, ngram_buckets=1000, ngram_loss_weight=0.5)
  config.optimizer.update(ngram_optimizer='sgd', ngram_learning_rate=0.5)
  pipe = pipeline.Pipeline(config, workdir=str(tmp_path), multiple=8)

  def two_steps(mesh):
    setup = runs.build(config, pipe.tasks, pipe.tokenizer.vocab_size, mesh)
    state, it, losses = setup.init_train_state(), pipe.train_iterator(), []
    for _ in range(2):
      state, metrics = setup.train_step(state, sharding.global_batch(next(it), mesh))
      losses.append(float(metrics['loss']))
    return losses, jax.device_get(state['params']), setup

  one, one_params, _ = two_steps(sharding.make_mesh(dict(data=1, fsdp=1, tensor=1),
                                                    jax.devices()[:1]))
  eight, eight_params, setup = two_steps(sharding.make_mesh(dict(data=2, fsdp=2, tensor=2)))
  np.testing.assert_allclose(eight, one, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), eight_params, one_params)
  bag = one_params['heads']['sentiment']['ngrams']['kernel']
  assert bag.shape == (1000, 2) and np.abs(bag).max() > 0  # trained from its zero start
  spec = setup.state_shardings['params']['heads']['sentiment']['ngrams']['kernel'].spec
  assert spec == jax.sharding.PartitionSpec('tensor', None)  # its rows, as the vocabulary's
