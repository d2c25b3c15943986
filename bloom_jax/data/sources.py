"""Where a task's examples come from: the synthetic builder, local files, or the TFDS catalog.

A source answers two questions: `fingerprint(data_dir)` (a string that changes when its
data would, so prepared arrays can be cached without reading the data) and
`load(name, data_dir, tfds_dir, labels)` (canonical rows and problem counts by split). TFDS is
imported only when data is actually read, so configs validate without TensorFlow.
"""

import dataclasses
import functools
import hashlib
import os
from collections.abc import Callable

from bloom_jax.data import readers
from bloom_jax.data.readers import DataError, Problems


def _tfds():
  import tensorflow_datasets as tfds

  from bloom_jax.data import builders  # noqa: F401  (hides accelerators from TF first)
  return tfds


def _read_all(builder, splits: dict) -> dict:
  """Every row of each split, in file order. Rows are read in ragged batches and converted
  a column at a time: converting row by row costs ~0.5 ms a row (10 s for 20k rows)."""
  return {ours: [row for batch in builder.as_dataset(split=theirs, shuffle_files=False)
                 .ragged_batch(4096) for row in _rows_of(_columns(batch))]
          for ours, theirs in splits.items()}


def _columns(batch):
  """A batch's features as nested dicts of Python lists, one entry per row."""
  if isinstance(batch, dict):
    return {k: _columns(v) for k, v in batch.items()}
  return batch.to_list() if hasattr(batch, 'to_list') else batch.numpy().tolist()


def _rows_of(columns) -> list:
  if not isinstance(columns, dict):
    return columns
  per_key = {k: _rows_of(v) for k, v in columns.items()}
  count = len(next(iter(per_key.values()))) if per_key else 0
  return [{k: values[i] for k, values in per_key.items()} for i in range(count)]


def _decode(value):
  if isinstance(value, bytes):
    return value.decode('utf-8', 'replace')
  if hasattr(value, 'tolist'):
    return _decode(value.tolist())
  if isinstance(value, list):
    return [_decode(v) for v in value]
  if isinstance(value, dict):
    return {k: _decode(v) for k, v in value.items()}
  return value


@dataclasses.dataclass(frozen=True)
class Synthetic:
  """One config of the built-in `SyntheticMultitask` builder."""

  config: str
  splits: tuple = ('train', 'validation', 'test')

  def fingerprint(self, data_dir: str) -> str:
    del data_dir
    return f'synthetic_multitask/{self.config}/1.1.0'

  def load(self, name: str, data_dir: str, tfds_dir: str, labels) -> tuple[dict, dict]:
    del name, data_dir, labels
    from bloom_jax.data import builders
    with builders.own_temp_dir():
      builder = builders.SyntheticMultitask(config=self.config, data_dir=tfds_dir)
    builder.download_and_prepare()
    rows = {s: [_decode(r) for r in rs] for s, rs in _read_all(
        builder, {s: s for s in self.splits}).items()}
    return rows, {s: Problems().as_dict() for s in self.splits}


@dataclasses.dataclass(frozen=True)
class Local:
  """Files read by `builders.LocalFiles`; see `builders.LocalConfig`. Relative paths are
  under `data.dir`."""

  task_type: object            # a `bloom_jax.task_types` type: the fields examples have
  reader: str                  # a `readers.READERS` name
  files: tuple                 # ((split, path), ...)
  options: tuple = ()
  holdout: float = 0.0
  holdout_seed: int = 0

  @property
  def splits(self) -> tuple:
    return tuple(s for s, _ in self.files) + (('validation',) if self.holdout else ())

  def paths(self, data_dir: str) -> tuple:
    return tuple((s, os.path.join(data_dir, p)) for s, p in self.files)

  def fingerprint(self, data_dir: str) -> str:
    parts = [repr(dataclasses.astuple(self))]
    for _, path in self.paths(data_dir):
      st = os.stat(path) if os.path.exists(path) else None
      parts.append(f'{os.path.abspath(path)}:{st and st.st_size}:{st and st.st_mtime_ns}')
    return 'local/' + hashlib.sha256('\n'.join(parts).encode()).hexdigest()[:16]

  def _existing_paths(self, name: str, data_dir: str) -> tuple:
    if not data_dir and not all(os.path.isabs(p) for _, p in self.files):
      raise DataError(f'task {name!r} reads local files: set data.dir or $BLOOM_JAX_DATA')
    for _, path in self.paths(data_dir):
      if not os.path.isfile(path):
        raise DataError(f'{path}: file not found (task {name!r}, data.dir={data_dir!r})')
    return self.paths(data_dir)

  def labels(self, task, data_dir: str) -> tuple[str, ...]:
    """The sorted set of labels in the training file, for a task that lists none."""
    path = dict(self._existing_paths(task.name, data_dir))['train']
    rows, _ = readers.read(self.reader, self.task_type.fields, path, None, dict(self.options))
    found = set()
    for row in rows:
      cleaned = self.task_type.clean(task, row)
      if isinstance(cleaned, dict):
        found.update(self.task_type.labels_of(cleaned))
    if not found:
      raise DataError(f'{path}: no labels to learn (task {task.name!r})')
    return tuple(sorted(found))

  def load(self, name: str, data_dir: str, tfds_dir: str, labels) -> tuple[dict, dict]:
    paths = self._existing_paths(name, data_dir)
    from bloom_jax.data import builders
    # The readers count rows with labels outside `labels`: other labels, another dataset.
    key = hashlib.sha256(repr((self.fingerprint(data_dir), labels)).encode()).hexdigest()[:16]
    config = builders.LocalConfig(
        name=f'{name}_{key}', task_type=self.task_type, reader=self.reader, files=paths,
        labels=labels, options=self.options, holdout=self.holdout,
        holdout_seed=self.holdout_seed)
    with builders.own_temp_dir():
      builder = builders.LocalFiles(config=config, data_dir=tfds_dir)
    builder.download_and_prepare()
    rows = {s: [_decode(r) for r in rs] for s, rs in _read_all(
        builder, {s: s for s in self.splits}).items()}
    return rows, dict(builder.info.metadata['problems'])


