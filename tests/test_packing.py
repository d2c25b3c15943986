"""Packing changes which examples share a row, never what the model computes for one.

Checked at three levels: the packer itself (every token lands once, rows stay within
their length and target budget); the trunk (each example's hidden states and logits in
a packed row equal those of the example alone, for every attention mode and position
type); and the task types (per-example losses, and whole evaluations, packed or not).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny import tiny_config

from bloom_jax import runs, sharding, steps, tasks, tokenizer
from bloom_jax.data import packing, pipeline
from bloom_jax.evaluation import Evaluator
from bloom_jax.model import Bloom, BloomConfig
from bloom_jax.multitask_model import MultiTaskModel
from bloom_jax.task_types import CLASSIFICATION, GENERATION, LM, TAGGING

VOCAB = 53
TOLERANCE = 1e-5


# --------------------------------------------------------------------------------------
# The packer
# --------------------------------------------------------------------------------------


def _examples(lengths, seed=0, prefix=False):
  rng = np.random.default_rng(seed)
  ids = [rng.integers(4, VOCAB, n).tolist() for n in lengths]
  fields = {'input_ids': packing.ragged(ids)[0],
            'weights': np.ones(int(sum(lengths)), np.float32)}
  if prefix:  # a bidirectional prefix of 1..n tokens per example
    cut = [int(rng.integers(1, n + 1)) for n in lengths]
    fields['prefix_mask'] = packing.ragged(
        [[1] * c + [0] * (n - c) for c, n in zip(cut, lengths, strict=True)])[0]
  return packing.Examples(fields, np.array(lengths, np.int32),
                          {'count': np.ones(len(lengths), np.int32)})


@pytest.mark.parametrize('row_length', [8, 16, 37])
def test_every_token_lands_once_and_rows_are_full(row_length):
  rng = np.random.default_rng(row_length)
  lengths = rng.integers(1, row_length + 1, 300)
  examples = _examples(lengths)
  rows = packing.pack(examples, row_length, pad_id=0)
  segments = rows['segment_ids']
  assert segments.shape[1] == row_length
  assert int((segments > 0).sum()) == int(lengths.sum())  # every token once
  assert int(rows['count'].sum()) == len(lengths)          # per-example values summed per row
  assert np.array_equal(rows['count'], segments.max(1))    # segments are numbered 1..k
  # Each example is contiguous and keeps its tokens in order.
  got = sorted(tuple(r[s == k]) for r, s in zip(rows['input_ids'], segments, strict=True)
               for k in range(1, s.max() + 1))
  want = sorted(tuple(examples.example(i)['input_ids']) for i in range(len(examples)))
  assert got == want
  # Best-fit decreasing leaves at most the rows' worth of the lower bound empty.
  assert len(segments) <= -(-int(lengths.sum()) // row_length) * 1.1 + 1


def test_unpacked_rows_hold_one_example_each_in_order():
  examples = _examples([3, 5, 2])
  rows = packing.pack(examples, 6, pad_id=9, packed=False)
  assert rows['segment_ids'].max(1).tolist() == [1, 1, 1]
  assert rows['input_ids'][0, 3:].tolist() == [9, 9, 9]
  assert rows['input_ids'][1, :5].tolist() == examples.example(1)['input_ids'].tolist()


def test_cost_budget_is_kept():
  lengths = np.full(50, 4)
  costs = np.random.default_rng(0).integers(1, 4, 50)
  row_of, _, num_rows = packing.assign(lengths, 32, costs, budget=5)
  spent = np.bincount(row_of, costs, minlength=num_rows)
  assert spent.max() <= 5
  assert np.bincount(row_of).max() <= 8


def test_an_example_longer_than_a_row_is_refused():
  with pytest.raises(ValueError, match='does not fit'):
    packing.assign(np.array([3, 9]), 8)


def test_row_statistics():
  rows = packing.pack(_examples([4, 4, 8]), 8, pad_id=0)
  stats = packing.row_statistics(rows)
  assert stats == {'rows': 2, 'examples_per_row': 1.5, 'nonpad_fraction': 1.0}


# --------------------------------------------------------------------------------------
# The trunk: a packed example computes what it computes alone
# --------------------------------------------------------------------------------------


@functools.cache
def _random_model(position: str, split_heads: bool = False) -> Bloom:
  abstract = nnx.eval_shape(lambda: Bloom(BloomConfig(
      vocab_size=VOCAB, hidden_size=24, n_head=6, n_layer=2, position=position,
      split_heads=split_heads), rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  rng = np.random.default_rng(1)
  state = jax.tree.map(lambda x: jnp.asarray(0.25 * rng.standard_normal(x.shape), x.dtype), state)
  return nnx.merge(graphdef, state)


@functools.partial(nnx.jit, static_argnames=('mode',))
def _logits(model, ids, mask, segment_ids, prefix_mask, mode):
  hidden, _ = model.hidden_states(ids, mask, mode=mode, prefix_mask=prefix_mask,
                                  segment_ids=segment_ids)
  return model.logits(hidden)


@pytest.mark.parametrize('position,split_heads', [
    ('alibi', False), ('alibi', True), ('sinusoidal', False), ('none', False)])
@pytest.mark.parametrize('mode', ['causal', 'bidirectional', 'prefix'])
def test_packed_examples_equal_examples_alone(mode, position, split_heads):
  model = _random_model(position, split_heads)
  lengths = [7, 3, 11, 5, 9, 2, 6]
  examples = _examples(lengths, seed=2, prefix=True)
  row_of, offset_of, _ = packing.assign(examples.lengths, 16)
  rows = packing.pack(examples, 16, pad_id=0)
  assert rows['segment_ids'].max() >= 2  # rows really hold several examples
  packed = np.asarray(_logits(model, jnp.asarray(rows['input_ids']), None,
                              jnp.asarray(rows['segment_ids']), jnp.asarray(rows['prefix_mask']),
                              mode=mode))
  for i in range(len(examples)):
    ex = examples.example(i)
    n = len(ex['input_ids'])
    alone = np.asarray(_logits(model, jnp.asarray(ex['input_ids'][None]), jnp.ones((1, n)),
                               None, jnp.asarray(ex['prefix_mask'][None]), mode=mode))[0]
    got = packed[row_of[i], offset_of[i]:offset_of[i] + n]
    np.testing.assert_allclose(got, alone, atol=TOLERANCE, rtol=0)


# --------------------------------------------------------------------------------------
# The task types: losses and evaluations, packed or not
# --------------------------------------------------------------------------------------

SENTENCES = ['the cat sat on the mat', 'a dog ran', 'birds sing in the early morning light',
             'it rained', 'we walked home after the long film', 'no', 'the sun came out again']


@functools.cache
def _tokenizer():
  return tokenizer.train(SENTENCES * 3, 120)


def _task(task_type, **fields):
  return tasks.TaskSpec('t', task_type, source=None, labels=('A', 'B', 'C'), max_length=40,
                        max_target_length=6, **fields)


CANONICAL = {
    CLASSIFICATION: [{'text': s, 'label': 'ABC'[i % 3]} for i, s in enumerate(SENTENCES)],
    TAGGING: [{'words': s.split(), 'tags': ['ABC'[len(w) % 3] for w in s.split()]}
              for s in SENTENCES],
    GENERATION: [{'source': s, 'targets': [s.split()[0] + ' ' + s.split()[-1]]}
                 for s in SENTENCES],
    LM: [{'text': '\n'.join(SENTENCES)}],
}


@pytest.mark.parametrize('task_type', [CLASSIFICATION, TAGGING, GENERATION, LM],
                         ids=lambda t: t.name)
def test_packed_losses_equal_losses_alone(task_type):
  tok = _tokenizer()
  task = _task(task_type)
  examples, _ = task_type.encode(task, tok, CANONICAL[task_type], False, tok.token_bytes())
  cfg = BloomConfig(vocab_size=tok.vocab_size, hidden_size=24, n_head=4, n_layer=2)
  model = MultiTaskModel(cfg, {'t': task}, rngs=nnx.Rngs(3))

  def per_example(packed):
    rows = task_type.rows(task, examples, tok.pad_id, packed)
    batch = {k: jnp.asarray(v) for k, v in rows.items()
             if k not in ('num_words', 'target_bytes')}
    loss, weights, _ = task_type.losses(model(task, batch), batch)
    # The segment each scored position belongs to, for rows that score a subset.
    segment = rows['segment_ids']
    if 'target_positions' in rows:
      segment = np.take_along_axis(segment, rows['target_positions'], axis=1)
    totals = []
    for r in range(len(segment)):
      for k in range(1, rows['segment_ids'][r].max() + 1):
        at = (segment[r] == k) & (np.asarray(weights[r]) > 0)
        totals.append(float(np.sum(np.asarray(loss[r])[at])))
    return sorted(totals), len(segment)

  packed, packed_rows = per_example(True)
  alone, alone_rows = per_example(False)
  if task_type is not LM:  # LM windows fill their rows already
    assert packed_rows < alone_rows
  np.testing.assert_allclose(packed, alone, atol=TOLERANCE * 10, rtol=TOLERANCE)


def test_evaluation_is_the_same_packed_or_not(tmp_path):
  config = tiny_config()
  mesh = sharding.make_mesh(config.mesh)
  results = []
  for packed in (True, False):
    config.data.pack = packed
    pipe = pipeline.Pipeline(config, workdir=str(tmp_path))
    setup = runs.build(config, pipe.tasks, pipe.tokenizer.vocab_size, mesh)
    params = setup.init_train_state()['params']
    results.append(Evaluator(config, pipe, setup.graphdef, setup.abstract_state, mesh)
                   .evaluate(params, 'validation'))
  packed, unpacked = results
  assert packed.keys() == unpacked.keys()
  for key in packed:
    np.testing.assert_allclose(packed[key], unpacked[key], rtol=1e-5, err_msg=key)


def test_training_counts_the_examples_it_packs():
  rows = packing.pack(_examples([3, 4, 5, 2, 7]), 8, pad_id=0)
  assert float(steps.count_segments(jnp.asarray(rows['segment_ids']))) == 5.0


def test_attention_override_takes_effect():
  tok = _tokenizer()
  task = _task(CLASSIFICATION)
  causal = dataclasses.replace(task, attention='causal')
  examples, _ = CLASSIFICATION.encode(task, tok, CANONICAL[CLASSIFICATION], False, None)
  rows = CLASSIFICATION.rows(task, examples, tok.pad_id, True)
  batch = {k: jnp.asarray(v) for k, v in rows.items()}
  cfg = BloomConfig(vocab_size=tok.vocab_size, hidden_size=24, n_head=4, n_layer=2)
  model = MultiTaskModel(cfg, {'t': task}, rngs=nnx.Rngs(3))
  both_ways, left_to_right = model(task, batch), model(causal, batch)
  # The pooled (last) token sees every token either way; the first token does not.
  first = rows['segment_ids'] != np.pad(rows['segment_ids'][:, :-1], ((0, 0), (1, 0)))
  first &= rows['segment_ids'] > 0
  assert not np.allclose(np.asarray(both_ways)[first], np.asarray(left_to_right)[first])
