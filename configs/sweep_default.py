r"""A 2x2 sweep (learning rate x batch size) of a tiny run on the built-in data.

  python -m bloom_jax.sweep --config configs/sweep_default.py --workdir runs/sweep --parallel 2
  python -m bloom_jax.sweep --config configs/sweep_default.py --workdir runs/sweep_optuna \
      --search optuna --trials 8 --parallel 2

Well under a minute a trial on 2 CPU cores, no download. Two tasks keep it short: sentiment
(classification, accuracy: higher is better) and lm (perplexity: lower is better).
"""

import ml_collections

from bloom_jax.sweeps import definitions
from configs import default


def get_config(arg=None):
  c = default.get_config(arg)
  c.total_steps = 40
  c.log_every = 10
  c.eval_every = 20
  c.checkpoint_every = 20
  # What the sweep ranks trials by: 40 steps move the LM a lot, sentiment barely.
  c.best_metric = 'eval/lm/perplexity'
  c.best_mode = 'min'
  c.data.batch_size = 32
  c.data.eval_examples = 64
  c.tokenizer.vocab_size = 300
  c.tasks = ml_collections.ConfigDict({
      name: dict(rate=1.0, loss_weight=1.0, max_length=24) for name in ('sentiment', 'lm')})
  c.model.hidden_size = 32
  c.model.n_layer = 2
  c.model.n_head = 4
  c.optimizer.warmup_steps = 5
  return c


def get_sweep(arg=None):
  del arg
  return definitions.grid({'optimizer.learning_rate': [1e-3, 3e-3], 'data.batch_size': [16, 32]})


def get_search_space(arg=None):
  """For --search optuna."""
  del arg
  return {'optimizer.learning_rate': definitions.LogUniform(3e-4, 1e-2),
          'data.batch_size': definitions.Choice((16, 32))}
