"""Evaluation metrics, computed on the host from numpy arrays (after `jax.device_get`).

Every function states its definition. Where nothing is counted (no examples, zero total
weight, no tokens) the result is nan rather than an error, so an empty split still logs.

Each task type sums its per-batch statistics over an evaluation split with these
(`bloom_jax.task_types`).
"""

import functools
import math

import numpy as np

ROUGE_TYPES = ('rouge1', 'rouge2', 'rougeL')


def ratio(numerator: float, denominator: float) -> float:
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
  return ratio(np.sum(weights * (pred == target)), np.sum(weights))


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
# Regression
# --------------------------------------------------------------------------------------


def pearson(pred, target) -> float:
  """sum (p - mean p)(t - mean t) / sqrt(sum (p - mean p)^2 sum (t - mean t)^2);
  nan with fewer than two values or when either side is constant (scipy.stats.pearsonr)."""
  pred, target, _ = _flat(pred, target)
  if len(pred) < 2:
    return math.nan
  p, t = pred - pred.mean(), target - target.mean()
  return ratio(float(np.sum(p * t)), math.sqrt(float(np.sum(p * p) * np.sum(t * t))))


def _ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks, ties given the mean of the ranks they span."""
  ranks = np.empty(len(x), np.float64)
  ranks[np.argsort(x, kind='stable')] = np.arange(1, len(x) + 1)
  _, inverse = np.unique(x, return_inverse=True)
  return (np.bincount(inverse, ranks) / np.bincount(inverse))[inverse]


def spearman(pred, target) -> float:
  """Pearson's correlation of the ranks, ties averaged (scipy.stats.spearmanr)."""
  pred, target, _ = _flat(pred, target)
  return pearson(_ranks(pred), _ranks(target))


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
  return ratio(*word_counts(pred, target, weights, num_words))


# --------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------


@functools.cache
def _rouge_scorer():
  # Imported on first use: rouge-score loads nltk and scipy, seconds of start-up that
  # programs without a generation task never need.
  from rouge_score import rouge_scorer
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
  mean = ratio(total_nll, total_tokens)
  return math.inf if mean > 709 else math.exp(mean)  # exp overflows float64 past 709.78


def bits_per_byte(total_nll: float, total_bytes: float) -> float:
  """total_nll / (total_bytes * ln 2): the NLL in bits per UTF-8 byte of the predicted text.

  Unlike perplexity it does not depend on the tokenizer, so models with different
  vocabularies compare.
  """
  return ratio(total_nll, total_bytes * math.log(2))


def nats_per_character(total_nll: float, total_chars: float) -> float:
  """total_nll / total_chars: the NLL in nats per character of the predicted text."""
  return ratio(total_nll, total_chars)
