"""Source -> target as a prefix LM: the source read both ways, the target left to right.

    <s> source <sep> target </s>      prefix = <s> source <sep>

Source and target are each tokenized as they would be after a space in running text
(`Tokenizer.encode_after_space`), so a word of the source has the same tokens when the
target repeats it; generated text loses that space again.

The loss is next-token cross-entropy on the target tokens and the final </s>. Only those
positions are projected onto the vocabulary: a row carries their indices
(`target_positions`), and packing keeps each row's targets within a fixed budget, so a
long source costs trunk compute but no vocabulary projection. Evaluation decodes every
example's prompt (greedily, or as `tasks.<name>.decoding` says) and scores ROUGE against
all its references.

With `source_lm_weight` w > 0 (causal attention only), training also predicts every
source token from the ones before it, each with weight w beside a target token's 1:

    L = (sum_target nll + w * sum_source nll) / target tokens

Then every position is projected onto the vocabulary in training. Evaluation, and the
loss and perplexity it reports, stay on the target alone.

With `copy`, the task has a copy head (`bloom_jax.copying`, a pointer-generator): each
target position may copy a token of its own example's prefix instead of generating one,

    P(w) = p_gen * softmax(logits)(w) + (1 - p_gen) * sum_{j in prefix, x_j = w} a_j

and the task's logits are log P, in training, evaluation and decoding alike. A source
loss beside it is the trunk's own next-token prediction: the head copies into targets only.
"""

import jax.numpy as jnp
import numpy as np

from bloom_jax import copying, metrics
from bloom_jax.data import packing, text
from bloom_jax.errors import ConfigError
from bloom_jax.task_types import base
from bloom_jax.task_types.classification import clean_input
from bloom_jax.tokenizer import strip_space

# Evaluation's decoding options (`tasks.<name>.decoding`, `decoding.generate`'s meanings)
# and their defaults; max_new_tokens 0 is the task's max_target_length. Searches only:
# an evaluation is then a function of the checkpoint.
DECODING = {'method': 'greedy', 'num_beams': 4, 'length_penalty': 1.0, 'min_new_tokens': 0,
            'max_new_tokens': 0}
METHODS = ('greedy', 'beam')
BEAM_ONLY = ('num_beams', 'length_penalty')


def target_budget(task) -> int:
  """Target positions per row: room for two whole targets, so short examples still pack."""
  return min(task.max_length, 2 * (task.target_length + 1))


def prompt_length(task) -> int:
  return task.max_length - task.target_length - 1


def decoding_options(task) -> dict:
  """`decoding.generate`'s options for evaluating the task (`tasks.<name>.decoding`)."""
  options = {**DECODING, **dict(task.decoding)}
  options['max_new_tokens'] = options['max_new_tokens'] or task.target_length
  if options['method'] != 'beam':
    for name in BEAM_ONLY:
      del options[name]
  return options


def check_decoding(task, key: str) -> None:
  """Raises ConfigError naming `key.<option>` for decoding options evaluation cannot use."""
  given = dict(task.decoding)
  for name, value in given.items():
    where = f'{key}.{name}'
    if name not in DECODING:
      raise ConfigError(f'{where}: not a decoding option; options: {", ".join(DECODING)}')
    kind = type(DECODING[name])
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    if type(value) is not kind:
      raise ConfigError(f'{where}: expected {kind.__name__}, got {value!r}')
  method = given.get('method', DECODING['method'])
  if method not in METHODS:
    raise ConfigError(f'{key}.method: {method!r} is not one of {METHODS} (evaluation '
                      'searches; it does not sample)')
  for name in BEAM_ONLY:
    if name in given and method != 'beam':
      raise ConfigError(f"{key}.{name}: applies to method='beam' only")
  if given.get('num_beams', 1) < 1:
    raise ConfigError(f'{key}.num_beams: must be positive')
  options = decoding_options(task)
  if options['max_new_tokens'] < 1:
    raise ConfigError(f'{key}.max_new_tokens: must be positive (0: max_target_length)')
  if not 0 <= options['min_new_tokens'] <= options['max_new_tokens']:
    raise ConfigError(f'{key}.min_new_tokens: must be in [0, max_new_tokens '
                      f'{options["max_new_tokens"]}]')


def source_lm_fields(rows: dict, weight: float, pad_id: int) -> dict:
  """`base.source_lm_fields` of packed rows: every position whose next token is a source
  token predicts it.

  Each example's prefix `<s> source <sep>` is contiguous, so position i predicts a
  source token exactly when i, i+1 and i+2 lie in the prefix of one example: that
  excludes the last source token (followed by <sep>) and <sep> (followed by the target).
  """
  prefix, segment = rows['prefix_mask'] > 0, rows['segment_ids']
  same = (segment[:, :-2] == segment[:, 2:]) & prefix[:, :-2] & prefix[:, 1:-1] & prefix[:, 2:]
  return base.source_lm_fields(rows, np.pad(same, ((0, 0), (0, 2))), weight, pad_id)


