"""Readers for local data files, tolerant of bad rows.

Each reader returns canonical examples plus a `Problems` tally: a bad row is skipped and
counted, never fatal. Only a file that is unusable as a whole (missing, or without one
valid row) raises `DataError`, whose one-line message names the file and the first bad line.

Canonical examples by task type:
  classification {'text': str, 'label': str}          (regression: the label is a number)
  tagging        {'words': [str], 'tags': [str]}
  generation     {'source': str, 'targets': [str]}   (targets[0] trains; all are references)
  lm             {'text': str}

`READERS` names the formats a task reads its files in (`read(name, fields, ...)`), with
the options each takes.
"""

import collections
import csv
import dataclasses
import functools
import json
import os
from collections.abc import Callable, Iterator, Sequence

from bloom_jax.errors import DataError


@dataclasses.dataclass
class Problems:
  """Counts of skipped or repaired rows by kind, with the first occurrence of each."""

  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  first: dict = dataclasses.field(default_factory=dict)

  def add(self, kind: str, where: str) -> None:
    self.counts[kind] += 1
    self.first.setdefault(kind, where)

  def merge(self, other: 'Problems') -> None:
    self.counts.update(other.counts)
    for kind, where in other.first.items():
      self.first.setdefault(kind, where)

  def as_dict(self) -> dict:
    return {'counts': dict(self.counts), 'first': dict(self.first)}

  def summary(self) -> str:
    return ', '.join(f'{k}={v} (first: {self.first[k]})' for k, v in sorted(self.counts.items()))


def read_lines(path: str, problems: Problems) -> Iterator[tuple[int, str]]:
  """Yields (1-based line number, text); undecodable bytes become U+FFFD and are counted."""
  if not os.path.isfile(path):
    raise DataError(f'{path}: file not found')
  with open(path, 'rb') as f:
    data = f.read()
  for number, raw in enumerate(data.split(b'\n'), start=1):
    raw = raw.rstrip(b'\r')
    try:
      line = raw.decode('utf-8')
    except UnicodeDecodeError as e:
      problems.add('not_utf8', f'{path}:{number}: {e.reason} at byte {e.start}')
      line = raw.decode('utf-8', 'replace')
    yield number, line


def require_rows(rows: list, path: str, problems: Problems) -> list:
  if not rows:
    detail = f' ({problems.summary()})' if problems.counts else ''
    raise DataError(f'{path}: no valid rows{detail}')
  return rows


def _check_label(label: str, labels: Sequence[str] | None, where: str, problems: Problems) -> bool:
  if not label:
    problems.add('missing_label', where)
    return False
  if labels is not None and label not in labels:
    problems.add('unknown_label', f'{where}: {label!r}')
    return False
  return True


def read_conllu(path: str, labels: Sequence[str] | None, column: int = 3) -> tuple[list, Problems]:
  """Sentences with one tag per word; column 3 is UPOS, 4 is XPOS.

  Multiword-token ranges (`1-2`) and empty nodes (`1.1`) carry no tag and are skipped; a
  sentence with any malformed or untagged word line is dropped whole, since its words
  could no longer be aligned with its tags.
  """
  problems = Problems()
  rows, words, tags, bad = [], [], [], False

  def flush(number):
    nonlocal words, tags, bad
    if words and not bad:
      rows.append({'words': words, 'tags': tags})
    elif bad:
      problems.add('dropped_sentence', f'{path}:{number}')
    words, tags, bad = [], [], False

  number = 0
  for number, line in read_lines(path, problems):
    if not line.strip():
      flush(number)
      continue
    if line.startswith('#') or bad:
      continue
    cols = line.split('\t')
    where = f'{path}:{number}'
    if len(cols) != 10:
      problems.add('malformed_line', f'{where}: {len(cols)} columns, expected 10')
      bad = True
      continue
    if '-' in cols[0] or '.' in cols[0]:
      continue
    if not cols[0].isdigit() or not cols[1].strip():
      problems.add('malformed_line', f'{where}: bad ID or empty FORM')
      bad = True
      continue
    tag = '' if cols[column] == '_' else cols[column]
    if not _check_label(tag, labels, where, problems):
      bad = True
      continue
    words.append(cols[1])
    tags.append(tag)
  flush(number)
  return require_rows(rows, path, problems), problems


def read_delimited(path: str, labels: Sequence[str] | None, *, delimiter: str, text_column: str,
                   label_column: str | None) -> tuple[list, Problems]:
  """TSV/CSV with a header row naming the columns; `label_column=None` reads texts only."""
  problems = Problems()
  lines = ((n, line) for n, line in read_lines(path, problems) if line.strip())
  header = next(lines, None)
  if header is None:
    raise DataError(f'{path}: empty file')
  quoting = csv.QUOTE_NONE if delimiter == '\t' else csv.QUOTE_MINIMAL
  try:
    names = next(csv.reader([header[1]], delimiter=delimiter, quoting=quoting))
  except csv.Error as e:
    raise DataError(f'{path}:{header[0]}: unreadable header ({e})') from e
  wanted = [text_column] + ([label_column] if label_column else [])
  if any(w not in names for w in wanted):
    raise DataError(f'{path}:{header[0]}: header {names} lacks column(s) {wanted}')
  rows = []
  for number, line in lines:
    where = f'{path}:{number}'
    try:
      cols = next(csv.reader([line], delimiter=delimiter, quoting=quoting))
    except csv.Error as e:
      problems.add('malformed_line', f'{where}: {e}')
      continue
    if len(cols) != len(names):
      problems.add('malformed_line', f'{where}: {len(cols)} columns, expected {len(names)}')
      continue
    row = dict(zip(names, cols, strict=True))
    text = row[text_column].strip()
    if not text:
      problems.add('empty_text', where)
      continue
    if label_column is None:
      rows.append({'text': text, 'label': ''})
    elif _check_label(row[label_column].strip(), labels, where, problems):
      rows.append({'text': text, 'label': row[label_column].strip()})
  return require_rows(rows, path, problems), problems


