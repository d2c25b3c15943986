r"""Classic baselines on the same splits, cleaning and metrics as the project's real-data tasks.

  python scripts/baselines.py [--data_dir DIR] [--out docs/results.json] [--tasks pos,sst2]

Needs scikit-learn, which the test extra has (`pip install -e '.[test]'`). The data
directory defaults to $BLOOM_JAX_DATA, else ../shared/data beside the repository.

Every split is read as the registered task reads it: the task's source (`tasks.REGISTRY`)
through `builders.read_splits` (so TREC's validation is the same seeded 10% of train and
Tiny Shakespeare's the same last 10% of the file, cut at a line end), then cleaned by
`pipeline.clean_rows` (the task type's own clean-up). Scores come from `bloom_jax.metrics`
in the units the project's evaluation files use: accuracies as fractions, ROUGE x 100.

  pos          most frequent UPOS tag of each training word form; unknown words back off
               to PROPN (capitalised), NUM (has a digit), PUNCT (all punctuation), else the
               most frequent tag of the training words with the same last 3 characters,
               else NOUN. Word accuracy over all gold words, dev and test.
  sst2, trec   TF-IDF of lower-cased word unigrams and bigrams (the texts come tokenised,
               so tokens are whitespace-separated) + LinearSVC or LogisticRegression; C
               chosen by accuracy on a seeded 10% of SST-2's train (then refit on all of
               it) or on TREC's validation hold-out. SST-2 dev; TREC test and validation.
  aeslc        the first k words of the body as the subject; k in 1..12 chosen by dev
               ROUGE-L; also lead-4, 6, 8 and the constant subject 'Meeting'. ROUGE
               against all references (best per example), dev and test.
  shakespeare  character n-gram models with add-alpha smoothing: plain (no back-off) and
               interpolated, n and alpha chosen on the last 10% of the training text.
               Nats per character on the validation text.

Results go to the `baselines` key of --out (other keys are kept) and a table is printed.
"""

import argparse
import collections
import contextlib
import dataclasses
import json
import math
import os
import pathlib
import sys
import time
import unicodedata

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a file: make the package importable from a checkout
  sys.path.insert(0, str(REPO))

from bloom_jax import metrics, tasks  # noqa: E402
from bloom_jax.data import pipeline, readers  # noqa: E402

TASKS = ('pos', 'sst2', 'trec', 'aeslc', 'shakespeare')
DATASETS = {'pos': 'UD EWT POS', 'sst2': 'SST-2', 'trec': 'TREC-6', 'aeslc': 'AESLC',
            'shakespeare': 'Tiny Shakespeare'}
UNITS = {'word_accuracy': 'fraction', 'accuracy': 'fraction', 'macro_f1': 'fraction',
         'rouge1': 'x100', 'rouge2': 'x100', 'rougeL': 'x100',
         'nats_per_character': 'nats', 'bits_per_byte': 'bits'}


def default_data_dir() -> str:
  return os.environ.get('BLOOM_JAX_DATA') or str(REPO.parent / 'shared' / 'data')


# --------------------------------------------------------------------------------------
# Data: the registered task's splits, read and cleaned as the task reads them
# --------------------------------------------------------------------------------------


def load_task(name: str, data_dir: str) -> tuple[dict, dict]:
  """({split: cleaned rows}, {split: rows dropped by cleaning}) of a registered local task."""
  from bloom_jax.data import builders  # imports TensorFlow: only when real data is read

  spec = tasks.REGISTRY[name]
  source = spec.source
  config = builders.LocalConfig(
      name=name, task_type=source.task_type, reader=source.reader,
      files=source.paths(data_dir), labels=spec.labels, options=source.options,
      holdout=source.holdout, holdout_seed=source.holdout_seed)
  raw, _ = builders.read_splits(config)
  rows, dropped = {}, {}
  for split, split_rows in raw.items():
    rows[split] = pipeline.clean_rows(spec, split_rows, readers.Problems())
    dropped[split] = len(split_rows) - len(rows[split])
  return rows, dropped


# --------------------------------------------------------------------------------------
# UPOS: most frequent tag per word form, with a deterministic back-off
# --------------------------------------------------------------------------------------


def _most_frequent(counts: dict[str, collections.Counter]) -> dict[str, str]:
  """key -> its most frequent value; ties go to the alphabetically first value."""
  return {k: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for k, c in counts.items()}


