"""One label per text.

    <s> text </s>     the label is read at </s>, the last token of the example

The head is a linear layer on the trunk's final states. It is applied at every position
of a packed row (a [hidden, labels] product costs next to nothing) and the loss reads it
at each segment's last token: per-example pooling, as Hugging Face's BLOOM classifier
pools the last real token. With `pooling='mean'` the logits read there are instead the
mean over the example's tokens (<s> and </s> included), which, the head being linear, is
the head applied to the mean of the example's states: every token's state then reaches
the label directly, not only through the attention of the last one. With `pooling='max'`
the head reads the example's max state, each feature's largest value over its tokens
(the max-pooled encoder of InferSent and the CNN text classifiers): one strong cue
anywhere in a text decides a feature, where the mean dilutes it with the text's length.
With `pooling='attention'` the head reads a weighted mean of the example's states, each
head's slice weighted by the softmax of a learned query's scores (`heads.AttentionPool`,
big_vision's MAP head reduced to its probe): it starts as the mean and learns which
tokens count.

With `source_lm_weight` w > 0 (causal attention only), training also predicts every
token of an example from the ones before it (the text's tokens and </s>), each with
weight w beside the label's 1:

    L = (sum_label nll + w * sum_token nll) / examples

Evaluation, and the loss it reports, stay on the label alone.

With `ngrams` n > 0 the logits also add a linear model of the example's hashed token
n-grams of orders 1..n (`heads.NgramBag`, the same value at each of its positions): a
bag of n-grams, which a linear text classifier learns from few examples, beside the
transformer's reading, which needs more. With `ngram_unit='word'` the n-grams are of
whitespace words, each word's tokens one unit, as a TF-IDF model's word n-grams; the rows
then carry `word_starts`, 1 at each word's first token (a token that spells a leading
space, or the text's first) and at <s> and </s>. With `ngram_loss_weight` v > 0, training also
scores the bag's logits alone, as a classifier of its own:

    L = (sum_label nll(head + bag) + v * sum_label nll(bag)) / examples

Once the transformer fits the training set, the joint loss, and with it the bag's
gradient, vanishes; the bag's own loss keeps training it toward the linear model it would
be alone, and the two are then summed as an ensemble's logits.

With a `pos_tagger` (`bloom_jax.pos_features`), the text is encoded word by word, as
tagging encodes it (each whitespace word's subwords, a space before all but the first),
so that every token knows its word; for the byte-level BPE these are exactly the tokens
of the whole text. Each token then carries its word's tag in `pos_tags` (0 at <s>, </s>).
"""

import numpy as np

from bloom_jax import heads, layers, metrics
from bloom_jax.data import packing, text
from bloom_jax.task_types import base, tagging


def clean_input(task, s: str) -> str:
  """The model-input text of an example, as trained on."""
  s = text.clean(s)
  return text.remove_stopwords(s) if task.stopwords else s


def tagged_tokens(task, tok, texts: list[str]) -> tuple[list[list[int]], list[list[int]]]:
  """Each text's tokens, encoded word by word, and each token's tag id (its word's tag
  from `task.pos_tagger`: tag index + 1, 0 for a word the tagger did not reach)."""
  sentences = [t.split() for t in texts]
  word_tags = task.pos_tagger.tag(sentences)
  body, tags = [], []
  for pieces, ids in zip(tagging.word_pieces(tok, sentences), word_tags, strict=True):
    body.append([i for piece in pieces for i in piece])
    tags.append([t for piece, t in zip(pieces, ids, strict=True) for _ in piece])
  return body, tags


