import math

import numpy as np
import pytest
from rouge_score import rouge_scorer
from sklearn.metrics import accuracy_score, f1_score

from bloom_jax import metrics

# (pred, target, weights): an absent class, classes only predicted or only true, weights.
LABEL_CASES = [
    ([0, 1, 2, 1, 0], [0, 1, 1, 1, 2], None),
    ([0, 0, 0, 0], [0, 1, 1, 3], None),                  # 2 and 4 never occur
    ([3, 3, 1, 0, 2, 2], [3, 1, 1, 0, 0, 2], [1.0, 2.0, 0.5, 1.0, 3.0, 1.0]),
    ([1, 1, 1], [1, 1, 1], None),
    ([0, 1, 4, 2], [0, 1, 1, 2], [1.0, 1.0, 0.0, 1.0]),  # class 4 has weight 0 only
]


@pytest.mark.parametrize('pred, target, weights', LABEL_CASES)
def test_accuracy_matches_sklearn(pred, target, weights):
  assert metrics.accuracy(pred, target, weights) == pytest.approx(
      accuracy_score(target, pred, sample_weight=weights))


@pytest.mark.filterwarnings('ignore::sklearn.exceptions.UndefinedMetricWarning')
@pytest.mark.parametrize('pred, target, weights', LABEL_CASES)
def test_macro_f1_matches_sklearn(pred, target, weights):
  assert metrics.macro_f1(pred, target, 5, weights) == pytest.approx(
      f1_score(target, pred, average='macro', sample_weight=weights))


@pytest.mark.filterwarnings('ignore::sklearn.exceptions.UndefinedMetricWarning')
def test_macro_f1_matches_sklearn_on_random_labels():
  rng = np.random.default_rng(0)
  for _ in range(50):
    n, classes = rng.integers(1, 40), rng.integers(2, 8)
    pred, target = rng.integers(0, classes, n), rng.integers(0, classes, n)
    weights = rng.choice([0.0, 0.5, 1.0, 2.0], n)
    if weights.sum() == 0:
      continue
    assert metrics.macro_f1(pred, target, classes, weights) == pytest.approx(
        f1_score(target, pred, average='macro', sample_weight=weights))
    assert metrics.accuracy(pred, target, weights) == pytest.approx(
        accuracy_score(target, pred, sample_weight=weights))


def test_macro_f1_by_hand():
  # Class 0: TP 1, FP 1 -> F1 2/3; class 1: TP 1, FN 1 -> 2/3. Class 2 occurs nowhere and
  # is left out of the mean (counting it as 0 would give 4/9).
  assert metrics.macro_f1([0, 1, 0], [0, 1, 1], 3) == pytest.approx(2 / 3)


def test_empty_and_mislabelled_inputs():
  assert math.isnan(metrics.accuracy([], []))
  assert math.isnan(metrics.accuracy([1], [1], [0.0]))
  assert math.isnan(metrics.macro_f1([], [], 3))
  with pytest.raises(ValueError, match=r'target has labels outside \[0, 3\)'):
    metrics.macro_f1([0, 1], [0, 3], 3)
  with pytest.raises(ValueError, match='shape'):
    metrics.accuracy([0, 1], [0, 1, 1])


# Two sentences of 4 and 3 words; position 0 is <s>, `weights` marks first subwords.
# Row 0 keeps 3 words (2 right), row 1 keeps 2 words (1 right): 3 of 5 kept, 3 of 7 in all.
TAG_PRED = [[0, 1, 2, 2, 0, 0], [3, 3, 1, 0, 0, 0]]
TAG_TARGET = [[0, 1, 1, 2, 0, 0], [3, 0, 1, 0, 0, 0]]
TAG_WEIGHTS = [[0, 1, 1, 1, 0, 0], [0, 1, 0, 1, 0, 0]]


def test_word_accuracy_counts_truncated_words_as_wrong():
  assert metrics.word_accuracy(TAG_PRED, TAG_TARGET, TAG_WEIGHTS) == pytest.approx(3 / 5)
  assert metrics.word_accuracy(TAG_PRED, TAG_TARGET, TAG_WEIGHTS, [4, 3]) == pytest.approx(3 / 7)
  assert metrics.word_accuracy(TAG_PRED, TAG_TARGET, TAG_WEIGHTS, 7) == pytest.approx(3 / 7)
  with pytest.raises(ValueError, match='num_words'):
    metrics.word_accuracy(TAG_PRED, TAG_TARGET, TAG_WEIGHTS, [2, 2])


def test_rouge_by_hand():
  # rouge1 and rougeL: P 3/3, R 3/6 -> F 2/3; rouge2: P 2/2, R 2/5 -> F 4/7.
  scores = metrics.rouge(['the cat sat'], [['The cat sat on the mat.']])
  assert scores == pytest.approx({'rouge1': 200 / 3, 'rouge2': 400 / 7, 'rougeL': 200 / 3})


def test_rouge_stems():
  assert metrics.rouge(['cats running'], [['cat runs']])['rouge1'] == pytest.approx(100)


