"""The pipeline end to end: synthetic, local-file and TFDS-catalog sources, batches, resume."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bloom_jax import data
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
  return config, data.Pipeline(config, workdir=workdir), workdir


def test_tasks_and_batch_format(synthetic):
  _, pipe, _ = synthetic
  assert {n: (t.head, t.batch_size) for n, t in pipe.tasks.items()} == {
      'sentiment': ('classification', 4), 'tagging': ('tagging', 4),
      'summarize': ('generation', 4), 'lm': ('lm', 4)}
  batch = next(pipe.train_iterator())
  shapes = {t: {k: v.shape for k, v in b.items()} for t, b in batch.items()}
  assert shapes['sentiment'] == {'input_ids': (4, 32), 'attention_mask': (4, 32),
                                 'targets': (4,), 'weights': (4,)}
  assert shapes['tagging'] == {k: (4, 32) for k in ('input_ids', 'attention_mask', 'targets',
                                                    'weights')}
  assert set(shapes['summarize']) == {'input_ids', 'attention_mask', 'prefix_mask', 'targets',
                                      'weights'}
  assert shapes['lm']['targets'] == (4, 64)
  for b in batch.values():
    assert b['input_ids'].dtype == np.int32 and b['weights'].dtype == np.float32
    assert (b['input_ids'][b['attention_mask'] == 0] == pipe.tokenizer.pad_id).all()


def test_tokenizer_cached_in_workdir(synthetic):
  config, pipe, workdir = synthetic
  (cached,) = [f for f in os.listdir(workdir) if f.startswith('tokenizer-')]
  assert cached.endswith('.json')
  again = data.Pipeline(config, workdir=workdir)
  assert again.tokenizer.fingerprint() == pipe.tokenizer.fingerprint()


def test_batches_are_a_function_of_seed_and_step(synthetic):
  config, pipe, workdir = synthetic
  a, b = pipe.train_iterator(), pipe.train_iterator()
  first = [next(a) for _ in range(3)]
  b.set_state({'step': 2})
  np.testing.assert_equal(next(b), first[2])
  assert a.get_state() == {'step': 3} and json.dumps(a.get_state())
  assert not np.array_equal(first[0]['sentiment']['input_ids'], first[1]['sentiment']['input_ids'])


def test_epochs_are_permutations(synthetic):
  _, pipe, _ = synthetic
  it = pipe.train_iterator()
  n = len(pipe.prepared['sentiment'].arrays['train']['input_ids'])
  seen = np.concatenate([it.indices(1, 'sentiment', s) for s in range(n // 4)])
  assert sorted(seen.tolist()) == list(range(n))


def test_process_shards_partition_the_batch(synthetic):
  _, pipe, _ = synthetic
  whole = pipe.train_iterator().batch(5)
  parts = [pipe.train_iterator(p, 2).batch(5) for p in range(2)]
  for task in whole:
    np.testing.assert_equal(np.concatenate([p[task]['input_ids'] for p in parts]),
                            whole[task]['input_ids'])
  with pytest.raises(ValueError, match='split evenly'):
    pipe.train_iterator(0, 3)


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
      from bloom_jax import data
      c = ml_collections.ConfigDict(json.loads({config.to_json()!r}))
      it = data.Pipeline(c, workdir={workdir!r}).train_iterator()
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
  with data.pipeline.exclusive(str(tmp_path)):
    assert (tmp_path / 'finished').exists()
  assert holder.wait(timeout=60) == 0


def test_eval_batches_cover_split_once_with_padding(synthetic):
  _, pipe, _ = synthetic
  batches = list(pipe.eval_batches('tagging', 'validation', 64, max_examples=100))
  assert [len(b['example_mask']) for b in batches] == [64, 64]
  mask = np.concatenate([b['example_mask'] for b in batches])
  assert mask.sum() == 100 and not mask[100:].any()
  last = batches[-1]
  assert (last['weights'][last['example_mask'] == 0] == 0).all()
  assert (last['input_ids'][last['example_mask'] == 0] == pipe.tokenizer.pad_id).all()
  assert 'num_words' in last
  again = list(pipe.eval_batches('tagging', 'validation', 64, max_examples=100))
  np.testing.assert_equal(again, batches)
  lm = next(pipe.eval_batches('lm', 'validation', 8))
  assert lm['target_bytes'].dtype == np.int32 and (lm['target_bytes'] > 0).all()
  gen = next(pipe.eval_batches('summarize', 'test', 8))
  spec = pipe.tasks['summarize']   # the prompt leaves room for the target and its eos
  assert gen['prompt_ids'].shape == (8, spec.max_length - spec.target_length - 1)
  assert (gen['prompt_ids'][:, -1] == pipe.tokenizer.sep_id).all()


def test_references_follow_eval_order(synthetic):
  _, pipe, _ = synthetic
  refs = pipe.references('summarize', 'validation', max_examples=3)
  batch = next(pipe.eval_batches('summarize', 'validation', 3))
  for r, targets, w in zip(refs, batch['targets'], batch['weights'], strict=True):
    decoded = pipe.tokenizer.decode(targets[w > 0])
    assert decoded and r[0].startswith(decoded)  # a target may be cut at max_target_length


def test_encode_for_inference(synthetic):
  _, pipe, _ = synthetic
  tagged = pipe.encode_for_inference('tagging', ['the  cat sees a fish .'])
  assert tagged['words'] == [['the', 'cat', 'sees', 'a', 'fish', '.']]
  assert 'targets' not in tagged and tagged['num_words'].tolist() == [6]
  assert tagged['weights'].sum() == 6  # one first subword per word
  cls = pipe.encode_for_inference('sentiment', ['a lovely dog'])
  assert pipe.tokenizer.decode(cls['input_ids'][0]) == 'a lovely dog'
  gen = pipe.encode_for_inference('summarize', ['the cat sees a dog .'])
  assert (gen['prompt_ids'][0, -1], gen['prefix_mask'].sum()) == (
      pipe.tokenizer.sep_id, gen['attention_mask'].sum())


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
  pipe = data.Pipeline(c, multiple=2)
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
  with pytest.raises(data.DataError, match="task 'sst2' has no labelled 'test'"):
    pipe.eval_batches('sst2', 'test', 4)


def test_missing_local_file_is_one_line_error(tmp_path):
  c = real_multitask.get_config()
  c.data.dir, c.data.tfds_dir = str(tmp_path), str(tmp_path / 'tfds')
  with pytest.raises(data.DataError, match=rf"{tmp_path}/\S+: file not found \(task '\w+'"):
    data.Pipeline(c)


def _mock_catalog_pipeline(tmp_path, names):
  import tensorflow_datasets as tfds

  c = default.get_config()
  c.data.tfds_dir = str(tmp_path / 'tfds')
  c.tokenizer.vocab_size = 300
  c.tasks = {name: dict(rate=1.0, loss_weight=1.0, max_length=32) for name in names}
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    return data.Pipeline(c)


def test_tfds_catalog_tasks_with_mock_data(tmp_path):
  names = ('tfds_sst2', 'tfds_trec', 'ag_news', 'tfds_aeslc', 'xsum', 'cnn_dailymail',
           'tfds_shakespeare')
  pipe = _mock_catalog_pipeline(tmp_path, names)
  for name in names:
    assert len(pipe.prepared[name].arrays['train']['input_ids']), name
    assert 'validation' in pipe.prepared[name].arrays, name
  assert set(next(pipe.train_iterator())) == set(names)


def test_tfds_tagging_skips_misaligned_sentences(tmp_path):
  # Mock UD sentences have unrelated token and tag counts: every one is skipped and counted,
  # which leaves no training data, a one-line error naming the task.
  with pytest.raises(data.DataError, match=r"^task 'tfds_pos': no usable training examples "
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
  shared = data.Pipeline(alone, workdir=str(tmp_path))
  assert list(shared.tasks) == ['sentiment']
  assert shared.tokenizer.fingerprint() == pipe.tokenizer.fingerprint()
  alone.tokenizer.train_on = 'sentiment,no_such_task'
  with pytest.raises(data.DataError, match="tokenizer.train_on: unknown task 'no_such_task'"):
    data.Pipeline(alone, workdir=str(tmp_path))


def test_real_config_variants():
  mixture = real_multitask.get_config()
  alone = real_multitask.get_config('single=trec,seed=3')
  assert list(alone.tasks) == ['trec'] and alone.seed == 3
  # Data-matched: the task's rows per step and its tokenizer are the mixture's.
  assert alone.data.batch_size == round(mixture.data.batch_size * mixture.tasks.trec.rate)
  assert alone.tokenizer.train_on == mixture.tokenizer.train_on
  for bad in ('single=nope', 'seed=x', 'other=1', 'single'):
    with pytest.raises(ValueError, match='expected single=TASK'):
      real_multitask.get_config(bad)
