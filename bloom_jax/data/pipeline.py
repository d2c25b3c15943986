"""Prepared per-task examples, the streamed training batches and evaluation batches.

Preparation runs once per (task, source, preprocessing, tokenizer, lengths): TFDS builds
the canonical examples, they are cleaned and encoded by the task's type a chunk at a time
into variable-length examples, written to `<prepared>/<task>-<key>.<split>.array_record`
(`bloom_jax.data.records`, one record per example) with a `<task>-<key>.json` of
statistics, references and the record layout. Later runs, and every process of a
multi-host job, read those files and never touch TensorFlow; nothing holds a whole
training split in memory.

Training batches stream from the records through grain (`bloom_jax.data.stream`): a global
shuffle per epoch, each process reading its own share, packing into rows inside the
pipeline, worker threads prefetching. The stream's position is saved with every checkpoint,
so resuming reads exactly the batches an uninterrupted run would. Evaluation reads the
first examples of a split in file order and packs them when it runs.

Processes sharing a cache take turns: the first builds, the others wait and then load.
"""

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os

import grain
import numpy as np
from absl import logging

from bloom_jax import tasks as tasks_lib
from bloom_jax import tokenizer as tokenizer_lib
from bloom_jax.data import packing, records, stream
from bloom_jax.data.readers import DataError, Problems

FORMAT_VERSION = 5
# Characters of each task's training text the BPE sees: bounds training time on big
# corpora while keeping every task's vocabulary represented.
TOKENIZER_CHARS_PER_TASK = 2_000_000
SAMPLES = 8
ENCODE_CHUNK = 4096  # rows encoded and written at a time


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


