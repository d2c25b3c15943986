"""The shared public datasets parse with the published counts (skipped when absent)."""

import dataclasses

import pytest

from bloom_jax import tasks
from bloom_jax import tokenizer as tokenizer_lib
from bloom_jax.data import builders, pipeline, readers


def _read(task, data_dir):
  source = tasks.REGISTRY[task].source
  config = builders.LocalConfig(
      name=task, task_type=source.task_type, reader=source.reader,
      files=source.paths(str(data_dir)),
      labels=tasks.REGISTRY[task].labels, options=source.options, holdout=source.holdout,
      holdout_seed=source.holdout_seed)
  return builders.read_splits(config)


def test_pos(real_data_dir):
  rows, problems = _read('pos', real_data_dir)
  assert {s: len(r) for s, r in rows.items()} == {'train': 12544, 'validation': 2001, 'test': 2077}
  assert sum(len(r['words']) for r in rows['validation']) == 25147
  assert not any(p['counts'] for p in problems.values())


def test_sst2(real_data_dir):
  rows, problems = _read('sst2', real_data_dir)
  assert {s: len(r) for s, r in rows.items()} == {'train': 67349, 'validation': 872}
  assert sum(r['label'] == '1' for r in rows['validation']) == 444


def test_trec_holdout_is_seeded_and_test_kept(real_data_dir):
  rows, problems = _read('trec', real_data_dir)
  assert len(rows['test']) == 500 and len(rows['train']) + len(rows['validation']) == 5452
  assert len(rows['validation']) == 545
  assert problems['train']['counts'] == {'not_utf8': 1}
  assert _read('trec', real_data_dir)[0]['validation'] == rows['validation']


def test_aeslc_keeps_all_references(real_data_dir):
  rows, _ = _read('aeslc', real_data_dir)
  assert {s: len(r) for s, r in rows.items()} == {'train': 14436, 'validation': 1960, 'test': 1906}
  assert all(len(r['targets']) == 4 for r in rows['test'])
  assert all(len(r['targets']) == 1 for r in rows['train'])


def test_shakespeare_contiguous_split(real_data_dir):
  rows, _ = _read('shakespeare', real_data_dir)
  train, val = rows['train'][0]['text'], rows['validation'][0]['text']
  full = (real_data_dir / 'tiny_shakespeare' / 'input.txt').read_text()
  assert train + val == full and abs(len(train) / len(full) - 0.9) < 0.001


@pytest.mark.parametrize('task, split', [('pos', 'validation'), ('trec', 'test'),
                                         ('aeslc', 'validation')])
def test_real_examples_encode_and_pack_whole(real_data_dir, task, split):
  spec = dataclasses.replace(tasks.REGISTRY[task], max_length=64, max_target_length=12)
  raw, _ = _read(task, real_data_dir)
  problems = readers.Problems()
  rows = pipeline.clean_rows(spec, raw[split], problems)
  assert len(rows) == len(raw[split]) and not problems.counts
  tok = tokenizer_lib.train(pipeline.training_text(spec, rows), 500)
  examples, info = spec.type.encode(spec, tok, rows, False, tok.token_bytes())
  assert len(examples) == len(rows) and (examples.lengths <= spec.max_length).all()
  assert info['truncated'].sum() == (info['length'] > spec.max_length).sum()
  packed = spec.type.rows(spec, examples, tok.pad_id, packed=True)
  segments = packed['segment_ids'].max(axis=1)
  assert segments.sum() == len(rows)
  if task != 'aeslc':   # most emails fill a row on their own
    assert len(segments) < len(rows)
  assert packed['weights'].sum() == examples.tokens['weights'].sum()
  if task == 'pos':
    assert packed['num_words'].sum() == 25147
  if task == 'trec':   # one label, at each example's </s>
    assert packed['weights'].sum() == len(rows)
    assert (packed['input_ids'][packed['weights'] > 0] == tok.eos_id).all()
  if task == 'aeslc':   # the vocabulary projection stays within each row's budget
    assert packed['weights'].sum(axis=1).max() <= packed['target_positions'].shape[1]
