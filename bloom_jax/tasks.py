"""Task registry and mixture arithmetic.

A `TaskSpec` declares what a task is: its source, its type (`bloom_jax.task_types`: the
featurizer, head, loss, metrics and prediction format that kind of example has), labels,
preprocessing and length limits. The config's `tasks.<name>` entries pick registered
tasks, or declare new ones on local files (`type`, `reader`, `files`, ...), and set how
they train together (rate, loss weight, lengths, attention mode). `configure` validates
that once, at start-up, with errors naming the config key. `config.task_modules` names
Python files that register more tasks or task types (`load_modules`); `resolve` imports
them and completes the config so that the copy saved with a run rebuilds its tasks.
"""

import dataclasses
import hashlib
import importlib.util
import os
import re
import sys

import numpy as np

from bloom_jax import pos_features, task_types
from bloom_jax.data import readers, sources
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
  pos_tagger: object = None        # a `pos_features.Tagger` tagging the input words, or None
                                   #   (config: the tagger run's workdir, '' for none)
  attention: str = ''              # 'causal' | 'bidirectional' | 'prefix' ('': the type's)
  source_lm_weight: float = 0.0    # generation, classification: weight of a next-token
                                   #   loss on each input token, relative to a target's (0: none)
  decoding: tuple = ()             # generation: evaluation's decoding options as sorted
                                   #   ((name, value), ...) (config: a mapping; (): greedy)
  copy: bool = False               # generation: a copy head, which mixes copying source
                                   #   tokens into the output distribution (pointer-generator)
  pooling: str = 'last'            # classification, regression: the label is read from the
                                   #   last token's state ('last'), or the head is applied to
                                   #   the example's mean state ('mean'), max state ('max')
                                   #   or attention-pooled state ('attention')
  subword: str = 'first'           # tagging: a word's tag is read at its first subword or
                                   #   its last ('last')
  token_dropout: float = 0.0       # training: each input token's word embedding is zeroed
                                   #   with this probability (word dropout; 0: none)
  ngrams: int = 0                  # classification, regression: a linear bag of the input's
                                   #   hashed token n-grams, orders 1..ngrams (0: none)
  ngram_unit: str = 'token'        # what the bag's n-grams are of: tokens, or whitespace
                                   #   words ('word', each word's tokens as one unit)
  ngram_buckets: int = 2 ** 18     # the rows n-grams are hashed into
  ngram_scale: float = 10.0        # the bag's output factor: its learning rate relative
                                   #   to the rest's (docs/multitask.md)
  ngram_loss_weight: float = 0.0   # training: weight of a loss on the bag's logits alone,
                                   #   beside the joint one (0: none)
  label_smoothing: float = 0.0     # classification, tagging: training's targets put this
                                   #   much of the label's probability evenly on all labels
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
               'attention', 'labels', 'pos_tagger', 'source_lm_weight', 'decoding', 'copy',
               'pooling', 'subword', 'token_dropout', 'ngrams', 'ngram_unit',
               'ngram_buckets', 'ngram_scale', 'ngram_loss_weight', 'label_smoothing')
FIELD_TYPES = {'rate': (int, float), 'loss_weight': (int, float), 'max_length': (int,),
               'max_target_length': (int,), 'stopwords': (bool,), 'attention': (str,),
               'pos_tagger': (str,), 'source_lm_weight': (int, float), 'copy': (bool,),
               'pooling': (str,), 'subword': (str,), 'token_dropout': (int, float),
               'ngrams': (int,), 'ngram_unit': (str,), 'ngram_buckets': (int,),
               'ngram_scale': (int, float),
               'ngram_loss_weight': (int, float), 'label_smoothing': (int, float)}
# The keys that declare a task in the config alone (`type`, `reader` and `files` required).
DECLARE_KEYS = ('type', 'reader', 'files', 'options', 'holdout', 'holdout_seed', 'description')
SPLITS = ('train', 'validation', 'test')
_NAME = re.compile(r'[A-Za-z][A-Za-z0-9_]*')


