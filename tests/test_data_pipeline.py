"""The pipeline end to end: synthetic, local-file and TFDS-catalog sources, batches, resume."""

import json
import os
import subprocess
import sys
import textwrap

import ml_collections
import numpy as np
import pytest

from bloom_jax.data import packing, pipeline, records, stream
from bloom_jax.errors import CheckpointError, DataError
from bloom_jax.task_types import GENERATION
from bloom_jax.tokenizer import strip_space
from configs import default, real_multitask

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def synthetic_config(tfds_dir):
  c = default.get_config()
  c.data.tfds_dir = str(tfds_dir)
  c.data.batch_size = 16
  c.tokenizer.vocab_size = 300
  for task in c.tasks.values():
    task.rate = 1.0
  return c


@pytest.fixture(scope='module')
def synthetic(tmp_path_factory):
  root = tmp_path_factory.mktemp('synthetic')
  # The default data cache, which the training tests share: the builder still runs from
  # scratch wherever the cache is new (as in CI), but only once per machine.
  config = synthetic_config('')
  workdir = str(root / 'work')
  return config, pipeline.Pipeline(config, workdir=workdir), workdir


def _segments(rows):
  """(row, positions) of every example in a dict of packed rows."""
  return [(r, np.flatnonzero(ids == s)) for r, ids in enumerate(rows['segment_ids'])
          for s in range(1, int(ids.max(initial=0)) + 1)]


def _token_lists(rows):
  return sorted(tuple(rows['input_ids'][r, at].tolist()) for r, at in _segments(rows))


def _example_token_lists(examples):
  return sorted(tuple(examples.example(i)['input_ids'].tolist()) for i in range(len(examples)))


def test_tasks_and_batch_format(synthetic):
  _, pipe, _ = synthetic
  assert {n: (t.type.name, t.batch_size, t.attention) for n, t in pipe.tasks.items()} == {
      'sentiment': ('classification', 4, 'bidirectional'),
      'tagging': ('tagging', 4, 'bidirectional'), 'summarize': ('generation', 4, 'prefix'),
      'lm': ('lm', 4, 'causal')}
  batch = next(pipe.train_iterator())
  shapes = {t: {k: v.shape for k, v in b.items()} for t, b in batch.items()}
  row = lambda length: {k: (4, length) for k in ('input_ids', 'segment_ids', 'targets', 'weights')}
  assert shapes['sentiment'] == row(32)
  assert shapes['tagging'] == row(32)   # num_words is for evaluation only
  budget = 2 * (pipe.tasks['summarize'].target_length + 1)
  assert shapes['summarize'] == {'input_ids': (4, 32), 'segment_ids': (4, 32),
                                 'prefix_mask': (4, 32), 'target_positions': (4, budget),
                                 'targets': (4, budget), 'weights': (4, budget)}
  assert shapes['lm'] == row(64)
  for b in batch.values():
    assert b['input_ids'].dtype == np.int32 and b['weights'].dtype == np.float32
    assert b['segment_ids'].dtype == np.int32
    assert (b['input_ids'][b['segment_ids'] == 0] == pipe.tokenizer.pad_id).all()
    assert (b['segment_ids'].max(axis=1) >= 1).all()   # no empty training rows
  gen = batch['summarize']
  assert (np.take_along_axis(gen['segment_ids'], gen['target_positions'], 1)[gen['weights'] > 0]
          > 0).all()


def _groups(pipe, task, size, process_index=0, process_count=1, seed=0):
  prepared = pipe.prepared[task]
  return stream.packed_groups(prepared.file('train'), prepared.splits['train']['schema'],
                              pipe.tasks[task], pipe.tokenizer.pad_id, pipe.packed, seed,
                              process_index, process_count, size)


