"""The loss at the heart of every task (token_nll against a float64 reference), per-task
statistics of packed rows, and the train step's skipping of non-finite updates."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bloom_jax import compat, losses, steps
from bloom_jax import tokenizer as tokenizer_lib
from bloom_jax.model import BloomConfig
from bloom_jax.multitask_model import MultiTaskModel
from bloom_jax.task_types import CLASSIFICATION, GENERATION, LM, TAGGING
from bloom_jax.tasks import TaskSpec


def _reference(logits, targets):
  logits = logits.astype(np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  return -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0], log_probs


def test_token_nll_matches_log_softmax_and_argmax():
  rng = np.random.default_rng(0)
  logits = (4 * rng.standard_normal((3, 7, 50))).astype(np.float32)
  targets = rng.integers(0, 50, (3, 7))
  targets[0] = logits[0].argmax(-1)  # some positions predicted right
  nll, correct = jax.jit(losses.token_nll)(jnp.asarray(logits), jnp.asarray(targets))
  expected, _ = _reference(logits, targets)
  np.testing.assert_allclose(np.asarray(nll), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(correct), logits.argmax(-1) == targets)
  assert np.asarray(correct)[0].all() and not np.asarray(correct).all()


def test_token_nll_gradient_is_softmax_minus_one_hot():
  rng = np.random.default_rng(1)
  logits = rng.standard_normal((4, 9)).astype(np.float32)
  targets = rng.integers(0, 9, (4,))
  grad = jax.grad(lambda x: jnp.sum(losses.token_nll(x, jnp.asarray(targets))[0]))(logits)
  _, log_probs = _reference(logits, targets)
  expected = np.exp(log_probs) - np.eye(9)[targets]
  np.testing.assert_allclose(np.asarray(grad), expected, atol=1e-6)


def test_count_segments_counts_the_examples_of_packed_rows():
  segment_ids = np.array([[1, 1, 2, 2, 2, 3, 0, 0],
                          [1, 1, 1, 1, 1, 1, 1, 1],
                          [0, 0, 0, 0, 0, 0, 0, 0]])
  assert float(steps.count_segments(jnp.asarray(segment_ids))) == 4.0


# ---------------------------------------------------------------------------------------
# Packing changes which examples share a row, never a task's statistics.

WORDS = 'the big dog sees a small cat near the old river .'.split()


@pytest.fixture(scope='module')
def tok():
  return tokenizer_lib.train([' '.join(WORDS), 'sees dog cat'] * 20, 120)


def _spec(name, task_type, **fields):
  return TaskSpec(name, task_type, source=None, max_length=24, **fields)


def _rows_of_sentences(task_type, rng, n):
  sentences = [list(rng.choice(WORDS, rng.integers(1, 9))) for _ in range(n)]
  if task_type is CLASSIFICATION:
    return [{'text': ' '.join(s), 'label': str(rng.integers(0, 3))} for s in sentences]
  if task_type is TAGGING:
    return [{'words': s, 'tags': [str(len(w) % 3) for w in s]} for s in sentences]
  if task_type is GENERATION:
    return [{'source': ' '.join(s), 'targets': [' '.join(s[::2])]} for s in sentences]
  return [{'text': ' '.join(s)} for s in sentences]


@pytest.mark.parametrize('task_type', [CLASSIFICATION, TAGGING, GENERATION, LM],
                         ids=lambda t: t.name)
def test_task_statistics_do_not_depend_on_packing(tok, task_type):
  labels = ('0', '1', '2') if task_type.needs_labels else None
  spec = _spec('task', task_type, labels=labels, max_target_length=5)
  cfg = BloomConfig(vocab_size=tok.vocab_size, hidden_size=16, n_head=2, n_layer=2)
  model = MultiTaskModel(cfg, {'task': spec}, rngs=nnx.Rngs(0))
  rows = _rows_of_sentences(task_type, np.random.default_rng(0), 12)
  examples, _ = task_type.encode(spec, tok, rows, False, tok.token_bytes())
  packed = task_type.rows(spec, examples, tok.pad_id, packed=True)
  alone = task_type.rows(spec, examples, tok.pad_id, packed=False)
  if task_type is not LM:  # LM windows are full rows already
    assert len(packed['input_ids']) < len(alone['input_ids']) == len(examples)

  def stats(batch):
    batch = {k: jnp.asarray(v) for k, v in batch.items() if k not in ('num_words',
                                                                     'target_bytes')}
    return jax.device_get(steps.task_statistics(model, spec, batch))

  a, b = stats(packed), stats(alone)
  assert set(a) == {'loss_sum', 'count', 'examples'} | ({'correct'} if 'correct' in b else set())
  assert a['examples'] == b['examples'] == len(examples)
  assert a['count'] == b['count'] == float(np.sum(examples.tokens['weights'] > 0))
  np.testing.assert_allclose(a['loss_sum'], b['loss_sum'], rtol=2e-5)
  if 'correct' in a:
    assert a['correct'] == b['correct']
  # Evaluation reads the same sums row by row.
  eval_step = functools.partial(
      steps.eval_step, graphdef=nnx.graphdef(model), abstract_state=nnx.state(model), task=spec)
  params = compat.to_pure_dict(nnx.state(model))
  batch = {k: v for k, v in packed.items() if k not in ('num_words', 'target_bytes')}
  result = jax.device_get(eval_step(params, batch))
  assert result['loss_sum'].shape == result['count'].shape == (len(packed['input_ids']),)
  np.testing.assert_allclose(result['loss_sum'].sum(), a['loss_sum'], rtol=2e-5)
  assert result['count'].sum() == a['count']


def test_classification_loss_reads_each_segments_last_token(tok):
  spec = _spec('cls', CLASSIFICATION, labels=('a', 'b'))
  cfg = BloomConfig(vocab_size=tok.vocab_size, hidden_size=16, n_head=2, n_layer=1)
  model = MultiTaskModel(cfg, {'cls': spec}, rngs=nnx.Rngs(1))
  rows = [{'text': 'the big dog', 'label': 'b'}, {'text': 'a cat', 'label': 'a'}]
  examples, _ = CLASSIFICATION.encode(spec, tok, rows, False, None)
  batch = {k: jnp.asarray(v) for k, v in
           CLASSIFICATION.rows(spec, examples, tok.pad_id, packed=True).items()}
  assert batch['segment_ids'].shape[0] == 1  # both in one row
  logits = np.asarray(model(spec, batch))
  ends = np.flatnonzero(np.asarray(batch['weights'][0]))
  log_probs = jax.nn.log_softmax(logits[0, ends], axis=-1)
  expected = -(log_probs[0, 1] + log_probs[1, 0])
  stats = steps.task_statistics(model, spec, batch)
  np.testing.assert_allclose(float(stats['loss_sum']), float(expected), rtol=1e-5)
  assert float(stats['count']) == 2.0 and float(stats['examples']) == 2.0


@pytest.mark.parametrize('attention', ['causal', 'bidirectional'])
def test_the_model_applies_the_tasks_attention(tok, attention):
  spec = dataclasses.replace(_spec('cls', CLASSIFICATION, labels=('a', 'b')), attention=attention)
  cfg = BloomConfig(vocab_size=tok.vocab_size, hidden_size=16, n_head=2, n_layer=1)
  model = MultiTaskModel(cfg, {'cls': spec}, rngs=nnx.Rngs(2))
  examples, _ = CLASSIFICATION.encode(
      spec, tok, [{'text': 'the big dog'}, {'text': 'a cat'}], False, None)
  batch = {k: jnp.asarray(v) for k, v in
           CLASSIFICATION.rows(spec, examples, tok.pad_id, packed=True).items()}
  first = np.flatnonzero(np.asarray(batch['segment_ids'][0]) == 1)
  changed = dict(batch, input_ids=batch['input_ids'].at[0, first[-2]].set(tok.encode('cat')[0]))
  before, after = np.asarray(model(spec, batch)), np.asarray(model(spec, changed))
  earlier = first[:-2]   # positions before the changed token, in the same segment
  moved = not np.allclose(before[0, earlier], after[0, earlier], atol=1e-6)
  assert moved == (attention == 'bidirectional')
  # The other example of the row never sees the change.
  other = np.asarray(batch['segment_ids'][0]) == 2
  assert other.any()
  np.testing.assert_allclose(before[0, other], after[0, other], atol=1e-6)


# ---------------------------------------------------------------------------------------


def test_a_nonfinite_step_leaves_parameters_and_moments_untouched():
  cfg = BloomConfig(vocab_size=31, hidden_size=16, n_head=2, n_layer=1)
  spec = TaskSpec('lm', LM, source=None, max_length=6)
  make_model = lambda: MultiTaskModel(cfg, {'lm': spec}, rngs=nnx.Rngs(0))
  graphdef, abstract_state = nnx.split(nnx.eval_shape(make_model))
  params = compat.to_pure_dict(nnx.state(make_model()))
  optimizer = optax.adamw(1e-2)
  step = jax.jit(functools.partial(
      steps.train_step, graphdef=graphdef, abstract_state=abstract_state,
      tasks=(spec,), optimizer=optimizer, schedule=lambda _: 1e-2, seed=0, grad_accum=1))
  ids = np.random.default_rng(0).integers(0, 31, (2, 6)).astype(np.int32)
  batch = {'lm': {'input_ids': ids, 'segment_ids': np.ones_like(ids), 'targets': ids,
                  'weights': np.ones(ids.shape, np.float32)}}
  state = {'params': params, 'opt_state': optimizer.init(params), 'step': jnp.int32(0),
           'nonfinite': jnp.full((2,), -1, jnp.int32)}
  state, metrics = step(state, batch)
  assert int(metrics['skipped']) == 0 and int(state['step']) == 1
  assert float(metrics['lm/examples']) == 2.0 and 'lm/accuracy' in metrics
  before = jax.device_get(state)

  batch['lm']['weights'][0, 0] = np.nan   # a NaN loss
  after, metrics = step(state, batch)
  assert int(metrics['skipped']) == 1 and int(after['step']) == 2
  assert after['nonfinite'].tolist() == [1, 0]   # (step, task) of the first skip
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(after['params']), before['params'])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(after['opt_state']),
               before['opt_state'])

  batch['lm']['weights'][0, 0] = 1.0      # and the next finite step updates again
  resumed, metrics = step(after, batch)
  assert int(metrics['skipped']) == 0
  moved = jax.tree.map(lambda a, b: not np.array_equal(a, b),
                       jax.device_get(resumed['params']), before['params'])
  assert all(jax.tree.leaves(moved))
