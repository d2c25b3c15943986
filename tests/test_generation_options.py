"""Generation's options: tokenization of source and target, the auxiliary source loss and
evaluation's decoding options.

Source and target are tokenized as after a space in running text, so a word of the source
has the same tokens at the start of the target, and generated text loses that space.
`source_lm_weight` adds a next-token loss on the source in training only: weighted
beside the target's, computed under causal attention (nothing sees the token it
predicts), packed or not; with 0 nothing changes. `tasks.<name>.decoding` sets
evaluation's decoding, checked at configuration, and `bloom_jax.evaluate --decoding`
compares settings on a trained run.
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from tiny import SUBJECT_ROWS as ROWS
from tiny import tiny_config

from bloom_jax import decoding, evaluate, losses, steps, tasks, tokenizer, train
from bloom_jax.errors import ConfigError
from bloom_jax.model import Bloom, BloomConfig
from bloom_jax.multitask_model import MultiTaskModel
from bloom_jax.task_types import GENERATION
from bloom_jax.task_types.generation import decoding_options, target_budget

WEIGHT = 0.25
TOLERANCE = 1e-5


@pytest.fixture(scope='module')
def tok():
  return tokenizer.train([GENERATION.training_text(r) for r in ROWS] * 5, 500)


def _task(**fields):
  fields = {'attention': 'causal', **fields}
  return tasks.TaskSpec('t', GENERATION, source=None, max_length=40, max_target_length=6,
                        **fields)


def _batch(task, tok, packed=True, rows=ROWS):
  examples, _ = GENERATION.encode(task, tok, rows, True, None)
  out = GENERATION.rows(task, examples, tok.pad_id, packed)
  return out, {k: jnp.asarray(v) for k, v in out.items()}


@functools.cache
def _model(vocab_size: int, attention: str = 'causal') -> MultiTaskModel:
  cfg = BloomConfig(vocab_size=vocab_size, hidden_size=24, n_head=4, n_layer=2, init_std=0.5)
  return MultiTaskModel(cfg, {'t': _task(attention=attention)}, rngs=nnx.Rngs(3))


def _runs(sequence: list[int], part: list[int]) -> bool:
  return any(sequence[i:i + len(part)] == part for i in range(len(sequence) - len(part) + 1))


# --------------------------------------------------------------------------------------
# Tokenization: the target's words are spelled as in the source
# --------------------------------------------------------------------------------------


def test_a_source_word_keeps_its_tokens_at_the_start_of_the_target(tok):
  examples, _ = GENERATION.encode(_task(), tok, ROWS, True, None)
  for i, row in enumerate(ROWS[:3]):
    example = examples.example(i)
    source = example['input_ids'][example['prefix_mask'] > 0][1:-1].tolist()
    target = example['targets'][example['weights'] > 0][:-1].tolist()
    first = tok.encode_after_space([row['targets'][0].split()[0]])[0]
    # The target's first word has the tokens it has in the source.
    assert target[:len(first)] == first and _runs(source, first), row
    # Encoded on its own, as before, the target spelled its first word otherwise.
    assert tok.encode(row['targets'][0])[0] not in source, row


def test_decoded_text_loses_the_space_again(tok):
  ids = tok.encode_after_space(['Service Agreement'])[0]
  assert tok.decode(ids) == ' Service Agreement'
  assert tokenizer.strip_space(tok.decode(ids)) == 'Service Agreement'
  assert tok.encode_after_space(['']) == [[]]  # an empty prompt stays <s> <sep>
  examples, _ = GENERATION.encode(_task(), tok, ROWS[:1], True, None)
  lines = GENERATION.describe(_task(), tok, examples.example(0), ROWS[0])
  assert all('matches source' in line for line in lines), lines


class _Decoder:
  """Stands in for an Evaluator and a Predictor: generates with the model's convention
  (a leading space) and records the options it was asked to decode with."""

  def __init__(self, tok):
    self.tokenizer, self.options = tok, []

  def scored_batches(self, task, examples):
    return []

  def generate(self, task, prompts, width, **options):
    self.options.append(options)
    return [' Service Agreement'] * len(prompts)


def test_evaluation_decodes_with_the_tasks_options_and_predictions_lose_the_space(tok):
  decoder = _Decoder(tok)
  assert GENERATION.predict(decoder, _task(), ['please sign'])[0]['generated'] == \
      'Service Agreement'
  task = _task(decoding=(('length_penalty', 0.6), ('method', 'beam'), ('num_beams', 3)))
  examples, _ = GENERATION.encode(task, tok, ROWS[:1], False, None)
  out = GENERATION.evaluate(decoder, task, examples, [['Service Agreement']])
  assert out['rouge1'] == 100.0
  assert decoder.options[-1] == {'method': 'beam', 'num_beams': 3, 'length_penalty': 0.6,
                                 'min_new_tokens': 0, 'max_new_tokens': 6}


# --------------------------------------------------------------------------------------
# The source loss
# --------------------------------------------------------------------------------------


def test_source_lm_weight_zero_changes_nothing(tok):
  plain, aux = _task(), _task(source_lm_weight=WEIGHT)
  rows, batch = _batch(plain, tok)
  aux_rows, aux_batch = _batch(aux, tok)
  assert set(rows) == {'input_ids', 'prefix_mask', 'targets', 'weights', 'segment_ids',
                       'target_positions'}
  assert set(aux_rows) - set(rows) == {'source_weights', 'source_targets'}
  for key, value in rows.items():  # the source loss only adds fields
    np.testing.assert_array_equal(aux_rows[key], value, err_msg=key)
  model = _model(tok.vocab_size)
  trained = model(plain, batch, jax.random.key(0))  # training, weight 0: the target alone
  np.testing.assert_array_equal(trained, model(plain, batch))
  # Evaluation with a source loss computes what it computes without one.
  np.testing.assert_array_equal(model(aux, aux_batch), model(plain, batch))
  assert GENERATION.vocab_positions(plain) == target_budget(plain)
  assert GENERATION.vocab_positions(aux) == aux.max_length  # training projects every position


def test_source_weights_mark_each_source_token_once(tok):
  rows, _ = _batch(_task(source_lm_weight=WEIGHT), tok)
  assert rows['segment_ids'].max() >= 2  # several examples share a row
  bodies = {tuple(b) for b in tok.encode_after_space([r['source'] for r in ROWS])}
  found = set()
  for r, segment_ids in enumerate(rows['segment_ids']):
    for s in range(1, segment_ids.max() + 1):
      at = np.flatnonzero(segment_ids == s)
      weighted = at[rows['source_weights'][r, at] > 0]
      # <s> and each source token but the last predict the next source token.
      n = rows['prefix_mask'][r, at].sum() - 2
      assert weighted.tolist() == at[:n].tolist()
      assert (rows['source_weights'][r, weighted] == WEIGHT).all()
      assert rows['source_targets'][r, weighted].tolist() == \
          rows['input_ids'][r, weighted + 1].tolist()
      found.add(tuple(rows['source_targets'][r, weighted].tolist()))
  assert found == bodies
  assert (rows['source_targets'][rows['source_weights'] == 0] == tok.pad_id).all()


def _next_token_nll(model, batch):
  """Every position's loss on the next token of its row, from a causal pass alone."""
  hidden, _ = model.bloom.hidden_states(batch['input_ids'], segment_ids=batch['segment_ids'],
                                        mode='causal')
  nll, _ = losses.token_nll(model.bloom.logits(hidden),
                            jnp.pad(batch['input_ids'][:, 1:], ((0, 0), (0, 1))))
  return np.asarray(nll)