@dataclasses.dataclass(frozen=True)
class Tagger:
  words: dict      # word form -> most frequent tag in train
  suffixes: dict   # last 3 characters -> most frequent tag of train words ending so

  def known(self, word: str) -> bool:
    return word in self.words

  def tag(self, word: str) -> str:
    if word in self.words:
      return self.words[word]
    if word[:1].isupper():
      return 'PROPN'
    if any(ch.isdigit() for ch in word):
      return 'NUM'
    if word and all(unicodedata.category(ch).startswith('P') for ch in word):
      return 'PUNCT'
    return self.suffixes.get(word[-3:], 'NOUN')


def fit_tagger(sentences: list[dict]) -> Tagger:
  """`sentences`: rows {'words': [...], 'tags': [...]}; every training token counts."""
  words, suffixes = collections.defaultdict(collections.Counter), \
      collections.defaultdict(collections.Counter)
  for row in sentences:
    for word, tag in zip(row['words'], row['tags'], strict=True):
      words[word][tag] += 1
      suffixes[word[-3:]][tag] += 1
  return Tagger(_most_frequent(words), _most_frequent(suffixes))


def score_tagger(tagger: Tagger, sentences: list[dict], labels) -> dict:
  """Word accuracy over all gold words, and over words seen / unseen in train."""
  index = {label: i for i, label in enumerate(labels)}
  words = [w for row in sentences for w in row['words']]
  target = np.array([index[t] for row in sentences for t in row['tags']])
  pred = np.array([index[tagger.tag(w)] for w in words])
  known = np.array([tagger.known(w) for w in words], np.float64)
  ones = np.ones(len(words))
  return {'word_accuracy': metrics.word_accuracy(pred, target, ones),
          'known_accuracy': metrics.word_accuracy(pred, target, known),
          'unknown_accuracy': metrics.word_accuracy(pred, target, 1 - known),
          'unknown_rate': float(1 - known.mean()) if len(words) else math.nan}


# --------------------------------------------------------------------------------------
# Sentence classification: TF-IDF + linear models
# --------------------------------------------------------------------------------------

C_GRID = {'linear_svc': (0.03, 0.1, 0.3, 1.0, 3.0, 10.0),
          'logistic_regression': (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)}


def _sklearn():
  try:
    import sklearn  # noqa: F401
  except ImportError as e:
    raise SystemExit("the baselines need scikit-learn: pip install -e '.[test]'") from e
  from sklearn.feature_extraction.text import TfidfVectorizer
  from sklearn.linear_model import LogisticRegression
  from sklearn.svm import LinearSVC
  return TfidfVectorizer, LinearSVC, LogisticRegression


def tfidf_vectorizer():
  """TF-IDF of lower-cased uni- and bigrams of whitespace tokens (both datasets come
  tokenised), sublinear tf, l2-normalised rows."""
  vectorizer, _, _ = _sklearn()
  return vectorizer(lowercase=True, token_pattern=r'\S+', ngram_range=(1, 2),
                    sublinear_tf=True)


def linear_model(kind: str, c: float, seed: int = 0):
  """A linear SVM (squared hinge, liblinear) or a multinomial logistic regression
  (newton-cg, solved to convergence) with inverse regularisation strength `c`."""
  _, svc, logistic = _sklearn()
  if kind == 'linear_svc':
    return svc(C=c, random_state=seed)
  if kind == 'logistic_regression':
    return logistic(C=c, solver='newton-cg', max_iter=1000, random_state=seed)
  raise ValueError(f'unknown classifier {kind!r}; known: {", ".join(C_GRID)}')


def tfidf_classifier(kind: str, c: float, seed: int = 0):
  """The sklearn pipeline: `tfidf_vectorizer` then `linear_model`."""
  from sklearn.pipeline import make_pipeline
  return make_pipeline(tfidf_vectorizer(), linear_model(kind, c, seed))


def fit_classifier(kind: str, c: float, rows: list[dict], seed: int = 0):
  return tfidf_classifier(kind, c, seed).fit([r['text'] for r in rows],
                                             [r['label'] for r in rows])


def _scores(pred_labels, rows: list[dict], labels) -> dict:
  index = {label: i for i, label in enumerate(labels)}
  pred = np.array([index[p] for p in pred_labels])
  target = np.array([index[r['label']] for r in rows])
  return {'accuracy': metrics.accuracy(pred, target),
          'macro_f1': metrics.macro_f1(pred, target, len(labels))}


