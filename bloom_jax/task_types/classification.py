"""One label per text.

    <s> text </s>     the label is read at </s>, the last token of the example

The head is a linear layer on the trunk's final states. It is applied at every position
of a packed row (a [hidden, labels] product costs next to nothing) and the loss reads it
at each segment's last token: per-example pooling, as Hugging Face's BLOOM classifier
pools the last real token.
"""

import numpy as np

from bloom_jax import heads, metrics
from bloom_jax.data import packing, text
from bloom_jax.task_types import base


def clean_input(task, s: str) -> str:
  """The model-input text of an example, as trained on."""
  s = text.clean(s)
  return text.remove_stopwords(s) if task.stopwords else s


class Classification(base.TaskType):
  name = 'classification'
  attention = 'bidirectional'
  fields = {'text': 'text', 'label': 'text'}
  takes_stopwords = True
  metrics = ('accuracy', 'macro_f1')
  needs_labels = True

  def clean(self, task, row):
    row = dict(row, text=clean_input(task, row['text']))
    return row if row['text'] else None

  def labels_of(self, row):
    return [row['label']] if 'label' in row else []

  def training_text(self, row):
    return row['text']

  def encode(self, task, tok, rows, train, token_bytes):
    del train, token_bytes
    body = tok.encode_batch([r['text'] for r in rows])
    seqs = [[tok.bos_id] + ids[:task.max_length - 2] + [tok.eos_id] for ids in body]
    ids, lengths = packing.ragged(seqs)
    last = np.cumsum(lengths) - 1
    weights = np.zeros(len(ids), np.float32)
    weights[last] = 1.0
    values = self.target_values(task, rows) if rows and 'label' in rows[0] else None
    targets = np.zeros(len(ids), np.int32 if values is None else values.dtype)
    if values is not None:
      targets[last] = values
    full = np.array([len(b) + 2 for b in body], np.int32)
    examples = packing.Examples({'input_ids': ids, 'targets': targets, 'weights': weights},
                                lengths)
    return examples, {'length': full, 'truncated': full > task.max_length}

  def target_values(self, task, rows) -> np.ndarray:
    """Each labelled row's target, read at its last token."""
    index = base.label_index(task)
    return np.array([index[r['label']] for r in rows], np.int32)

  def describe(self, task, tok, example, sample):
    at = np.flatnonzero(example['weights'])[0]
    decoded = tok.decode(example['input_ids'])
    return [f'    label={task.labels[example["targets"][at]]!r} (source {sample["label"]!r}) '
            f'{base.verdict(decoded, sample["text"])}: {decoded!r}']

  def make_head(self, model_cfg, task, rngs):
    return heads.LinearHead(model_cfg, len(task.labels), rngs=rngs)

  def logits(self, model, task, hidden, batch, dropout_key):
    return model.heads[task.name](hidden, dropout_key)

  def accumulator(self, task):
    return ClassificationMetrics(len(task.labels))

  def predict(self, predictor, task, texts, **options):
    del options
    batch = predictor.rows(task, self.inference_rows(task, predictor.tokenizer, texts))
    probs = predictor.probabilities(task, batch)
    pooled = probs[np.asarray(batch['weights']) > 0][:len(texts)]
    return [{'text': t, 'label': task.labels[int(np.argmax(p))],
             'probabilities': dict(zip(task.labels, np.round(p, 6).tolist(), strict=True))}
            for t, p in zip(texts, pooled, strict=True)]

  def format_prediction(self, task, prediction):
    probs = ', '.join(f'{k}={v:.3f}' for k, v in prediction['probabilities'].items())
    return f"{prediction['label']}\t({probs})"


class ClassificationMetrics(base.ExampleMetrics):
  """accuracy and macro-F1 over the split's examples, and the loss."""

  def __init__(self, num_labels: int):
    super().__init__()
    self.num_labels = num_labels

  def scores(self, pred, target):
    pred, target = pred.astype(np.int64), target.astype(np.int64)
    return {'accuracy': metrics.accuracy(pred, target),
            'macro_f1': metrics.macro_f1(pred, target, self.num_labels)}


CLASSIFICATION = Classification()
