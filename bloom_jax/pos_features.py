"""Part-of-speech tags as an input feature: a finished tagging run tags a task's words.

    tasks.<name>.pos_tagger = DIR     # a finished bloom_jax run with one tagging task

A preprocessing step beside tokenisation and stop-word removal. The task's cleaned input
text is split into its whitespace words; the tagger run tags them with its own tokenizer,
rows and head (those of its tagging type), and each of the task's tokens gets the tag of
the word it belongs to: tag index + 1, 0 for special tokens and for words the tagger's
rows cut off. The task type's `encode` does this (so preparation, evaluation and
prediction see the same tags) and the model adds a learned embedding of the tags to the
word embeddings (`multitask_model.MultiTaskModel`).

A tagger is its run's latest checkpoint; `Tagger.fingerprint` (the path and that step)
is part of the prepared-data cache key, so a tagger trained further tags the data again.
Its model is read once per process, and only what tagging needs of it: the saved config,
the tokenizer copy in DIR and the trunk and tagging head of the checkpoint (not the
optimizer state, not the run's data).
"""

import dataclasses
import fcntl
import functools
import glob
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from bloom_jax import compat, config_lib, tokenizer
from bloom_jax.errors import ConfigError
from bloom_jax.multitask_model import MultiTaskModel

ROWS_PER_CALL = 64  # tagger rows per jitted call: one compiled shape for any number of texts


@dataclasses.dataclass(frozen=True)
class Tagger:
  """The tagging task of a finished run, as a preprocessing step; equal by (path, step)."""

  path: str                                              # the run's workdir, absolute
  step: int                                              # its checkpoint that tags
  task: object = dataclasses.field(compare=False, repr=False)    # its tagging TaskSpec
  config: dict = dataclasses.field(compare=False, repr=False)    # its saved config

  @property
  def num_tags(self) -> int:
    return len(self.task.labels)

  def fingerprint(self) -> dict:
    return {'path': self.path, 'step': self.step}

  def tag(self, sentences: list[list[str]]) -> list[list[int]]:
    """Each sentence's (list of words') tag ids: tag index + 1, 0 for a word cut off."""
    return _model(self).tag(sentences)


def finished_run(path: str, key: str) -> tuple[str, int, dict]:
  """(absolute path, latest checkpoint step, saved config) of the finished run in `path`;
  a ConfigError naming `key` otherwise. The config is DIR/config.json, or the one saved
  with the latest checkpoint."""
  where = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(where):
    raise ConfigError(f'{key}: {path} is not a directory (a finished bloom_jax run with a '
                      'tagging task)')
  steps = _checkpoint_steps(os.path.join(where, 'checkpoints'))
  if not steps:
    raise ConfigError(f'{key}: {path} has no checkpoint: not a finished bloom_jax run')
  if _in_training(where):
    raise ConfigError(f'{key}: {path} is still training (a trainer holds it); wait for it')
  step = max(steps)
  try:
    with open(os.path.join(where, 'config.json'), encoding='utf-8') as f:
      config = json.load(f)
  except FileNotFoundError:
    from bloom_jax import checkpointing  # noqa: PLC0415 - Orbax loads only without config.json
    ckpt = checkpointing.Checkpointer(where, keep=1_000_000, create=False)
    config = ckpt.restore_config(step)
    ckpt.close()
  except (OSError, ValueError) as e:
    raise ConfigError(f'{key}: {path}/config.json is unreadable ({e})') from None
  total, patience = config.get('total_steps', 0), config.get('early_stop_patience', 0)
  if step < total and not patience:
    raise ConfigError(f'{key}: {path} stopped at step {step} of {total}: not a finished run '
                      '(train it to the end first)')
  return where, step, config


def _checkpoint_steps(directory: str) -> list[int]:
  """Steps whose checkpoint was written whole (Orbax renames a step into place at the end)."""
  try:
    names = os.listdir(directory)
  except OSError:
    return []
  return [int(n) for n in names
          if n.isdigit() and os.path.exists(os.path.join(directory, n, '_CHECKPOINT_METADATA'))]


def _in_training(workdir: str) -> bool:
  """Whether a trainer holds the workdir's lock (`bloom_jax.workdir_lock`)."""
  try:
    handle = open(os.path.join(workdir, '.lock'))
  except OSError:
    return False
  with handle:
    try:
      fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      return True
    fcntl.flock(handle, fcntl.LOCK_UN)
  return False


