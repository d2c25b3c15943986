"""Examples of variable length -> fixed-shape rows, several examples to a row.

An encoded split is an `Examples`: its per-token fields concatenated over examples, the
length of each example, and per-example values (counts that a row sums). `pack` lays
examples into rows of `row_length` tokens and numbers them in `segment_ids` (1, 2, ...
in each row; 0 is padding). The model keeps every segment to itself (attention,
positions: see `model.Bloom.hidden_states`), so packing changes which examples share a
row, not what the model computes for any of them.

Rows are filled best-fit decreasing: examples longest first, each into the open row it
leaves least room in. That reaches nearly full rows for any length distribution, and it
is a pure function of the lengths: the same examples make the same rows in every process
and run. Training packs groups of examples as it streams them (`bloom_jax.data.stream`).
"""

import dataclasses

import numpy as np


@dataclasses.dataclass
class Examples:
  """One split of one task, encoded: `tokens[field]` holds every example's tokens back to
  back, `lengths[i]` is example i's length, `scalars[field][i]` a per-example count."""

  tokens: dict[str, np.ndarray]
  lengths: np.ndarray
  scalars: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return len(self.lengths)

  @property
  def starts(self) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)

  def example(self, i: int) -> dict[str, np.ndarray]:
    start = int(self.starts[i])
    return {k: v[start:start + int(self.lengths[i])] for k, v in self.tokens.items()}


def ragged(sequences: list[list[int]], dtype=np.int32) -> tuple[np.ndarray, np.ndarray]:
  """Lists of values -> (all values back to back, lengths)."""
  lengths = np.array([len(s) for s in sequences], np.int32)
  flat = np.fromiter((x for s in sequences for x in s), dtype, count=int(lengths.sum()))
  return flat, lengths


def assign(lengths: np.ndarray, row_length: int, costs: np.ndarray | None = None,
           budget: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
  """Best-fit decreasing: (row of each example, its offset in the row, number of rows).

  With `costs` and `budget`, a row's examples also keep the sum of their costs within the
  budget (generation: the target positions a row projects onto the vocabulary).
  """
  if len(lengths) and int(np.max(lengths)) > row_length:
    raise ValueError(f'an example of {int(np.max(lengths))} tokens does not fit a row of '
                     f'{row_length}')
  order = np.argsort(-np.asarray(lengths), kind='stable')
  row_of = np.empty(len(lengths), np.int64)
  offset_of = np.empty(len(lengths), np.int64)
  room: list[list[int]] = [[] for _ in range(row_length + 1)]  # free tokens -> open rows
  used, spent = [], []
  for i in order:
    size, cost = int(lengths[i]), 0 if costs is None else int(costs[i])
    row = None
    for free in range(size, row_length + 1):
      # Within one bucket only the newest few rows are tried against the budget: the
      # search stays linear, and a row that fails it is nearly full anyway.
      for slot in range(len(room[free]) - 1, max(len(room[free]) - 8, 0) - 1, -1):
        candidate = room[free][slot]
        if costs is None or spent[candidate] + cost <= budget:
          row = room[free].pop(slot)
          break
      if row is not None:
        break
    if row is None:
      row = len(used)
      used.append(0)
      spent.append(0)
    row_of[i], offset_of[i] = row, used[row]
    used[row] += size
    spent[row] += cost
    room[row_length - used[row]].append(row)
  return row_of, offset_of, len(used)


def pack(examples: Examples, row_length: int, pad_id: int, packed: bool = True,
         costs: np.ndarray | None = None, budget: int = 0) -> dict[str, np.ndarray]:
  """Rows [R, row_length] of every token field plus `segment_ids`, and [R] sums of every
  per-example field. `packed=False` puts each example in a row of its own, in order."""
  n = len(examples)
  if packed:
    row_of, offset_of, num_rows = assign(examples.lengths, row_length, costs, budget)
  else:
    row_of, offset_of, num_rows = np.arange(n), np.zeros(n, np.int64), n
  segment = np.zeros(n, np.int32)  # each example's number in its row: order of offsets
  order = np.lexsort((offset_of, row_of))
  first = np.searchsorted(row_of[order], row_of[order], side='left')
  segment[order] = np.arange(n) - first + 1
  lengths = examples.lengths.astype(np.int64)
  token_example = np.repeat(np.arange(n), lengths)
  within = np.arange(int(lengths.sum())) - np.repeat(examples.starts, lengths)
  rows, cols = row_of[token_example], offset_of[token_example] + within
  out = {}
  for field, values in examples.tokens.items():
    fill = pad_id if field == 'input_ids' else 0
    out[field] = np.full((num_rows, row_length), fill, values.dtype)
    out[field][rows, cols] = values
  out['segment_ids'] = np.zeros((num_rows, row_length), np.int32)
  out['segment_ids'][rows, cols] = segment[token_example]
  for field, values in examples.scalars.items():
    out[field] = np.zeros(num_rows, values.dtype)
    np.add.at(out[field], row_of, values)
  return out


def row_statistics(rows: dict[str, np.ndarray]) -> dict[str, float]:
  """Examples per row and the fraction of positions that hold a token."""
  segments = rows['segment_ids']
  count = segments.max(axis=1) if segments.size else np.zeros(0)
  return {'rows': int(len(segments)),
          'examples_per_row': float(np.mean(count)) if len(count) else 0.0,
          'nonpad_fraction': float(np.mean(segments > 0)) if segments.size else 0.0}
