"""The classic example shape: d_model 512, 8 heads, 6 layers, a 10,000-token vocabulary,
two classification tasks (SST-2 sentiment and TREC question type).

  python -m bloom_jax.train --config configs/seed.py --workdir /tmp/seed \
      --config.data.dir=/path/to/shared/data

`scripts/benchmark.py` times this shape's train step.
"""

import os

import ml_collections

from configs import default


def get_config(arg=None):
  del arg
  c = default.get_config()
  c.total_steps = 2000
  c.eval_every = 500
  c.checkpoint_every = 500
  c.best_metric = 'eval/sst2/accuracy'
  c.data.dir = os.environ.get('BLOOM_JAX_DATA', '')  # the shared datasets' root
  c.data.batch_size = 32
  c.tokenizer.vocab_size = 10_000
  c.tasks = ml_collections.ConfigDict({
      'sst2': dict(rate=1.0, loss_weight=1.0, max_length=64),
      'trec': dict(rate=1.0, loss_weight=1.0, max_length=32),
  })
  c.model.hidden_size = 512
  c.model.n_layer = 6
  c.model.n_head = 8
  c.optimizer.learning_rate = 3e-4
  c.optimizer.warmup_steps = 200
  return c