class _TaggerModel:
  """A tagger's tokenizer, trunk and tagging head, and a jitted tag prediction."""

  def __init__(self, tagger: Tagger):
    self.task = task = tagger.task
    self.tokenizer = _tokenizer(tagger)
    config = ml_collections.ConfigDict(tagger.config)
    model_cfg = config_lib.model_config(config, vocab_size=self.tokenizer.vocab_size)
    make_model = lambda: MultiTaskModel(model_cfg, {task.name: task}, rngs=nnx.Rngs(0))
    graphdef, abstract_state = nnx.split(nnx.eval_shape(make_model))
    params = jax.device_put(_restore_params(tagger, compat.to_pure_dict(abstract_state)))

    def predict(params, batch):
      model = nnx.merge(graphdef, compat.from_pure_dict(abstract_state, params))
      return jnp.argmax(model(task, batch), axis=-1)

    self._predict = functools.partial(jax.jit(predict), params)

  def tag(self, sentences: list[list[str]]) -> list[list[int]]:
    task, tok, n = self.task, self.tokenizer, len(sentences)
    examples, _ = task.type.encode(task, tok, [{'words': w} for w in sentences], False, None)
    # Which example each token is of: packed rows hold several.
    examples.tokens['example'] = np.repeat(np.arange(n, dtype=np.int32), examples.lengths)
    rows = task.type.rows(task, examples, tok.pad_id, True)
    inputs = {k: rows[k] for k in ('input_ids', 'segment_ids')}
    total = len(inputs['input_ids'])
    padded = {k: np.concatenate([v, np.zeros((-total % ROWS_PER_CALL, v.shape[1]), v.dtype)])
              for k, v in inputs.items()}
    tags = np.concatenate([
        np.asarray(self._predict({k: v[s:s + ROWS_PER_CALL] for k, v in padded.items()}))
        for s in range(0, total, ROWS_PER_CALL)])[:total] if total else np.zeros((0, 0), np.int32)
    # The tagging type marks the subword each word is read at, in word order within an example.
    read = rows['weights'] > 0
    example, word_tags = rows['example'][read], tags[read] + 1
    order = np.argsort(example, kind='stable')
    per_example = np.split(word_tags[order], np.cumsum(np.bincount(example, minlength=n))[:-1])
    return [t.tolist() + [0] * (len(words) - len(t))
            for t, words in zip(per_example, sentences, strict=True)]


@functools.cache
def _model(tagger: Tagger) -> _TaggerModel:
  """Each tagger's model, read once per process."""
  return _TaggerModel(tagger)


def _tokenizer(tagger: Tagger) -> tokenizer.Tokenizer:
  path = tagger.config.get('tokenizer', {}).get('path', '')
  if not path:  # the copy a run keeps beside its checkpoints (`pipeline.Pipeline`)
    found = sorted(glob.glob(os.path.join(tagger.path, 'tokenizer-*.json')))
    if len(found) != 1:
      raise ConfigError(f'pos_tagger: {tagger.path} holds {len(found)} tokenizer-*.json files; '
                        'the tagger needs its one tokenizer')
    path = found[0]
  return tokenizer.Tokenizer.load(path)


def _restore_params(tagger: Tagger, target: dict) -> dict:
  """The tagger's trunk and tagging head from its checkpoint, as numpy arrays.

  A partial restore of the parameters the run is evaluated with (`steps.inference_params`:
  their moving average if it kept one): the run's other heads and the optimizer state
  stay on disk.
  """
  import orbax.checkpoint as ocp  # noqa: PLC0415 - Orbax loads only where a tagger is used

  path = os.path.join(tagger.path, 'checkpoints', str(tagger.step), 'state')
  restore_args = jax.tree.map(lambda x: ocp.RestoreArgs(restore_type=np.ndarray, dtype=x.dtype),
                              target)
  with ocp.PyTreeCheckpointer() as checkpointer:
    key = 'ema_params' if config_lib.keeps_average(tagger.config) else 'params'
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        item={key: target}, restore_args={key: restore_args}, partial_restore=True))
  return restored[key]

