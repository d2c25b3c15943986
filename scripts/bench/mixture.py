"""The real-data mixture (configs/real_multitask.py): examples per second for each task and
non-padding tokens per second, with packed rows against one example per row; what a bag
of n-grams beside the classifiers' heads (`tasks.<name>.ngrams`) and attention pooling
(`tasks.<name>.pooling='attention'`) cost a packed step, and what a next-token loss on a
generative task's source (`source_lm_weight`, with causal attention) adds to it; and how
many batches per second the input pipeline delivers against the steps per second it feeds.

The layouts train the same model on rows of the same shapes (the same tokens per step);
'ngrams' is the recipe's packed mixture with its classifiers' bags of n-grams, 'packed' the
same without the bags, 'unpacked' the latter as it was before packing, 'max_pooling'
the recipe with every attention-pooled classifier reading its max state instead and
'source_lm' the recipe with every task that has a copy head read left to right and trained
on its source's next tokens as well (every position projected onto the vocabulary). Their train
steps run in turns on real batches, so the machine's drift hits them alike. The input is
timed alone, from a fresh iterator (its reading and packing threads start cold) over
`INPUT_BATCHES` batches.
"""

import statistics
import time

import jax
import numpy as np

from bloom_jax import runs, sharding
from bloom_jax.data import pipeline
from configs import real_multitask

INPUT_BATCHES = 300
SOURCE_LM_WEIGHT = 0.1  # any weight > 0 costs the same: every position is projected


def layouts() -> dict:
  bag = real_multitask.get_config()
  packed = real_multitask.get_config()
  for task in packed.tasks.values():
    if 'ngrams' in task:
      task.ngrams = 0
  unpacked = packed.copy_and_resolve_references()
  unpacked.data.pack = False
  max_pooling = real_multitask.get_config()
  for task in max_pooling.tasks.values():
    if task.get('pooling') == 'attention':
      task.pooling = 'max'
  source_lm = real_multitask.get_config()
  for task in source_lm.tasks.values():
    if task.get('copy'):  # a generative task read left to right, with a loss on its source
      task.attention, task.source_lm_weight = 'causal', SOURCE_LM_WEIGHT
  return {'unpacked': unpacked, 'packed': packed, 'ngrams': bag, 'max_pooling': max_pooling,
          'source_lm': source_lm}


class _Trainer:
  """One layout's compiled step and its stream of real batches."""

  def __init__(self, config, mesh):
    self.pipe = pipeline.Pipeline(config)
    self.setup = runs.build(config, self.pipe.tasks, self.pipe.tokenizer.vocab_size, mesh)
    self.state = self.setup.init_train_state()
    self.batches = self.pipe.train_iterator()
    self.mesh, self.times, self.host = mesh, [], []

  def step(self, timed: bool):
    host = next(self.batches)
    batch = sharding.global_batch(host, self.mesh)
    t0 = time.perf_counter()
    self.state, metrics = self.setup.train_step(self.state, batch)
    jax.block_until_ready((self.state, metrics))
    if timed:
      self.times.append(time.perf_counter() - t0)
      self.host.append(host)

  def result(self) -> dict:
    step_s = statistics.median(self.times)
    out = {'step_s': step_s, 'tokens_per_step': 0, 'nonpad_tokens_per_step': 0.0, 'tasks': {}}
    for name in self.pipe.tasks:
      rows = [h[name]['segment_ids'] for h in self.host]
      examples = np.mean([r.max(axis=1).sum() for r in rows])
      nonpad = np.mean([(r > 0).sum() for r in rows])
      out['tokens_per_step'] += int(rows[0].size)
      out['nonpad_tokens_per_step'] += float(nonpad)
      out['tasks'][name] = {'rows_per_step': len(rows[0]), 'tokens_per_row': rows[0].shape[1],
                            'examples_per_step': float(examples),
                            'examples_per_s': float(examples) / step_s,
                            'nonpad_fraction': float(nonpad) / rows[0].size}
    out['nonpad_tokens_per_s'] = out['nonpad_tokens_per_step'] / step_s
    return out


def bench_mixture(steps: int, log) -> dict:
  """{'unpacked': ..., 'packed': ..., 'ngrams': ..., 'max_pooling': ..., 'source_lm': ...,
  'examples_per_s_ratio': {task: packed / unpacked}, 'ngrams_step_ratio': the bag's step
  time / packed's, 'attention_step_ratio': the recipe's step time / max_pooling's,
  'source_lm_step_ratio': source_lm's step time / the recipe's}."""
  mesh = sharding.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1})
  trainers = {}
  for name, config in layouts().items():
    log(f'mixture: preparing the {name} layout')
    trainers[name] = _Trainer(config, mesh)
    for _ in range(2):  # compile and warm up
      trainers[name].step(timed=False)
  for i in range(steps):
    for trainer in trainers.values():
      trainer.step(timed=True)
    if i % 10 == 9:
      log(f'mixture: {i + 1}/{steps} steps of each layout')
  out = {name: t.result() for name, t in trainers.items()}
  log(f'mixture: reading {INPUT_BATCHES} batches without training')
  batches_per_s = input_rate(trainers['packed'].pipe, INPUT_BATCHES)
  steps_per_s = 1 / out['packed']['step_s']
  out['input'] = {'batches_per_s': batches_per_s, 'steps_per_s': steps_per_s,
                  'ratio': batches_per_s / steps_per_s}
  out['examples_per_s_ratio'] = {
      task: out['packed']['tasks'][task]['examples_per_s']
      / out['unpacked']['tasks'][task]['examples_per_s'] for task in out['packed']['tasks']}
  out['ngrams_step_ratio'] = out['ngrams']['step_s'] / out['packed']['step_s']
  out['attention_step_ratio'] = out['ngrams']['step_s'] / out['max_pooling']['step_s']
  out['source_lm_step_ratio'] = out['source_lm']['step_s'] / out['ngrams']['step_s']
  return out


def input_rate(pipe, batches: int) -> float:
  """Batches per second a fresh training iterator delivers when nothing else runs."""
  it = pipe.train_iterator()
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches / (time.perf_counter() - start)


def table(results: dict) -> list[tuple[str, str]]:
  rows = []
  for layout in ('unpacked', 'packed', 'ngrams', 'max_pooling', 'source_lm'):
    r = results[layout]
    rows.append((f'mixture {layout}: step', f"{r['step_s'] * 1e3:.0f} ms, "
                 f"{r['tokens_per_step']} tokens, {r['nonpad_tokens_per_s']:.0f} non-pad tok/s"))
    for task, t in r['tasks'].items():
      rows.append((f'  {task}', f"{t['rows_per_step']} x {t['tokens_per_row']}, "
                   f"{t['examples_per_step']:.1f} examples/step, "
                   f"{t['examples_per_s']:.1f} examples/s, non-pad {t['nonpad_fraction']:.1%}"))
  rows.append(('packed / unpacked examples/s', ', '.join(
      f'{t} {x:.2f}x' for t, x in results['examples_per_s_ratio'].items())))
  rows.append(('with the n-gram bags / packed step', f"{results['ngrams_step_ratio']:.3f}x"))
  rows.append(('the recipe / max pooling step', f"{results['attention_step_ratio']:.3f}x"))
  rows.append(('with the source loss / the recipe step',
               f"{results['source_lm_step_ratio']:.3f}x"))
  i = results['input']
  rows.append(('input (packed) / step', f"{i['batches_per_s']:.1f} batches/s against "
               f"{i['steps_per_s']:.2f} steps/s: {i['ratio']:.1f}x"))
  return rows