def test_an_epoch_of_packed_rows_holds_every_example_once(synthetic):
  _, pipe, _ = synthetic
  examples = pipe.examples('tagging', 'train')
  n = len(examples)
  groups = _groups(pipe, 'tagging', n)   # one group: the whole first epoch
  rows = groups[0]
  assert 'num_words' not in rows          # an evaluation-only field
  assert rows['segment_ids'].max(axis=1).sum() == n
  assert len(rows['input_ids']) < n       # packed
  assert rows['weights'].sum() == examples.tokens['weights'].sum()
  assert _token_lists(rows) == _example_token_lists(examples)
  again = groups[1]                       # the second epoch: the same examples, another order
  assert _token_lists(again) == _token_lists(rows)
  assert not np.array_equal(again['input_ids'][:8], rows['input_ids'][:8])


def test_row_statistics_of_the_training_stream(synthetic):
  _, pipe, _ = synthetic
  stats = pipe.row_statistics(steps=5)
  it = pipe.train_iterator()
  batches = [next(it) for _ in range(5)]
  for task, spec in pipe.tasks.items():
    segments = np.concatenate([b[task]['segment_ids'] for b in batches])
    assert stats[task]['rows'] == 5 * spec.batch_size == len(segments)
    assert stats[task]['examples_per_row'] == pytest.approx(segments.max(axis=1).mean())
    assert stats[task]['nonpad_fraction'] == pytest.approx((segments > 0).mean())
    assert stats[task]['nonpad_fraction'] > 0.8, (task, stats[task])


def test_tokenizer_cached_in_workdir(synthetic):
  config, pipe, workdir = synthetic
  (cached,) = [f for f in os.listdir(workdir) if f.startswith('tokenizer-')]
  assert cached.endswith('.json')
  again = pipeline.Pipeline(config, workdir=workdir)
  assert again.tokenizer.fingerprint() == pipe.tokenizer.fingerprint()


def test_batches_are_a_function_of_seed_and_step(synthetic):
  config, pipe, workdir = synthetic
  a, b = pipe.train_iterator(), pipe.train_iterator()
  first = [next(a) for _ in range(3)]
  np.testing.assert_equal(next(b), first[0])
  state = json.loads(json.dumps(b.get_state()))   # what a checkpoint stores
  assert set(state['shards']['0']) == set(pipe.tasks)
  c = pipe.train_iterator()
  c.set_state(state)
  np.testing.assert_equal([next(c), next(c)], first[1:])
  assert not np.array_equal(first[0]['sentiment']['input_ids'], first[1]['sentiment']['input_ids'])
  other = config.copy_and_resolve_references()
  other.seed = 1
  reseeded = next(pipeline.Pipeline(other, workdir=workdir).train_iterator())
  assert not np.array_equal(reseeded['sentiment']['input_ids'], first[0]['sentiment']['input_ids'])
  with pytest.raises(CheckpointError, match='before streaming'):
    c.set_state({'step': 3})   # the state of the pipeline before streaming
  with pytest.raises(CheckpointError, match=r"no position for task\(s\) \['lm'\]"):
    c.set_state({'shards': {'0': {t: p for t, p in state['shards']['0'].items() if t != 'lm'}}})


def test_batches_spanning_groups_resume(synthetic):
  """With groups of 2 examples a batch spans several groups; the positions still resume."""
  config, pipe, workdir = synthetic
  small = config.copy_and_resolve_references()
  small.data.pack_group = 2
  again = pipeline.Pipeline(small, workdir=workdir)
  it = again.train_iterator()
  batches = [next(it) for _ in range(6)]
  state = it.get_state()
  assert state['shards']['0']['tagging']['group'] >= 6   # 4 rows of 1 or more examples a step
  more = next(it)
  resumed = again.train_iterator()
  resumed.set_state(state)
  np.testing.assert_equal(next(resumed), more)
  assert all((b['tagging']['segment_ids'].max(axis=1) >= 1).all() for b in batches)


def _index_records(tmp_path, n):
  """A split whose example i is the one token i: which examples a stream read is visible."""
  writer = records.Writer(str(tmp_path / 'indices.array_record'))
  ids = np.arange(n, dtype=np.int32)
  writer.write(packing.Examples({'input_ids': ids, 'targets': ids,
                                 'weights': np.ones(n, np.float32)}, np.ones(n, np.int32)))
  writer.close()
  return writer.path, writer.schema


