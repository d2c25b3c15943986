r"""Applies one head of a trained run to new text.

  python -m bloom_jax.predict --workdir DIR --task sentiment --text "a wonderful film"
  python -m bloom_jax.predict --workdir DIR --task pos --input sentences.txt --output tags.jsonl
  # -> DIR/tags.jsonl

  python -m bloom_jax.predict --workdir DIR --task lm --text "Once upon" --max_new_tokens 40 \
      --method sample --temperature 0.8 --top_p 0.9 --seed 1

classification prints the label and class probabilities; tagging prints word/TAG pairs;
regression prints the score; generation and lm print the generated text.
--input reads TXT (one text per line) or JSONL (field --field, default "text") and writes
one JSON object per input line to --output, a path inside the workdir (default: stdout).

Decoding (generating task types only: generation, lm):
  --max_new_tokens N   tokens generated at most (default: the task's target length,
                       `max_target_length`, or a quarter of `max_length`)
  --method greedy      the likeliest token each step (the default; deterministic)
  --method beam        --num_beams K hypotheses (default 4); one beam is greedy search;
                       --length_penalty A (default 1.0) scores a hypothesis
                       log p / ((5 + length) / 6)^A, as `evaluate --decoding` does
  --method sample      from softmax(logits / --temperature), restricted to the --top_k
                       likeliest tokens (0: all), then to the smallest set holding --top_p
                       of the probability (1: all); --seed fixes the draw. --top_k 1 is greedy.
A decoding flag given for a task that does not generate, or for another method than its
own (--num_beams without --method beam, --top_k without --method sample, ...), is an
error in one line, never silently ignored.
"""

import functools
import json
import sys

import jax
import numpy as np
from absl import flags
from flax import nnx

from bloom_jax import cli, compat, multitask_model, runs, sharding, task_types
from bloom_jax.errors import ConfigError, DataError
from bloom_jax.evaluation import left_padded

FLAGS = flags.FLAGS


def read_texts(path: str, field: str) -> list[str]:
  """Texts of a TXT (one per non-empty line) or JSONL file (`field` of each object)."""
  try:
    with open(path, encoding='utf-8') as f:
      lines = [line.rstrip('\n') for line in f]
  except UnicodeDecodeError as e:
    raise DataError(f'{path}: not UTF-8 text ({e.reason} at byte {e.start})') from None
  if path.endswith('.jsonl'):
    texts = []
    for number, line in enumerate(lines, 1):
      if not line.strip():
        continue
      try:
        texts.append(str(json.loads(line)[field]))
      except (json.JSONDecodeError, KeyError, TypeError):
        raise DataError(f'{path}:{number}: not a JSON object with a {field!r} field') from None
  else:
    texts = [line for line in lines if line.strip()]
  if not texts:
    raise DataError(f'{path}: no input texts')
  return texts


class Predictor:
  """The jitted pieces a task type's `predict` uses, for one restored run."""

  def __init__(self, run: runs.Run):
    self.run, self.tokenizer = run, run.pipe.tokenizer
    self.multiple = sharding.data_parallel_size(run.mesh)
    self._logits = {}

  @functools.cached_property
  def _decoder(self) -> tuple[nnx.GraphDef, nnx.State]:
    """The model with its trunk's layers unstacked once: the weights are the same for
    every batch."""
    return multitask_model.unstacked_trunk(
        self.run.setup.graphdef,
        compat.from_pure_dict(self.run.setup.abstract_state, self.run.params))

  def rows(self, task, rows: list[dict]) -> dict:
    """Canonical rows without targets -> model rows, one example each, in order."""
    examples, _ = task.type.encode(task, self.tokenizer, rows, False, None)
    return _pad_rows(task.type.rows(task, examples, self.tokenizer.pad_id, False), self.multiple)

  def outputs(self, task, batch: dict) -> np.ndarray:
    """The task's logits (or scores) at every position of every row of `batch`."""
    if task.name not in self._logits:
      self._logits[task.name] = jax.jit(functools.partial(
          _task_logits, graphdef=self.run.setup.graphdef,
          abstract_state=self.run.setup.abstract_state, task=task))
    inputs = {k: v for k, v in batch.items() if k not in ('num_words', 'target_bytes')}
    logits = self._logits[task.name](self.run.params, sharding.global_batch(inputs, self.run.mesh))
    return np.asarray(jax.device_get(logits))

  def probabilities(self, task, batch: dict) -> np.ndarray:
    """Softmax of the task's logits."""
    return np.asarray(jax.nn.softmax(self.outputs(task, batch), axis=-1))

  def generate(self, task, prompts: list[list[int]], width: int,
               max_new_tokens: int | None = None, **options) -> list[str]:
    """Continuations of token prompts (left-padded to `width`), decoded to text: at most
    `max_new_tokens` tokens each (default: the task's target length), by the task's type
    (`TaskType.generate`). `options` are `decoding.generate`'s (method, num_beams,
    length_penalty, temperature, top_k, top_p, seed)."""
    tok, n = self.tokenizer, len(prompts)
    ids, mask = left_padded(prompts + [prompts[-1]] * (-n % self.multiple), width, tok.pad_id)
    result = task.type.generate(
        task, *self._decoder, sharding.global_batch(ids, self.run.mesh),
        sharding.global_batch(mask, self.run.mesh),
        max_new_tokens=max_new_tokens or task.target_length, eos_id=tok.eos_id,
        pad_id=tok.pad_id, prompt_mode=task.attention, **options)
    tokens, lengths = jax.device_get((result['tokens'], result['lengths']))
    return [tok.decode([int(x) for x in row[:length] if x != tok.eos_id])
            for row, length in zip(tokens[:n], lengths[:n], strict=True)]