def configure(tasks_config, data_dir: str | None = None) -> dict[str, TaskSpec]:
  """The tasks `config.tasks` names, registered or declared there, with its fields applied.

  A labelled task that lists no labels gets those of its training file when `data_dir` is
  given (`resolve` does this once, and writes them into the config).
  """
  out = {}
  for name, cfg in tasks_config.items():
    key = f'tasks.{name}'
    cfg = dict(cfg)
    declared = 'type' in cfg
    if not declared:
      _check_registered(name, key)
    known = CONFIG_KEYS + (DECLARE_KEYS if declared else ())
    unknown = set(cfg) - set(known)
    if unknown:
      raise ConfigError(f'{key}: unknown field(s) {sorted(unknown)}; known: {known}')
    base = _declared(name, cfg, key) if declared else REGISTRY[name]
    fields = {k: v for k, v in cfg.items() if k in CONFIG_KEYS and v is not None}
    _check_types(fields, key)
    if 'labels' in fields:
      fields['labels'] = _labels(base.type, fields['labels'], f'{key}.labels')
    if 'decoding' in fields:
      fields['decoding'] = decoding_pairs(fields['decoding'], f'{key}.decoding')
    spec = dataclasses.replace(base, **fields)
    if spec.rate < 0 or spec.loss_weight < 0:
      raise ConfigError(f'{key}: rate and loss_weight must be >= 0')
    if not 0 <= spec.token_dropout < 1:
      raise ConfigError(f'{key}.token_dropout: a probability in [0, 1), got {spec.token_dropout!r}')
    if spec.ngrams < 0 or spec.ngram_buckets < 1 or not spec.ngram_scale > 0:
      raise ConfigError(f'{key}: ngrams must be >= 0, ngram_buckets >= 1 and ngram_scale > 0, '
                        f'got {spec.ngrams}, {spec.ngram_buckets} and {spec.ngram_scale}')
    if spec.ngram_loss_weight < 0 or (spec.ngram_loss_weight and not spec.ngrams):
      raise ConfigError(f'{key}.ngram_loss_weight: must be >= 0, and needs {key}.ngrams > 0; '
                        f'got {spec.ngram_loss_weight} with ngrams={spec.ngrams}')
    if not 0 <= spec.label_smoothing < 1:
      raise ConfigError(
          f'{key}.label_smoothing: a fraction in [0, 1), got {spec.label_smoothing!r}')
    if spec.max_length < 4:
      raise ConfigError(f'{key}.max_length: {spec.max_length} leaves no room for text')
    if spec.attention not in ATTENTION_MODES:
      raise ConfigError(f'{key}.attention: {spec.attention!r} is not one of {ATTENTION_MODES}')
    if spec.type.needs_labels and not spec.labels and hasattr(spec.source, 'labels'):
      if data_dir is None:
        raise ConfigError(f'{key}.labels: not given, and not read from the training file yet '
                          '(runs.prepare_data reads them)')
      spec = dataclasses.replace(spec, labels=spec.source.labels(spec, data_dir))
    spec.type.check(spec, key)
    if isinstance(spec.pos_tagger, str):  # the config's workdir -> the tagger it holds
      tagger = _pos_tagger(spec.pos_tagger, f'{key}.pos_tagger') if spec.pos_tagger else None
      spec = dataclasses.replace(spec, pos_tagger=tagger)
    out[name] = spec
  if not out:
    raise ConfigError('tasks: the mixture names no task')
  return out


def _check_types(fields: dict, key: str) -> None:
  for field, kinds in FIELD_TYPES.items():
    value = fields.get(field)
    if value is not None and (not isinstance(value, kinds) or
                              (isinstance(value, bool) and bool not in kinds)):
      raise ConfigError(f'{key}.{field}: expected {" or ".join(k.__name__ for k in kinds)}, '
                        f'got {value!r}')


def _check_registered(name: str, key: str) -> None:
  if name not in REGISTRY:
    raise ConfigError(f'{key}: unknown task; registered: {", ".join(sorted(REGISTRY))} '
                      '(or declare one: give its type, reader and files)')


