"""Task heads on the shared BLOOM trunk's final hidden states.

Generation and LM tasks use the LM head tied to the word embeddings (`Bloom.logits`; a
generation task with `copy` adds its copy head, `bloom_jax.copying`); classification and
tagging tasks each have a linear head of their own. A classification (or regression) task
with `ngrams` n > 0 also has a bag of its input's hashed token (or word) n-grams of
orders 1..n (`NgramBag`), a linear model added to the head's logits: the wide part of a
wide-and-deep classifier (Cheng et al. 2016), or fastText's bag of n-grams (Joulin et al.
2017). With `pooling='attention'` the head first pools each example's states by learned
attention (`AttentionPool`).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from bloom_jax.compat import param
from bloom_jax.layers import dropout, segment_max, segment_mean
from bloom_jax.model import BloomConfig


class LinearHead(nnx.Module):
  """Hidden states -> per-position outputs (float32), e.g. label logits. With `ngrams` > 0
  it also holds an `NgramBag` of those orders (`.ngrams`), which the task type adds; with
  `attention_pool` an `AttentionPool` (`.pool`), which the task type applies first."""

  def __init__(self, cfg: BloomConfig, num_outputs: int, *, rngs: nnx.Rngs, ngrams: int = 0,
               ngram_unit: str = 'token', ngram_buckets: int = 0, ngram_scale: float = 1.0,
               attention_pool: bool = False):
    self.dtype, self.dropout = cfg.dtype, cfg.dropout
    if attention_pool:  # as the bag: heads without it keep the parameters they had
      self.pool = AttentionPool(cfg)
    if ngrams:  # only then: the parameters of heads without it stay as they were
      self.ngrams = NgramBag(num_outputs, ngrams, ngram_buckets, ngram_scale, ngram_unit)
    self.kernel = param(cfg.init_std * jax.random.normal(
        rngs.params(), (cfg.hidden_size, num_outputs), cfg.param_dtype), ('embed', 'labels'))
    self.bias = param(jnp.zeros((num_outputs,), cfg.param_dtype), ('labels',))

  def __call__(self, hidden, dropout_key=None):
    hidden = dropout(hidden, self.dropout, dropout_key)
    logits = hidden @ self.kernel[...].astype(self.dtype) + self.bias[...].astype(self.dtype)
    return logits.astype(jnp.float32)


class AttentionPool(nnx.Module):
  """Each example's states -> one state per example, pooled by learned attention: the
  multihead attention pooling of big_vision's MAP head and of Lin et al. (2017), reduced
  to its probe. Head h scores every token from its whole state (one learned query per
  head, no key projection) and averages its own slice of the states (no value
  projection) by the softmax of those scores over the example:

      pooled_h = sum_t softmax_t(x_t . q_h) x_t[h]

  The queries start at zero, so the pool starts as the mean over the example's tokens and
  learns which tokens to weigh more, per head: a cue that the mean dilutes by the text's
  length, without max pooling's one token per feature."""

  def __init__(self, cfg: BloomConfig):
    self.dtype, self.n_head = cfg.dtype, cfg.n_head
    self.kernel = param(jnp.zeros((cfg.hidden_size, cfg.n_head), cfg.param_dtype),
                       ('embed', 'heads'))

  def __call__(self, hidden, segment_ids):
    """[B, S, H] states, [B, S] segment ids -> [B, S, H], at every position its example's
    pooled state (0 at padding)."""
    scores = (hidden @ self.kernel[...].astype(self.dtype)).astype(jnp.float32)
    # exp(score - the example's max): the softmax over each example, without overflow. The
    # shift cancels in the softmax, so no gradient goes through it (a max's gradient at
    # ties, as all the scores are at the start, is undefined); padding gets weight 0.
    inside = segment_ids[..., None] > 0
    shifted = scores - jax.lax.stop_gradient(segment_max(scores, segment_ids))
    weights = jnp.where(inside, jnp.exp(jnp.where(inside, shifted, 0.0)), 0.0)
    b, s, h = hidden.shape
    heads = hidden.astype(jnp.float32).reshape(b, s, self.n_head, h // self.n_head)
    # The mean of weight x value over the mean of weight (the softmax's normalisation),
    # both from one segment mean.
    both = segment_mean(jnp.concatenate(
        [(weights[..., None] * heads).reshape(b, s, h), weights], -1), segment_ids)
    total, norm = both[..., :h], both[..., h:]  # norm is 0 at padding only, as total is
    pooled = total.reshape(b, s, self.n_head, -1) / jnp.where(norm > 0, norm, 1.0)[..., None]
    return pooled.reshape(b, s, h).astype(hidden.dtype)


# Multiplicative hashing (Knuth's golden-ratio constant), and the base that folds each
# earlier token into an n-gram's hash; uint32 arithmetic wraps, as the hash wants.
_GOLDEN = 2654435761
_BASE = 1000003


def ngram_buckets(input_ids, segment_ids, order: int, buckets: int):
  """[B, S] tokens and segment ids -> ([B, S, order] int32 bucket of the n-gram of each
  order n = 1..order that ends at each position, [B, S, order] bool: it lies inside one
  example). An n-gram's bucket depends on its tokens and n only, wherever it occurs."""
  ids = input_ids.astype(jnp.uint32)
  h, inside = ids, segment_ids > 0
  out, valid = [], []
  for n in range(1, order + 1):
    if n > 1:
      back = n - 1  # the token n-1 places earlier, and whether it is in the same example
      earlier = jnp.pad(ids[:, :-back], ((0, 0), (back, 0)))
      h = h * jnp.uint32(_BASE) + earlier
      inside = inside & (jnp.pad(segment_ids[:, :-back], ((0, 0), (back, 0))) == segment_ids)
    mixed = (h + jnp.uint32(n)) * jnp.uint32(_GOLDEN)
    out.append((mixed % jnp.uint32(buckets)).astype(jnp.int32))
    valid.append(inside)
  return jnp.stack(out, -1), jnp.stack(valid, -1)


def word_ngram_buckets(input_ids, segment_ids, word_starts, order: int, buckets: int):
  """[B, S] tokens, segment ids and word starts (1 at each word's first token) -> ([B, S,
  order] int32 bucket of the word n-gram of each order n = 1..order that ends with the word
  ending at each position, [B, S, order] bool: a word ends there and the n-gram lies inside
  one example). A word is hashed from its tokens, an n-gram from its words' hashes and n,
  so its bucket depends on its words alone, wherever it occurs."""
  ids = input_ids.astype(jnp.uint32)
  before = jnp.pad(segment_ids[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  starts = (word_starts > 0) | (segment_ids != before)  # an example opens a word too
  # Each position's hash of its word's tokens so far, h = h_prev * BASE + id, restarted at
  # the word's first token: a linear recurrence, so one associative scan over the row.
  factor = jnp.where(starts, jnp.uint32(0), jnp.uint32(_BASE))
  _, word = jax.lax.associative_scan(lambda x, y: (y[0] * x[0], y[0] * x[1] + y[1]),
                                     (factor, ids), axis=1)
  positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
  first = jax.lax.cummax(jnp.where(starts, positions, 0), axis=1)  # its word's first token
  ends = jnp.pad(starts[:, 1:], ((0, 0), (0, 1)), constant_values=True)
  h, inside, before_word = word, ends & (segment_ids > 0), first - 1
  out, valid = [], []
  for n in range(1, order + 1):
    if n > 1:  # fold in the word before the n-gram so far: it ends just before its first token
      at = jnp.maximum(before_word, 0)
      h = h * jnp.uint32(_BASE) + jnp.take_along_axis(word, at, 1)
      inside = inside & (before_word >= 0) & (jnp.take_along_axis(segment_ids, at, 1)
                                              == segment_ids)
      before_word = jnp.take_along_axis(first, at, 1) - 1
    mixed = (h + jnp.uint32(n)) * jnp.uint32(_GOLDEN)
    out.append((mixed % jnp.uint32(buckets)).astype(jnp.int32))
    valid.append(inside)
  return jnp.stack(out, -1), jnp.stack(valid, -1)


class NgramBag(nnx.Module):
  """A linear model of an example's token n-grams: at each position, `scale` times the
  mean over its example's tokens of the outputs of the n-grams (orders 1..order, hashed
  into `buckets` rows) that end there. `<s>` and `</s>` take part, so n-grams at the
  text's edges are their own features. With `unit='word'` the n-grams are of words (given
  by `word_starts`; `word_ngram_buckets`), and the mean is over the example's words. The
  table starts at zero (the model starts as the one without it) and, being a kernel, has
  weight decay, an L2 penalty as a linear text classifier's.

  `scale` is the bag's learning rate relative to the rest's: Adam moves every parameter by
  about the learning rate per step, whatever its gradient's size, and a mean over a text's
  n-grams needs rows far larger than a transformer's weights to move a logit. fastText
  trains its bag with a learning rate of 0.1 and more for the same reason."""

  def __init__(self, num_outputs: int, order: int, buckets: int, scale: float = 1.0,
               unit: str = 'token'):
    self.order, self.buckets, self.scale, self.unit = order, buckets, scale, unit
    # float32 whatever param_dtype is: a rare n-gram's few small updates must not round away.
    self.kernel = param(jnp.zeros((buckets, num_outputs), jnp.float32), ('vocab', 'labels'))

  def __call__(self, input_ids, segment_ids, word_starts=None):
    """[B, S] tokens and segment ids (and with unit 'word', word starts) -> [B, S, outputs]
    float32, the mean at every position of its example (0 at padding)."""
    if self.unit == 'word':
      rows, inside = word_ngram_buckets(input_ids, segment_ids, word_starts, self.order,
                                        self.buckets)
    else:
      rows, inside = ngram_buckets(input_ids, segment_ids, self.order, self.buckets)
    per_token = (jnp.take(self.kernel[...], rows, axis=0) * inside[..., None]).sum(-2)
    mean = segment_mean(per_token, segment_ids)
    if self.unit == 'token':
      return self.scale * mean
    # A word's n-grams sit at its last token: the mean over tokens, over the words' share.
    words = segment_mean(inside[..., :1].astype(jnp.float32), segment_ids)
    return self.scale * jnp.where(words > 0, mean / jnp.maximum(words, 1e-9), 0.0)
