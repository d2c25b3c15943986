r"""Applies one head of a trained run to new text.

  python -m bloom_jax.predict --workdir DIR --task sentiment --text "a wonderful film"
  python -m bloom_jax.predict --workdir DIR --task pos --input sentences.txt --output tags.jsonl
  # -> DIR/tags.jsonl

classification prints the label and class probabilities; tagging prints word/TAG pairs;
generation and lm print generated text (greedy by default; --method sample|beam).
--input reads TXT (one text per line) or JSONL (field --field, default "text") and writes
one JSON object per input line to --output, a path inside the workdir (default: stdout).
"""

import functools
import json
import sys

import jax
import numpy as np
from absl import flags
from flax import nnx

from bloom_jax import cli, compat, config_lib, decoding, evaluate, sharding
from bloom_jax import tasks as tasks_lib
from bloom_jax.data import DataError

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
  """Jitted heads of one restored run."""

  def __init__(self, pipe, setup, mesh, params):
    self.pipe, self.setup, self.mesh, self.params = pipe, setup, mesh, params
    model = nnx.merge(setup.graphdef, setup.abstract_state)
    self.lm_graphdef, self.lm_abstract = nnx.split(model.bloom)
    self._logits = {}

  @functools.cached_property
  def _decoder(self) -> tuple[nnx.GraphDef, nnx.State]:
    """The trunk with its layers unstacked once: the weights are the same for every batch."""
    return decoding.unstacked(self.lm_graphdef,
                              compat.from_pure_dict(self.lm_abstract, self.params['bloom']))

  def logits(self, task: str, batch: dict) -> np.ndarray:
    if task not in self._logits:
      self._logits[task] = jax.jit(functools.partial(
          _task_logits, graphdef=self.setup.graphdef, abstract_state=self.setup.abstract_state,
          task=task, head=self.pipe.tasks[task].head))
    fn = self._logits[task]
    return np.asarray(jax.device_get(fn(self.params, sharding.global_batch(batch, self.mesh))))

  def predict(self, task: str, texts: list[str], **decode_options) -> list[dict]:
    spec, tok = self.pipe.tasks[task], self.pipe.tokenizer
    batch = _pad_rows(self.pipe.encode_for_inference(task, texts),
                      sharding.data_parallel_size(self.mesh))
    n = len(texts)
    if spec.head == 'classification':
      probs = jax.nn.softmax(self.logits(task, _model_inputs(batch)), axis=-1)[:n]
      return [{'text': t, 'label': spec.labels[int(np.argmax(p))],
               'probabilities': dict(zip(spec.labels, np.round(p, 6).tolist(), strict=True))}
              for t, p in zip(texts, np.asarray(probs), strict=True)]
    if spec.head == 'tagging':
      tags = np.argmax(self.logits(task, _model_inputs(batch)), axis=-1)[:n]
      out = []
      for i, words in enumerate(batch['words'][:n]):
        starts = np.flatnonzero(batch['weights'][i])
        labels = [spec.labels[int(tags[i, s])] for s in starts]
        labels += [None] * (len(words) - len(labels))  # words cut by max_length
        out.append({'text': texts[i], 'tags': list(zip(words, labels, strict=True))})
      return out
    mode = 'prefix' if spec.head == 'generation' else 'causal'
    result = decoding.generate(
        *self._decoder, sharding.global_batch(batch['prompt_ids'], self.mesh),
        sharding.global_batch(batch['prompt_mask'], self.mesh),
        max_new_tokens=spec.target_length, eos_id=tok.eos_id, pad_id=tok.pad_id,
        prompt_mode=mode, **decode_options)
    tokens, lengths = jax.device_get((result['tokens'], result['lengths']))
    return [{'text': t, 'generated': tok.decode([int(x) for x in row[:length] if x != tok.eos_id])}
            for t, row, length in zip(texts, tokens[:n], lengths[:n], strict=True)]


def _task_logits(params, batch, *, graphdef, abstract_state, task, head):
  model = nnx.merge(graphdef, compat.from_pure_dict(abstract_state, params))
  return model(task, head, batch)


def _model_inputs(batch):
  keys = ('input_ids', 'attention_mask', 'prefix_mask')
  return {k: v for k, v in batch.items() if k in keys}


def _pad_rows(batch: dict, multiple: int) -> dict:
  """Repeats the last row so the batch splits evenly over the data-parallel devices."""
  def pad(x):
    if not isinstance(x, np.ndarray):
      return x
    extra = -len(x) % multiple
    return np.concatenate([x, np.repeat(x[-1:], extra, axis=0)]) if extra else x

  return {k: pad(v) for k, v in batch.items()}


def format_prediction(head: str, p: dict) -> str:
  if head == 'classification':
    probs = ', '.join(f'{k}={v:.3f}' for k, v in p['probabilities'].items())
    return f"{p['label']}\t({probs})"
  if head == 'tagging':
    return ' '.join(f'{w}/{t}' for w, t in p['tags'])
  return p['generated']


def main(argv):
  del argv
  if bool(FLAGS.text) == bool(FLAGS.input):
    raise config_lib.ConfigError('give exactly one of --text or --input')
  output = FLAGS.output and cli.inside_workdir(FLAGS.workdir, FLAGS.output, '--output')
  texts = [FLAGS.text] if FLAGS.text else read_texts(FLAGS.input, FLAGS.field)
  if FLAGS.task not in tasks_lib.REGISTRY:
    raise config_lib.ConfigError(f'--task: unknown task {FLAGS.task!r}')
  _, pipe, setup, mesh, params, _ = evaluate.load_run(FLAGS.workdir)
  if FLAGS.task not in pipe.tasks:
    raise config_lib.ConfigError(f'--task: the run in {FLAGS.workdir} has no head for '
                                 f'{FLAGS.task!r} (it has {", ".join(pipe.tasks)})')
  predictor = Predictor(pipe, setup, mesh, params)
  head = pipe.tasks[FLAGS.task].head
  options = {} if head in ('classification', 'tagging') else dict(
      method=FLAGS.method, temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p,
      num_beams=FLAGS.num_beams, seed=FLAGS.seed)
  out = open(output, 'w', encoding='utf-8') if output else None
  chunk = 64
  for start in range(0, len(texts), chunk):
    for p in predictor.predict(FLAGS.task, texts[start:start + chunk], **options):
      if FLAGS.input:
        print(json.dumps(p, ensure_ascii=False), file=out or sys.stdout)
      else:
        print(format_prediction(head, p))
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
  flags.DEFINE_enum('method', 'greedy', ['greedy', 'sample', 'beam'], 'Decoding method.')
  flags.DEFINE_float('temperature', 1.0, 'Sampling temperature.')
  flags.DEFINE_integer('top_k', 0, 'Sample among the k likeliest tokens (0: all).')
  flags.DEFINE_float('top_p', 1.0, 'Nucleus sampling mass.')
  flags.DEFINE_integer('num_beams', 4, 'Beams for --method=beam.')
  flags.DEFINE_integer('seed', 0, 'Sampling seed.')
  cli.run(main)