def score_classifier(model, rows: list[dict], labels) -> dict:
  """accuracy and macro-F1 (bloom_jax.metrics) of a fitted pipeline on labelled rows."""
  return _scores(model.predict([r['text'] for r in rows]), rows, labels)


def choose_c(kind: str, fit_rows: list[dict], held_rows: list[dict], labels,
             seed: int = 0) -> tuple[float, dict]:
  """The grid's C with the best accuracy on `held_rows` (ties: the smaller C), the
  vectorizer fitted once on `fit_rows`."""
  vectorizer = tfidf_vectorizer()
  x_fit = vectorizer.fit_transform([r['text'] for r in fit_rows])
  x_held = vectorizer.transform([r['text'] for r in held_rows])
  y_fit = [r['label'] for r in fit_rows]
  scores = {c: _scores(linear_model(kind, c, seed).fit(x_fit, y_fit).predict(x_held), held_rows,
                       labels)['accuracy'] for c in C_GRID[kind]}
  best = max(C_GRID[kind], key=lambda c: (scores[c], -c))
  return best, scores


# --------------------------------------------------------------------------------------
# AESLC: lead-k words of the body
# --------------------------------------------------------------------------------------

LEAD_KS = tuple(range(1, 13))


def lead(source: str, k: int) -> str:
  """The first k whitespace-separated words of `source`."""
  return ' '.join(source.split()[:k])


def score_subjects(predictions: list[str], rows: list[dict]) -> dict:
  return metrics.rouge(predictions, [r['targets'] for r in rows])


# --------------------------------------------------------------------------------------
# Tiny Shakespeare: character n-gram models with add-alpha smoothing
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CharNgram:
  """Counts of character m-grams for m = 1..order, and how to smooth them.

  Symbols: the training text's characters (sorted), then one 'other character' symbol
  for any character not in it, so the alphabet has A = len(alphabet) + 1 symbols; a
  start-of-text symbol pads the context of a text's first order-1 characters.

  plain (interpolate=False):  p(c | h) = (N(h c) + alpha) / (N(h) + alpha A), h the
      previous order-1 symbols; an unseen h gives the uniform 1/A.
  interpolated:  p_0(c) = 1/A and, for m = 1..order with h_m the previous m-1 symbols,
      p_m(c | h_m) = (N(h_m c) + alpha A p_{m-1}(c | h_{m-1})) / (N(h_m) + alpha A),
      add-alpha with the next lower order's distribution as the prior (a Dirichlet prior
      of strength alpha A); with order 1 this is plain add-alpha unigrams.
  """

  alphabet: str
  order: int
  alpha: float
  interpolate: bool
  tables: tuple  # per m = 1..order: (sorted m-gram keys, counts, sorted context keys, counts)

  @property
  def size(self) -> int:
    """A: the characters of the alphabet plus the 'other character' symbol."""
    return len(self.alphabet) + 1

  @property
  def base(self) -> int:
    """Symbols are packed into integer keys in this base: A plus the start symbol."""
    return self.size + 1

  def encode(self, text: str) -> np.ndarray:
    index = {ch: i for i, ch in enumerate(self.alphabet)}
    return np.array([index.get(ch, len(self.alphabet)) for ch in text], np.int64)

  def with_settings(self, order: int, alpha: float, interpolate: bool) -> 'CharNgram':
    """The same counts smoothed another way; `order` at most the fitted one."""
    if not 1 <= order <= len(self.tables):
      raise ValueError(f'order {order} not in 1..{len(self.tables)} (the fitted order)')
    return dataclasses.replace(self, order=order, alpha=alpha, interpolate=interpolate,
                               tables=self.tables[:order])

  def contexts(self, ids: np.ndarray) -> np.ndarray:
    """[len(ids), order-1]: the symbols before each position, start-padded."""
    pad = np.full(self.order - 1, self.size, np.int64)
    seq = np.concatenate([pad, ids])
    if self.order == 1:
      return np.zeros((len(ids), 0), np.int64)
    return np.lib.stride_tricks.sliding_window_view(seq, self.order - 1)[:len(ids)]

  def _context_keys(self, contexts: np.ndarray, length: int) -> np.ndarray:
    key = np.zeros(len(contexts), np.int64)
    for j in range(contexts.shape[1] - length, contexts.shape[1]):
      key = key * self.base + contexts[:, j]
    return key

  def probabilities(self, contexts: np.ndarray, chars: np.ndarray) -> np.ndarray:
    """p(chars[i] | contexts[i]) for symbol arrays [N, order-1] and [N]."""
    size, beta = self.size, self.alpha * self.size
    p = np.full(len(chars), 1.0 / size)
    for m in (range(1, self.order + 1) if self.interpolate else (self.order,)):
      keys, counts, context_keys, context_counts = self.tables[m - 1]
      context = self._context_keys(contexts, m - 1)
      joint = _lookup(keys, counts, context * self.base + chars)
      total = _lookup(context_keys, context_counts, context)
      p = (joint + beta * p) / (total + beta)
    return p

  def distribution(self, context: str) -> np.ndarray:
    """p(c | the last order-1 characters of `context`) for every symbol c (A values)."""
    ids = self.encode(context)[-(self.order - 1):] if self.order > 1 else np.zeros(0, np.int64)
    ids = np.concatenate([np.full(self.order - 1 - len(ids), self.size, np.int64), ids])
    contexts = np.repeat(ids[None, :], self.size, axis=0)
    return self.probabilities(contexts, np.arange(self.size))

  def nll(self, text: str) -> float:
    """Total -ln p of every character of `text`, read as one document from its start."""
    ids = self.encode(text)
    return float(-np.sum(np.log(self.probabilities(self.contexts(ids), ids))))