@dataclasses.dataclass(frozen=True)
class Catalog:
  """A TFDS catalog dataset the user downloads (`tfds build NAME` or first use online).

  `splits` maps our split names to TFDS split strings; `convert(example, info)` turns one
  TFDS example into a canonical row, or returns a problem kind to skip it.
  """

  name: str
  splits_map: tuple           # ((our split, TFDS split), ...)
  convert: Callable

  @property
  def splits(self) -> tuple:
    return tuple(s for s, _ in self.splits_map)

  def fingerprint(self, data_dir: str) -> str:
    del data_dir
    return f'tfds/{self.name}/{self.splits_map}'

  def load(self, name: str, data_dir: str, tfds_dir: str, labels) -> tuple[dict, dict]:
    del data_dir, labels  # the dataset's ClassLabel names are the task's labels
    tfds = _tfds()
    from bloom_jax.data import builders
    with builders.own_temp_dir():
      builder = tfds.builder(self.name, data_dir=tfds_dir)
    try:
      builder.download_and_prepare()
    except Exception as e:  # noqa: BLE001  (any download failure means the same to the user)
      raise DataError(f'task {name!r}: TFDS dataset {self.name!r} is not prepared in '
                      f'{tfds_dir} and could not be downloaded ({type(e).__name__})') from e
    raw = _read_all(builder, dict(self.splits_map))
    rows, problems = {}, {}
    for split, examples in raw.items():
      rows[split], p = [], Problems()
      for i, ex in enumerate(examples):
        row = self.convert(_decode(ex), builder.info)
        if isinstance(row, str):
          p.add(row, f'{self.name}:{split}[{i}]')
        else:
          rows[split].append(row)
      problems[split] = p.as_dict()
    return rows, problems


def _label_name(info, key, value):
  names = info.features[key].names
  return names[value] if isinstance(value, int) and 0 <= value < len(names) else None


def classification(example: dict, info, *, text_keys: tuple, label_key: str):
  label = _label_name(info, label_key, example[label_key])
  text = ' '.join(example[k] for k in text_keys).strip()
  if label is None:
    return 'missing_label'
  return {'text': text, 'label': label} if text else 'empty_text'


def tagging(example: dict, info, *, words_key: str, tags_key: str):
  names = info.features[tags_key].feature.names
  words, tags = example[words_key], example[tags_key]
  if len(words) != len(tags) or not words:
    return 'malformed_example'
  tags = [names[t] for t in tags]
  return 'missing_label' if '_' in tags else {'words': words, 'tags': tags}


def generation(example: dict, info, *, source_key: str, target_key: str):
  del info
  if not example[source_key].strip():
    return 'empty_text'
  if not example[target_key].strip():
    return 'missing_label'
  return {'source': example[source_key], 'targets': [example[target_key]]}


def lm(example: dict, info, *, text_key: str):
  del info
  return {'text': example[text_key]} if example[text_key].strip() else 'empty_text'


def catalog(name: str, splits: dict, convert: Callable, **kwargs) -> Catalog:
  return Catalog(name, tuple(splits.items()), functools.partial(convert, **kwargs))
