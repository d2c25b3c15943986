"""What a task type is: everything about one kind of example, end to end.

A task type owns, for its kind of example:
  data        which canonical fields an example has, how its text is cleaned, which of
              its values are labels, and how it becomes tokens (`encode`) and model rows
              (`rows`: packed, several examples to a row);
  model       the attention mode its examples use by default, its head (or none: the
              tied LM head), and how the head turns trunk states into logits, computed
              only where a loss or a prediction needs them;
  loss        per-position loss, weights and correctness;
  evaluation  its metrics over a whole split;
  prediction  decoding raw texts into answers, and how an answer is printed.

Nothing outside the task types branches on which type a task has: a new type is one
module here plus its line in `task_types/__init__.py`.
"""

import abc

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bloom_jax import decoding, losses, metrics
from bloom_jax.data import packing
from bloom_jax.errors import ConfigError

POOLING = ('last', 'mean', 'max', 'attention')  # `pooling`: which states a label is read from
SUBWORDS = ('first', 'last')  # `subword`: which of a word's subwords its tag is read at
NGRAM_UNITS = ('token', 'word')  # `ngram_unit`: what a bag's n-grams are n of


class TaskType(abc.ABC):
  name = ''
  attention = 'bidirectional'    # the default attention mode of its examples
  fields: dict[str, str] = {}    # canonical example fields: 'text' or 'texts' (a list)
  metrics: tuple[str, ...] = ()  # headline metrics, besides `loss`
  needs_labels = False           # the task declares its label set
  whole_text = False             # a source file is one document (held out by its tail)
  generates = False              # predictions are decoded text (takes decoding options)
  input_field = 'text'           # the canonical field a raw input text fills
  marks_prefix = False           # rows carry a `prefix_mask` (for 'prefix' attention)
  takes_stopwords = False        # `stopwords` (drop English stop words) applies to its input
  takes_pos_tags = False         # `pos_tagger` (a tagger run's tags, embedded) applies to it
  takes_source_lm = False        # `source_lm_weight` (a next-token loss on its input text)
                                 #   applies to it
  takes_decoding = False         # `decoding` (evaluation's decoding options) applies to it
  takes_copy = False             # `copy` (a copy head: tokens copied from the input) applies
  takes_pooling = False          # `pooling` (which states the label is read from) applies
  takes_subword = False          # `subword` (which subword of a word its label is read at)
                                 #   applies
  takes_ngrams = False           # `ngrams` (a bag of the input's hashed token n-grams) applies
  takes_label_smoothing = False  # `label_smoothing` (training on smoothed label targets)
                                 #   applies; its `losses` then takes the argument

  def __repr__(self) -> str:  # stable across processes: it goes into data fingerprints
    return f'task_types.{self.name}'

  def check(self, task, key: str) -> None:
    """Raises ConfigError (naming `key`, the task's config entry) for settings the type
    cannot honour."""
    if task.attention == 'prefix' and not self.marks_prefix:
      raise ConfigError(f"{key}.attention: 'prefix' needs rows that mark a prefix; "
                        f'{self.name} rows do not')
    if self.needs_labels and not task.labels:
      raise ConfigError(f'{key}: {self.name} tasks need their labels declared')
    if task.stopwords and not self.takes_stopwords:
      raise ConfigError(f'{key}.stopwords: not for {self.name} tasks')
    if task.pos_tagger and not self.takes_pos_tags:
      raise ConfigError(f'{key}.pos_tagger: not for {self.name} tasks')
    if task.source_lm_weight and not self.takes_source_lm:
      raise ConfigError(f'{key}.source_lm_weight: not for {self.name} tasks')
    if task.source_lm_weight < 0:
      raise ConfigError(f'{key}.source_lm_weight: must be >= 0')
    if task.source_lm_weight and task.attention != 'causal':
      raise ConfigError(
          f"{key}.source_lm_weight: needs {key}.attention='causal': read both ways, every "
          'input token sees the one it is to predict')
    if task.decoding and not self.takes_decoding:
      raise ConfigError(f'{key}.decoding: not for {self.name} tasks')
    if task.copy and not self.takes_copy:
      raise ConfigError(f'{key}.copy: not for {self.name} tasks')
    if task.pooling not in POOLING:
      raise ConfigError(f'{key}.pooling: {task.pooling!r} is not one of {POOLING}')
    if task.pooling != 'last' and not self.takes_pooling:
      raise ConfigError(f'{key}.pooling: not for {self.name} tasks')
    if task.subword not in SUBWORDS:
      raise ConfigError(f'{key}.subword: {task.subword!r} is not one of {SUBWORDS}')
    if task.subword != 'first' and not self.takes_subword:
      raise ConfigError(f'{key}.subword: not for {self.name} tasks')
    if task.ngrams and not self.takes_ngrams:
      raise ConfigError(f'{key}.ngrams: not for {self.name} tasks')
    if task.ngram_unit not in NGRAM_UNITS:
      raise ConfigError(f'{key}.ngram_unit: {task.ngram_unit!r} is not one of {NGRAM_UNITS}')
    if task.label_smoothing and not self.takes_label_smoothing:
      raise ConfigError(f'{key}.label_smoothing: not for {self.name} tasks')

  # ------------------------------------------------------------------ data

  @abc.abstractmethod
  def clean(self, task, row: dict) -> dict | str | None:
    """The row with its text normalised; None when nothing is left of it, or the kind of
    problem that makes it unusable (counted, e.g. 'unknown_label')."""

  def labels_of(self, row: dict) -> list:
    """The label values of a row, checked against the task's labels and counted."""
    del row
    return []

  @abc.abstractmethod
  def training_text(self, row: dict) -> str:
    """The text of a row that the tokenizer learns from."""

  @abc.abstractmethod
  def encode(self, task, tok, rows: list[dict], train: bool, token_bytes) -> tuple:
    """(Examples, info): every row's tokens; `info` has per-row `length` (tokens before
    truncation) and `truncated` flags. Rows without targets encode model inputs only."""

  def inference_rows(self, task, tok, texts: list) -> list[dict]:
    """Raw inputs (strings) -> canonical rows without targets, cleaned as in training."""
    del tok
    return [self.clean(task, {self.input_field: t}) or {self.input_field: ''} for t in texts]

  def rows(self, task, examples: packing.Examples, pad_id: int, packed: bool) -> dict:
    """Model rows of `task.max_length` tokens."""
    return packing.pack(examples, task.max_length, pad_id, packed)

  def describe(self, task, tok, example: dict, sample: dict) -> list[str]:
    """Lines showing one encoded example beside its source row (`python -m bloom_jax.data`)."""
    del task, sample
    return [f'    {tok.decode(example["input_ids"], skip_special=False)[:300]!r}']

  # ------------------------------------------------------------------ model

  def make_head(self, model_cfg, task, rngs):
    """The task's own parameters on top of the trunk, or None."""
    del model_cfg, task, rngs
    return None

  @abc.abstractmethod
  def logits(self, model, task, hidden: jax.Array, batch: dict, dropout_key) -> jax.Array:
    """The trunk's final states [B, S, H] -> the outputs `losses` and `predictions` read.
    `dropout_key` is given in training only."""

  def vocab_positions(self, task) -> int:
    """Positions per row that `logits` projects onto the vocabulary (for FLOP counts)."""
    del task
    return 0

  def losses(self, logits, batch: dict, label_smoothing: float = 0.0):
    """(loss, weights, correct) per scored position; `correct` may be None. In training
    with auxiliary losses (`logits` a dict: 'target', and any of 'source', [B, S, V], and
    'ngrams'), the target's terms followed by each auxiliary loss's:
      'source': every position's next-token term (weight 0 but where the next token is
        one of the input's, `source_lm_fields`);
      'ngrams': the target's loss on a bag of n-grams' logits alone (`ngram_weights`).
    Auxiliary predictions stay out of `correct`: the logged accuracy is the target's.
    `label_smoothing` (training passes it) smooths the target's terms, the bag's included
    (`losses.token_nll`), and leaves the next-token ones as they are."""
    if isinstance(logits, dict):
      options = {'label_smoothing': label_smoothing} if label_smoothing else {}
      nll, weights, correct = self.losses(logits['target'], batch, **options)
      extra = []
      if 'source' in logits:
        extra.append((losses.token_nll(logits['source'], batch['source_targets'])[0],
                      batch['source_weights']))
      if 'ngrams' in logits:
        extra.append((self.losses(logits['ngrams'], batch, **options)[0], batch['ngram_weights']))
      if correct is not None:
        correct = jnp.concatenate([correct] + [jnp.zeros_like(t, bool) for t, _ in extra], 1)
      return (jnp.concatenate([nll] + [t for t, _ in extra], axis=1),
              jnp.concatenate([weights] + [w for _, w in extra], axis=1), correct)
    nll, correct = losses.token_nll(logits, batch['targets'], label_smoothing)
    return nll, batch['weights'].astype(jnp.float32), correct

  def predictions(self, logits: jax.Array) -> jax.Array:
    return jnp.argmax(logits, axis=-1)

  def generate(self, task, graphdef: nnx.GraphDef, state: nnx.State, prompt_ids: jax.Array,
               prompt_mask: jax.Array, **options) -> dict[str, jax.Array]:
    """`decoding.generate`'s result for left-padded prompts, decoded by the multi-task
    model (`graphdef`, `state`: its trunk's layers unstacked, `multitask_model.unstacked_trunk`).
    By default the trunk alone, with its tied LM head."""
    del task
    trunk = nnx.merge(graphdef, state).bloom
    return decoding.generate(*nnx.split(trunk), prompt_ids, prompt_mask, **options)

  # ------------------------------------------------------------------ evaluation

  def accumulator(self, task) -> 'Accumulator':
    return Accumulator()

  def evaluate(self, evaluator, task, examples: packing.Examples, references) -> dict:
    """Metrics of one split (its first examples, as the evaluator selected them)."""
    del references
    sums = self.accumulator(task)
    for batch, result in evaluator.scored_batches(task, examples):
      sums.add(batch, result)
    return sums.result()

  # ------------------------------------------------------------------ prediction

  @abc.abstractmethod
  def predict(self, predictor, task, texts: list, **options) -> list[dict]:
    """One answer (a JSON-able dict) per raw input text (`predict.Predictor`)."""

  @abc.abstractmethod
  def format_prediction(self, task, prediction: dict) -> str:
    """One answer as a line for the terminal."""