def _declared(name: str, cfg: dict, key: str) -> TaskSpec:
  """A task the config declares: local files of a registered task type."""
  if name in REGISTRY:
    raise ConfigError(f'{key}.type: {name} is a registered task; declare yours under '
                      'another name')
  if not _NAME.fullmatch(name):
    raise ConfigError(f'{key}: a declared task needs a name of letters, digits and _ '
                      '(it names files and metrics)')
  for field in ('reader', 'files'):
    if field not in cfg:
      raise ConfigError(f'{key}.{field}: required to declare a task')
  task_type = task_types.get(str(cfg['type']), f'{key}.type')
  if not isinstance(cfg['reader'], str) or cfg['reader'] not in readers.READERS:
    raise ConfigError(f'{key}.reader: {cfg["reader"]!r} is not one of '
                      f'{", ".join(readers.READERS)}')
  reader = readers.reader_for(cfg['reader'], task_type.fields)
  if reader is None:
    fit = [n for n in readers.READERS if readers.reader_for(n, task_type.fields)]
    raise ConfigError(f'{key}.reader: {cfg["reader"]!r} does not read {task_type.name} '
                      f'examples; use one of: {", ".join(fit) or "none"}')
  files = _files(cfg['files'], f'{key}.files')
  options = _options(reader, cfg['reader'], cfg.get('options') or {}, f'{key}.options')
  holdout, seed = cfg.get('holdout', 0.0), cfg.get('holdout_seed', 0)
  if isinstance(holdout, bool) or not isinstance(holdout, int | float) or not 0 <= holdout < 1:
    raise ConfigError(f'{key}.holdout: a fraction of train in [0, 1), got {holdout!r}')
  if holdout and 'validation' in dict(files):
    raise ConfigError(f'{key}.holdout: the task has a validation file already')
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise ConfigError(f'{key}.holdout_seed: an integer, got {seed!r}')
  source = sources.Local(task_type, cfg['reader'], files, options, float(holdout), seed)
  return TaskSpec(name, task_type, source, description=str(cfg.get('description', '')))


def _pos_tagger(path: str, key: str) -> pos_features.Tagger:
  """The tagging task of the finished run in `path`, as its saved config declares it."""
  where, step, saved = pos_features.finished_run(path, key)
  try:
    load_modules(saved.get('task_modules') or '')
    entries = {name: dict(cfg) for name, cfg in saved.get('tasks', {}).items()}
    tagging = [name for name, cfg in entries.items() if _type_name(name, cfg) == TAGGING.name]
    if len(tagging) != 1:
      raise ConfigError(f'{"more than one" if tagging else "no"} tagging task '
                        f'(it has {", ".join(entries) or "no task"})')
    task = configure({tagging[0]: entries[tagging[0]]})[tagging[0]]
  except ConfigError as e:
    raise ConfigError(f'{key}: {path}: {e}') from None
  return pos_features.Tagger(where, step, task, saved)


def _type_name(name: str, cfg: dict) -> str:
  """The type of a config entry's task: declared, or the registered task's."""
  if 'type' in cfg:
    return str(cfg['type'])
  return REGISTRY[name].type.name if name in REGISTRY else ''


def _files(files, key: str) -> tuple:
  """((split, path), ...) in SPLITS order, from {split: path}."""
  if not hasattr(files, 'items'):
    raise ConfigError(f'{key}: a mapping of split to file path, got {files!r}')
  files = dict(files)
  for split, path in files.items():
    if split not in SPLITS:
      raise ConfigError(f'{key}.{split}: not a split; splits are {", ".join(SPLITS)}')
    if not isinstance(path, str) or not path:
      raise ConfigError(f'{key}.{split}: a file path, got {path!r}')
  if 'train' not in files:
    raise ConfigError(f'{key}.train: required (a task trains on its train file)')
  return tuple((s, files[s]) for s in SPLITS if s in files)


