"""Prepared per-task arrays, the resumable train iterator and deterministic eval batches.

Preparation runs once per (task, source, preprocessing, tokenizer, lengths): TFDS builds
the canonical examples, they are cleaned, tokenized into fixed-shape rows and saved as
`<prepared>/<task>-<key>.npz` (+ a `.json` with statistics and references). Later runs,
and every process of a multi-host job, load those files and never touch TensorFlow.

Training batches are a pure function of (seed, step): task t draws its `b_t` rows of step s
from positions [s*b_t, (s+1)*b_t) of an endless sequence of epochs, each epoch a
permutation from `np.random.default_rng([seed, t, epoch])`. So resuming needs only the
step, and process p of P takes rows [p*b_t/P, (p+1)*b_t/P) of every task's sub-batch.

Processes sharing a cache take turns: the first builds, the others wait and then load.
"""

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os

import numpy as np
from absl import logging

from bloom_jax import tasks as tasks_lib
from bloom_jax import tokenizer as tokenizer_lib
from bloom_jax.data import features, text
from bloom_jax.data.readers import DataError, Problems

FORMAT_VERSION = 2
# Characters of each task's training text the BPE sees: bounds training time on big
# corpora while keeping every task's vocabulary represented.
TOKENIZER_CHARS_PER_TASK = 2_000_000
SAMPLES = 8
EVAL_ONLY = ('num_words', 'prompt_ids', 'prompt_mask', 'target_bytes')


def tfds_dir(config) -> str:
  return (config.data.get('tfds_dir') or os.environ.get('BLOOM_JAX_TFDS_DIR')
          or os.path.expanduser('~/.cache/bloom_jax/tfds'))


def data_dir(config) -> str:
  return config.data.dir or os.environ.get('BLOOM_JAX_DATA', '')


