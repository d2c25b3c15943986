"""Source -> target as a prefix LM: the source read both ways, the target left to right.

    <s> source <sep> target </s>      prefix = <s> source <sep>

The loss is next-token cross-entropy on the target tokens and the final </s>. Only those
positions are projected onto the vocabulary: a row carries their indices
(`target_positions`), and packing keeps each row's targets within a fixed budget, so a
long source costs trunk compute but no vocabulary projection. Evaluation decodes every
example's prompt greedily and scores ROUGE against all its references.
"""

import jax.numpy as jnp
import numpy as np

from bloom_jax import metrics
from bloom_jax.data import packing, text
from bloom_jax.errors import ConfigError
from bloom_jax.task_types import base
from bloom_jax.task_types.classification import clean_input


def target_budget(task) -> int:
  """Target positions per row: room for two whole targets, so short examples still pack."""
  return min(task.max_length, 2 * (task.target_length + 1))


def prompt_length(task) -> int:
  return task.max_length - task.target_length - 1


class Generation(base.TaskType):
  name = 'generation'
  attention = 'prefix'
  fields = {'source': 'text', 'targets': 'texts'}
  takes_stopwords = True
  marks_prefix = True
  metrics = ('rouge1', 'rouge2', 'rougeL')
  generates = True
  input_field = 'source'

  def check(self, task, key):
    super().check(task, key)
    if not 1 <= task.target_length <= task.max_length - 4:
      raise ConfigError(f'{key}.max_target_length: must leave at least 4 tokens for the source')

  def clean(self, task, row):
    row = dict(row, source=clean_input(task, row['source']))
    if 'targets' in row:
      row['targets'] = [text.clean(t) for t in row['targets']]
    return row if row['source'] else None

  def training_text(self, row):
    return row['source'] + '\n' + row['targets'][0]

  def encode(self, task, tok, rows, train, token_bytes):
    del train, token_bytes
    body = tok.encode_batch([r['source'] for r in rows])
    heads = [[tok.bos_id] + ids[:prompt_length(task) - 2] + [tok.sep_id] for ids in body]
    labelled = bool(rows) and 'targets' in rows[0]
    tails = tok.encode_batch([r['targets'][0] for r in rows]) if labelled else [[]] * len(rows)
    seqs, prefix, targets, weights = [], [], [], []
    for head, tail in zip(heads, tails, strict=True):
      seq = head + (tail[:task.target_length] + [tok.eos_id] if labelled else [])
      seqs.append(seq)
      prefix.append([1] * len(head) + [0] * (len(seq) - len(head)))
      targets.append(seq[1:] + [tok.pad_id])
      # Position i predicts token i+1: from <sep> (the last prefix token) to the one before </s>.
      weights.append([float(len(head) - 1 <= i < len(seq) - 1) for i in range(len(seq))])
    ids, lengths = packing.ragged(seqs)
    examples = packing.Examples(
        {'input_ids': ids, 'prefix_mask': packing.ragged(prefix)[0],
         'targets': packing.ragged(targets)[0], 'weights': packing.ragged(weights, np.float32)[0]},
        lengths)
    src = np.array([len(b) + 2 for b in body], np.int32)
    tgt = np.array([len(t) for t in tails], np.int32)
    truncated = (src > prompt_length(task)) | (tgt > task.target_length)
    return examples, {'length': src + tgt + int(labelled), 'truncated': truncated}

  def rows(self, task, examples, pad_id, packed):
    costs = np.add.reduceat(examples.tokens['weights'] > 0, examples.starts) if len(examples) \
        else np.zeros(0, np.int64)
    budget = target_budget(task)
    out = packing.pack(examples, task.max_length, pad_id, packed, costs, budget)
    scored = out['weights'] > 0
    order = np.argsort(~scored, axis=1, kind='stable')[:, :budget]  # scored positions first
    keep = np.take_along_axis(scored, order, axis=1)
    out['target_positions'] = np.where(keep, order, 0).astype(np.int32)
    out['targets'] = np.where(keep, np.take_along_axis(out['targets'], order, axis=1), pad_id)
    out['weights'] = keep.astype(np.float32)
    return out

  def prompts(self, examples: packing.Examples) -> list[list[int]]:
    """Each example's `<s> source <sep>`."""
    out = []
    for i in range(len(examples)):
      example = examples.example(i)
      out.append(example['input_ids'][example['prefix_mask'] > 0].tolist())
    return out

  def describe(self, task, tok, example, sample):
    source = tok.decode(example['input_ids'][example['prefix_mask'] > 0])
    target = tok.decode(example['targets'][example['weights'] > 0])
    return [f'    source ({base.verdict(source, sample["source"])}): {source[:300]!r}',
            f'    target ({base.verdict(target, sample["targets"][0])}): {target!r} '
            f'(references: {len(sample["targets"])})']

  def logits(self, model, task, hidden, batch, dropout_key):
    del dropout_key
    at = jnp.take_along_axis(hidden, batch['target_positions'][..., None], axis=1)
    return model.bloom.logits(at)

  def vocab_positions(self, task):
    return target_budget(task)

  def accumulator(self, task):
    return base.PerplexityMetrics()

  def evaluate(self, evaluator, task, examples, references):
    out = super().evaluate(evaluator, task, examples, None)
    texts = evaluator.generate(task, self.prompts(examples), prompt_length(task))
    out.update(metrics.rouge(texts, references))
    return out

  def predict(self, predictor, task, texts, **options):
    rows = self.inference_rows(task, predictor.tokenizer, texts)
    examples, _ = self.encode(task, predictor.tokenizer, rows, False, None)
    generated = predictor.generate(task, self.prompts(examples), prompt_length(task), **options)
    return [{'text': t, 'generated': g} for t, g in zip(texts, generated, strict=True)]

  def format_prediction(self, task, prediction):
    return prediction['generated']


GENERATION = Generation()