class Classification(base.TaskType):
  name = 'classification'
  attention = 'bidirectional'
  fields = {'text': 'text', 'label': 'text'}
  takes_stopwords = True
  takes_pos_tags = True
  takes_source_lm = True
  takes_pooling = True
  takes_ngrams = True
  takes_label_smoothing = True
  metrics = ('accuracy', 'macro_f1')
  needs_labels = True

  def clean(self, task, row):
    row = dict(row, text=clean_input(task, row['text']))
    return row if row['text'] else None

  def labels_of(self, row):
    return [row['label']] if 'label' in row else []

  def training_text(self, row):
    return row['text']

  def encode(self, task, tok, rows, train, token_bytes):
    del train, token_bytes
    texts = [r['text'] for r in rows]
    if task.pos_tagger:
      body, tags = tagged_tokens(task, tok, texts)
    else:
      body = tok.encode_batch(texts)
    seqs = [[tok.bos_id] + ids[:task.max_length - 2] + [tok.eos_id] for ids in body]
    ids, lengths = packing.ragged(seqs)
    last = np.cumsum(lengths) - 1
    weights = np.zeros(len(ids), np.float32)
    weights[last] = 1.0
    values = self.target_values(task, rows) if rows and 'label' in rows[0] else None
    targets = np.zeros(len(ids), np.int32 if values is None else values.dtype)
    if values is not None:
      targets[last] = values
    full = np.array([len(b) + 2 for b in body], np.int32)
    fields = {'input_ids': ids, 'targets': targets, 'weights': weights}
    if task.pos_tagger:
      fields['pos_tags'] = packing.ragged([[0] + t[:task.max_length - 2] + [0] for t in tags])[0]
    if task.ngram_unit == 'word':  # 1 where a word opens: <s> and </s> are words of their own
      opens = tok.space_prefixed
      fields['word_starts'] = packing.ragged(
          [[1, *(int(k == 0 or opens[i]) for k, i in enumerate(b[:task.max_length - 2])), 1]
           for b in body])[0]
    examples = packing.Examples(fields, lengths)
    return examples, {'length': full, 'truncated': full > task.max_length}

  def rows(self, task, examples, pad_id, packed):
    out = super().rows(task, examples, pad_id, packed)
    if task.source_lm_weight:  # every position but an example's last predicts the next
      segment = out['segment_ids']
      predicts = np.pad((segment[:, :-1] == segment[:, 1:]) & (segment[:, :-1] > 0),
                        ((0, 0), (0, 1)))
      out.update(base.source_lm_fields(out, predicts, task.source_lm_weight, pad_id))
    if task.ngram_loss_weight:
      out['ngram_weights'] = (out['weights'] * task.ngram_loss_weight).astype(np.float32)
    return out

  def target_values(self, task, rows) -> np.ndarray:
    """Each labelled row's target, read at its last token."""
    index = base.label_index(task)
    return np.array([index[r['label']] for r in rows], np.int32)

  def describe(self, task, tok, example, sample):
    at = np.flatnonzero(example['weights'])[0]
    decoded = tok.decode(example['input_ids'])
    lines = [f'    label={task.labels[example["targets"][at]]!r} (source {sample["label"]!r}) '
             f'{base.verdict(decoded, sample["text"])}: {decoded!r}']
    if task.pos_tagger:
      names = ('-', *task.pos_tagger.task.labels)
      lines.append('    pos_tags: ' + ' '.join(
          f'{tok.decode([i])!r}/{names[t]}'
          for i, t in zip(example['input_ids'][1:-1], example['pos_tags'][1:-1], strict=True)))
    return lines

  def num_outputs(self, task) -> int:
    """The head's outputs per position: one logit per label."""
    return len(task.labels)

  def make_head(self, model_cfg, task, rngs):
    return heads.LinearHead(model_cfg, self.num_outputs(task), rngs=rngs, ngrams=task.ngrams,
                            ngram_unit=task.ngram_unit, ngram_buckets=task.ngram_buckets,
                            ngram_scale=task.ngram_scale,
                            attention_pool=task.pooling == 'attention')

  def logits(self, model, task, hidden, batch, dropout_key):
    """[B, S, labels] logits at every position; in training with auxiliary losses, a dict
    of those ('target') and their inputs (`base.TaskType.losses`): 'source', [B, S, V]
    logits at every position, and 'ngrams', the bag's logits alone."""
    logits, bag = self.head_outputs(model, task, hidden, batch, dropout_key)
    if dropout_key is None or not (task.source_lm_weight or task.ngram_loss_weight):
      return logits
    out = {'target': logits}
    if task.source_lm_weight:
      out['source'] = model.bloom.logits(hidden)
    if task.ngram_loss_weight:
      out['ngrams'] = bag
    return out

  def head_outputs(self, model, task, hidden, batch, dropout_key):
    """(outputs, bag): the head at every position (with `pooling='max'`, of each example's
    max state; with 'attention', its attention-pooled state; with 'mean', its mean over each
    example), plus with `ngrams` the example's bag of n-grams; and that bag alone (None
    without `ngrams`)."""
    head = model.heads[task.name]
    if task.pooling == 'max':
      hidden = layers.segment_max(hidden, batch['segment_ids'])
    if task.pooling == 'attention':
      hidden = head.pool(hidden, batch['segment_ids'])
    out = head(hidden, dropout_key)
    if task.pooling == 'mean':
      out = layers.segment_mean(out, batch['segment_ids'])
    bag = (head.ngrams(batch['input_ids'], batch['segment_ids'], batch.get('word_starts'))
           if task.ngrams else None)
    return (out if bag is None else out + bag), bag

  def vocab_positions(self, task):
    return task.max_length if task.source_lm_weight else 0

  def accumulator(self, task):
    return ClassificationMetrics(len(task.labels))

  def predict(self, predictor, task, texts, **options):
    del options
    batch = predictor.rows(task, self.inference_rows(task, predictor.tokenizer, texts))
    probs = predictor.probabilities(task, batch)
    pooled = probs[np.asarray(batch['weights']) > 0][:len(texts)]
    return [{'text': t, 'label': task.labels[int(np.argmax(p))],
             'probabilities': dict(zip(task.labels, np.round(p, 6).tolist(), strict=True))}
            for t, p in zip(texts, pooled, strict=True)]

  def format_prediction(self, task, prediction):
    probs = ', '.join(f'{k}={v:.3f}' for k, v in prediction['probabilities'].items())
    return f"{prediction['label']}\t({probs})"


class ClassificationMetrics(base.ExampleMetrics):
  """accuracy and macro-F1 over the split's examples, and the loss."""

  def __init__(self, num_labels: int):
    super().__init__()
    self.num_labels = num_labels

  def scores(self, pred, target):
    pred, target = pred.astype(np.int64), target.astype(np.int64)
    return {'accuracy': metrics.accuracy(pred, target),
            'macro_f1': metrics.macro_f1(pred, target, self.num_labels)}


CLASSIFICATION = Classification()