def _options(reader, reader_name: str, options, key: str) -> tuple:
  """The reader's options as sorted ((name, value), ...): lists become tuples, so a config
  read back from JSON gives the same source (and the same data fingerprint)."""
  if not hasattr(options, 'items'):
    raise ConfigError(f'{key}: a mapping of option to value, got {options!r}')
  options = dict(options)
  takes = reader.required + reader.optional
  unknown = sorted(set(options) - set(takes))
  if unknown:
    raise ConfigError(f'{key}.{unknown[0]}: the {reader_name} reader takes '
                      f'{", ".join(takes) or "no options"}')
  missing = [o for o in reader.required if o not in options]
  if missing:
    raise ConfigError(f'{key}.{missing[0]}: the {reader_name} reader needs '
                      f'{", ".join(reader.required)}')
  out = []
  for name, value in sorted(options.items()):
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value) and value:
      value = tuple(value)
    elif not isinstance(value, str | int) or isinstance(value, bool):
      raise ConfigError(f'{key}.{name}: a name, a number or a list of names, got {value!r}')
    out.append((name, value))
  return tuple(out)


def decoding_pairs(options, key: str) -> tuple:
  """A `decoding` mapping as sorted ((name, value), ...): hashable, and the same whether
  it comes from a config file or from the JSON copy saved with a run. Its names and
  values are the task type's to check (`TaskType.check`)."""
  if not hasattr(options, 'items'):
    raise ConfigError(f'{key}: a mapping of decoding option to value, got {options!r}')
  return tuple(sorted(dict(options).items()))


def _labels(task_type, labels, key: str) -> tuple[str, ...]:
  if not task_type.needs_labels:
    raise ConfigError(f'{key}: {task_type.name} tasks take no labels')
  if isinstance(labels, str) or not isinstance(labels, list | tuple) or not labels:
    raise ConfigError(f'{key}: a list of label names, got {labels!r}')
  if not all(isinstance(x, str | int) and not isinstance(x, bool) for x in labels):
    raise ConfigError(f'{key}: label names are strings, got {labels!r}')
  labels = tuple(str(x) for x in labels)
  if len(set(labels)) < len(labels):
    raise ConfigError(f'{key}: a label is listed twice in {list(labels)}')
  return labels


_MODULES: dict[str, object] = {}   # absolute path -> module, imported once per process


def load_modules(paths: str) -> tuple[str, ...]:
  """Imports the comma-separated Python files of `task_modules` (absolute, or relative to
  the working directory), each once per process; returns their absolute paths.

  Such a module defines tasks in code: it adds `TaskSpec`s to `REGISTRY`, or a new type to
  `task_types.TYPES`, which config entries may then name.
  """
  if not isinstance(paths, str):
    raise ConfigError(f'task_modules: comma-separated Python file paths, got {paths!r}')
  out = []
  for path in (p.strip() for p in paths.split(',')):
    if not path:
      continue
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(full):
      raise ConfigError(f'task_modules: {path}: no such file (relative paths start at the '
                        f'working directory, {os.getcwd()})')
    if full not in _MODULES:
      name = 'bloom_jax_task_module_' + hashlib.sha256(full.encode()).hexdigest()[:12]
      module_spec = importlib.util.spec_from_file_location(name, full)
      if module_spec is None:
        raise ConfigError(f'task_modules: {path}: not a Python file (.py)')
      module = importlib.util.module_from_spec(module_spec)
      sys.modules[name] = module   # dataclasses and pickling look their module up there
      try:
        module_spec.loader.exec_module(module)
      except BaseException:
        del sys.modules[name]
        raise
      _MODULES[full] = module
    out.append(full)
  return tuple(out)


def resolve(config, data_dir: str) -> dict[str, TaskSpec]:
  """The run's tasks, with `config` completed in place so that the config saved with its
  checkpoints rebuilds the same tasks in any later process: `task_modules` imported and
  made absolute, the labels read from a training file written to `tasks.<name>.labels`
  (their order is the head's), and `pos_tagger` workdirs made absolute."""
  paths = load_modules(config.get('task_modules', ''))
  specs = configure(config.tasks, data_dir)
  with config.unlocked():
    if 'task_modules' in config:
      config.task_modules = ','.join(paths)
    for name, spec in specs.items():
      cfg = config.tasks[name]
      listed = cfg.get('labels') or ('type' not in cfg and REGISTRY[name].labels)
      if spec.labels and not listed:
        cfg.labels = list(spec.labels)
      if spec.pos_tagger:  # absolute: the run's saved config works from any directory
        cfg.pos_tagger = spec.pos_tagger.path
  return specs


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
