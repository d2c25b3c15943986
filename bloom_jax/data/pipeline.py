"""Prepared per-task examples, packed rows, the resumable train iterator and eval batches.

Preparation runs once per (task, source, preprocessing, tokenizer, lengths): TFDS builds
the canonical examples, they are cleaned and encoded by the task's type into
variable-length examples, saved as `<prepared>/<task>-<key>.npz` (+ a `.json` with
statistics and references). Later runs, and every process of a multi-host job, load
those files and never touch TensorFlow. Examples are packed into rows
(`bloom_jax.data.packing`) when a run starts: training rows once, evaluation rows for the
examples an evaluation scores.

Training batches are a pure function of (seed, step): task t draws its `b_t` rows of step s
from positions [s*b_t, (s+1)*b_t) of an endless sequence of epochs over its packed rows,
each epoch a permutation from `np.random.default_rng([seed, t, epoch])`. So resuming
needs only the step, and process p of P takes rows [p*b_t/P, (p+1)*b_t/P) of every task's
sub-batch.

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
from bloom_jax.data import packing
from bloom_jax.data.readers import DataError, Problems

FORMAT_VERSION = 3
# Characters of each task's training text the BPE sees: bounds training time on big
# corpora while keeping every task's vocabulary represented.
TOKENIZER_CHARS_PER_TASK = 2_000_000
SAMPLES = 8
EVAL_ONLY = ('num_words', 'target_bytes')  # row fields only evaluation reads


def tfds_dir(config) -> str:
  return (config.data.get('tfds_dir') or os.environ.get('BLOOM_JAX_TFDS_DIR')
          or os.path.expanduser('~/.cache/bloom_jax/tfds'))


def data_dir(config) -> str:
  return config.data.dir or os.environ.get('BLOOM_JAX_DATA', '')


def _hash(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def clean_rows(spec, rows: list[dict], problems: Problems) -> list[dict]:
  """Normalises text (the task type's way) and drops rows left empty or unlabelled."""
  out = []
  for i, row in enumerate(rows):
    where = f'{spec.name} example {i}'
    cleaned = spec.type.clean(spec, row)
    if not isinstance(cleaned, dict):  # None (nothing left) or the kind of problem found
      problems.add(cleaned or 'empty_text', f'{where}: {row}'[:200] if cleaned else where)
      continue
    unknown = [x for x in spec.type.labels_of(cleaned) if x not in spec.labels]
    if unknown:
      problems.add('unknown_label', f'{where}: {unknown[0]!r}')
      continue
    out.append(cleaned)
  return out


def training_text(spec, rows: list[dict]) -> list[str]:
  out, size = [], 0
  for row in rows:
    out.append(spec.type.training_text(row)[:TOKENIZER_CHARS_PER_TASK - size])
    size += len(out[-1])
    if size >= TOKENIZER_CHARS_PER_TASK:
      break
  return out


def lm_sample(rows: list[dict], chars: int = 2000) -> str:
  """The start of the document stream as the windows see it: documents end with </s>."""
  out = ''
  for r in rows:
    out += r['text'] + '</s>'
    if len(out) >= chars:
      break
  return out[:chars]


def split_stats(spec, rows: list[dict], examples: packing.Examples, info: dict,
                problems: Problems) -> dict:
  lengths = info['length']
  stats = {
      'examples': len(rows), 'encoded': len(examples),
      'length_percentiles': {str(q): int(np.percentile(lengths, q)) if len(lengths) else 0
                             for q in (50, 90, 99, 100)},
      'truncated': int(info['truncated'].sum()),
      'problems': problems.as_dict(),
      'samples': rows[:SAMPLES] if not spec.type.whole_text else [{'text': lm_sample(rows)}],
  }
  if spec.labels:
    flat = [label for r in rows for label in spec.type.labels_of(r)]
    stats['labels'] = {label: flat.count(label) for label in spec.labels}
  return stats


@dataclasses.dataclass
class Prepared:
  """One task's encoded examples and statistics, by split."""

  examples: dict      # split -> packing.Examples
  stats: dict         # split -> statistics
  references: dict    # split -> [[str]] (tasks whose rows have several references)

  def save(self, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    flat = {k: v for s, e in self.examples.items() for k, v in e.to_arrays(f'{s}.').items()}
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
    return cls({s: packing.Examples.from_arrays(a) for s, a in arrays.items()}, meta['stats'],
               meta['references'])


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
    # Also completes `config` (task modules, labels read from files): see tasks.resolve.
    specs = tasks_lib.resolve(config, self.data_dir)
    self._raw = {}
    with exclusive(self.prepared_dir):
      self.tokenizer = self._load_tokenizer(specs, config.tokenizer, workdir)
      self.token_bytes = self.tokenizer.token_bytes()
      self.prepared = {name: self._prepare(spec) for name, spec in specs.items()}
    sizes = {t: len(p.examples['train']) for t, p in self.prepared.items()}
    rates = tasks_lib.mixture_rates(config.data.rates, {t: s.rate for t, s in specs.items()},
                                    sizes, config.data.get('temperature', 1.0))
    sub = tasks_lib.batch_sizes(config.data.batch_size, rates, multiple)
    self.tasks = {t: dataclasses.replace(s, rate=rates[t], batch_size=sub[t])
                  for t, s in specs.items()}
    self.packed = bool(config.data.get('pack', True))
    self._train_rows = {}
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
    fields = {'v': FORMAT_VERSION, 'source': spec.source.fingerprint(self.data_dir),
              'type': spec.type.name, 'labels': spec.labels, 'max_length': spec.max_length,
              'target_length': spec.target_length, 'stopwords': spec.stopwords,
              'tokenizer': self.tokenizer.fingerprint()}
    if spec.pos_tagger:  # its path and checkpoint step (the keys of untagged tasks stay)
      fields['pos_tagger'] = spec.pos_tagger.fingerprint()
    key = _hash(fields)
    path = os.path.join(self.prepared_dir, f'{spec.name}-{key}')
    if os.path.exists(path + '.npz') and os.path.exists(path + '.json'):
      return Prepared.load(path)
    rows, problems = self._rows(spec)
    examples, stats, refs = {}, {}, {}
    for split, split_rows in rows.items():
      if not split_rows:
        continue
      examples[split], info = spec.type.encode(spec, self.tokenizer, split_rows,
                                               split == 'train', self.token_bytes)
      stats[split] = split_stats(spec, split_rows, examples[split], info, problems[split])
      if 'targets' in spec.type.fields:  # every reference, for metrics over several
        refs[split] = [r['targets'] for r in split_rows]
    if not len(examples['train']):
      raise DataError(f'task {spec.name!r}: training text shorter than one window '
                      f'of {spec.max_length + 1} tokens')
    prepared = Prepared(examples, stats, refs)
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

  def rows(self, task: str, examples: packing.Examples) -> dict:
    """Model rows of a task's examples, packed unless the config says `data.pack=False`."""
    spec = self.tasks[task]
    return spec.type.rows(spec, examples, self.tokenizer.pad_id, self.packed)

  def train_rows(self, task: str) -> dict:
    if task not in self._train_rows:
      self._train_rows[task] = self.rows(task, self.prepared[task].examples['train'])
    return self._train_rows[task]

  def row_statistics(self) -> dict[str, dict]:
    """Per task: rows, examples per row and non-padding fraction of the training rows."""
    return {t: packing.row_statistics(self.train_rows(t)) for t in self.tasks}

  def train_iterator(self, process_index: int = 0, process_count: int = 1) -> 'TrainIterator':
    arrays = {t: {k: v for k, v in self.train_rows(t).items() if k not in EVAL_ONLY}
              for t in self.tasks}
    return TrainIterator(arrays, {t: s.batch_size for t, s in self.tasks.items()}, self.seed,
                         process_index, process_count)

  def examples(self, task: str, split: str, max_examples: int = 0) -> packing.Examples:
    """The first `max_examples` (0: all) encoded examples of a split, in file order."""
    if task not in self.tasks:
      raise ValueError(f'unknown task {task!r}; the mixture has {sorted(self.tasks)}')
    if split not in self.prepared[task].examples:
      raise DataError(f'task {task!r} has no labelled {split!r} split '
                      f'(has: {sorted(self.prepared[task].examples)})')
    return self.prepared[task].examples[split].head(max_examples)

  def has_split(self, task: str, split: str) -> bool:
    return split in self.prepared[task].examples

  def eval_batches(self, task: str, split: str, batch_size: int, max_examples: int = 0,
                   process_index: int = 0, process_count: int = 1):
    """Rows holding every selected example of the split once; the last batch is padded
    with rows of weight 0."""
    rows = self.rows(task, self.examples(task, split, max_examples))
    return eval_batches(rows, batch_size, self.tokenizer.pad_id, process_index, process_count)

  def references(self, task: str, split: str, max_examples: int = 0) -> list[list[str]] | None:
    """Every reference text of each selected example, for tasks that have them."""
    refs = self.prepared[task].references.get(split)
    return refs[:max_examples] if refs is not None and max_examples else refs


def _tokenizer_specs(specs: dict, train_on: str) -> dict:
  """The tasks whose training text trains the BPE: the mixture's, or those `train_on` names
  (so a single-task run can share the mixture's tokenizer)."""
  names = [n.strip() for n in train_on.split(',') if n.strip()]
  known = {**tasks_lib.REGISTRY, **specs}  # registered tasks and this config's own
  for name in names:
    if name not in known:
      raise DataError(f'tokenizer.train_on: unknown task {name!r}; known: '
                      f'{", ".join(sorted(known))}')
  return {n: known[n] for n in names} if names else specs


def _shard(n: int, process_index: int, process_count: int) -> tuple[int, int]:
  if n % process_count:
    raise ValueError(f'{n} rows do not split evenly over {process_count} processes')
  per = n // process_count
  return process_index * per, (process_index + 1) * per


def eval_batches(rows: dict, batch_size: int, pad_id: int, process_index: int = 0,
                 process_count: int = 1):
  n = len(rows['input_ids'])
  lo, hi = _shard(batch_size, process_index, process_count)
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)[lo:hi]
    real = idx < n
    idx = np.where(real, idx, 0)
    batch = {}
    for key, value in rows.items():
      fill = pad_id if key == 'input_ids' else 0
      v = value[idx]
      batch[key] = np.where(real.reshape((-1,) + (1,) * (v.ndim - 1)), v, fill).astype(v.dtype)
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