def test_training_adds_the_weighted_source_loss_and_evaluation_does_not(tok):
  plain, aux = _task(), _task(source_lm_weight=WEIGHT)
  rows, batch = _batch(aux, tok)
  model = _model(tok.vocab_size)
  nll = _next_token_nll(model, batch)
  target = np.zeros_like(nll)
  np.put_along_axis(target, rows['target_positions'], rows['weights'], axis=1)
  trained = steps.task_statistics(model, aux, batch, jax.random.key(0))
  want = np.sum(nll * (target + rows['source_weights']))
  np.testing.assert_allclose(trained['loss_sum'], want, rtol=TOLERANCE)
  np.testing.assert_allclose(trained['count'], target.sum() + rows['source_weights'].sum())
  alone = steps.task_statistics(model, plain, batch, jax.random.key(0))
  assert trained['correct'] == alone['correct']   # accuracy stays the target's
  np.testing.assert_allclose(alone['loss_sum'], np.sum(nll * target), rtol=TOLERANCE)
  evaluated = steps.task_statistics(model, aux, batch)
  for key in ('loss_sum', 'count', 'correct'):
    assert evaluated[key] == alone[key], key


def test_packed_source_losses_equal_losses_alone(tok):
  aux = _task(source_lm_weight=WEIGHT)
  model = _model(tok.vocab_size)

  def per_example(packed):
    rows, batch = _batch(aux, tok, packed)
    loss, weights, _ = GENERATION.losses(model(aux, batch, jax.random.key(0)), batch)
    loss, weights = np.asarray(loss), np.asarray(weights)
    # Scored slots: the target positions, then every position of the row.
    every = np.broadcast_to(np.arange(aux.max_length), rows['input_ids'].shape)
    positions = np.concatenate([rows['target_positions'], every], axis=1)
    segment = np.take_along_axis(rows['segment_ids'], positions, axis=1)
    totals = [float(np.sum((loss * weights)[r][segment[r] == k]))
              for r in range(len(segment)) for k in range(1, rows['segment_ids'][r].max() + 1)]
    return sorted(totals), len(segment)

  packed, packed_rows = per_example(True)
  alone, alone_rows = per_example(False)
  assert packed_rows < alone_rows
  np.testing.assert_allclose(packed, alone, atol=TOLERANCE * 10, rtol=TOLERANCE)


