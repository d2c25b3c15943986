"""Encoded examples on disk: one ArrayRecord file per split, one record per example.

ArrayRecord (the format TFDS and grain read) gives random access by index without loading
a file, so a training set larger than host memory is read a record at a time. A record is
the example's length (int32) followed by the raw bytes of each token field (that many
values) and then of each per-example field (one value), in the order of the split's
`schema`, which lives in the prepared data's JSON beside the files.
"""

import os

import numpy as np
from array_record.python import array_record_module
from grain import sources

from bloom_jax.data import packing


def schema_of(examples: packing.Examples) -> dict:
  return {'tokens': [[k, v.dtype.str] for k, v in examples.tokens.items()],
          'scalars': [[k, v.dtype.str] for k, v in examples.scalars.items()]}


class Writer:
  """Appends examples to `path`; the file appears under its name only when closed."""

  def __init__(self, path: str):
    self.path, self._tmp = path, f'{path}.tmp{os.getpid()}'
    self._writer = array_record_module.ArrayRecordWriter(self._tmp, 'group_size:1')
    self.schema, self.count = None, 0

  def write(self, examples: packing.Examples) -> None:
    schema = schema_of(examples)
    if self.schema is None:
      self.schema = schema
    elif schema != self.schema:
      raise ValueError(f'{self.path}: examples with fields {schema}, expected {self.schema}')
    starts, lengths = examples.starts, examples.lengths
    for i in range(len(examples)):
      lo, hi = int(starts[i]), int(starts[i] + lengths[i])
      parts = [np.int32(lengths[i]).tobytes()]
      parts += [examples.tokens[k][lo:hi].tobytes() for k, _ in schema['tokens']]
      parts += [examples.scalars[k][i:i + 1].tobytes() for k, _ in schema['scalars']]
      self._writer.write(b''.join(parts))
    self.count += len(examples)

  def close(self) -> None:
    self._writer.close()
    os.replace(self._tmp, self.path)


def decode(records: list[bytes], schema: dict) -> packing.Examples:
  """Records -> one `Examples` holding them in order."""
  tokens = {k: [] for k, _ in schema['tokens']}
  scalars = {k: [] for k, _ in schema['scalars']}
  lengths = np.empty(len(records), np.int32)
  for i, record in enumerate(records):
    n = int(np.frombuffer(record, np.int32, 1)[0])
    lengths[i], at = n, 4
    for k, dtype in schema['tokens']:
      dtype = np.dtype(dtype)
      tokens[k].append(np.frombuffer(record, dtype, n, at))
      at += n * dtype.itemsize
    for k, dtype in schema['scalars']:
      dtype = np.dtype(dtype)
      scalars[k].append(np.frombuffer(record, dtype, 1, at))
      at += dtype.itemsize
  def join(parts, dtype):
    return np.concatenate(parts) if parts else np.zeros(0, np.dtype(dtype))
  return packing.Examples({k: join(tokens[k], d) for k, d in schema['tokens']}, lengths,
                          {k: join(scalars[k], d) for k, d in schema['scalars']})


def source(path: str) -> sources.ArrayRecordDataSource:
  """Random access to a split's records (grain's data source: `len`, `[i]`)."""
  return sources.ArrayRecordDataSource(path)


def read(path: str, schema: dict, count: int, n: int = 0) -> packing.Examples:
  """The first n examples (all when n is 0) of a split, in file order."""
  n = count if not n else min(n, count)
  if not n:
    return decode([], schema)
  reader = array_record_module.ArrayRecordReader(path)
  try:
    return decode(reader.read(0, n), schema)
  finally:
    reader.close()
