"""Evaluation metrics, computed on the host from numpy arrays (after `jax.device_get`).

Every function states its definition. Where nothing is counted (no examples, zero total
weight, no tokens) the result is nan rather than an error, so an empty split still logs.

`TaskMetrics` sums one task's per-batch statistics over an evaluation split and turns
them into its head type's metrics:

  classification  accuracy, macro_f1, loss
  tagging         word_accuracy, loss
  generation      rouge1, rouge2, rougeL, loss, perplexity
  lm              loss, perplexity, bits_per_byte

`loss` is the mean teacher-forced negative log-likelihood, in nats, per weighted target.
"""

import functools
import math

import numpy as np
from rouge_score import rouge_scorer

HEADS = ('classification', 'tagging', 'generation', 'lm')
ROUGE_TYPES = ('rouge1', 'rouge2', 'rougeL')


def _ratio(numerator: float, denominator: float) -> float:
  return float(numerator / denominator) if denominator > 0 else math.nan


def _flat(pred, target, weights=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  pred, target = np.asarray(pred), np.asarray(target)
  if pred.shape != target.shape:
    raise ValueError(f'pred has shape {pred.shape} but target has {target.shape}')
  weights = np.ones(pred.shape) if weights is None else np.asarray(weights, np.float64)
  if weights.shape != pred.shape:
    raise ValueError(f'weights have shape {weights.shape} but pred has {pred.shape}')
  return pred.ravel(), target.ravel(), weights.ravel()


# --------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------


def accuracy(pred, target, weights=None) -> float:
  """sum_i w_i [pred_i = target_i] / sum_i w_i, with w_i = 1 when `weights` is None.

  sklearn's accuracy_score(target, pred, sample_weight=weights).
  """
  pred, target, weights = _flat(pred, target, weights)
  return _ratio(np.sum(weights * (pred == target)), np.sum(weights))


def macro_f1(pred, target, num_classes: int, weights=None) -> float:
  """The unweighted mean over classes c of F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c).

  TP, FP and FN are sums of example weights. The classes averaged are those that occur
  in `pred` or `target`, whatever their weight; a class whose counts are all zero (it
  occurs only in weight-0 examples) scores 0. This is sklearn's
  f1_score(target, pred, average='macro', sample_weight=weights) with its default
  zero_division, so drop padding examples before calling it.
  """
  pred, target, weights = _flat(pred, target, weights)
  pred, target = pred.astype(np.int64), target.astype(np.int64)
  for name, labels in (('pred', pred), ('target', target)):
    if labels.size and not 0 <= labels.min() <= labels.max() < num_classes:
      raise ValueError(f'{name} has labels outside [0, {num_classes})')
  hit = pred == target
  true_positive = np.bincount(target[hit], weights[hit], minlength=num_classes)
  predicted = np.bincount(pred, weights, minlength=num_classes)
  actual = np.bincount(target, weights, minlength=num_classes)
  present = np.union1d(pred, target).astype(np.int64)
  denominator = (predicted + actual)[present]
  f1 = np.divide(2 * true_positive[present], denominator, out=np.zeros(len(present)),
                 where=denominator > 0)
  return float(f1.mean()) if len(present) else math.nan


# --------------------------------------------------------------------------------------
# Tagging
# --------------------------------------------------------------------------------------


def word_counts(pred, target, weights, num_words=None) -> tuple[float, float]:
  """(correctly tagged words, words): the numerator and denominator of `word_accuracy`."""
  pred, target, weights = _flat(pred, target, weights)
  correct, kept = np.sum(weights * (pred == target)), np.sum(weights)
  if num_words is None:
    return float(correct), float(kept)
  words = np.sum(num_words)
  if words < kept:
    raise ValueError(f'num_words ({words}) is below the {kept} words marked in weights')
  return float(correct), float(words)


def word_accuracy(pred, target, weights, num_words=None) -> float:
  """Correctly tagged words / words, reading each word's tag at its first subword.

  `weights` marks first subwords (1) among the tokens of [..., S] predictions. Without
  `num_words` the denominator is the words marked; with it (the true word counts, an
  int or per-sentence array) words cut off by truncation count as wrong. The latter is
  UPOS accuracy as UD's conll18_ud_eval.py reports it on gold tokenisation: correct
  tags over all gold words.
  """
  return _ratio(*word_counts(pred, target, weights, num_words))


# --------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------


@functools.cache
def _rouge_scorer() -> rouge_scorer.RougeScorer:
  return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
  """ROUGE-1, ROUGE-2 and ROUGE-L F-measures x100, averaged over examples.

  Scored by Google's rouge-score (`RougeScorer(['rouge1', 'rouge2', 'rougeL'],
  use_stemmer=True)`: lower-cased, Porter-stemmed unigrams, bigrams and longest common
  subsequence). An example with several references takes, per ROUGE type, the best
  F-measure over them (rouge-score's `score_multi`). That is the multi-reference
  convention used for AESLC, whose dev and test emails have the original subject and
  three annotators' subjects.
  """
  if len(predictions) != len(references):
    raise ValueError(f'{len(predictions)} predictions but {len(references)} reference lists')
  if any(not refs for refs in references):
    raise ValueError('every example needs at least one reference')
  if not predictions:
    return dict.fromkeys(ROUGE_TYPES, math.nan)
  scores = [_rouge_scorer().score_multi(refs, pred)
            for pred, refs in zip(predictions, references, strict=True)]
  return {t: 100 * float(np.mean([s[t].fmeasure for s in scores])) for t in ROUGE_TYPES}


# --------------------------------------------------------------------------------------
# Language modelling
# --------------------------------------------------------------------------------------


def perplexity(total_nll: float, total_tokens: float) -> float:
  """exp(total_nll / total_tokens): e to the mean negative log-likelihood (nats) per token."""
  mean = _ratio(total_nll, total_tokens)
  return math.inf if mean > 709 else math.exp(mean)  # exp overflows float64 past 709.78


def bits_per_byte(total_nll: float, total_bytes: float) -> float:
  """total_nll / (total_bytes * ln 2): the NLL in bits per UTF-8 byte of the predicted text.

  Unlike perplexity it does not depend on the tokenizer, so models with different
  vocabularies compare.
  """
  return _ratio(total_nll, total_bytes * math.log(2))


def nats_per_character(total_nll: float, total_chars: float) -> float:
  """total_nll / total_chars: the NLL in nats per character of the predicted text."""
  return _ratio(total_nll, total_chars)


# --------------------------------------------------------------------------------------
# Accumulating over an evaluation split
# --------------------------------------------------------------------------------------


def _concatenate(parts: list[np.ndarray]) -> np.ndarray:
  return np.concatenate(parts) if parts else np.zeros(0, np.int64)


class TaskMetrics:
  """One task's statistics summed over the batches of an evaluation split.

      sums = TaskMetrics('classification', num_labels=2)
      for batch in batches:
        sums.add(batch, jax.device_get(eval_step(params, batch)), predictions)
      sums.result(references)   # {'accuracy': ..., 'macro_f1': ..., 'loss': ...}

  `batch` is the host batch (features as bloom_jax.data.features builds them; padding
  rows have weight 0). `result` is the eval step's per-example 'nll' and 'count' (sums
  over weighted targets) and its argmax 'predictions'. Generation also takes the
  decoded texts of the batch's real rows in `add`, and the references of the whole
  split, in the same order, in `result`.
  """

  def __init__(self, head: str, num_labels: int = 0):
    if head not in HEADS:
      raise ValueError(f'head must be one of {HEADS}, got {head!r}')
    if head == 'classification' and num_labels < 1:
      raise ValueError('classification metrics need num_labels')
    self.head, self.num_labels = head, num_labels
    self.nll = self.count = 0.0
    self.correct = self.words = 0.0    # tagging
    self.num_bytes = 0.0               # lm
    self.preds, self.targets, self.weights = [], [], []   # classification, real rows
    self.texts = []                    # generation

  def add(self, batch: dict, result: dict, predictions: list[str] | None = None) -> None:
    self.nll += float(np.sum(result['nll']))
    self.count += float(np.sum(result['count']))
    if self.head == 'classification':
      real = np.asarray(batch['weights']) > 0
      self.preds.append(np.asarray(result['predictions'])[real])
      self.targets.append(np.asarray(batch['targets'])[real])
      self.weights.append(np.asarray(batch['weights'])[real])
    elif self.head == 'tagging':
      correct, words = word_counts(result['predictions'], batch['targets'], batch['weights'],
                                   batch['num_words'])
      self.correct += correct
      self.words += words
    elif self.head == 'lm':
      self.num_bytes += float(np.sum(batch['target_bytes']))
    else:
      if predictions is None:
        raise ValueError('generation metrics need the decoded predictions of each batch')
      self.texts.extend(predictions)

  def result(self, references: list[list[str]] | None = None) -> dict[str, float]:
    out = {'loss': _ratio(self.nll, self.count)}
    if self.head == 'classification':
      pred, target, weights = map(_concatenate, (self.preds, self.targets, self.weights))
      out['accuracy'] = accuracy(pred, target, weights)
      out['macro_f1'] = macro_f1(pred, target, self.num_labels, weights)
    elif self.head == 'tagging':
      out['word_accuracy'] = _ratio(self.correct, self.words)
    elif self.head == 'lm':
      out['perplexity'] = perplexity(self.nll, self.count)
      out['bits_per_byte'] = bits_per_byte(self.nll, self.num_bytes)
    else:
      if references is None:
        raise ValueError('generation metrics need the references of the split')
      out.update(rouge(self.texts, references))
      out['perplexity'] = perplexity(self.nll, self.count)
    return out