@pytest.mark.parametrize('attention', ['causal', 'prefix'])
def test_no_source_prediction_sees_its_token(tok, attention):
  """Changing a source token changes no source prediction before it under the causal
  attention the loss requires; read both ways (what the check refuses) it would."""
  aux = _task(source_lm_weight=WEIGHT, attention=attention)
  rows, batch = _batch(aux, tok, packed=False, rows=ROWS[:1])
  model = _model(tok.vocab_size, attention)
  q = int(np.flatnonzero(rows['source_weights'][0])[-1])  # the last source token predicted
  other = 5 if rows['input_ids'][0, q + 1] != 5 else 6
  changed = dict(batch, input_ids=batch['input_ids'].at[0, q + 1].set(other))
  before = np.asarray(model(aux, batch, jax.random.key(0))['source'])[0, :q + 1]
  after = np.asarray(model(aux, changed, jax.random.key(0))['source'])[0, :q + 1]
  if attention == 'causal':
    np.testing.assert_array_equal(before, after)
  else:
    assert not np.allclose(before, after)


# --------------------------------------------------------------------------------------
# Decoding options
# --------------------------------------------------------------------------------------


def test_default_decoding_is_greedy_to_the_target_length():
  assert decoding_options(_task()) == {'method': 'greedy', 'min_new_tokens': 0,
                                       'max_new_tokens': 6}


@pytest.mark.parametrize('options, message', [
    (dict(method='sample'), r'decoding.method: .sample. is not one of'),
    (dict(beams=2), r'decoding.beams: not a decoding option'),
    (dict(num_beams=2), r"decoding.num_beams: applies to method='beam' only"),
    (dict(method='beam', num_beams=0), r'decoding.num_beams: must be positive'),
    (dict(method='beam', num_beams=2.5), r'decoding.num_beams: expected int'),
    (dict(min_new_tokens=17), r'decoding.min_new_tokens: must be in \[0, max_new_tokens 16\]'),
    (dict(max_new_tokens=-1), r'decoding.max_new_tokens: must be positive'),
    (dict(length_penalty=True, method='beam'), r'decoding.length_penalty: expected float'),
])
def test_bad_decoding_options_are_named(options, message):
  with pytest.raises(ConfigError, match='tasks.summarize.' + message):
    tasks.configure({'summarize': dict(decoding=options)})


