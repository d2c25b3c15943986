"""Honest per-task evaluation over whole splits, shared by training and `bloom_jax.evaluate`.

Every example of a split is scored exactly once (the last batch is padded and the
padding masked out). Metrics by head type:
  classification  accuracy, macro-F1
  tagging         word accuracy (words lost to truncation count as wrong)
  generation      ROUGE-1/2/L F-measure of decoded text against every reference,
                  plus the teacher-forced loss
  lm              loss (nats/token), perplexity, bits per byte
"""

import functools

import jax
from flax import nnx
from jax.experimental import multihost_utils

from bloom_jax import compat, decoding, metrics, sharding, steps


class Evaluator:

  def __init__(self, config, pipe, graphdef, abstract_state, mesh):
    self.config, self.pipe, self.mesh = config, pipe, mesh
    self.graphdef, self.abstract_state = graphdef, abstract_state
    model = nnx.merge(graphdef, abstract_state)
    self.lm_graphdef, self.lm_abstract = nnx.split(model.bloom)
    replicated = sharding.replicated(mesh)
    self._steps = {
        name: jax.jit(functools.partial(steps.eval_step, graphdef=graphdef,
                                        abstract_state=abstract_state, task=name,
                                        head=spec.head), out_shardings=replicated)
        for name, spec in pipe.tasks.items()}

  def evaluate(self, params, split: str, max_examples: int | None = None,
               tasks=None, prefix: str = 'eval') -> dict[str, float]:
    """{'<prefix>/<task>/<metric>': value} for every task that has `split` (or the given ones)."""
    if max_examples is None:
      max_examples = self.config.data.eval_examples
    out = {}
    for name in tasks or [t for t in self.pipe.tasks if split in self.pipe.prepared[t].arrays]:
      for metric, value in self.evaluate_task(params, name, split, max_examples).items():
        out[f'{prefix}/{name}/{metric}'] = value
    return out

  def evaluate_task(self, params, task: str, split: str, max_examples: int) -> dict[str, float]:
    spec = self.pipe.tasks[task]
    batch_size = _round_up(self.config.data.eval_batch_size, sharding.data_parallel_size(self.mesh))
    sums = metrics.TaskMetrics(spec.head, num_labels=spec.num_labels)
    if spec.head == 'generation':  # unstacked once for all batches: the weights are fixed
      decoder = decoding.unstacked(self.lm_graphdef,
                                   compat.from_pure_dict(self.lm_abstract, params['bloom']))
    for batch in self.pipe.eval_batches(task, split, batch_size, max_examples):
      model_batch = {k: v for k, v in batch.items() if k not in ('prompt_ids', 'prompt_mask')}
      result = jax.device_get(self._steps[task](params, self._shard(model_batch)))
      predictions = None
      if spec.head == 'generation':
        predictions = self._generate(decoder, batch, spec)
      sums.add(batch, result, predictions)
    references = self.pipe.references(task, split, max_examples) \
        if spec.head == 'generation' else None
    return sums.result(references)

  def _generate(self, decoder, batch, spec) -> list[str]:
    tok = self.pipe.tokenizer
    out = decoding.generate(
        *decoder, self._shard(batch['prompt_ids']),
        self._shard(batch['prompt_mask']), max_new_tokens=spec.target_length,
        eos_id=tok.eos_id, pad_id=tok.pad_id, method='greedy', prompt_mode='prefix')
    # Rows live on every process's devices; each host needs all of them for ROUGE.
    tokens, lengths = multihost_utils.process_allgather((out['tokens'], out['lengths']),
                                                        tiled=True)
    texts = []
    for row, length, real in zip(tokens, lengths, batch['example_mask'], strict=True):
      if real:
        texts.append(tok.decode([int(t) for t in row[:length] if t != tok.eos_id]))
    return texts

  def _shard(self, tree):
    """Each process feeds its own rows of an eval batch; the step sees the global batch."""
    def local_rows(x):
      n = x.shape[0] // jax.process_count()
      return x[jax.process_index() * n:(jax.process_index() + 1) * n]

    return sharding.global_batch(jax.tree.map(local_rows, tree), self.mesh)


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple
