"""The trainer streams its training set from disk: host memory stays flat as the set grows.

A classification task on a TSV file of 20,000 and then 200,000 rows is prepared by
`python -m bloom_jax.data` (as for any large corpus), then trained for a few steps by
`python -m bloom_jax.train`; the trainer's peak resident memory must grow by less than
10% for the tenfold training set.
"""

import os
import subprocess
import sys

import numpy as np

from tests.tiny import child_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = [f'w{i}' for i in range(300)]

CONFIG = '''\
from tests.tiny import tiny_config


def get_config(arg=None):
  del arg
  c = tiny_config()
  c.total_steps = 4
  c.eval_every = 4
  c.checkpoint_every = 4
  c.best_metric = 'eval/big/accuracy'
  c.tasks = dict(big=dict(type='classification', reader='tsv', max_length=24, rate=1.0,
                          loss_weight=1.0, labels=['neg', 'pos'],
                          files=dict(train='big/train.tsv', validation='big/dev.tsv'),
                          options=dict(text_column='sentence', label_column='label')))
  return c
'''


def _write_tsv(path, rows, rng):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  words = rng.choice(WORDS, size=(rows, 12))
  labels = np.where(rng.random(rows) < 0.5, 'neg', 'pos')
  with open(path, 'w', encoding='utf-8') as f:
    f.write('sentence\tlabel\n')
    f.writelines(f'{" ".join(w)}\t{label}\n' for w, label in zip(words, labels, strict=True))


def _peak_rss_mb(args, env, log) -> float:
  """Runs a program to the end; its own peak resident set size, in MiB."""
  with open(log, 'w') as out:
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
  assert os.waitstatus_to_exitcode(status) == 0, open(log).read()[-3000:]
  return usage.ru_maxrss / 1024


def test_trainer_memory_is_flat_in_the_training_set_size(tmp_path):
  config = tmp_path / 'stream_config.py'
  config.write_text(CONFIG)
  rng = np.random.default_rng(0)
  peaks = {}
  for rows in (20_000, 200_000):
    data = tmp_path / f'data{rows}'
    _write_tsv(str(data / 'big' / 'train.tsv'), rows, rng)
    _write_tsv(str(data / 'big' / 'dev.tsv'), 200, rng)
    # Each run compiles from scratch: one that found the other's programs in the compilation
    # cache would skip compiling, a large part of a tiny run's peak.
    env = child_env(1, BLOOM_JAX_TFDS_DIR=str(tmp_path / 'tfds'),
                    JAX_COMPILATION_CACHE_DIR=str(tmp_path / f'xla{rows}'))
    flags = ['--config', str(config), f'--config.data.dir={data}']
    subprocess.run([sys.executable, '-m', 'bloom_jax.data', *flags, '--show', '0'], cwd=REPO,
                   env=env, check=True, capture_output=True)
    peaks[rows] = _peak_rss_mb(
        [sys.executable, '-m', 'bloom_jax.train', *flags, '--workdir', str(tmp_path / f'w{rows}')],
        env, tmp_path / f'train{rows}.log')
  print(f"peak RSS, MiB: {peaks}")
  assert peaks[200_000] < 1.10 * peaks[20_000], peaks