def _hash(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def clean_input(spec, s: str) -> str:
  """The model-input text of a classification or generation example, as trained on."""
  s = text.clean(s)
  return text.remove_stopwords(s) if spec.stopwords else s


def clean_rows(spec, rows: list[dict], problems: Problems) -> list[dict]:
  """Normalises text, applies the task's options and drops rows left empty or unlabelled."""
  out = []
  for i, row in enumerate(rows):
    where = f'{spec.name} example {i}'
    if spec.head == 'tagging':
      row = {'words': [text.clean(w) for w in row['words']], 'tags': row['tags']}
      empty = not any(row['words'])
    elif spec.head == 'lm':
      row = {'text': text.clean(row['text'], keep_newlines=True)}
      empty = not row['text']
    else:
      key = 'text' if spec.head == 'classification' else 'source'
      row = dict(row, **{key: clean_input(spec, row[key])})
      if spec.head == 'generation':
        row['targets'] = [text.clean(t) for t in row['targets']]
      empty = not row[key]
    if empty:
      problems.add('empty_text', where)
      continue
    labels = ([row['label']] if spec.head == 'classification'
              else row['tags'] if spec.head == 'tagging' else [])
    unknown = [x for x in labels if x not in spec.labels]
    if unknown:
      problems.add('unknown_label', f'{where}: {unknown[0]!r}')
      continue
    out.append(row)
  return out


def training_text(spec, rows: list[dict]) -> list[str]:
  out, size = [], 0
  for row in rows:
    piece = {'classification': lambda r: r['text'], 'tagging': lambda r: ' '.join(r['words']),
             'generation': lambda r: r['source'] + '\n' + r['targets'][0],
             'lm': lambda r: r['text']}[spec.head](row)
    out.append(piece[:TOKENIZER_CHARS_PER_TASK - size])
    size += len(out[-1])
    if size >= TOKENIZER_CHARS_PER_TASK:
      break
  return out


def featurize(spec, tok, rows: list[dict], train: bool, token_bytes) -> tuple[dict, dict]:
  if spec.head == 'classification':
    index = {label: i for i, label in enumerate(spec.labels)}
    return features.classification(tok, [r['text'] for r in rows],
                                    [index[r['label']] for r in rows], spec.max_length)
  if spec.head == 'tagging':
    index = {label: i for i, label in enumerate(spec.labels)}
    return features.tagging(tok, [r['words'] for r in rows],
                            [[index[t] for t in r['tags']] for r in rows], spec.max_length)
  if spec.head == 'generation':
    return features.generation(tok, [r['source'] for r in rows], [r['targets'][0] for r in rows],
                               spec.max_length, spec.target_length)
  return features.lm(tok, [r['text'] for r in rows], spec.max_length, not train, token_bytes)


def lm_sample(rows: list[dict], chars: int = 2000) -> str:
  """The start of the document stream as the windows see it: documents end with </s>."""
  out = ''
  for r in rows:
    out += r['text'] + '</s>'
    if len(out) >= chars:
      break
  return out[:chars]


def split_stats(spec, rows: list[dict], arrays: dict, info: dict, problems: Problems) -> dict:
  lengths = info['length']
  stats = {
      'examples': len(rows), 'rows': int(len(arrays['input_ids'])),
      'length_percentiles': {str(q): int(np.percentile(lengths, q)) if len(lengths) else 0
                             for q in (50, 90, 99, 100)},
      'truncated': int(info['truncated'].sum()),
      'problems': problems.as_dict(),
      'samples': rows[:SAMPLES] if spec.head != 'lm' else [{'text': lm_sample(rows)}],
  }
  if spec.labels:
    flat = [r['label'] for r in rows] if spec.head == 'classification' else [
        t for r in rows for t in r['tags']]
    stats['labels'] = {label: flat.count(label) for label in spec.labels}
  return stats


@dataclasses.dataclass
class Prepared:
  """One task's arrays and statistics, by split."""

  arrays: dict        # split -> field -> array
  stats: dict         # split -> statistics
  references: dict    # split -> [[str]] (generation only)

  def save(self, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    flat = {f'{s}.{k}': v for s, fields in self.arrays.items() for k, v in fields.items()}
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp + '.npz', 'wb') as f:
      np.savez(f, **flat)
    with open(tmp + '.json', 'w') as f:
      json.dump({'stats': self.stats, 'references': self.references}, f)
    os.replace(tmp + '.json', path + '.json')
    os.replace(tmp + '.npz', path + '.npz')

  @classmethod
  def load(cls, path: str) -> 'Prepared':
    arrays = {}
    with np.load(path + '.npz') as z:
      for key in z.files:
        split, field = key.split('.', 1)
        arrays.setdefault(split, {})[field] = z[key]
    with open(path + '.json') as f:
      meta = json.load(f)
    return cls(arrays, meta['stats'], meta['references'])


@contextlib.contextmanager
def exclusive(directory: str):
  """Holds the data cache while this process reads or fills it.

  Trainers started together on a cold cache (a parallel sweep, the processes of a
  multi-host job on one machine) would each build the same TFDS dataset, and all but the
  first would then fail to move their copy into place.
  """
  try:
    os.makedirs(directory, exist_ok=True)
    handle = open(os.path.join(directory, '.lock'), 'a')
  except OSError:  # a read-only cache can only be read: there is nothing to guard
    yield
    return
  with handle:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      logging.info('waiting for another process preparing data in %s', directory)
      fcntl.flock(handle, fcntl.LOCK_EX)
    yield  # closing the handle releases the lock


class Pipeline:
  """The data side of training: tasks, tokenizer, train iterator and eval batches."""

  def __init__(self, config, workdir: str | None = None, multiple: int = 1):
    self.config = config
    self.seed = int(config.seed)
    self.data_dir, self.tfds_dir = data_dir(config), tfds_dir(config)
    self.prepared_dir = os.path.join(self.tfds_dir, 'bloom_jax_prepared')
    specs = tasks_lib.configure(config.tasks)
    self._raw = {}
    with exclusive(self.prepared_dir):
      self.tokenizer = self._load_tokenizer(specs, config.tokenizer, workdir)
      self.token_bytes = self.tokenizer.token_bytes()
      self.prepared = {name: self._prepare(spec) for name, spec in specs.items()}
    sizes = {t: len(p.arrays['train']['input_ids']) for t, p in self.prepared.items()}
    rates = tasks_lib.mixture_rates(config.data.rates, {t: s.rate for t, s in specs.items()},
                                    sizes, config.data.get('temperature', 1.0))
    sub = tasks_lib.batch_sizes(config.data.batch_size, rates, multiple)
    self.tasks = {t: dataclasses.replace(s, rate=rates[t], batch_size=sub[t])
                  for t, s in specs.items()}
    self._report()

  def _rows(self, spec) -> tuple[dict, dict]:
    """Cleaned canonical rows and problems by split, read through TFDS once per run."""
    if spec.name not in self._raw:
      rows, found = spec.source.load(spec.name, self.data_dir, self.tfds_dir, spec.labels)
      problems = {}
      for split in rows:
        problems[split] = Problems()
        p = found.get(split, {})
        for kind, count in p.get('counts', {}).items():
          problems[split].counts[kind] += count
        problems[split].first.update(p.get('first', {}))
        rows[split] = clean_rows(spec, rows[split], problems[split])
        if not rows[split] and split == 'train':
          raise DataError(f'task {spec.name!r}: no usable training examples '
                          f'({problems[split].summary() or "empty split"})')
      self._raw[spec.name] = rows, problems
    return self._raw[spec.name]

  def _load_tokenizer(self, specs, cfg, workdir) -> tokenizer_lib.Tokenizer:
    if cfg.path:
      try:  # a tokenizers JSON file, parsed (never executed); the library raises bare Exception
        return tokenizer_lib.Tokenizer.load(cfg.path)
      except Exception as e:  # noqa: BLE001
        raise DataError(f'tokenizer.path: {cfg.path} is not a usable tokenizer.json '
                        f'({" ".join(str(e).split())[:200]})') from None
    specs = _tokenizer_specs(specs, cfg.get('train_on', ''))
    key = _hash({'v': FORMAT_VERSION, 'vocab': cfg.vocab_size, 'chars': TOKENIZER_CHARS_PER_TASK,
                 'tasks': sorted((s.name, s.source.fingerprint(self.data_dir), s.stopwords)
                                 for s in specs.values())})
    # A run keeps its own copy beside its checkpoints; the copy in the prepared-data cache
    # spares the next run reading every training text (a minute for the built-in data).
    name = f'tokenizer-{key}.json'
    path = os.path.join(workdir or self.prepared_dir, name)
    cached = os.path.join(self.prepared_dir, name)
    found = next((p for p in (path, cached) if os.path.exists(p)), None)
    if found:
      tok = tokenizer_lib.Tokenizer.load(found)
    else:
      texts = [t for s in specs.values() for t in training_text(s, self._rows(s)[0]['train'])]
      tok = tokenizer_lib.train(texts, cfg.vocab_size)
      tok.save(cached)
    if not os.path.exists(path):
      tok.save(path)
    return tok

  def _prepare(self, spec) -> Prepared:
    key = _hash({'v': FORMAT_VERSION, 'source': spec.source.fingerprint(self.data_dir),
                 'head': spec.head, 'labels': spec.labels, 'max_length': spec.max_length,
                 'target_length': spec.target_length, 'stopwords': spec.stopwords,
                 'tokenizer': self.tokenizer.fingerprint()})
    path = os.path.join(self.prepared_dir, f'{spec.name}-{key}')
    if os.path.exists(path + '.npz') and os.path.exists(path + '.json'):
      return Prepared.load(path)
    rows, problems = self._rows(spec)
    arrays, stats, refs = {}, {}, {}
    for split, split_rows in rows.items():
      if not split_rows:
        continue
      arrays[split], info = featurize(spec, self.tokenizer, split_rows, split == 'train',
                                      self.token_bytes)
      stats[split] = split_stats(spec, split_rows, arrays[split], info, problems[split])
      if spec.head == 'generation':
        refs[split] = [r['targets'] for r in split_rows]
    if not len(arrays['train']['input_ids']):
      raise DataError(f'task {spec.name!r}: training text shorter than one window '
                      f'of {spec.max_length + 1} tokens')
    prepared = Prepared(arrays, stats, refs)
    prepared.save(path)
    return prepared

  def _report(self) -> None:
    for name, prepared in self.prepared.items():
      for split, s in prepared.stats.items():
        if s['problems']['counts']:
          logging.warning('task %s, %s: skipped or repaired rows: %s', name, split,
                          Problems(**{'counts': s['problems']['counts'],
                                      'first': s['problems']['first']}).summary())
        if s['truncated']:
          logging.info('task %s, %s: %d of %d examples truncated to %d tokens', name, split,
                       s['truncated'], s['examples'], self.tasks[name].max_length)

  def train_iterator(self, process_index: int = 0, process_count: int = 1) -> 'TrainIterator':
    arrays = {t: {k: v for k, v in self.prepared[t].arrays['train'].items() if k not in EVAL_ONLY}
              for t in self.tasks}
    return TrainIterator(arrays, {t: s.batch_size for t, s in self.tasks.items()}, self.seed,
                         process_index, process_count)

  def split_arrays(self, task: str, split: str) -> dict:
    if task not in self.tasks:
      raise ValueError(f'unknown task {task!r}; the mixture has {sorted(self.tasks)}')
    if split not in self.prepared[task].arrays:
      raise DataError(f'task {task!r} has no labelled {split!r} split '
                      f'(has: {sorted(self.prepared[task].arrays)})')
    return self.prepared[task].arrays[split]

  def eval_batches(self, task: str, split: str, batch_size: int, max_examples: int = 0,
                   process_index: int = 0, process_count: int = 1):
    """Every example of the split once, in file order; the last batch is padded with
    rows whose `example_mask` and loss weights are 0."""
    return eval_batches(self.split_arrays(task, split), batch_size, max_examples,
                        self.tokenizer.pad_id, process_index, process_count)

  def references(self, task: str, split: str, max_examples: int = 0) -> list[list[str]]:
    if self.tasks[task].head != 'generation':
      raise ValueError(f'task {task!r} is not a generation task')
    self.split_arrays(task, split)
    refs = self.prepared[task].references[split]
    return refs[:max_examples] if max_examples else refs

  def encode_for_inference(self, task: str, texts) -> dict:
    """Raw texts (tagging: strings split on whitespace, or word lists) -> model inputs."""
    spec, tok = self.tasks[task], self.tokenizer
    if spec.head == 'tagging':
      words = [t.split() if isinstance(t, str) else list(t) for t in texts]
      words = [[text.clean(w) for w in ws] for ws in words]
      out, _ = features.tagging(tok, words, None, spec.max_length)
      return dict(out, words=words)
    cleaned = [text.clean(t, keep_newlines=True) if spec.head == 'lm' else clean_input(spec, t)
               for t in texts]
    if spec.head == 'classification':
      return features.classification(tok, cleaned, None, spec.max_length)[0]
    if spec.head == 'generation':
      return features.generation(tok, cleaned, None, spec.max_length, spec.target_length)[0]
    ids = [([tok.bos_id] + tok.encode(t))[-spec.max_length:] for t in cleaned]
    return {'input_ids': features._pad(ids, spec.max_length, tok.pad_id),
            'attention_mask': features._mask([len(i) for i in ids], spec.max_length),
            'prompt_ids': features._pad(ids, spec.max_length, tok.pad_id, left=True),
            'prompt_mask': features._mask([len(i) for i in ids], spec.max_length)[:, ::-1].copy()}


def _tokenizer_specs(specs: dict, train_on: str) -> dict:
  """The tasks whose training text trains the BPE: the mixture's, or those `train_on` names
  (so a single-task run can share the mixture's tokenizer)."""
  names = [n.strip() for n in train_on.split(',') if n.strip()]
  for name in names:
    if name not in tasks_lib.REGISTRY:
      raise DataError(f'tokenizer.train_on: unknown task {name!r}; registered: '
                      f'{", ".join(sorted(tasks_lib.REGISTRY))}')
  return {n: specs.get(n, tasks_lib.REGISTRY[n]) for n in names} if names else specs


def _shard(n: int, process_index: int, process_count: int) -> tuple[int, int]:
  if n % process_count:
    raise ValueError(f'{n} rows do not split evenly over {process_count} processes')
  per = n // process_count
  return process_index * per, (process_index + 1) * per


def eval_batches(arrays: dict, batch_size: int, max_examples: int, pad_id: int,
                 process_index: int = 0, process_count: int = 1):
  n = len(arrays['input_ids'])
  n = min(n, max_examples) if max_examples else n
  lo, hi = _shard(batch_size, process_index, process_count)
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)[lo:hi]
    real = idx < n
    idx = np.where(real, idx, 0)
    batch = {}
    for key, value in arrays.items():
      fill = pad_id if key in ('input_ids', 'prompt_ids') else 0
      v = value[idx]
      batch[key] = np.where(real.reshape((-1,) + (1,) * (v.ndim - 1)), v, fill).astype(v.dtype)
    batch['example_mask'] = real.astype(np.float32)
    yield batch


