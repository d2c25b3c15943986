"""One real-valued score per text (e.g. a sentence's rating or a similarity score).

    <s> text </s>     the score is read at </s>, the last token of the example

As classification, with a one-output head, squared error as the loss, and Pearson's and
Spearman's correlation as the metrics.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from bloom_jax import metrics
from bloom_jax.task_types import base
from bloom_jax.task_types.classification import Classification


class Regression(Classification):
  name = 'regression'
  metrics = ('pearson', 'spearman')
  needs_labels = False
  takes_source_lm = False  # its loss is squared error on one score, not token logits
  takes_label_smoothing = False  # nor are there classes to smooth over

  def clean(self, task, row):
    row = super().clean(task, row)
    if row is None or 'label' not in row:
      return row
    try:
      score = float(row['label'])
    except ValueError:
      return 'unknown_label'
    return row if math.isfinite(score) else 'unknown_label'

  def labels_of(self, row):
    return []

  def target_values(self, task, rows):
    return np.array([float(r['label']) for r in rows], np.float32)

  def describe(self, task, tok, example, sample):
    at = np.flatnonzero(example['weights'])[0]
    return [f'    score={example["targets"][at]:.4f} (source {sample["label"]!r}): '
            f'{tok.decode(example["input_ids"])!r}']

  def num_outputs(self, task):
    return 1  # the score

  def logits(self, model, task, hidden, batch, dropout_key):
    outputs = super().logits(model, task, hidden, batch, dropout_key)
    return jax.tree.map(lambda x: x[..., 0], outputs)  # the score, alone or with the bag's

  def losses(self, logits, batch):
    if isinstance(logits, dict):  # with the bag's own loss
      return super().losses(logits, batch)
    error = logits - batch['targets'].astype(jnp.float32)
    return jnp.square(error), batch['weights'].astype(jnp.float32), None

  def predictions(self, logits):
    return logits

  def accumulator(self, task):
    return RegressionMetrics()

  def predict(self, predictor, task, texts, **options):
    del options
    batch = predictor.rows(task, self.inference_rows(task, predictor.tokenizer, texts))
    scores = predictor.outputs(task, batch)[np.asarray(batch['weights']) > 0][:len(texts)]
    return [{'text': t, 'score': float(s)} for t, s in zip(texts, scores, strict=True)]

  def format_prediction(self, task, prediction):
    return f"{prediction['score']:.4f}"


class RegressionMetrics(base.ExampleMetrics):
  """Pearson's and Spearman's correlation of scores with targets; the loss is the MSE."""

  def scores(self, pred, target):
    return {'pearson': metrics.pearson(pred, target), 'spearman': metrics.spearman(pred, target)}


REGRESSION = Regression()