def _task_logits(params, batch, *, graphdef, abstract_state, task):
  model = nnx.merge(graphdef, compat.from_pure_dict(abstract_state, params))
  return model(task, batch)


def _pad_rows(batch: dict, multiple: int) -> dict:
  """Repeats the last row so the batch splits evenly over the data-parallel devices."""
  def pad(x):
    extra = -len(x) % multiple
    return np.concatenate([x, np.repeat(x[-1:], extra, axis=0)]) if extra else x

  return {k: pad(v) for k, v in batch.items()}


# The decoding flags, and the --method each belongs to (None: every method).
DECODING_FLAGS = {'max_new_tokens': None, 'method': None, 'num_beams': 'beam',
                  'length_penalty': 'beam', 'temperature': 'sample', 'top_k': 'sample',
                  'top_p': 'sample', 'seed': 'sample'}


def decoding_options() -> dict:
  """`Predictor.generate`'s options from the flags: only those of --method, checked."""
  method = FLAGS.method
  for name, own in DECODING_FLAGS.items():
    if own and own != method and FLAGS[name].present:
      raise ConfigError(f'--{name}: applies to --method={own} only (this is --method={method})')
  if not FLAGS.temperature > 0:
    raise ConfigError(f'--temperature: must be positive, got {FLAGS.temperature}')
  if not 0 < FLAGS.top_p <= 1:
    raise ConfigError(f'--top_p: must be in (0, 1], got {FLAGS.top_p}')
  options = {'method': method, 'max_new_tokens': FLAGS.max_new_tokens}
  if method == 'beam':
    options.update(num_beams=FLAGS.num_beams, length_penalty=FLAGS.length_penalty)
  if method == 'sample':
    options.update(temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p,
                   seed=FLAGS.seed)
  return options


def main(argv):
  del argv
  if bool(FLAGS.text) == bool(FLAGS.input):
    raise ConfigError('give exactly one of --text or --input')
  options = decoding_options()
  output = FLAGS.output and cli.inside_workdir(FLAGS.workdir, FLAGS.output, '--output')
  texts = [FLAGS.text] if FLAGS.text else read_texts(FLAGS.input, FLAGS.field)
  run = runs.load_run(FLAGS.workdir)
  if FLAGS.task not in run.pipe.tasks:
    raise ConfigError(f'--task: the run in {FLAGS.workdir} has no head for {FLAGS.task!r} '
                      f'(it has {", ".join(run.pipe.tasks)})')
  task = run.pipe.tasks[FLAGS.task]
  if not task.type.generates:
    given = [f'--{name}' for name in DECODING_FLAGS if FLAGS[name].present]
    if given:
      generating = ', '.join(t.name for t in task_types.TYPES.values() if t.generates)
      raise ConfigError(f'{", ".join(given)}: {FLAGS.task!r} is a {task.type.name} task, which '
                        f'generates no text (decoding options apply to {generating} tasks)')
    options = {}
  predictor = Predictor(run)
  out = open(output, 'w', encoding='utf-8') if output else None
  chunk = 64
  for start in range(0, len(texts), chunk):
    for p in task.type.predict(predictor, task, texts[start:start + chunk], **options):
      if FLAGS.input:
        print(json.dumps(p, ensure_ascii=False), file=out or sys.stdout)
      else:
        print(task.type.format_prediction(task, p))
    if FLAGS.input:
      done = min(start + chunk, len(texts))
      print(f'\rpredict: {done}/{len(texts)} texts', end='\n' if done == len(texts) else '',
            file=sys.stderr, flush=True)
  if out:
    out.close()


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'A bloom_jax.train workdir.', required=True)
  flags.DEFINE_string('task', None, 'Task (head) to apply.', required=True)
  flags.DEFINE_string('text', None, 'One text.')
  flags.DEFINE_string('input', None, 'A .txt (one text per line) or .jsonl file.')
  flags.DEFINE_string('field', 'text', 'JSONL field holding the text.')
  flags.DEFINE_string('output', None,
                      'JSONL output for --input, relative to --workdir (default: stdout).')
  flags.DEFINE_integer('max_new_tokens', None, 'Generating tasks: tokens generated at most '
                       "(default: the task's target length).", lower_bound=1)
  flags.DEFINE_enum('method', 'greedy', ['greedy', 'sample', 'beam'], 'Decoding method.')
  flags.DEFINE_float('temperature', 1.0, '--method=sample: logits are divided by it.')
  flags.DEFINE_integer('top_k', 0, '--method=sample: among the k likeliest tokens (0: all).',
                       lower_bound=0)
  flags.DEFINE_float('top_p', 1.0, '--method=sample: nucleus probability mass (1: all).')
  flags.DEFINE_integer('num_beams', 4, '--method=beam: beams kept.', lower_bound=1)
  flags.DEFINE_float('length_penalty', 1.0, '--method=beam: GNMT alpha; a hypothesis scores '
                     'log p / ((5 + length) / 6)^alpha.')
  flags.DEFINE_integer('seed', 0, '--method=sample: the draw\'s seed.')
  cli.run(main)
