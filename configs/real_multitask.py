"""Real-data mixture: UD EWT POS, SST-2, TREC-6, AESLC subjects and Tiny Shakespeare.

  python -m bloom_jax.train --config configs/real_multitask.py --workdir /tmp/bloom_real \
      --config.data.dir=/path/to/data
  # One task alone, same model and budget (the single-task baseline):
  python -m bloom_jax.train --config configs/real_multitask.py:single=sst2 --workdir ...

`data.dir` holds the folders ud_english_ewt, sst2_glue, trec_qc, aeslc and tiny_shakespeare
(layout and download locations in docs/data.md); it defaults to $BLOOM_JAX_DATA.
"""

import os

import ml_collections

from configs import default


def get_config(arg=None):
  c = default.get_config()
  c.best_metric = 'eval/sst2/accuracy'

  c.data.dir = os.environ.get('BLOOM_JAX_DATA', '')  # root of the five dataset folders
  c.data.rates = 'temperature'     # n_t^(1/T): lifts the small tasks (trec) without drowning them
  c.data.temperature = 2.0

  c.tokenizer.vocab_size = 8000

  c.tasks = ml_collections.ConfigDict()
  for name, max_length in [('pos', 64), ('sst2', 64), ('trec', 32), ('aeslc', 192),
                           ('shakespeare', 128)]:
    c.tasks[name] = ml_collections.ConfigDict(
        dict(rate=1.0, loss_weight=1.0, max_length=max_length))
  c.tasks.aeslc.max_target_length = 32  # subjects are short; the rest of the 192 is the body

  if arg:
    key, _, task = arg.partition('=')
    if key != 'single' or task not in c.tasks:
      raise ValueError(f'configs/real_multitask.py:{arg}: expected single=TASK with TASK one '
                       f'of {", ".join(c.tasks)}')
    c.tasks = ml_collections.ConfigDict({task: c.tasks[task].to_dict()})
    c.best_metric = ''
  return c