class Accumulator:
  """Loss sums over an evaluation split; subclasses add their type's metrics."""

  def __init__(self):
    self.loss = self.count = 0.0

  def add(self, batch: dict, result: dict) -> None:
    del batch
    self.loss += float(np.sum(result['loss_sum']))
    self.count += float(np.sum(result['count']))

  def result(self) -> dict[str, float]:
    return {'loss': metrics.ratio(self.loss, self.count)}


class ExampleMetrics(Accumulator, abc.ABC):
  """Keeps every scored example's prediction and target; subclasses compare them whole
  in `scores` (metrics such as F1 or a correlation do not add up over batches)."""

  def __init__(self):
    super().__init__()
    self.preds, self.targets = [], []

  def add(self, batch, result):
    super().add(batch, result)
    self.preds.append(scored(batch, result['predictions']))
    self.targets.append(scored(batch, batch['targets']))

  @abc.abstractmethod
  def scores(self, pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """The type's metrics of every scored prediction against its target."""

  def result(self):
    pred, target = (np.concatenate(x) if x else np.zeros(0) for x in (self.preds, self.targets))
    return {**super().result(), **self.scores(pred, target)}


class PerplexityMetrics(Accumulator):
  """The loss and its perplexity (the loss is mean nats per scored token)."""

  def result(self):
    return {**super().result(), 'perplexity': metrics.perplexity(self.loss, self.count)}


def source_lm_fields(rows: dict, predicts: np.ndarray, weight: float, pad_id: int) -> dict:
  """The fields of `source_lm_weight`'s loss on packed rows: `source_weights` (`weight`
  where `predicts`, the positions whose next token of the row is to be predicted, else 0)
  and `source_targets` (that next token)."""
  following = np.pad(rows['input_ids'][:, 1:], ((0, 0), (0, 1)), constant_values=pad_id)
  return {'source_weights': np.where(predicts, weight, 0.0).astype(np.float32),
          'source_targets': np.where(predicts, following, pad_id).astype(np.int32)}


def verdict(decoded: str, source: str) -> str:
  """How an example's decoded tokens compare with its source text."""
  if decoded == source:
    return 'matches source'
  return 'source prefix (truncated)' if source.startswith(decoded) else 'DIFFERS from source'


def label_index(task) -> dict[str, int]:
  return {label: i for i, label in enumerate(task.labels)}


def scored(batch: dict, values: np.ndarray) -> np.ndarray:
  """The values at the positions a batch scores (weight > 0), in row-major order."""
  return np.asarray(values)[np.asarray(batch['weights']) > 0]
