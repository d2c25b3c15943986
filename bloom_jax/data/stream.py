"""Training batches streamed from disk by grain: shuffled, sharded, packed, prefetched.

For each task, on process p of P:

    records on disk (`records`: one ArrayRecord per split)
    -> global shuffle: a new permutation every epoch, computed per index (no index table)
    -> this process's share: examples p, p + P, p + 2P, ... of the shuffled stream
    -> groups of `group_size` consecutive examples, packed into rows by the task's type
    -> batches of b_t / P rows, taken from the groups in order.

Everything up to the packed groups is a random-access `grain.MapDataset`; grain's threads
read and pack the next groups while the step runs. A position in the stream is therefore
two numbers, the group and the rows already taken from it: that is the iterator's state,
which every checkpoint stores, so a resumed run reads exactly the batches it would have.
Batches are a pure function of (seed, step) for a given number of processes; the P
processes of one step see disjoint examples, and over an epoch their union is the epoch.

A group packs best-fit decreasing (`packing.assign`) like the whole split would: a few
hundred examples are enough for nearly full rows, and only the group's last row is short.
"""

import functools

import grain
import numpy as np

from bloom_jax.data import records
from bloom_jax.errors import CheckpointError

EVAL_ONLY = ('num_words', 'target_bytes')  # row fields only evaluation reads


def shuffle_seed(seed: int, task_index: int) -> int:
  """A 32-bit seed per (run seed, task): grain folds the epoch into it."""
  return int(np.random.SeedSequence([seed, task_index]).generate_state(1)[0])


def _pack(spec, pad_id: int, packed: bool, seed: int, index: int, examples) -> dict:
  """A group's rows, in a seeded random order: best-fit decreasing fills them longest
  examples first, and consecutive batches should not share a length."""
  rows = spec.type.rows(spec, examples, pad_id, packed)
  order = np.random.default_rng([seed, index]).permutation(len(rows['input_ids']))
  return {k: v[order] for k, v in rows.items() if k not in EVAL_ONLY}


def packed_groups(path: str, schema: dict, spec, pad_id: int, packed: bool, seed: int,
                  process_index: int, process_count: int, group_size: int) -> grain.MapDataset:
  """The endless sequence of this process's packed groups of one task's examples."""
  examples = grain.MapDataset.source(records.source(path)).shuffle(seed=seed).repeat()
  share = examples[process_index::process_count]
  groups = share.batch(group_size, batch_fn=functools.partial(records.decode, schema=schema))
  return groups.map_with_index(functools.partial(_pack, spec, pad_id, packed, seed))


class TaskStream:
  """`batch_size` rows at a time from a sequence of packed groups."""

  def __init__(self, groups: grain.MapDataset, batch_size: int,
               read_options: grain.ReadOptions):
    self.groups, self.batch_size, self.read_options = groups, batch_size, read_options
    self.group, self.row = 0, 0   # the group being read, and rows already taken from it
    self._iterator = self._rows = None

  def get_state(self) -> dict:
    return {'group': self.group, 'row': self.row}

  def set_state(self, state: dict) -> None:
    self.group, self.row = int(state['group']), int(state['row'])
    self._iterator = self._rows = None

  def __next__(self) -> dict:
    if self._iterator is None:  # (re)start grain's prefetching at the current group
      self._iterator = iter(self.groups[self.group:].to_iter_dataset(self.read_options))
      self._rows = next(self._iterator)
    pieces, need = [], self.batch_size
    while need:
      available = len(self._rows['input_ids']) - self.row
      if not available:
        self._rows, self.group, self.row = next(self._iterator), self.group + 1, 0
        continue
      take = min(need, available)
      pieces.append({k: v[self.row:self.row + take] for k, v in self._rows.items()})
      self.row, need = self.row + take, need - take
    if len(pieces) == 1:
      return pieces[0]
    return {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}


class TrainIterator:
  """One batch per step: every task's rows from this process's input shards, concatenated
  in shard order. State: every shard's position in every task's stream."""

  def __init__(self, shards: dict[int, dict[str, TaskStream]]):
    self.shards = shards  # this process's shard indices, in order -> task -> stream

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    parts = [{task: next(s) for task, s in streams.items()} for streams in self.shards.values()]
    if len(parts) == 1:
      return parts[0]
    return {task: {k: np.concatenate([p[task][k] for p in parts]) for k in parts[0][task]}
            for task in parts[0]}

  def get_state(self) -> dict:
    return {'shards': {str(i): {task: s.get_state() for task, s in streams.items()}
                       for i, streams in self.shards.items()}}

  def positions(self) -> np.ndarray:
    """[this process's shards, tasks, 2]: (group, row) of each stream, for the processes
    to gather (`state_of`)."""
    return np.array([[[s.group, s.row] for s in streams.values()]
                     for streams in self.shards.values()], np.int64)

  def state_of(self, positions: np.ndarray) -> dict:
    """The state of every shard from the gathered positions [all shards, tasks, 2]."""
    tasks = list(next(iter(self.shards.values())))
    return {'shards': {str(i): {t: {'group': int(g), 'row': int(r)}
                                for t, (g, r) in zip(tasks, shard, strict=True)}
                       for i, shard in enumerate(positions)}}

  def set_state(self, state: dict) -> None:
    if 'shards' not in state:
      raise CheckpointError('the saved input state is from the input pipeline before '
                            f'streaming ({sorted(state)}); it cannot be resumed by this one')
    saved = state['shards']
    for i, streams in self.shards.items():
      if str(i) not in saved:
        raise CheckpointError(f'the saved input state has no position for input shard {i} '
                              f'(it has shards {sorted(saved, key=int)}): resume with the '
                              'data.input_shards the run was started with')
      missing = sorted(set(streams) - set(saved[str(i)]))
      if missing:
        raise CheckpointError(f'the saved input state has no position for task(s) {missing} '
                              f'(it has {sorted(saved[str(i)])}): the checkpoint was written '
                              'by a run with other tasks')
      for task, stream in streams.items():
        stream.set_state(saved[str(i)][task])