def split_stats(spec, rows: list[dict], encoded: int, info: dict, problems: Problems) -> dict:
  lengths = info['length']
  stats = {
      'examples': len(rows), 'encoded': encoded,
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
  """One task's encoded examples on disk, their statistics and references, by split."""

  path: str           # `<prepared>/<task>-<key>`: + `.json`, + `.<split>.array_record`
  stats: dict         # split -> statistics
  references: dict    # split -> [[str]] (tasks whose rows have several references)
  splits: dict        # split -> {'count': examples, 'schema': records.schema_of(...)}

  def file(self, split: str) -> str:
    return f'{self.path}.{split}.array_record'

  def count(self, split: str) -> int:
    return self.splits[split]['count']

  def examples(self, split: str, n: int = 0) -> packing.Examples:
    """The first n examples (all when n is 0) of a split, read into memory."""
    return records.read(self.file(split), self.splits[split]['schema'], self.count(split), n)

  def save(self) -> None:
    """Writes the JSON last: its presence says the record files are complete."""
    tmp = f'{self.path}.json.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
      json.dump({'stats': self.stats, 'references': self.references, 'splits': self.splits}, f)
    os.replace(tmp, self.path + '.json')

  @classmethod
  def load(cls, path: str) -> 'Prepared | None':
    """The prepared data at `path`, or None if it is not (completely) there."""
    try:
      with open(path + '.json') as f:
        meta = json.load(f)
    except FileNotFoundError:
      return None
    prepared = cls(path, meta['stats'], meta['references'], meta['splits'])
    if not all(os.path.exists(prepared.file(s)) for s in prepared.splits):
      return None
    return prepared


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
    sizes = {t: p.count('train') for t, p in self.prepared.items()}
    rates = tasks_lib.mixture_rates(config.data.rates, {t: s.rate for t, s in specs.items()},
                                    sizes, config.data.get('temperature', 1.0))
    sub = tasks_lib.batch_sizes(config.data.batch_size, rates, multiple)
    self.tasks = {t: dataclasses.replace(s, rate=rates[t], batch_size=sub[t])
                  for t, s in specs.items()}
    self.packed = bool(config.data.get('pack', True))
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
    if spec.subword != 'first':  # as above: the default keeps the keys of prepared data
      fields['subword'] = spec.subword
    if spec.ngram_unit != 'token':  # rows with word starts
      fields['ngram_unit'] = spec.ngram_unit
    path = os.path.join(self.prepared_dir, f'{spec.name}-{_hash(fields)}')
    prepared = Prepared.load(path)
    if prepared is not None:
      return prepared
    rows, problems = self._rows(spec)
    prepared = Prepared(path, {}, {}, {})
    for split, split_rows in rows.items():
      if not split_rows:
        continue
      prepared.splits[split], prepared.stats[split] = self._encode(
          spec, split, split_rows, problems[split], prepared.file(split))
      if 'targets' in spec.type.fields:  # every reference, for metrics over several
        prepared.references[split] = [r['targets'] for r in split_rows]
    if not prepared.count('train'):
      raise DataError(f'task {spec.name!r}: training text shorter than one window '
                      f'of {spec.max_length + 1} tokens')
    prepared.save()
    return prepared

  def _encode(self, spec, split: str, rows: list[dict], problems: Problems,
              path: str) -> tuple[dict, dict]:
    """Encodes a split a chunk of rows at a time into `path`: (layout, statistics).

    A whole-text type (lm) encodes the split at once: its windows run across documents.
    """
    chunk = len(rows) if spec.type.whole_text else ENCODE_CHUNK
    writer, infos = records.Writer(path), []
    for start in range(0, len(rows), chunk):
      examples, info = spec.type.encode(spec, self.tokenizer, rows[start:start + chunk],
                                        split == 'train', self.token_bytes)
      writer.write(examples)
      infos.append(info)
    writer.close()
    info = {k: np.concatenate([i[k] for i in infos]) for k in infos[0]}
    layout = {'count': writer.count, 'schema': writer.schema}
    return layout, split_stats(spec, rows, writer.count, info, problems)

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

  def row_statistics(self, steps: int = 50) -> dict[str, dict]:
    """Per task: rows, examples per row and non-padding fraction of the first `steps`
    training batches."""
    it = self.train_iterator()
    batches = [next(it) for _ in range(steps)]
    return {t: packing.row_statistics({'segment_ids': np.concatenate(
        [b[t]['segment_ids'] for b in batches])}) for t in self.tasks}

  def train_iterator(self, process_index: int = 0,
                     process_count: int = 1) -> stream.TrainIterator:
    """This process's share of every step's batch, streamed from the prepared records.

    The stream is cut into `data.input_shards` shards (0: one per process), each reading
    its own share of every task's examples; process p reads shards [p*k, (p+1)*k) for k =
    shards / processes. With the shard count fixed, the global batch (shards in order) is
    the same for any number of processes, so a run can resume on another one.
    """
    data = self.config.data
    shards = int(data.get('input_shards', 0)) or process_count
    if shards % process_count:
      raise DataError(f'data.input_shards: {shards} shards do not split evenly over '
                      f'{process_count} processes')
    options = grain.ReadOptions(num_threads=int(data.get('read_threads', 2)),
                                prefetch_buffer_size=int(data.get('prefetch_groups', 2)))
    uneven = {t: s.batch_size for t, s in self.tasks.items() if s.batch_size % shards}
    if uneven:
      raise DataError(f'data.input_shards: the rows per step of {uneven} do not split evenly '
                      f'into {shards} input shards')
    local = shards // process_count
    out = {}
    for shard in range(process_index * local, (process_index + 1) * local):
      out[shard] = {}
      for task_index, (task, spec) in enumerate(self.tasks.items()):
        lo, hi = _shard(spec.batch_size, shard, shards)
        prepared = self.prepared[task]
        groups = stream.packed_groups(
            prepared.file('train'), prepared.splits['train']['schema'], spec,
            self.tokenizer.pad_id, self.packed, stream.shuffle_seed(self.seed, task_index),
            shard, shards, int(data.get('pack_group', 1024)))
        out[shard][task] = stream.TaskStream(groups, hi - lo, options)
    return stream.TrainIterator(out)

  def examples(self, task: str, split: str, max_examples: int = 0) -> packing.Examples:
    """The first `max_examples` (0: all) encoded examples of a split, in file order."""
    if task not in self.tasks:
      raise ValueError(f'unknown task {task!r}; the mixture has {sorted(self.tasks)}')
    if not self.has_split(task, split):
      raise DataError(f'task {task!r} has no labelled {split!r} split '
                      f'(has: {sorted(self.prepared[task].splits)})')
    return self.prepared[task].examples(split, max_examples)

  def has_split(self, task: str, split: str) -> bool:
    return split in self.prepared[task].splits

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
    raise ValueError(f'{n} rows do not split evenly over {process_count} processes (or '
                     'input shards)')
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
