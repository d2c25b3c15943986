"""The shared public datasets parse with the published counts (skipped when absent)."""

from bloom_jax import tasks
from bloom_jax.data import builders


def _read(task, data_dir):
  source = tasks.REGISTRY[task].source
  config = builders.LocalConfig(
      name=task, head=source.head, reader=source.reader, files=source.paths(str(data_dir)),
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