def read_label_first(path: str, labels: Sequence[str] | None,
                     label_sep: str = '') -> tuple[list, Problems]:
  """Lines `LABEL text` (TREC style); with `label_sep`, only the label's part before it counts."""
  problems = Problems()
  rows = []
  for number, line in read_lines(path, problems):
    if not line.strip():
      continue
    where = f'{path}:{number}'
    label, _, text = line.strip().partition(' ')
    if label_sep:
      label = label.split(label_sep)[0]
    if not text.strip():
      problems.add('empty_text', where)
    elif _check_label(label, labels, where, problems):
      rows.append({'text': text.strip(), 'label': label})
  return require_rows(rows, path, problems), problems


def _json_objects(path: str, problems: Problems) -> Iterator[tuple[str, dict]]:
  for number, line in read_lines(path, problems):
    if not line.strip():
      continue
    where = f'{path}:{number}'
    try:
      obj = json.loads(line)
    except ValueError as e:
      problems.add('malformed_line', f'{where}: {e}')
      continue
    if not isinstance(obj, dict):
      problems.add('malformed_line', f'{where}: not a JSON object')
      continue
    yield where, obj


def read_jsonl_classification(path: str, labels: Sequence[str] | None, *, text_field: str,
                              label_field: str) -> tuple[list, Problems]:
  problems = Problems()
  rows = []
  for where, obj in _json_objects(path, problems):
    text, label = obj.get(text_field), obj.get(label_field)
    if not isinstance(text, str) or not text.strip():
      problems.add('empty_text', where)
    elif _check_label('' if label is None else str(label), labels, where, problems):
      rows.append({'text': text, 'label': str(label)})
  return require_rows(rows, path, problems), problems


def read_jsonl_generation(path: str, *, source_field: str,
                          target_fields: Sequence[str]) -> tuple[list, Problems]:
  """Keeps every present target field as a reference; the first one must be there."""
  problems = Problems()
  rows = []
  for where, obj in _json_objects(path, problems):
    source = obj.get(source_field)
    targets = [obj[f] for f in target_fields if isinstance(obj.get(f), str) and obj[f].strip()]
    if not isinstance(source, str) or not source.strip():
      problems.add('empty_text', where)
    elif not isinstance(obj.get(target_fields[0]), str) or not obj[target_fields[0]].strip():
      problems.add('missing_label', f'{where}: no {target_fields[0]!r}')
    else:
      rows.append({'source': source, 'targets': targets})
  return require_rows(rows, path, problems), problems


def read_text(path: str) -> tuple[str, Problems]:
  problems = Problems()
  text = '\n'.join(line for _, line in read_lines(path, problems))
  if not text.strip():
    raise DataError(f'{path}: no text')
  return text, problems


def read_text_rows(path: str, labels: Sequence[str] | None = None) -> tuple[list, Problems]:
  """The whole file as one document (lm)."""
  del labels
  text, problems = read_text(path)
  return [{'text': text}], problems


def read_jsonl_references(path: str, labels: Sequence[str] | None = None,
                          **options) -> tuple[list, Problems]:
  """`read_jsonl_generation` called as the other readers are (generation has no labels)."""
  del labels
  return read_jsonl_generation(path, **options)


@dataclasses.dataclass(frozen=True)
class Reader:
  """One file format for one kind of example: the canonical fields its rows have, and the
  options (keyword arguments of `read`) it needs or takes."""

  read: Callable                 # (path, labels, **options) -> (rows, Problems)
  fields: frozenset
  required: tuple = ()
  optional: tuple = ()
  lists: tuple = ()              # options that hold a list of names (a single name is one)


_LABELLED = frozenset({'text', 'label'})

# Reader name -> its variants, told apart by the fields of the task type that reads them.
READERS: dict[str, tuple[Reader, ...]] = {
    'conllu': (Reader(read_conllu, frozenset({'words', 'tags'}), optional=('column',)),),
    'tsv': (Reader(functools.partial(read_delimited, delimiter='\t'), _LABELLED,
                   required=('text_column', 'label_column')),),
    'csv': (Reader(functools.partial(read_delimited, delimiter=','), _LABELLED,
                   required=('text_column', 'label_column')),),
    'label_first': (Reader(read_label_first, _LABELLED, optional=('label_sep',)),),
    'jsonl': (Reader(read_jsonl_classification, _LABELLED, required=('text_field', 'label_field')),
              Reader(read_jsonl_references, frozenset({'source', 'targets'}),
                     required=('source_field', 'target_fields'), lists=('target_fields',))),
    'text': (Reader(read_text_rows, frozenset({'text'})),),
}


def reader_for(name: str, fields) -> Reader | None:
  """The `name` reader whose rows have exactly `fields` (a task type's), or None."""
  return next((r for r in READERS.get(name, ()) if r.fields == frozenset(fields)), None)


def read(name: str, fields, path: str, labels: Sequence[str] | None,
         options: dict) -> tuple[list, Problems]:
  """Rows of one file in the `name` format, as a task type with `fields` has them."""
  reader = reader_for(name, fields)
  if reader is None:
    raise ValueError(f'no {name!r} reader gives rows with fields {sorted(fields)}')
  options = {k: (v,) if k in reader.lists and isinstance(v, str) else v
             for k, v in options.items()}
  return reader.read(path, labels, **options)
