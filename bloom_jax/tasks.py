"""Task registry and mixture arithmetic.

A `TaskSpec` declares what a task is: its source, its type (`bloom_jax.task_types`: the
featurizer, head, loss, metrics and prediction format that kind of example has), labels,
preprocessing and length limits. The config's `tasks.<name>` entries pick registered
tasks and set how they train together (rate, loss weight, lengths, attention mode).
`configure` validates that once, at start-up, with errors naming the config key.
"""

import dataclasses

import numpy as np

from bloom_jax import task_types
from bloom_jax.data import sources
from bloom_jax.data import synthetic as syn
from bloom_jax.errors import ConfigError
from bloom_jax.layers import ATTENTION_MODES
from bloom_jax.task_types import CLASSIFICATION, GENERATION, LM, TAGGING

UPOS = ('ADJ', 'ADP', 'ADV', 'AUX', 'CCONJ', 'DET', 'INTJ', 'NOUN', 'NUM', 'PART', 'PRON',
        'PROPN', 'PUNCT', 'SCONJ', 'SYM', 'VERB', 'X')


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """A registered task; the fields after `description` are set from the config."""

  name: str
  type: task_types.TaskType
  source: object                   # a `bloom_jax.data.sources` source
  labels: tuple[str, ...] | None = None
  description: str = ''
  max_length: int = 64             # tokens per row (and per example), special tokens included
  max_target_length: int = 0       # generation: target tokens kept (0: a quarter of max_length)
  stopwords: bool = False          # drop English stop words from the input text
  attention: str = ''              # 'causal' | 'bidirectional' | 'prefix' ('': the type's)
  rate: float = 1.0
  loss_weight: float = 1.0
  batch_size: int = 0              # global rows per step, set from the mixture

  def __post_init__(self):
    if not self.attention:
      object.__setattr__(self, 'attention', self.type.attention)

  @property
  def metrics(self) -> tuple[str, ...]:
    return self.type.metrics

  @property
  def target_length(self) -> int:
    return self.max_target_length or max(1, self.max_length // 4)


REGISTRY: dict[str, TaskSpec] = {t.name: t for t in [
    # Built-in synthetic tasks (no download).
    TaskSpec('sentiment', CLASSIFICATION, sources.Synthetic('sentiment'),
             labels=syn.SENTIMENT_LABELS, description='synthetic sentence polarity'),
    TaskSpec('tagging', TAGGING, sources.Synthetic('tagging'), labels=syn.TAGS,
             description='synthetic word categories, some ambiguous'),
    TaskSpec('summarize', GENERATION, sources.Synthetic('summarize'),
             description='synthetic: the nouns of two sentences, in order'),
    TaskSpec('lm', LM, sources.Synthetic('lm'), description='synthetic grammar sentences'),
    # Local copies of public datasets under data.dir (layout in docs/data.md).
    TaskSpec('pos', TAGGING, sources.Local(TAGGING, 'conllu', (
        ('train', 'ud_english_ewt/en_ewt-ud-train.conllu'),
        ('validation', 'ud_english_ewt/en_ewt-ud-dev.conllu'),
        ('test', 'ud_english_ewt/en_ewt-ud-test.conllu'))), labels=UPOS,
        description='UD English EWT, UPOS tags'),
    TaskSpec('sst2', CLASSIFICATION, sources.Local(CLASSIFICATION, 'tsv', (
        ('train', 'sst2_glue/train.tsv'), ('validation', 'sst2_glue/dev.tsv')),
        options=(('text_column', 'sentence'), ('label_column', 'label'))),
        labels=('0', '1'), description='GLUE SST-2 (0 negative, 1 positive); test is unlabelled'),
    TaskSpec('trec', CLASSIFICATION, sources.Local(CLASSIFICATION, 'label_first', (
        ('train', 'trec_qc/TREC.train'), ('test', 'trec_qc/TREC.test')),
        options=(('label_sep', ':'),), holdout=0.1, holdout_seed=0),
        labels=('ABBR', 'DESC', 'ENTY', 'HUM', 'LOC', 'NUM'),
        description='TREC-6 questions; validation: a seeded 10% of train'),
    TaskSpec('aeslc', GENERATION, sources.Local(GENERATION, 'jsonl', (
        ('train', 'aeslc/train.jsonl'), ('validation', 'aeslc/dev.jsonl'),
        ('test', 'aeslc/test.jsonl')),
        options=(('source_field', 'body'), ('target_fields', ('subject', 'ann0', 'ann1', 'ann2'))),
    ), description='email body -> subject; dev/test keep all 4 references'),
    TaskSpec('shakespeare', LM, sources.Local(LM, 'text', (
        ('train', 'tiny_shakespeare/input.txt'),), holdout=0.1),
        description='Tiny Shakespeare; first 90% train, last 10% validation'),
    # TFDS catalog datasets (downloaded by the user into the TFDS data dir).
    TaskSpec('tfds_sst2', CLASSIFICATION, sources.catalog(
        'glue/sst2', dict(train='train', validation='validation'),
        sources.classification, text_keys=('sentence',), label_key='label'),
        labels=('negative', 'positive')),
    TaskSpec('tfds_trec', CLASSIFICATION, sources.catalog(
        'trec', dict(train='train[:90%]', validation='train[90%:]', test='test'),
        sources.classification, text_keys=('text',), label_key='label-coarse'),
        labels=('DESC', 'ENTY', 'ABBR', 'HUM', 'NUM', 'LOC')),
    TaskSpec('ag_news', CLASSIFICATION, sources.catalog(
        'ag_news_subset', dict(train='train[:95%]', validation='train[95%:]', test='test'),
        sources.classification, text_keys=('title', 'description'), label_key='label'),
        labels=('World', 'Sports', 'Business', 'Sci/Tech')),
    TaskSpec('tfds_pos', TAGGING, sources.catalog(
        'universal_dependencies/en_ewt', dict(train='train', validation='dev', test='test'),
        sources.tagging, words_key='tokens', tags_key='upos'), labels=UPOS),
    TaskSpec('tfds_aeslc', GENERATION, sources.catalog(
        'aeslc', dict(train='train', validation='validation', test='test'),
        sources.generation, source_key='email_body', target_key='subject_line')),
    TaskSpec('xsum', GENERATION, sources.catalog(
        'xsum', dict(train='train', validation='validation', test='test'),
        sources.generation, source_key='document', target_key='summary')),
    TaskSpec('cnn_dailymail', GENERATION, sources.catalog(
        'cnn_dailymail', dict(train='train', validation='validation', test='test'),
        sources.generation, source_key='article', target_key='highlights')),
    TaskSpec('tfds_shakespeare', LM, sources.catalog(
        'tiny_shakespeare', dict(train='train', validation='validation', test='test'),
        sources.lm, text_key='text')),
]}

CONFIG_KEYS = ('rate', 'loss_weight', 'max_length', 'max_target_length', 'stopwords',
               'attention')


def configure(tasks_config) -> dict[str, TaskSpec]:
  """The registry entries named in `config.tasks`, with their config fields applied."""
  out = {}
  for name, cfg in tasks_config.items():
    key = f'tasks.{name}'
    if name not in REGISTRY:
      raise ConfigError(f'{key}: unknown task; registered: {", ".join(sorted(REGISTRY))}')
    unknown = set(cfg) - set(CONFIG_KEYS)
    if unknown:
      raise ConfigError(f'{key}: unknown field(s) {sorted(unknown)}; known: {CONFIG_KEYS}')
    spec = dataclasses.replace(REGISTRY[name], **dict(cfg))
    if spec.rate < 0 or spec.loss_weight < 0:
      raise ConfigError(f'{key}: rate and loss_weight must be >= 0')
    if spec.max_length < 4:
      raise ConfigError(f'{key}.max_length: {spec.max_length} leaves no room for text')
    if spec.attention not in ATTENTION_MODES:
      raise ConfigError(f'{key}.attention: {spec.attention!r} is not one of {ATTENTION_MODES}')
    spec.type.check(spec, key)
    out[name] = spec
  if not out:
    raise ConfigError('tasks: the mixture names no task')
  return out


def mixture_rates(mode: str, rates: dict[str, float], sizes: dict[str, int],
                  temperature: float = 1.0) -> dict[str, float]:
  """Normalised sampling rates: 'explicit' (given), 'size' (n_t) or 'temperature' (n_t^(1/T))."""
  if mode == 'explicit':
    raw = dict(rates)
  elif mode == 'size':
    raw = {t: float(sizes[t]) for t in rates}
  elif mode == 'temperature':
    if temperature <= 0:
      raise ConfigError(f'data.temperature: must be > 0, got {temperature}')
    raw = {t: float(sizes[t]) ** (1.0 / temperature) for t in rates}
  else:
    raise ConfigError(f"data.rates: {mode!r} is not 'explicit', 'size' or 'temperature'")
  total = sum(raw.values())
  if total <= 0:
    raise ConfigError('data.rates: the task rates sum to zero')
  return {t: r / total for t, r in raw.items()}


def batch_sizes(global_batch: int, rates: dict[str, float], multiple: int = 1) -> dict[str, int]:
  """Static per-task rows per step: round(B * r_t) to the nearest multiple of `multiple`, at
  least `multiple`, so every data-parallel shard gets whole rows of every task. The sum can
  therefore differ from B by up to `multiple` per task."""
  if multiple < 1:
    raise ValueError(f'multiple must be >= 1, got {multiple}')
  return {t: max(multiple, int(np.round(global_batch * r / multiple)) * multiple)
          for t, r in rates.items()}
