import math

import numpy as np
import pytest
from rouge_score import rouge_scorer
from sklearn.metrics import accuracy_score, f1_score

from bloom_jax import metrics
from bloom_jax.data import packing
from bloom_jax.task_types import CLASSIFICATION, GENERATION, LM, TAGGING
from bloom_jax.tasks import TaskSpec

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


def test_ratio_is_nan_without_a_denominator():
  assert metrics.ratio(3.0, 4.0) == 0.75
  assert math.isnan(metrics.ratio(1.0, 0.0))


# --------------------------------------------------------------------------------------
# The task types' accumulators, fed eval batches of packed rows as `steps.eval_step`
# returns them: per-position predictions, per-row loss sums and counts.


def _spec(task_type, **fields):
  return TaskSpec('t', task_type, source=None, max_length=8, **fields)


def eval_result(predictions, loss_sum, count):
  return {'predictions': np.asarray(predictions), 'loss_sum': np.asarray(loss_sum, np.float32),
          'count': np.asarray(count, np.float32)}


@pytest.mark.filterwarnings('ignore::sklearn.exceptions.UndefinedMetricWarning')
def test_classification_accumulator_reads_segment_ends_only():
  sums = CLASSIFICATION.accumulator(_spec(CLASSIFICATION, labels=('a', 'b', 'c', 'd')))
  # Row 0 packs two examples (labels at their last tokens, 2 and 5), row 1 one example;
  # unscored positions predict class 3, which no scored position has.
  batch = {'targets': np.array([[0, 0, 0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 0, 0, 0, 0]]),
           'weights': np.array([[0, 0, 1, 0, 0, 1, 0, 0], [0, 0, 0, 1, 0, 0, 0, 0]], np.float32)}
  preds = np.full((2, 8), 3)
  preds[0, 2], preds[0, 5], preds[1, 3] = 0, 1, 0
  sums.add(batch, eval_result(preds, [0.3, 2.0], [2, 1]))
  # The last batch: one example and a padding row (weight 0 everywhere) predicting class 3.
  batch = {'targets': np.array([[0, 2, 0, 0, 0, 0, 0, 0], np.zeros(8, int)]),
           'weights': np.array([[0, 1, 0, 0, 0, 0, 0, 0], np.zeros(8)], np.float32)}
  preds = np.full((2, 8), 3)
  preds[0, 1] = 2
  sums.add(batch, eval_result(preds, [0.3, 0.0], [1, 0]))
  pred, target = [0, 1, 0, 2], [0, 1, 1, 2]
  assert sums.result() == pytest.approx({
      'loss': 2.6 / 4, 'accuracy': 0.75,
      'macro_f1': f1_score(target, pred, average='macro')})
  empty = CLASSIFICATION.accumulator(_spec(CLASSIFICATION, labels=('a', 'b'))).result()
  assert all(math.isnan(v) for v in empty.values())


def test_tagging_accumulator_sums_words():
  sums = TAGGING.accumulator(_spec(TAGGING, labels=('0', '1', '2', '3')))
  for row in range(2):
    batch = {'targets': np.array(TAG_TARGET[row:row + 1]),
             'weights': np.array(TAG_WEIGHTS[row:row + 1], np.float32),
             'num_words': np.array([[4, 3][row]])}
    sums.add(batch, eval_result(TAG_PRED[row:row + 1], [1.0], [3 - row]))
  # A padding row adds nothing.
  sums.add({'targets': np.zeros((1, 6), int), 'weights': np.zeros((1, 6), np.float32),
            'num_words': np.zeros(1, np.int32)}, eval_result(np.ones((1, 6), int), [0.0], [0]))
  assert sums.result() == pytest.approx({'loss': 2 / 5, 'word_accuracy': 3 / 7})


def test_tagging_accumulator_counts_packed_rows_like_single_rows():
  # The two sentences of TAG_* packed into one row of 12 give the same metrics.
  packed = {'targets': np.array([sum(TAG_TARGET, [])]),
            'weights': np.array([sum(TAG_WEIGHTS, [])], np.float32),
            'num_words': np.array([7])}
  sums = TAGGING.accumulator(_spec(TAGGING, labels=('0', '1', '2', '3')))
  sums.add(packed, eval_result([sum(TAG_PRED, [])], [2.0], [5]))
  assert sums.result() == pytest.approx({'loss': 2 / 5, 'word_accuracy': 3 / 7})


def test_lm_accumulator():
  sums = LM.accumulator(_spec(LM))
  sums.add({'target_bytes': np.array([10, 6])}, eval_result([[0]], [4 * math.log(2), 0.0], [2, 0]))
  sums.add({'target_bytes': np.array([8])}, eval_result([[0]], [8 * math.log(2)], [2]))
  assert sums.result() == pytest.approx(
      {'loss': 3 * math.log(2), 'perplexity': 8.0, 'bits_per_byte': 0.5})


class FakeEvaluator:
  """What a task type's `evaluate` asks of `evaluation.Evaluator`: the eval step's outputs
  for the examples' rows, and continuations of prompts."""

  def __init__(self, results, generated=()):
    self.results, self.generated, self.prompts = results, list(generated), None

  def scored_batches(self, spec, examples):
    del spec, examples
    yield from self.results

  def generate(self, spec, prompts, width, **options):
    del options  # tests/test_generation_options.py checks what evaluation decodes with
    self.prompts, self.width = prompts, width
    assert width == spec.max_length - spec.target_length - 1
    return self.generated[:len(prompts)]


def test_generation_evaluate_scores_rouge_against_every_reference():
  spec = _spec(GENERATION, max_target_length=3)
  # Two examples, <s> source <sep> target </s>, with 1 = <s>, 4 = <sep>, 2 = </s>.
  seqs = [[1, 10, 11, 4, 20, 2], [1, 12, 4, 21, 22, 2]]
  prefix = [[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]]
  ids, lengths = packing.ragged(seqs)
  examples = packing.Examples({'input_ids': ids, 'prefix_mask': packing.ragged(prefix)[0]},
                              lengths)
  results = [({}, eval_result([[0]], [2.0, 0.0], [1, 0])), ({}, eval_result([[0]], [4.0], [2]))]
  evaluator = FakeEvaluator(results, ['the cat sat', 'cats running'])
  references = [['The cat sat on the mat.'], ['a dog', 'cat runs']]
  out = GENERATION.evaluate(evaluator, spec, examples, references)
  assert evaluator.prompts == [[1, 10, 11, 4], [1, 12, 4]]
  assert out == pytest.approx({
      **metrics.rouge(['the cat sat', 'cats running'], references),
      'loss': 2.0, 'perplexity': math.exp(2.0)})
  with pytest.raises(ValueError, match='2 predictions but 1'):
    GENERATION.evaluate(FakeEvaluator(results, ['a', 'b']), spec, examples, references[:1])


@pytest.mark.filterwarnings('ignore::sklearn.exceptions.UndefinedMetricWarning')
def test_classification_evaluate_sums_every_batch():
  spec = _spec(CLASSIFICATION, labels=('a', 'b'))
  batch = {'targets': np.array([[0, 1, 0, 0]]), 'weights': np.array([[0, 1, 0, 1]], np.float32)}
  results = [(batch, eval_result([[1, 1, 1, 1]], [1.5], [2]))] * 2
  assert CLASSIFICATION.evaluate(FakeEvaluator(results), spec, None, None) == pytest.approx(
      {'loss': 0.75, 'accuracy': 0.5, 'macro_f1': f1_score([1, 0, 1, 0], [1, 1, 1, 1],
                                                           average='macro')})
