"""One label per word, read at the word's first subword.

    <s> word_1 word_2 ... </s>     each word's tag at its first subword

With `subword='last'` the tag is read at the word's last subword instead: where a word is
split, its ending (-ing, -ly, -s) is there, and in English the ending carries much of the
part of speech.

Words cut off by `max_length` count as wrong in evaluation (`num_words` keeps the true
count), as UD's evaluation script counts them on gold tokenisation.
"""

import numpy as np

from bloom_jax import heads, metrics
from bloom_jax.data import packing, text
from bloom_jax.task_types import base


def word_pieces(tok, sentences: list[list[str]]) -> list[list[list[int]]]:
  """Subword ids of each word as it appears in running text (space before all but the first)."""
  keys = sorted({(w if i == 0 else ' ' + w) for words in sentences for i, w in enumerate(words)})
  table = dict(zip(keys, tok.encode_batch(keys), strict=True))
  return [[table[w if i == 0 else ' ' + w] for i, w in enumerate(words)] for words in sentences]


class Tagging(base.TaskType):
  name = 'tagging'
  attention = 'bidirectional'
  fields = {'words': 'texts', 'tags': 'texts'}
  metrics = ('word_accuracy',)
  needs_labels = True
  input_field = 'words'
  takes_label_smoothing = True
  takes_subword = True

  def clean(self, task, row):
    row = dict(row, words=[text.clean(w) for w in row['words']])
    return row if any(row['words']) else None

  def labels_of(self, row):
    return list(row.get('tags', []))

  def training_text(self, row):
    return ' '.join(row['words'])

  def inference_rows(self, task, tok, texts):
    """Strings are split on whitespace; lists are taken as the words."""
    return [{'words': [text.clean(w) for w in (t.split() if isinstance(t, str) else list(t))]}
            for t in texts]

  def encode(self, task, tok, rows, train, token_bytes):
    del train, token_bytes
    index = base.label_index(task) if rows and 'tags' in rows[0] else None
    room = task.max_length - 2
    last = task.subword == 'last'
    seqs, targets, marks, full = [], [], [], []
    for row, pieces in zip(rows, word_pieces(tok, [r['words'] for r in rows]), strict=True):
      flat, reads = [tok.bos_id], []
      for piece in pieces:
        flat.extend(piece)
        reads.append((len(flat) - 1 if last else len(flat) - len(piece)) if piece else -1)
      full.append(len(flat) + 1)
      seq = flat[:room + 1] + [tok.eos_id]
      target, mark = [0] * len(seq), [0.0] * len(seq)
      for w, at in enumerate(reads):
        if 0 < at <= room:
          mark[at] = 1.0
          target[at] = index[row['tags'][w]] if index else 0
      seqs.append(seq)
      targets.append(target)
      marks.append(mark)
    ids, lengths = packing.ragged(seqs)
    # `weights` marks the subword each word is read at, so it also maps predictions back
    # to words.
    examples = packing.Examples(
        {'input_ids': ids, 'targets': packing.ragged(targets)[0],
         'weights': packing.ragged(marks, np.float32)[0]}, lengths,
        {'num_words': np.array([len(r['words']) for r in rows], np.int32)})
    full = np.array(full, np.int32)
    return examples, {'length': full, 'truncated': full > task.max_length}

  def describe(self, task, tok, example, sample):
    reads = np.flatnonzero(example['weights'] > 0)
    if task.subword == 'last':  # each word ends where it is read
      starts, ends = [1, *(reads[:-1] + 1)], reads + 1
    else:
      starts, ends = reads, [*reads[1:], len(example['input_ids']) - 1]
    pairs = [f'{tok.decode(example["input_ids"][s:e]).strip()}/'
             f'{task.labels[example["targets"][r]]}'
             for s, e, r in zip(starts, ends, reads, strict=True)]
    decoded = tok.decode(example['input_ids'])
    return [f'    {base.verdict(decoded, " ".join(sample["words"]))}: {" ".join(pairs)}']

  def make_head(self, model_cfg, task, rngs):
    return heads.LinearHead(model_cfg, len(task.labels), rngs=rngs)

  def logits(self, model, task, hidden, batch, dropout_key):
    return model.heads[task.name](hidden, dropout_key)

  def accumulator(self, task):
    return TaggingMetrics()

  def predict(self, predictor, task, texts, **options):
    del options
    rows = self.inference_rows(task, predictor.tokenizer, texts)
    batch = predictor.rows(task, rows)
    tags = np.argmax(predictor.probabilities(task, batch), axis=-1)
    out = []
    for i, row in enumerate(rows):
      labels = [task.labels[int(tags[i, s])] for s in np.flatnonzero(batch['weights'][i])]
      labels += [None] * (len(row['words']) - len(labels))  # words cut by max_length
      out.append({'text': texts[i], 'tags': list(zip(row['words'], labels, strict=True))})
    return out

  def format_prediction(self, task, prediction):
    return ' '.join(f'{w}/{t}' for w, t in prediction['tags'])


class TaggingMetrics(base.Accumulator):
  """Word accuracy: correct first-subword tags over all words, truncated ones included."""

  def __init__(self):
    super().__init__()
    self.correct = self.words = 0.0

  def add(self, batch, result):
    super().add(batch, result)
    correct, words = metrics.word_counts(result['predictions'], batch['targets'],
                                         batch['weights'], batch['num_words'])
    self.correct += correct
    self.words += words

  def result(self):
    return {**super().result(), 'word_accuracy': metrics.ratio(self.correct, self.words)}


TAGGING = Tagging()
