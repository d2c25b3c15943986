"""Honest per-task evaluation over whole splits, shared by training and `bloom_jax.evaluate`.

Every selected example of a split is scored exactly once: its rows (packed like training
rows, `data.pack`) go through a jitted eval step, the last batch padded with rows of
weight 0, and the task's type turns the step's outputs into its metrics
(`TaskType.evaluate`). Packing changes no metric: each example is computed as if alone.
"""

import functools

import jax
import numpy as np
from jax.experimental import multihost_utils

from bloom_jax import compat, multitask_model, sharding, steps
from bloom_jax.data import pipeline


class Evaluator:

  def __init__(self, config, pipe, graphdef, abstract_state, mesh):
    self.config, self.pipe, self.mesh = config, pipe, mesh
    self.graphdef, self.abstract_state = graphdef, abstract_state
    self.batch_size = _round_up(config.data.eval_batch_size, sharding.data_parallel_size(mesh))
    replicated = sharding.replicated(mesh)
    self._steps = {
        name: jax.jit(functools.partial(steps.eval_step, graphdef=graphdef,
                                        abstract_state=abstract_state, task=spec),
                      out_shardings=replicated)
        for name, spec in pipe.tasks.items()}
    self._params = self._decoder = None

  def evaluate(self, params, split: str, max_examples: int | None = None,
               tasks=None, prefix: str = 'eval') -> dict[str, float]:
    """{'<prefix>/<task>/<metric>': value} for every task that has `split` (or the given ones)."""
    if max_examples is None:
      max_examples = self.config.data.eval_examples
    out = {}
    for name in tasks or [t for t in self.pipe.tasks if self.pipe.has_split(t, split)]:
      for metric, value in self.evaluate_task(params, name, split, max_examples).items():
        out[f'{prefix}/{name}/{metric}'] = value
    return out

  def evaluate_task(self, params, task: str, split: str, max_examples: int,
                    spec=None) -> dict[str, float]:
    """`spec`: the task with other evaluation settings than the run's (its `decoding`)."""
    spec = spec or self.pipe.tasks[task]
    self._params, self._decoder = params, None
    examples = self.pipe.examples(task, split, max_examples)
    return spec.type.evaluate(self, spec, examples,
                              self.pipe.references(task, split, max_examples))

  def scored_batches(self, spec, examples):
    """(host batch, the eval step's outputs) for every batch of the examples' rows."""
    rows = self.pipe.rows(spec.name, examples)
    for batch in pipeline.eval_batches(rows, self.batch_size, self.pipe.tokenizer.pad_id):
      yield batch, jax.device_get(self._steps[spec.name](self._params, self._shard(batch)))

  def generate(self, spec, prompts: list[list[int]], width: int, **options) -> list[str]:
    """Continuations of token prompts (left-padded to `width`), decoded to text by the
    task's type (`TaskType.generate`); `options` are `decoding.generate`'s (method,
    max_new_tokens, ...)."""
    if self._decoder is None:  # unstacked once for all batches: the weights are fixed
      self._decoder = multitask_model.unstacked_trunk(
          self.graphdef, compat.from_pure_dict(self.abstract_state, self._params))
    tok, texts = self.pipe.tokenizer, []
    for start in range(0, len(prompts), self.batch_size):
      chunk = prompts[start:start + self.batch_size]
      ids, mask = left_padded(chunk + [chunk[-1]] * (self.batch_size - len(chunk)), width,
                              tok.pad_id)
      out = spec.type.generate(
          spec, *self._decoder, self._shard(ids), self._shard(mask),
          eos_id=tok.eos_id, pad_id=tok.pad_id, prompt_mode=spec.attention, **options)
      # Rows live on every process's devices; each host needs all of them.
      tokens, lengths = multihost_utils.process_allgather((out['tokens'], out['lengths']),
                                                          tiled=True)
      texts += [tok.decode([int(t) for t in row[:length] if t != tok.eos_id])
                for row, length in zip(tokens[:len(chunk)], lengths[:len(chunk)], strict=True)]
    return texts

  def _shard(self, tree):
    """Each process feeds its own rows of an eval batch; the step sees the global batch."""
    def local_rows(x):
      n = x.shape[0] // jax.process_count()
      return x[jax.process_index() * n:(jax.process_index() + 1) * n]

    return sharding.global_batch(jax.tree.map(local_rows, tree), self.mesh)


def left_padded(prompts: list[list[int]], width: int, pad_id: int):
  """Token lists -> ([n, width] ids, mask), right-aligned; longer prompts keep their end."""
  ids = np.full((len(prompts), width), pad_id, np.int32)
  mask = np.zeros((len(prompts), width), np.int32)
  for i, p in enumerate(prompts):
    p = p[-width:]
    if p:
      ids[i, width - len(p):] = p
      mask[i, width - len(p):] = 1
  return ids, mask


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple
