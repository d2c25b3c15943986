"""scripts/benchmark.py's products-alone timing covers exactly the model's weight matrices,
so the bounds it reports are about the products our step and decoding really run."""

import math

from flax import nnx

from bloom_jax import config_lib
from bloom_jax.model import Bloom
from configs import real_multitask
from scripts.bench import comparison, probes

SHAPE = dict(comparison.QUICK, hidden=32, heads=4, layers=3, vocab=96, batch=2, seq=8)


def _weight_matrix_elements() -> int:
  """Elements of the model's kernels and its (tied) embedding table: every weight that a
  product multiplies, whatever the layer count."""
  cfg = config_lib.model_config(probes.bench_config(SHAPE), vocab_size=SHAPE['vocab'])
  params = nnx.to_flat_state(nnx.state(Bloom(cfg, rngs=nnx.Rngs(0)), nnx.Param))
  return sum(math.prod(v.get_value().shape) for path, v in params
             if path[-1].endswith('kernel') or path == ('word_embeddings',))


def test_step_products_are_the_forward_and_both_gradients_of_every_weight_matrix():
  result = probes.step_products(SHAPE, 'float32', reps=1)
  tokens = SHAPE['batch'] * SHAPE['seq']
  # Four matrices per layer and the LM head, each multiplied three times.
  assert sum(p['count'] for p in result['products'].values()) == 3 * (4 * SHAPE['layers'] + 1)
  assert result['flops'] == 6 * _weight_matrix_elements() * tokens
  assert result['xla_s'] > 0 and result['torch_s'] > 0


def test_token_products_read_every_weight_matrix_once():
  result = probes.token_products(SHAPE, 'float32', reps=1)
  assert result['weight_bytes'] == 4 * _weight_matrix_elements()
  assert result['xla_s'] > 0 and result['torch_s'] > 0


def test_mixture_layouts_train_the_same_tokens_per_step():
  """The packed and unpacked real-data mixtures differ only in how examples fill rows, the
  recipe's (with bags of n-grams) from the packed one only in its classifiers' bags, from
  max_pooling only in how its attention-pooled classifiers pool and from source_lm only in
  its copying task's attention and source loss."""
  from scripts.bench import mixture

  layouts = mixture.layouts()
  tokens = {}
  for name, config in layouts.items():
    rates = {t: c.rate * config.data.batch_size for t, c in config.tasks.items()}
    tokens[name] = sum(round(rates[t]) * c.max_length for t, c in config.tasks.items())
  expected = sum(rows * length for rows, length in real_multitask.TASKS.values())
  assert set(tokens.values()) == {expected}
  assert layouts['packed'].data.pack and not layouts['unpacked'].data.pack
  bags = {t: c.ngrams for t, c in layouts['ngrams'].tasks.items() if c.get('ngrams')}
  recipe = real_multitask.get_config()
  assert bags == {t: c.ngrams for t, c in recipe.tasks.items() if c.get('ngrams')}
  assert set(bags) == {'sst2', 'trec'}
  assert not any(c.get('ngrams') for c in layouts['packed'].tasks.values())
  assert layouts['ngrams'].data.pack
  # 'max_pooling' is the recipe but for its attention-pooled classifiers.
  attention = {t for t, c in recipe.tasks.items() if c.get('pooling') == 'attention'}
  assert attention, "no classifier of the recipe pools by attention: 'max_pooling' would be it"
  for task, c in layouts['max_pooling'].tasks.items():
    expected = recipe.tasks[task].to_dict()
    if task in attention:
      expected['pooling'] = 'max'
    assert c.to_dict() == expected
  # 'source_lm' is the recipe but for its copying task's attention and source loss.
  for task, c in layouts['source_lm'].tasks.items():
    expected = recipe.tasks[task].to_dict()
    if expected.get('copy'):
      expected.update(attention='causal', source_lm_weight=mixture.SOURCE_LM_WEIGHT)
    assert c.to_dict() == expected
  assert layouts['source_lm'].tasks.aeslc.source_lm_weight > 0