def test_rouge_takes_the_best_reference_per_type():
  # rouge1 is best against the second reference, rouge2 and rougeL against the first.
  refs = ['alpha beta x x x x x x', 'delta gamma beta alpha']
  scores = metrics.rouge(['alpha beta gamma delta'], [refs])
  assert scores == pytest.approx({'rouge1': 100.0, 'rouge2': 20.0, 'rougeL': 100 / 3})


def test_rouge_matches_rouge_score():
  predictions = ['The cats are running home', 'meeting confirmed for tuesday',
                 'quarterly report attached', '']
  references = [['cat runs home'],
                ['Confirmation: Risk Management Simulation Meeting 10/30/01',
                 'meeting confirmation', 'meeting confirmed'],
                ['Q3 report', 'the quarterly financial report'],
                ['empty prediction']]
  scorer = rouge_scorer.RougeScorer(['rouge1', 'rouge2', 'rougeL'], use_stemmer=True)
  expected = {}
  for t in ('rouge1', 'rouge2', 'rougeL'):
    best = [max(scorer.score(r, p)[t].fmeasure for r in refs)
            for p, refs in zip(predictions, references, strict=True)]
    expected[t] = 100 * np.mean(best)
  assert metrics.rouge(predictions, references) == pytest.approx(expected)


def test_rouge_rejects_misaligned_inputs():
  with pytest.raises(ValueError, match='2 predictions but 1'):
    metrics.rouge(['a', 'b'], [['a']])
  with pytest.raises(ValueError, match='at least one reference'):
    metrics.rouge(['a'], [[]])


def test_language_model_rates_by_hand():
  assert metrics.perplexity(10 * math.log(4), 10) == pytest.approx(4.0)
  assert metrics.bits_per_byte(24 * math.log(2), 8) == pytest.approx(3.0)
  assert metrics.nats_per_character(6.0, 3) == pytest.approx(2.0)
  assert metrics.perplexity(1e6, 1) == math.inf
  assert math.isnan(metrics.perplexity(0.0, 0))
  assert math.isnan(metrics.bits_per_byte(1.0, 0))


def eval_result(predictions, nll, count):
  return {'predictions': np.asarray(predictions), 'nll': np.asarray(nll, np.float32),
          'count': np.asarray(count, np.float32)}


@pytest.mark.filterwarnings('ignore::sklearn.exceptions.UndefinedMetricWarning')
def test_task_metrics_classification_ignores_padding_rows():
  sums = metrics.TaskMetrics('classification', num_labels=4)
  sums.add({'targets': np.array([0, 1, 1]), 'weights': np.array([1.0, 1.0, 1.0])},
           eval_result([0, 1, 0], [0.1, 0.2, 2.0], [1, 1, 1]))
  # The last row pads the batch; its prediction (class 3) occurs nowhere else.
  sums.add({'targets': np.array([2, 0]), 'weights': np.array([1.0, 0.0])},
           eval_result([2, 3], [0.3, 0.0], [1, 0]))
  pred, target = [0, 1, 0, 2], [0, 1, 1, 2]
  assert sums.result() == pytest.approx({
      'loss': 2.6 / 4, 'accuracy': 0.75,
      'macro_f1': f1_score(target, pred, average='macro')})


def test_task_metrics_tagging_sums_words():
  sums = metrics.TaskMetrics('tagging')
  for row in range(2):
    batch = {'targets': np.array(TAG_TARGET[row:row + 1]),
             'weights': np.array(TAG_WEIGHTS[row:row + 1], np.float32),
             'num_words': np.array([[4, 3][row]])}
    sums.add(batch, eval_result(TAG_PRED[row:row + 1], [1.0], [3 - row]))
  assert sums.result() == pytest.approx({'loss': 2 / 5, 'word_accuracy': 3 / 7})


def test_task_metrics_lm():
  sums = metrics.TaskMetrics('lm')
  sums.add({'target_bytes': np.array([10, 6])}, eval_result([[0]], [4 * math.log(2), 0.0], [2, 0]))
  sums.add({'target_bytes': np.array([8])}, eval_result([[0]], [8 * math.log(2)], [2]))
  assert sums.result() == pytest.approx(
      {'loss': 3 * math.log(2), 'perplexity': 8.0, 'bits_per_byte': 0.5})


def test_task_metrics_generation():
  sums = metrics.TaskMetrics('generation')
  sums.add({}, eval_result([[0]], [2.0, 0.0], [1, 0]), ['the cat sat'])
  sums.add({}, eval_result([[0]], [4.0], [2]), ['cats running'])
  references = [['The cat sat on the mat.'], ['a dog', 'cat runs']]
  assert sums.result(references) == pytest.approx({
      **metrics.rouge(['the cat sat', 'cats running'], references),
      'loss': 2.0, 'perplexity': math.exp(2.0)})
  with pytest.raises(ValueError, match='references'):
    sums.result()
  with pytest.raises(ValueError, match='decoded predictions'):
    sums.add({}, eval_result([[0]], [1.0], [1]))


def test_task_metrics_rejects_bad_heads():
  with pytest.raises(ValueError, match="'regression'"):
    metrics.TaskMetrics('regression')
  with pytest.raises(ValueError, match='num_labels'):
    metrics.TaskMetrics('classification')
