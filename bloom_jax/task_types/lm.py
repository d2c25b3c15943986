"""Causal language modelling on raw text.

The documents of a split (each ending with </s>) form one stream, cut into windows of
max_length + 1 tokens: inputs w[:-1], targets w[1:]. Consecutive windows overlap by one
token, so every token is predicted exactly once. A window is already a full row: rows
need no packing, and every position needs its logits. Training drops the final partial
window; evaluation keeps it, padded and masked.
"""

import numpy as np

from bloom_jax import metrics
from bloom_jax.data import packing, text
from bloom_jax.task_types import base


class LanguageModel(base.TaskType):
  name = 'lm'
  attention = 'causal'
  fields = {'text': 'text'}
  metrics = ('perplexity', 'bits_per_byte')
  whole_text = True
  generates = True

  def clean(self, task, row):
    row = {'text': text.clean(row['text'], keep_newlines=True)}
    return row if row['text'] else None

  def training_text(self, row):
    return row['text']

  def encode(self, task, tok, rows, train, token_bytes):
    length = task.max_length
    docs = tok.encode_batch([r['text'] for r in rows])
    stream = np.array([i for ids in docs for i in ids + [tok.eos_id]], np.int32)
    n = max(len(stream) - 1, 0)
    count = n // length if train else -(-n // length)
    windows = [stream[w * length: w * length + length + 1] for w in range(count)]
    ids, lengths = packing.ragged([w[:-1] for w in windows])
    targets, _ = packing.ragged([w[1:] for w in windows])
    examples = packing.Examples(
        {'input_ids': ids, 'targets': targets, 'weights': np.ones(len(ids), np.float32)},
        lengths, {'target_bytes': np.array([token_bytes[w[1:]].sum() for w in windows],
                                           np.int32)})
    full = np.array([len(d) + 1 for d in docs], np.int32)
    return examples, {'length': full, 'truncated': np.zeros(len(rows), bool)}

  def describe(self, task, tok, example, sample):
    del task, sample
    return [f'    window: {tok.decode(example["input_ids"], skip_special=False)[:300]!r}']

  def logits(self, model, task, hidden, batch, dropout_key):
    del task, batch, dropout_key
    return model.bloom.logits(hidden)

  def vocab_positions(self, task):
    return task.max_length

  def accumulator(self, task):
    return LanguageModelMetrics()

  def predict(self, predictor, task, texts, **options):
    tok = predictor.tokenizer
    prompts = [([tok.bos_id] + tok.encode(text.clean(t, keep_newlines=True)))[-task.max_length:]
               for t in texts]
    generated = predictor.generate(task, prompts, task.max_length, **options)
    return [{'text': t, 'generated': g} for t, g in zip(texts, generated, strict=True)]

  def format_prediction(self, task, prediction):
    return prediction['generated']


class LanguageModelMetrics(base.PerplexityMetrics):
  """Loss, perplexity and bits per UTF-8 byte of the predicted text."""

  def __init__(self):
    super().__init__()
    self.num_bytes = 0.0

  def add(self, batch, result):
    super().add(batch, result)
    self.num_bytes += float(np.sum(batch['target_bytes']))

  def result(self):
    return {**super().result(),
            'bits_per_byte': metrics.bits_per_byte(self.loss, self.num_bytes)}


LM = LanguageModel()