def _lookup(keys: np.ndarray, counts: np.ndarray, query: np.ndarray) -> np.ndarray:
  """counts[keys == q] for each q, 0 where absent."""
  if not len(keys):
    return np.zeros(len(query))
  at = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
  return np.where(keys[at] == query, counts[at], 0).astype(np.float64)


def fit_char_ngram(text: str, order: int, alpha: float = 0.1,
                   interpolate: bool = False) -> CharNgram:
  """Counts of every m-gram (m <= order) of `text`, contexts start-padded."""
  model = CharNgram(''.join(sorted(set(text))), order, alpha, interpolate, ())
  ids = model.encode(text)
  contexts = model.contexts(ids)
  tables = []
  for m in range(1, order + 1):
    context = model._context_keys(contexts, m - 1)
    tables.append(np.unique(context * model.base + ids, return_counts=True)
                  + np.unique(context, return_counts=True))
  return dataclasses.replace(model, tables=tuple(tables))


ORDERS = (3, 4, 5, 6, 7)
ALPHAS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def choose_char_ngram(fit_text: str, held_text: str, interpolate: bool) -> tuple[tuple, dict]:
  """(order, alpha) with the lowest nats per character on `held_text`."""
  counts = fit_char_ngram(fit_text, max(ORDERS))
  scores = {(n, a): metrics.nats_per_character(
      counts.with_settings(n, a, interpolate).nll(held_text), len(held_text))
      for n in ORDERS for a in ALPHAS}
  return min(scores, key=lambda k: (scores[k], k)), scores


# --------------------------------------------------------------------------------------
# The runs, one per task
# --------------------------------------------------------------------------------------


def _row(task, method, split, metric, value, hyperparameters, selected_on, **extra) -> dict:
  return {'task': task, 'dataset': DATASETS[task], 'method': method, 'split': split,
          'metric': metric, 'value': round(float(value), 6), 'units': UNITS[metric],
          'hyperparameters': hyperparameters, 'selected_on': selected_on,
          'command': f'python scripts/baselines.py --tasks {task}', **extra}


def run_pos(data: dict, seed: int) -> list[dict]:
  del seed
  labels = tasks.REGISTRY['pos'].labels
  tagger = fit_tagger(data['train'])
  method = ('most frequent tag per word form; unknown words: capitalised PROPN, digit '
            'NUM, punctuation PUNCT, else by 3-character suffix, else NOUN')
  out = []
  for split in ('validation', 'test'):
    scores = score_tagger(tagger, data[split], labels)
    out.append(_row('pos', method, split, 'word_accuracy', scores['word_accuracy'],
                    {'suffix_length': 3}, 'fixed', details={
                        k: round(v, 6) for k, v in scores.items() if k != 'word_accuracy'}))
  return out