def test_processes_read_disjoint_shares_whose_union_is_the_epoch(synthetic, tmp_path):
  _, pipe, _ = synthetic
  n = 1000
  path, schema = _index_records(tmp_path, n)
  spec = pipe.tasks['tagging']

  def seen(process_index, process_count, groups):
    ds = stream.packed_groups(path, schema, spec, 0, True, 7, process_index, process_count,
                              -(-n // (process_count * groups)))
    ids = np.concatenate([ds[g]['input_ids'][ds[g]['segment_ids'] > 0] for g in range(groups)])
    return ids.tolist()

  shares = [seen(p, 2, 4) for p in range(2)]
  assert not set(shares[0]) & set(shares[1])
  assert sorted(shares[0] + shares[1]) == list(range(n))
  assert sorted(seen(0, 1, 4)) == list(range(n))           # one process reads it all
  assert seen(0, 1, 4) != list(range(n))                     # shuffled
  # Batches: each process holds its part of every task's rows.
  parts = [next(pipe.train_iterator(p, 2)) for p in range(2)]
  for task, spec in pipe.tasks.items():
    assert [len(p[task]['input_ids']) for p in parts] == [spec.batch_size // 2] * 2
  with pytest.raises(DataError, match='input_shards: 3 shards do not split evenly over 2'):
    _with_input_shards(pipe, 3).train_iterator(0, 2)


def _with_input_shards(pipe, shards):
  config = pipe.config.copy_and_resolve_references()
  config.data.input_shards = shards
  return pipeline.Pipeline(config)


def test_fixed_input_shards_make_batches_independent_of_the_process_count(synthetic):
  """With data.input_shards=2, one process reads both shards: its batches are the two
  processes' batches side by side, and their positions resume either way."""
  _, pipe, _ = synthetic
  sharded = _with_input_shards(pipe, 2)
  one = sharded.train_iterator()
  both = [sharded.train_iterator(p, 2) for p in range(2)]
  for _ in range(3):
    whole, parts = next(one), [next(it) for it in both]
    for task in whole:
      for field in whole[task]:
        np.testing.assert_equal(whole[task][field],
                                np.concatenate([p[task][field] for p in parts]))
  gathered = np.concatenate([it.positions() for it in both])   # what train.py gathers
  assert both[0].state_of(gathered) == one.get_state()
  resumed = sharded.train_iterator(1, 2)
  resumed.set_state(one.get_state())   # process 1 of 2 picks its shard from the whole state
  np.testing.assert_equal(next(resumed), next(both[1]))
  with pytest.raises(DataError, match=r'data.input_shards: the rows per step of .* into 3'):
    _with_input_shards(pipe, 3).train_iterator()


def test_resume_in_a_new_process(synthetic, tmp_path):
  config, pipe, workdir = synthetic
  it = pipe.train_iterator()
  for _ in range(3):
    next(it)
  state = json.dumps(it.get_state())
  expected = [next(it) for _ in range(2)]
  script = textwrap.dedent(f"""
      import json, sys
      import ml_collections
      import numpy as np
      sys.path.insert(0, {REPO!r})
      from bloom_jax.data import pipeline
      c = ml_collections.ConfigDict(json.loads({config.to_json()!r}))
      it = pipeline.Pipeline(c, workdir={workdir!r}).train_iterator()
      it.set_state(json.loads({state!r}))
      flat = {{f'{{i}}/{{t}}/{{k}}': v for i in range(2) for t, b in next(it).items()
              for k, v in b.items()}}
      np.savez({str(tmp_path / 'resumed.npz')!r}, **flat)
  """)
  subprocess.run([sys.executable, '-c', script], check=True, cwd=REPO)
  with np.load(tmp_path / 'resumed.npz') as z:
    for key in z.files:
      i, task, field = key.split('/')
      np.testing.assert_array_equal(z[key], expected[int(i)][task][field], err_msg=key)
    assert len(z.files) == sum(len(b) for batch in expected for b in batch.values())


def test_processes_sharing_a_cache_prepare_it_in_turn(tmp_path):
  # Without the lock, a second trainer on a cold cache fails to move its copy of a TFDS
  # dataset over the first's.
  holder = subprocess.Popen([sys.executable, '-c', textwrap.dedent('''
      import pathlib, sys, time
      from bloom_jax.data import pipeline
      with pipeline.exclusive(sys.argv[1]):
        print('holding', flush=True)
        time.sleep(1)
        (pathlib.Path(sys.argv[1]) / 'finished').touch()
      '''), str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == 'holding'
  with pipeline.exclusive(str(tmp_path)):
    assert (tmp_path / 'finished').exists()
  assert holder.wait(timeout=60) == 0


def test_eval_batches_cover_split_once_with_padding(synthetic):
  _, pipe, _ = synthetic
  examples = pipe.examples('tagging', 'validation', 100)
  assert len(examples) == 100
  batches = list(pipe.eval_batches('tagging', 'validation', 64, max_examples=100))
  rows = pipe.rows('tagging', examples)
  n = len(rows['input_ids'])
  assert [len(b['input_ids']) for b in batches] == [64] * -(-n // 64)
  merged = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  assert set(merged) == {'input_ids', 'segment_ids', 'targets', 'weights', 'num_words'}
  # Every selected example exactly once: segment counts, weights and words add up, and
  # the segments' tokens are the examples'.
  assert merged['segment_ids'].max(axis=1).sum() == 100
  assert merged['weights'].sum() == examples.tokens['weights'].sum()
  assert merged['num_words'].sum() == examples.scalars['num_words'].sum()
  assert _token_lists(merged) == _example_token_lists(examples)
  for field in rows:
    np.testing.assert_array_equal(merged[field][:n], rows[field], err_msg=field)
  # Rows that pad the last batch hold nothing and weigh nothing.
  padding = merged['segment_ids'][n:]
  assert len(padding) == 64 * len(batches) - n > 0 and not padding.any()
  assert not merged['weights'][n:].any() and not merged['num_words'][n:].any()
  assert (merged['input_ids'][n:] == pipe.tokenizer.pad_id).all()
  again = list(pipe.eval_batches('tagging', 'validation', 64, max_examples=100))
  np.testing.assert_equal(again, batches)
  # Two processes each take their half of every batch.
  halves = [list(pipe.eval_batches('tagging', 'validation', 64, 100, p, 2)) for p in range(2)]
  for whole, a, b in zip(batches, *halves, strict=True):
    np.testing.assert_equal({k: np.concatenate([a[k], b[k]]) for k in a}, whole)
  lm = next(pipe.eval_batches('lm', 'validation', 8))
  assert lm['target_bytes'].dtype == np.int32 and (lm['target_bytes'] > 0).all()
  gen = next(pipe.eval_batches('summarize', 'test', 8))
  spec = pipe.tasks['summarize']
  assert gen['target_positions'].shape == gen['weights'].shape == (8, 2 * (spec.target_length + 1))
  # The prompts evaluation decodes from leave room for the target and its eos.
  prompts = GENERATION.prompts(pipe.examples('summarize', 'test', 8))
  assert len(prompts) == 8
  assert all(p[-1] == pipe.tokenizer.sep_id and p[0] == pipe.tokenizer.bos_id and
             len(p) <= spec.max_length - spec.target_length - 1 for p in prompts)


def test_eval_rows_unpacked_keep_example_order(synthetic):
  config, pipe, workdir = synthetic
  unpacked = config.copy_and_resolve_references()
  unpacked.data.pack = False
  alone = pipeline.Pipeline(unpacked, workdir=workdir)
  examples = alone.examples('sentiment', 'validation', 10)
  batch = next(alone.eval_batches('sentiment', 'validation', 16, max_examples=10))
  assert (batch['segment_ids'].max(axis=1) == [1] * 10 + [0] * 6).all()
  for i in range(10):
    ids = examples.example(i)['input_ids']
    assert batch['input_ids'][i, :len(ids)].tolist() == ids.tolist()
  # The training rows too: one example each.
  assert len(_groups(alone, 'tagging', 512)[0]['input_ids']) == 512
  assert len(_groups(pipe, 'tagging', 512)[0]['input_ids']) < 512


def test_references_follow_eval_order(synthetic):
  _, pipe, _ = synthetic
  refs = pipe.references('summarize', 'validation', max_examples=5)
  examples = pipe.examples('summarize', 'validation', 5)
  samples = pipe.prepared['summarize'].stats['validation']['samples']
  assert len(refs) == len(examples) == 5
  decoded = []
  for i, r in enumerate(refs):
    example = examples.example(i)
    # Source and target are encoded as after a space (tokenizer.strip_space takes it off).
    target = strip_space(pipe.tokenizer.decode(example['targets'][example['weights'] > 0]))
    assert target and r[0].startswith(target)  # a target may be cut at max_target_length
    assert r == samples[i]['targets']
    source = strip_space(pipe.tokenizer.decode(example['input_ids'][example['prefix_mask'] > 0]))
    assert samples[i]['source'].startswith(source)
    decoded.append(target)
  # The eval rows score exactly those targets (packed in any order).
  batch = next(pipe.eval_batches('summarize', 'validation', 8, max_examples=5))
  scored = []
  for r, at in _segments(batch):
    mine = np.isin(batch['target_positions'][r], at) & (batch['weights'][r] > 0)
    scored.append(strip_space(pipe.tokenizer.decode(batch['targets'][r][mine])))
  assert sorted(scored) == sorted(decoded)


def test_inference_encoding_matches_training(synthetic):
  _, pipe, _ = synthetic
  tok = pipe.tokenizer
  spec = pipe.tasks['tagging']
  rows = spec.type.inference_rows(spec, tok, ['the  cat sees a fish .'])
  assert rows == [{'words': ['the', 'cat', 'sees', 'a', 'fish', '.']}]
  examples, _ = spec.type.encode(spec, tok, rows, False, None)
  tagged = spec.type.rows(spec, examples, tok.pad_id, packed=False)
  assert tagged['num_words'].tolist() == [6] and tagged['segment_ids'].max() == 1
  assert tagged['weights'].sum() == 6  # one first subword per word
  assert tok.decode(tagged['input_ids'][0]) == 'the cat sees a fish .'

  cls = pipe.tasks['sentiment']
  rows = cls.type.inference_rows(cls, tok, ['a  lovely dog', 'the end', ''])
  examples, _ = cls.type.encode(cls, tok, rows, False, None)
  batch = cls.type.rows(cls, examples, tok.pad_id, packed=False)
  assert [tok.decode(ids) for ids in batch['input_ids']] == ['a lovely dog', 'the end', '']
  ends = [np.flatnonzero(w).tolist() for w in batch['weights']]   # where the label is read
  assert ends == [[int(m.sum()) - 1] for m in batch['segment_ids']]
  assert (batch['input_ids'][np.arange(3), [e[0] for e in ends]] == tok.eos_id).all()

  gen = pipe.tasks['summarize']
  rows = gen.type.inference_rows(gen, tok, ['the cat sees a dog .'])
  examples, _ = gen.type.encode(gen, tok, rows, False, None)
  batch = gen.type.rows(gen, examples, tok.pad_id, packed=False)
  (prompt,) = gen.type.prompts(examples)
  assert prompt == [tok.bos_id] + tok.encode_after_space(['the cat sees a dog .'])[0] + [
      tok.sep_id]
  assert batch['input_ids'][0, :len(prompt)].tolist() == prompt
  assert batch['prefix_mask'].sum() == batch['segment_ids'].sum() == len(prompt)
  assert batch['weights'].sum() == 0

  # A raw text encodes exactly as its example did in training and evaluation.
  for name, field in (('sentiment', 'text'), ('tagging', 'words'), ('summarize', 'source')):
    spec = pipe.tasks[name]
    sample = pipe.prepared[name].stats['validation']['samples'][0]
    raw = ' '.join(sample[field]) if field == 'words' else sample[field]
    examples, _ = spec.type.encode(spec, tok, spec.type.inference_rows(spec, tok, [raw]), False,
                                   None)
    prepared = pipe.examples(name, 'validation', 1).example(0)
    mine = examples.example(0)
    if name == 'summarize':
      prefix = prepared['prefix_mask'] > 0   # the prompt: inference rows have no target
      prepared = {k: v[prefix] for k, v in prepared.items()}
    assert mine['input_ids'].tolist() == prepared['input_ids'].tolist(), name
    if name == 'tagging':
      assert mine['weights'].tolist() == prepared['weights'].tolist()


def _fake_layout(root):
  """The data.dir layout of the public datasets, tiny, with some bad rows in each file."""
  def put(rel, content):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())

  tok = lambda i, w, t: f'{i}\t{w}\t{w}\t{t}\t_\t_\t0\troot\t_\t_'
  sent = '\n'.join([tok(1, 'The', 'DET'), tok(2, 'dog', 'NOUN'), tok(3, 'runs', 'VERB'), ''])
  bad = '\n'.join([tok(1, 'Bad', 'ADJ'), '2\tbroken', ''])
  for split in ('train', 'dev', 'test'):
    put(f'ud_english_ewt/en_ewt-ud-{split}.conllu', (sent + '\n') * 30 + bad)
  put('sst2_glue/train.tsv', 'sentence\tlabel\n' + 'a fine film \t1\nawful \t0\n' * 30 + 'x\t9\n')
  put('sst2_glue/dev.tsv', 'sentence\tlabel\nfine \t1\n')
  put('trec_qc/TREC.train', b'LOC:city Where is Paris ?\nNUM:date When ?\n' * 30 +
      b'HUM:ind Who is the sister\xf0city ?\n')
  put('trec_qc/TREC.test', 'LOC:city Where is Rome ?\n')
  put('aeslc/train.jsonl', json.dumps({'body': 'Please see the report.', 'subject': 'Report'})
      + '\n{not json\n')
  put('aeslc/dev.jsonl', json.dumps({'body': 'Meet at 3.', 'subject': 'Meeting', 'ann0': 'meet',
                                     'ann1': 'time', 'ann2': 'at 3'}) + '\n')
  put('aeslc/test.jsonl', json.dumps({'body': 'Lunch?', 'subject': 'Lunch'}) + '\n')
  put('tiny_shakespeare/input.txt',
      ''.join(f'LINE {i}:\nTo be or not to be.\n\n' for i in range(60)))


def test_local_file_tasks(tmp_path):
  _fake_layout(tmp_path / 'data')
  c = real_multitask.get_config()
  c.data.dir, c.data.tfds_dir = str(tmp_path / 'data'), str(tmp_path / 'tfds')
  c.tokenizer.vocab_size = 300
  for task in c.tasks.values():
    task.max_length = 24
  c.tasks.aeslc.max_target_length = 6
  pipe = pipeline.Pipeline(c, multiple=2)
  stats = {t: p.stats for t, p in pipe.prepared.items()}
  assert set(stats['pos']) == {'train', 'validation', 'test'}
  assert stats['pos']['train']['problems']['counts'] == {'malformed_line': 1, 'dropped_sentence': 1}
  assert stats['sst2']['train']['problems']['counts'] == {'unknown_label': 1}
  assert set(stats['sst2']) == {'train', 'validation'}
  assert stats['trec']['train']['examples'] + stats['trec']['validation']['examples'] == 61
  assert stats['trec']['train']['problems']['counts'] == {'not_utf8': 1}
  assert stats['trec']['validation']['examples'] == 6
  assert stats['aeslc']['train']['problems']['counts'] == {'malformed_line': 1}
  assert pipe.references('aeslc', 'validation') == [['Meeting', 'meet', 'time', 'at 3']]
  shakespeare = pipe.prepared['shakespeare'].stats
  assert shakespeare['validation']['samples'][0]['text'].startswith('LINE 54:')
  assert all(t.batch_size % 2 == 0 and t.batch_size >= 2 for t in pipe.tasks.values())
  with pytest.raises(DataError, match="task 'sst2' has no labelled 'test'"):
    pipe.eval_batches('sst2', 'test', 4)


def test_missing_local_file_is_one_line_error(tmp_path):
  c = real_multitask.get_config()
  c.data.dir, c.data.tfds_dir = str(tmp_path), str(tmp_path / 'tfds')
  with pytest.raises(DataError, match=rf"{tmp_path}/\S+: file not found \(task '\w+'"):
    pipeline.Pipeline(c)


def _mock_catalog_pipeline(tmp_path, names):
  import tensorflow_datasets as tfds

  c = default.get_config()
  c.data.tfds_dir = str(tmp_path / 'tfds')
  c.tokenizer.vocab_size = 300
  c.tasks = {name: dict(rate=1.0, loss_weight=1.0, max_length=32) for name in names}
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    return pipeline.Pipeline(c)


def test_tfds_catalog_tasks_with_mock_data(tmp_path):
  names = ('tfds_sst2', 'tfds_trec', 'ag_news', 'tfds_aeslc', 'xsum', 'cnn_dailymail',
           'tfds_shakespeare')
  pipe = _mock_catalog_pipeline(tmp_path, names)
  for name in names:
    examples = pipe.examples(name, 'train')
    assert len(examples) == pipe.prepared[name].count('train') > 0, name
    assert pipe.has_split(name, 'validation'), name
    rows = pipe.rows(name, examples)
    assert rows['segment_ids'].max(axis=1).sum() == len(examples)
  assert pipe.tasks['xsum'].attention == 'prefix' and pipe.tasks['ag_news'].type.name == \
      'classification'
  batch = next(pipe.train_iterator())
  assert set(batch) == set(names)
  assert all(b['segment_ids'].shape == b['input_ids'].shape for b in batch.values())


def test_tfds_tagging_skips_misaligned_sentences(tmp_path):
  # Mock UD sentences have unrelated token and tag counts: every one is skipped and counted,
  # which leaves no training data, a one-line error naming the task.
  with pytest.raises(DataError, match=r"^task 'tfds_pos': no usable training examples "
                                           r'\(malformed_example=12 '):
    _mock_catalog_pipeline(tmp_path, ['tfds_pos'])


def test_tfds_tagging_converter():
  from bloom_jax.data import sources

  class Info:
    names = type('ClassLabel', (), {'names': ['DET', 'NOUN', '_']})
    features = {'upos': type('Sequence', (), {'feature': names})}

  convert = lambda ex: sources.tagging(ex, Info, words_key='tokens', tags_key='upos')
  assert convert({'tokens': ['the', 'dog'], 'upos': [0, 1]}) == {
      'words': ['the', 'dog'], 'tags': ['DET', 'NOUN']}
  assert convert({'tokens': ['the', 'dog'], 'upos': [0, 2]}) == 'missing_label'
  assert convert({'tokens': ['the'], 'upos': [0, 1]}) == 'malformed_example'


def test_single_task_run_can_share_the_mixture_tokenizer(synthetic, tmp_path):
  config, pipe, _ = synthetic
  alone = config.copy_and_resolve_references()
  alone.tasks = {'sentiment': config.tasks.sentiment.to_dict()}
  alone.tokenizer.train_on = ','.join(config.tasks)
  shared = pipeline.Pipeline(alone, workdir=str(tmp_path))
  assert list(shared.tasks) == ['sentiment']
  assert shared.tokenizer.fingerprint() == pipe.tokenizer.fingerprint()
  alone.tokenizer.train_on = 'sentiment,no_such_task'
  with pytest.raises(DataError, match="tokenizer.train_on: unknown task 'no_such_task'"):
    pipeline.Pipeline(alone, workdir=str(tmp_path))


def test_real_config_variants():
  mixture = real_multitask.get_config()
  alone = real_multitask.get_config('single=trec,seed=3')
  assert list(alone.tasks) == ['trec'] and alone.seed == 3
  # Data-matched: the task's rows per step and its tokenizer are the mixture's.
  assert alone.data.batch_size == round(mixture.data.batch_size * mixture.tasks.trec.rate)
  assert alone.tokenizer.train_on == mixture.tokenizer.train_on
  # ... and so is everything else about the task (its head, pooling, losses) but its rate
  # and its loss weight, which only weighs it against the other tasks.
  assert {t.loss_weight for t in mixture.tasks.values()} != {1.0}
  for task in mixture.tasks:
    by_itself = real_multitask.get_config(f'single={task}').tasks[task].to_dict()
    assert by_itself.pop('rate') == 1.0 and by_itself.pop('loss_weight') == 1.0
    assert by_itself == {k: v for k, v in mixture.tasks[task].to_dict().items()
                         if k not in ('rate', 'loss_weight')}
  # Every evaluated step's checkpoint is kept: the selection on validation comes after.
  for c in (mixture, alone, real_multitask.get_config('steps=600')):
    assert c.keep_checkpoints * c.checkpoint_every == c.total_steps
    assert c.eval_every == c.checkpoint_every
  for bad in ('single=nope', 'seed=x', 'other=1', 'single', 'sweep=dropout'):
    with pytest.raises(ValueError, match='expected single=TASK'):
      real_multitask.get_config(bad)


def test_preparing_data_leaves_nothing_in_the_system_temp_folder(tmp_path):
  """TFDS makes an empty `tmp*tfds` folder for every builder of an unprepared dataset."""
  import glob
  import tempfile

  def leftovers():
    return set(glob.glob(os.path.join(tempfile.gettempdir(), 'tmp*tfds')))

  before = leftovers()
  _fake_layout(tmp_path / 'data')
  c = real_multitask.get_config()
  c.data.dir, c.data.tfds_dir = str(tmp_path / 'data'), str(tmp_path / 'tfds')
  c.tokenizer.vocab_size = 300
  c.tasks = ml_collections.ConfigDict({'sst2': c.tasks.sst2.to_dict()})
  c.tasks.sst2.rate = 1.0
  pipeline.Pipeline(c)
  assert leftovers() <= before


def test_the_subword_tags_are_read_at_is_part_of_the_cache_key(synthetic, tmp_path):
  config, _, _ = synthetic
  first = config.copy_and_resolve_references()
  first.tasks.tagging.max_length = 256  # no sentence cut: every word is read either way
  last = first.copy_and_resolve_references()
  last.tasks.tagging.subword = 'last'
  first, last = (pipeline.Pipeline(c, workdir=str(tmp_path / n)).examples('tagging', 'train', 200)
                 .tokens for c, n in ((first, 'first'), (last, 'last')))
  np.testing.assert_array_equal(first['input_ids'], last['input_ids'])
  assert not np.array_equal(first['weights'], last['weights'])
  # Each word's tag moves from its first subword to its last: later, or nowhere for a word
  # of one subword.
  firsts, lasts = np.flatnonzero(first['weights']), np.flatnonzero(last['weights'])
  assert len(firsts) == len(lasts) and (lasts >= firsts).all()
  np.testing.assert_array_equal(first['targets'][firsts], last['targets'][lasts])


def test_the_bags_ngram_unit_is_part_of_the_cache_key(synthetic, tmp_path):
  """Word n-grams read where each word starts, which rows prepared for token n-grams lack."""
  config, _, _ = synthetic
  tokens = config.copy_and_resolve_references()
  tokens.tasks.sentiment.ngrams = 2
  words = tokens.copy_and_resolve_references()
  words.tasks.sentiment.ngram_unit = 'word'
  tokens, words = (pipeline.Pipeline(c, workdir=str(tmp_path / n))
                   .examples('sentiment', 'train', 50)
                   for c, n in ((tokens, 'tokens'), (words, 'words')))
  assert set(words.tokens) == set(tokens.tokens) | {'word_starts'}
  for key, value in tokens.tokens.items():
    np.testing.assert_array_equal(words.tokens[key], value)
  # Every example opens with <s>, and its text's first token, each a word of its own.
  opens = np.concatenate([[0], np.cumsum(words.lengths)[:-1]])
  assert words.tokens['word_starts'][opens].all() and words.tokens['word_starts'][opens + 1].all()
  assert 0 < words.tokens['word_starts'].mean() < 1