class Generation(base.TaskType):
  name = 'generation'
  attention = 'prefix'
  fields = {'source': 'text', 'targets': 'texts'}
  takes_stopwords = True
  marks_prefix = True
  takes_source_lm = True
  takes_decoding = True
  takes_copy = True
  metrics = ('rouge1', 'rouge2', 'rougeL')
  generates = True
  input_field = 'source'

  def check(self, task, key):
    super().check(task, key)
    if not 1 <= task.target_length <= task.max_length - 4:
      raise ConfigError(f'{key}.max_target_length: must leave at least 4 tokens for the source')
    check_decoding(task, f'{key}.decoding')

  def clean(self, task, row):
    row = dict(row, source=clean_input(task, row['source']))
    if 'targets' in row:
      row['targets'] = [text.clean(t) for t in row['targets']]
    return row if row['source'] else None

  def training_text(self, row):
    # With the spaces `encode` puts before source and target: the BPE learns the tokens
    # it will see.
    return ' ' + row['source'] + '\n ' + row['targets'][0]

  def encode(self, task, tok, rows, train, token_bytes):
    del train, token_bytes
    body = tok.encode_after_space([r['source'] for r in rows])
    heads = [[tok.bos_id] + ids[:prompt_length(task) - 2] + [tok.sep_id] for ids in body]
    labelled = bool(rows) and 'targets' in rows[0]
    tails = (tok.encode_after_space([r['targets'][0] for r in rows]) if labelled
             else [[]] * len(rows))
    seqs, prefix, targets, weights = [], [], [], []
    for head, tail in zip(heads, tails, strict=True):
      seq = head + (tail[:task.target_length] + [tok.eos_id] if labelled else [])
      seqs.append(seq)
      prefix.append([1] * len(head) + [0] * (len(seq) - len(head)))
      targets.append(seq[1:] + [tok.pad_id])
      # Position i predicts token i+1: from <sep> (the last prefix token) to the one before </s>.
      weights.append([float(len(head) - 1 <= i < len(seq) - 1) for i in range(len(seq))])
    ids, lengths = packing.ragged(seqs)
    examples = packing.Examples(
        {'input_ids': ids, 'prefix_mask': packing.ragged(prefix)[0],
         'targets': packing.ragged(targets)[0], 'weights': packing.ragged(weights, np.float32)[0]},
        lengths)
    src = np.array([len(b) + 2 for b in body], np.int32)
    tgt = np.array([len(t) for t in tails], np.int32)
    truncated = (src > prompt_length(task)) | (tgt > task.target_length)
    return examples, {'length': src + tgt + int(labelled), 'truncated': truncated}

  def rows(self, task, examples, pad_id, packed):
    costs = np.add.reduceat(examples.tokens['weights'] > 0, examples.starts) if len(examples) \
        else np.zeros(0, np.int64)
    budget = target_budget(task)
    out = packing.pack(examples, task.max_length, pad_id, packed, costs, budget)
    if task.source_lm_weight:  # before `targets` keeps only the target positions' tokens
      out.update(source_lm_fields(out, task.source_lm_weight, pad_id))
    scored = out['weights'] > 0
    order = np.argsort(~scored, axis=1, kind='stable')[:, :budget]  # scored positions first
    keep = np.take_along_axis(scored, order, axis=1)
    out['target_positions'] = np.where(keep, order, 0).astype(np.int32)
    out['targets'] = np.where(keep, np.take_along_axis(out['targets'], order, axis=1), pad_id)
    out['weights'] = keep.astype(np.float32)
    return out

  def prompts(self, examples: packing.Examples) -> list[list[int]]:
    """Each example's `<s> source <sep>`."""
    out = []
    for i in range(len(examples)):
      example = examples.example(i)
      out.append(example['input_ids'][example['prefix_mask'] > 0].tolist())
    return out

  def describe(self, task, tok, example, sample):
    source = strip_space(tok.decode(example['input_ids'][example['prefix_mask'] > 0]))
    target = strip_space(tok.decode(example['targets'][example['weights'] > 0]))
    return [f'    source ({base.verdict(source, sample["source"])}): {source[:300]!r}',
            f'    target ({base.verdict(target, sample["targets"][0])}): {target!r} '
            f'(references: {len(sample["targets"])})']

  def make_head(self, model_cfg, task, rngs):
    return copying.CopyHead(model_cfg, rngs=rngs) if task.copy else None

  def logits(self, model, task, hidden, batch, dropout_key):
    """[B, P, V] logits at the target positions (with `copy`, log-probabilities); in
    training with a source loss, {'target': those, 'source': [B, S, V] logits at every
    position}."""
    source_loss = task.source_lm_weight and dropout_key is not None
    positions = batch['target_positions'][..., None]
    if source_loss:
      every = model.bloom.logits(hidden)
      logits = jnp.take_along_axis(every, positions, axis=1)
    else:
      logits = model.bloom.logits(jnp.take_along_axis(hidden, positions, axis=1))
    if task.copy:
      logits = copying.packed_log_probs(model.heads[task.name], logits, hidden, batch)
    return {'target': logits, 'source': every} if source_loss else logits

  def generate(self, task, graphdef, state, prompt_ids, prompt_mask, **options):
    if task.copy:
      return copying.generate(graphdef, state, task.name, prompt_ids, prompt_mask, **options)
    return super().generate(task, graphdef, state, prompt_ids, prompt_mask, **options)

  def vocab_positions(self, task):
    return task.max_length if task.source_lm_weight else target_budget(task)

  def accumulator(self, task):
    return base.PerplexityMetrics()

  def evaluate(self, evaluator, task, examples, references):
    out = super().evaluate(evaluator, task, examples, None)
    texts = evaluator.generate(task, self.prompts(examples), prompt_length(task),
                               **decoding_options(task))
    out.update(metrics.rouge([strip_space(t) for t in texts], references))
    return out

  def predict(self, predictor, task, texts, **options):
    rows = self.inference_rows(task, predictor.tokenizer, texts)
    examples, _ = self.encode(task, predictor.tokenizer, rows, False, None)
    generated = predictor.generate(task, self.prompts(examples), prompt_length(task), **options)
    return [{'text': t, 'generated': strip_space(g)}
            for t, g in zip(texts, generated, strict=True)]

  def format_prediction(self, task, prediction):
    return prediction['generated']


GENERATION = Generation()