def run_classification(task: str, data: dict, seed: int) -> list[dict]:
  from bloom_jax.data import builders

  labels = tasks.REGISTRY[task].labels
  if task == 'sst2':  # dev is the reported split: choose C on a seeded 10% of train
    fit_rows, held_rows = builders.holdout_split(data['train'], 0.1, seed, whole_text=False)
    selected_on = f'seeded 10% of train (seed {seed}), then refit on all of train'
    splits = ('validation',)
  else:  # TREC: its validation split is already a seeded hold-out of train
    fit_rows, held_rows = data['train'], data['validation']
    selected_on = 'validation (the seeded 10% hold-out of train)'
    splits = ('test', 'validation')
  out = []
  for kind in C_GRID:
    c, held = choose_c(kind, fit_rows, held_rows, labels, seed)
    model = fit_classifier(kind, c, data['train'], seed)
    method = f'TF-IDF word uni+bigrams + {kind}'
    hyper = {'C': c, 'C_grid': list(C_GRID[kind]), 'selection_accuracy': {
        str(k): round(v, 6) for k, v in held.items()}}
    for split in splits:
      for metric, value in score_classifier(model, data[split], labels).items():
        out.append(_row(task, method, split, metric, value, hyper, selected_on))
  return out


def run_aeslc(data: dict, seed: int) -> list[dict]:
  del seed
  dev = {k: score_subjects([lead(r['source'], k) for r in data['validation']],
                           data['validation']) for k in LEAD_KS}
  best = max(LEAD_KS, key=lambda k: (dev[k]['rougeL'], -k))
  grid = {str(k): round(dev[k]['rougeL'], 4) for k in LEAD_KS}
  out = []
  runs = [(f'lead-k (k={best} chosen by dev ROUGE-L)', best,
           {'k': best, 'k_grid': list(LEAD_KS), 'dev_rougeL_by_k': grid},
           'validation (dev ROUGE-L; the dev figures are optimistic for this row)')]
  runs += [(f'lead-{k}', k, {'k': k}, 'fixed') for k in (4, 6, 8)]
  runs += [("constant subject 'Meeting'", None, {'subject': 'Meeting'}, 'fixed')]
  for method, k, hyper, selected_on in runs:
    for split in ('validation', 'test'):
      if split == 'validation' and k is not None:
        scores = dev[k]
      else:
        predictions = [lead(r['source'], k) if k else 'Meeting' for r in data[split]]
        scores = score_subjects(predictions, data[split])
      for metric in metrics.ROUGE_TYPES:
        out.append(_row('aeslc', method, split, metric, scores[metric], hyper, selected_on))
  return out


def run_shakespeare(data: dict, seed: int) -> list[dict]:
  from bloom_jax.data import builders

  del seed
  train, validation = data['train'][0]['text'], data['validation'][0]['text']
  fit_rows, held_rows = builders.holdout_split(data['train'], 0.1, 0, whole_text=True)
  fit_text, held_text = fit_rows[0]['text'], held_rows[0]['text']
  counts = fit_char_ngram(train, max(ORDERS))
  definition = ('nats per character: -(1/N) sum_i ln p(c_i | previous n-1 characters) over '
                'the N characters of the cleaned validation text, read as one document '
                '(start-padded context)')
  selected_on = 'the last 10% of the training text (cut at a line end); fit on the rest'
  out = []
  runs = [('plain', 5, 0.1, False, {}, 'fixed')]
  for interpolate in (False, True):
    (n, a), scores = choose_char_ngram(fit_text, held_text, interpolate)
    grid = {'n_grid': list(ORDERS), 'alpha_grid': list(ALPHAS),
            'held_out_nats_per_character': round(scores[n, a], 6)}
    runs.append(('interpolated' if interpolate else 'plain', n, a, interpolate, grid,
                 selected_on))
  for name, n, a, interpolate, extra, chosen in runs:
    model = counts.with_settings(n, a, interpolate)
    nats = metrics.nats_per_character(model.nll(validation), len(validation))
    smoothing = ('interpolated add-alpha' if interpolate
                 else 'add-alpha, no back-off')
    how = 'fixed n and alpha' if chosen == 'fixed' else 'n and alpha tuned on a train tail'
    method = f'character {n}-gram, {smoothing} ({how})'
    hyper = {'n': n, 'alpha': a, 'alphabet_size': model.size, **extra}
    out.append(_row('shakespeare', method, 'validation', 'nats_per_character', nats, hyper,
                    chosen, definition=definition, variant=name,
                    details={'characters': len(validation)}))
  return out