class TrainIterator:
  """Endless training batches, a pure function of (seed, step); state is {'step': k}."""

  def __init__(self, arrays: dict, batch_sizes: dict, seed: int, process_index: int = 0,
               process_count: int = 1):
    self.arrays, self.batch_sizes, self.seed = arrays, batch_sizes, seed
    self.shards = {t: _shard(b, process_index, process_count) for t, b in batch_sizes.items()}
    self.step = 0
    self._perms = {}

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = self.batch(self.step)
    self.step += 1
    return batch

  def get_state(self) -> dict:
    return {'step': self.step}

  def set_state(self, state: dict) -> None:
    self.step = int(state['step'])

  def _perm(self, task_index: int, n: int, epoch: int) -> np.ndarray:
    key = (task_index, epoch)
    if key not in self._perms:
      if len(self._perms) > 4 * len(self.arrays):
        self._perms.clear()
      self._perms[key] = np.random.default_rng([self.seed, task_index, epoch]).permutation(n)
    return self._perms[key]

  def indices(self, task_index: int, task: str, step: int) -> np.ndarray:
    n, b = len(self.arrays[task]['input_ids']), self.batch_sizes[task]
    lo, hi = self.shards[task]
    positions = step * b + np.arange(lo, hi)
    epochs = positions // n
    out = np.empty(len(positions), np.int64)
    for epoch in np.unique(epochs):
      sel = epochs == epoch
      out[sel] = self._perm(task_index, n, int(epoch))[positions[sel] % n]
    return out

  def batch(self, step: int) -> dict:
    out = {}
    for task_index, (task, arrays) in enumerate(self.arrays.items()):
      idx = self.indices(task_index, task, step)
      out[task] = {k: v[idx] for k, v in arrays.items()}
    return out