def test_decoding_options_from_the_config():
  cfg = ml_collections.ConfigDict(dict(
      decoding=dict(method='beam', num_beams=4, length_penalty=1, min_new_tokens=2)))
  task = tasks.configure({'summarize': cfg})['summarize']
  assert task.decoding == (('length_penalty', 1), ('method', 'beam'), ('min_new_tokens', 2),
                           ('num_beams', 4))
  assert decoding_options(task) == {'method': 'beam', 'num_beams': 4, 'length_penalty': 1,
                                    'min_new_tokens': 2, 'max_new_tokens': 16}
  with pytest.raises(ConfigError, match='tasks.sentiment.decoding: not for classification'):
    tasks.configure({'sentiment': dict(decoding=dict(method='beam'))})


@pytest.mark.parametrize('method', ['greedy', 'beam'])
def test_min_new_tokens_keeps_eos_away(method):
  cfg = BloomConfig(vocab_size=64, hidden_size=32, n_layer=2, n_head=4, init_std=1.0)
  split = nnx.split(Bloom(cfg, rngs=nnx.Rngs(0)))
  ids = jnp.asarray(np.random.default_rng(0).integers(5, 64, (3, 4)), jnp.int32)
  mask = jnp.ones_like(ids)
  generate = functools.partial(decoding.generate, *split, ids, mask, max_new_tokens=8,
                               pad_id=0, method=method, num_beams=3)
  eos = int(generate(eos_id=-1, method='greedy')['tokens'][0, 0])  # row 0's likeliest first
  if method == 'greedy':
    assert generate(eos_id=eos)['lengths'][0] == 1
  held = generate(eos_id=eos, min_new_tokens=3)
  tokens, lengths = np.asarray(held['tokens']), np.asarray(held['lengths'])
  assert (tokens[:, :3] != eos).all() and (lengths >= 4).all()
  with pytest.raises(ValueError, match='min_new_tokens must be in'):
    generate(eos_id=eos, min_new_tokens=9)


def test_parse_decoding():
  assert evaluate.parse_decoding('method=beam, num_beams=4,length_penalty=0.6') == \
      {'method': 'beam', 'num_beams': 4, 'length_penalty': 0.6}
  with pytest.raises(ConfigError, match='is not name=value'):
    evaluate.parse_decoding('beam')


def _write_jsonl(path, rows) -> None:
  path.write_text(''.join(json.dumps({'body': r['source'], 'subject': r['targets'][0]}) + '\n'
                          for r in rows))


def test_evaluate_compares_decoding_settings_on_a_trained_run(tmp_path):
  (tmp_path / 'mail').mkdir()
  _write_jsonl(tmp_path / 'mail' / 'train.jsonl', ROWS * 8)
  _write_jsonl(tmp_path / 'mail' / 'dev.jsonl', ROWS)
  config = tiny_config()
  config.total_steps = config.checkpoint_every = 2
  config.best_metric = ''
  config.data.dir = str(tmp_path)
  config.data.batch_size = 8
  config.tasks = ml_collections.ConfigDict({'mail': dict(
      type='generation', reader='jsonl', max_length=32, max_target_length=6,
      files=dict(train='mail/train.jsonl', validation='mail/dev.jsonl'),
      options=dict(source_field='body', target_fields=['subject']))})
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  with pytest.raises(ConfigError, match=r'--decoding method=sample: tasks.mail.decoding.method'):
    evaluate.compare_decoding(workdir, 'validation', None, ['method=greedy', 'method=sample'])
  settings = ['method=greedy', 'method=beam,num_beams=1',
              'method=beam,num_beams=2,min_new_tokens=2']
  _, results, path = evaluate.compare_decoding(workdir, 'validation', None, settings)
  rouge = {s: results[f'validation/mail {s}/rougeL'] for s in settings}
  assert rouge['method=greedy'] == rouge['method=beam,num_beams=1']  # one beam is greedy
  assert len({results[f'validation/mail {s}/loss'] for s in settings}) == 1  # ROUGE only
  assert os.path.basename(path) == 'validation_decoding_2.json'
  with open(path, encoding='utf-8') as f:
    assert json.load(f)['validation/mail method=greedy/rougeL'] == rouge['method=greedy']