RUNS = {'pos': run_pos, 'sst2': lambda d, s: run_classification('sst2', d, s),
        'trec': lambda d, s: run_classification('trec', d, s), 'aeslc': run_aeslc,
        'shakespeare': run_shakespeare}


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def _format(row: dict) -> str:
  value = row['value']
  if row['units'] == 'fraction':
    return f'{100 * value:.2f}%'
  return f'{value:.2f}' if row['units'] == 'x100' else f'{value:.4f}'


def _hyper(row: dict) -> str:
  keep = {k: v for k, v in row['hyperparameters'].items() if not isinstance(v, dict | list)}
  return ', '.join(f'{k}={v}' for k, v in keep.items()) or '-'


def table(rows: list[dict]) -> str:
  lines = ['| dataset | method | split | metric | value | hyperparameters |',
           '| --- | --- | --- | --- | --- | --- |']
  for r in rows:
    lines.append(f'| {r["dataset"]} | {r["method"]} | {r["split"]} | {r["metric"]} | '
                 f'{_format(r)} | {_hyper(r)} |')
  return '\n'.join(lines) + '\n'


def write_results(path: str, rows: list[dict], seconds: dict, seed: int) -> None:
  """Puts `baselines` into the JSON file at `path`, keeping its other keys, and keeping
  the rows of tasks not rerun."""
  document = {}
  if os.path.exists(path):
    with open(path) as f:
      document = json.load(f)
  previous = document.get('baselines', {})
  done = {r['task'] for r in rows}
  kept = [r for r in previous.get('rows', []) if r['task'] not in done]
  all_rows = sorted(kept + rows, key=lambda r: TASKS.index(r['task']))
  times = {**previous.get('seconds', {}), **{k: round(v, 1) for k, v in seconds.items()}}
  document['baselines'] = {
      'description': (
          'Classic baselines on the splits the tasks use (bloom_jax.tasks.REGISTRY sources '
          'read by bloom_jax.data.builders.read_splits, cleaned by '
          'bloom_jax.data.pipeline.clean_rows), scored by bloom_jax.metrics. Units: '
          'fractions for accuracies, x100 for ROUGE F-measures, nats per character for '
          'Tiny Shakespeare.'),
      'command': 'python scripts/baselines.py --data_dir ../shared/data',
      'seed': seed,
      'seconds': {t: times[t] for t in TASKS if t in times},
      'rows': all_rows,
  }
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(document, f, indent=2)
    f.write('\n')
  os.replace(tmp, path)


def _one_thread():
  """BLAS and OpenMP limited to one thread: these models are small, and on shared cores
  their threads oversubscribe (logistic regression on TREC ran 7x slower with two)."""
  try:
    from threadpoolctl import threadpool_limits
  except ImportError:
    return contextlib.nullcontext()
  return threadpool_limits(1)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--data_dir', default=default_data_dir(),
                      help='the shared datasets (default: $BLOOM_JAX_DATA or ../shared/data)')
  parser.add_argument('--out', default=str(REPO / 'docs' / 'results.json'),
                      help='JSON file whose `baselines` key is (re)written')
  parser.add_argument('--tasks', default=','.join(TASKS),
                      help=f'comma-separated subset of {",".join(TASKS)}')
  parser.add_argument('--seed', type=int, default=0,
                      help="seed of SST-2's selection split and the classifiers")
  args = parser.parse_args(argv)
  names = [t.strip() for t in args.tasks.split(',') if t.strip()]
  unknown = [t for t in names if t not in TASKS]
  if unknown or not names:
    parser.error(f'--tasks: {unknown or "none"} not among {",".join(TASKS)}')
  rows, seconds = [], {}
  with _one_thread():
    for name in names:
      start = time.perf_counter()
      data, dropped = load_task(name, args.data_dir)
      if any(dropped.values()):
        print(f'{name}: cleaning dropped {dropped} rows (as the task does)', file=sys.stderr)
      rows += RUNS[name](data, args.seed)
      seconds[name] = time.perf_counter() - start
      print(f'{name}: {seconds[name]:.1f} s', file=sys.stderr, flush=True)
  write_results(args.out, rows, seconds, args.seed)
  print(table(rows), end='')
  print(f'\nwritten to {args.out} (baselines); seconds: '
        + ', '.join(f'{k} {v:.1f}' for k, v in seconds.items()))


if __name__ == '__main__':
  main()
