"""BLOOM's building blocks, as in Le Scao et al. (2022), "BLOOM: A 176B-Parameter
Open-Access Multilingual Language Model", and Hugging Face's `BloomForCausalLM`.

A block is pre-LayerNorm: x + Attn(LN(x)), then x + MLP(LN(x)). Attention has a fused
query/key/value projection whose output features are head-interleaved (Megatron
layout), and position information comes only from ALiBi, a per-head linear bias on
the attention scores (Press et al., 2022).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bloom_jax.compat import param
from bloom_jax.sharding import constrain

# --------------------------------------------------------------------------------------
# Positions
# --------------------------------------------------------------------------------------


def alibi_slopes(n_head: int) -> np.ndarray:
  """ALiBi slopes, bit-identical to Hugging Face's `build_alibi_tensor`.

  For p = 2^floor(log2 n) the slopes are 2^(-8i/p), i = 1..p; a head count that is not
  a power of two appends the odd-indexed slopes of the 2p-head list. Like HF, the base
  is rounded to float32 first and then raised to integer powers with a float32 result.
  That power is taken in float64 and rounded once, as libm's powf (torch's scalar path)
  does; numpy's float32 power is up to 1 ulp off it. Torch's SIMD pow (SLEEF, used on
  full blocks of vectors, e.g. n = 32 with AVX-512) can itself be 1 ulp off libm.
  """
  closest = 2 ** math.floor(math.log2(n_head))

  def powers(base: float, exponents: np.ndarray) -> np.ndarray:
    return np.power(np.float64(np.float32(base)), exponents.astype(np.float64)).astype(np.float32)

  slopes = powers(2 ** (-(2 ** -(math.log2(closest) - 3))), np.arange(1, closest + 1))
  if closest != n_head:
    extra = powers(2 ** (-(2 ** -(math.log2(2 * closest) - 3))),
                   np.arange(1, 1 + 2 * (n_head - closest), 2))
    slopes = np.concatenate([slopes, extra])
  return slopes


def token_positions(mask: jax.Array) -> jax.Array:
  """Position of each token counting only real ones, so left padding shifts nothing."""
  return (jnp.cumsum(mask, axis=-1) - 1) * mask


def segment_positions(segment_ids: jax.Array) -> jax.Array:
  """[B, S] segment ids (0: padding) -> each token's position inside its own segment.

  Packed rows hold several examples; each starts again at position 0, so ALiBi distances
  and sinusoidal positions are those the example would have alone. For a row holding one
  contiguous example this equals `token_positions`.
  """
  index = jnp.arange(segment_ids.shape[-1])
  previous = jnp.pad(segment_ids[..., :-1], [(0, 0)] * (segment_ids.ndim - 1) + [(1, 0)])
  start = jax.lax.cummax(jnp.where(segment_ids != previous, index, 0), axis=segment_ids.ndim - 1)
  return (index - start) * (segment_ids > 0)


def token_dropout_keep(segment_ids: jax.Array, rate: float, key: jax.Array) -> jax.Array:
  """[B, S] segment ids -> [B, S] 1 where a token keeps its word embedding, 0 where token
  dropout (word dropout, Iyyer et al. 2015) zeroes it: each token strictly inside an
  example with probability `rate`. An example's first and last tokens (<s>, and the </s> a
  label is read at) always keep theirs, and padding is left as it is."""
  previous = jnp.pad(segment_ids[:, :-1], ((0, 0), (1, 0)))
  following = jnp.pad(segment_ids[:, 1:], ((0, 0), (0, 1)))
  inside = (segment_ids > 0) & (segment_ids == previous) & (segment_ids == following)
  return ~(inside & jax.random.bernoulli(key, rate, segment_ids.shape))


def segment_mean(values: jax.Array, segment_ids: jax.Array) -> jax.Array:
  """[B, S, D] values, [B, S] segment ids (0: padding) -> at each position, the mean of
  `values` over its segment (0 at padding). The [B, S, S] mask is small for the short rows
  of the tasks that pool (a few hundred tokens); it is one einsum where a cumsum over
  segments would need a gather."""
  same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
  same = same.astype(values.dtype)
  total = jnp.einsum('bqk,bkd->bqd', same, values)
  return total / jnp.maximum(same.sum(-1, keepdims=True), 1)


def segment_max(values: jax.Array, segment_ids: jax.Array) -> jax.Array:
  """[B, S, D] values, [B, S] segment ids (0: padding) -> at each position, the elementwise
  max of `values` over its segment (0 at padding): a scatter-max per row, where the mask
  `segment_mean` uses would cost [B, S, S, D]."""
  def row(v, ids):
    return jax.ops.segment_max(v, ids, num_segments=ids.shape[0] + 1)[ids]
  top = jax.vmap(row)(values, segment_ids)
  return jnp.where(segment_ids[..., None] > 0, top, 0).astype(values.dtype)


def alibi_bias(key_positions: jax.Array, n_head: int) -> jax.Array:
  """[B, K] key positions -> [B, n_head, 1, K] float32 bias, BLOOM's causal form.

  BLOOM adds slope_h * pos_k to every query row instead of the paper's -slope*(q-k):
  under a causal mask the two differ by a per-row constant, which softmax ignores.
  """
  slopes = jnp.asarray(alibi_slopes(n_head))
  return slopes[None, :, None, None] * key_positions[:, None, None, :].astype(jnp.float32)


def symmetric_alibi_bias(query_positions: jax.Array, key_positions: jax.Array,
                         n_head: int, split: bool = False) -> jax.Array:
  """[B, Q], [B, K] -> [B, n_head, Q, K] float32 bias -slope_h * |pos_q - pos_k|
  (with `split`, each head's keys on the other side of the query get -1e9).

  For keys after the query (bidirectional and prefix attention) BLOOM's form would
  rank keys the same way for every query and so carry no relative position at all;
  the symmetric distance keeps it. On causal keys both forms agree up to a row constant.

  One slope both ways cannot tell the key before the query from the key after it, so a
  bidirectional reader without position embeddings computes the same for a sequence
  and its reversal. `split` makes the heads directional, as the two halves of a
  bidirectional RNN: even heads read only keys up to the query, odd heads only keys
  from it on, each with its own slope.
  """
  slopes = jnp.asarray(alibi_slopes(n_head))
  distance = query_positions[:, :, None] - key_positions[:, None, :]
  bias = -slopes[None, :, None, None] * jnp.abs(distance)[:, None].astype(jnp.float32)
  if split:
    backward = (jnp.arange(n_head) % 2 == 0)[None, :, None, None]
    wrong_side = jnp.where(backward, distance[:, None] < 0, distance[:, None] > 0)
    bias = jnp.where(wrong_side, -1e9, bias)  # finite: fully masked rows stay NaN-free
  return bias


def sinusoidal_embedding(positions: jax.Array, dim: int) -> jax.Array:
  """The classic table of Vaswani et al.: PE[p, 2i] = sin(p / 10000^(2i/dim)),
  PE[p, 2i+1] = cos(p / 10000^(2i/dim)), evaluated at arbitrary positions."""
  # Frequencies in float64, rounded once: a float32 exponent makes 10000^x up to ~9 ulp off.
  inv_freq = (1.0 / 10000.0 ** (np.arange(0, dim, 2) / dim)).astype(np.float32)
  angles = positions[..., None].astype(jnp.float32) * inv_freq
  table = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)
  return table.reshape(*positions.shape, -1)[..., :dim]


# --------------------------------------------------------------------------------------
# Attention masks
# --------------------------------------------------------------------------------------

ATTENTION_MODES = ('causal', 'bidirectional', 'prefix')


def attention_allowed(
    key_mask: jax.Array,
    query_offset: jax.Array | int,
    num_queries: int,
    mode: str,
    prefix_mask: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
) -> jax.Array:
  """[B, 1, Q, K] boolean: may query i attend to key j.

  Queries are the keys at indices query_offset .. query_offset + Q - 1 (a KV cache puts
  earlier keys in front). `causal`: keys up to the query; `bidirectional`: every real
  key; `prefix`: causal, plus every key inside the prefix (so the prefix reads both
  ways and what follows it reads left to right). With `segment_ids` [B, K] (a packed
  row, no cache) a query sees only keys of its own segment, and the mode applies inside
  each segment.
  """
  if mode not in ATTENTION_MODES:
    raise ValueError(f'attention mode {mode!r} is not one of {ATTENTION_MODES}')
  num_keys = key_mask.shape[-1]
  query_index = query_offset + jnp.arange(num_queries)[:, None]
  key_index = jnp.arange(num_keys)[None, :]
  allowed = jnp.broadcast_to(key_mask[:, None, :] > 0, (key_mask.shape[0], num_queries, num_keys))
  if mode == 'causal':
    allowed &= key_index <= query_index
  elif mode == 'prefix':
    if prefix_mask is None:
      raise ValueError("attention mode 'prefix' needs a prefix_mask")
    allowed &= (key_index <= query_index) | (prefix_mask[:, None, :] > 0)
  if segment_ids is not None:
    allowed &= segment_ids[:, :num_queries, None] == segment_ids[:, None, :]
  return allowed[:, None]


# --------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------

# Logical axes of the activations the blocks pin (sharding.constrain), which
# bloom_jax.sharding maps onto the mesh: rows over the batch axes, heads and MLP features
# over 'tensor'.
HIDDEN = ('batch', 'length', 'activation_embed')
HEADS = ('batch', 'length', 'heads', 'kv')
MLP_FEATURES = ('batch', 'length', 'mlp')


class LayerNorm(nnx.Module):
  """y = scale * (x - mean) / sqrt(var + eps) + bias, with the two-pass variance that
  torch uses (Flax's fast E[x^2] - E[x]^2 drifts from HF's numbers)."""

  def __init__(self, dim: int, eps: float, param_dtype):
    self.eps = eps
    self.scale = param(jnp.ones((dim,), param_dtype), ('norm',))
    self.bias = param(jnp.zeros((dim,), param_dtype), ('norm',))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(x.dtype)


def flat_tokens(x: jax.Array, feature_axes: int = 1) -> jax.Array:
  """[*tokens, *features] -> [prod(tokens), prod(features)], `feature_axes` trailing."""
  features = x.shape[x.ndim - feature_axes:]
  return x.reshape(-1, math.prod(features))


def project(x: jax.Array, kernel: jax.Array, in_axes: int = 1) -> jax.Array:
  """x's last `in_axes` axes contracted with the kernel's first `in_axes`: the einsum
  '...i,io->...o' for axes of any number, computed as one 2-D matrix product.

  The layout is the measured choice on XLA:CPU, not part of the equations. With tokens on
  one axis the kernel gradient contracts that axis where it lies; contracted over
  (batch, seq), XLA first wrote the activations out transposed (about 5% of a train
  step). With the kernel's several output axes (QKV: heads, 3, head_dim) flattened into
  one, XLA stopped copying the kernel out transposed for the input gradient and the
  kernel gradient (about 3%); with its several input axes (the output projection's
  heads and head_dim) flattened, it stopped re-laying the kernel out per call (per token
  when decoding).
  """
  out_shape = kernel.shape[in_axes:]
  y = flat_tokens(x, in_axes) @ kernel.reshape(math.prod(kernel.shape[:in_axes]), -1)
  return y.reshape(*x.shape[:x.ndim - in_axes], *out_shape)


def after(x: jax.Array, dependency: jax.Array) -> jax.Array:
  """x, made to depend on `dependency` (adds a zero computed from it).

  XLA updates a buffer in place only when it can prove the write comes after every read
  of the old value; it does not fold x * 0 for floats, so this zero orders the write.
  Without it, decoding copied each layer's KV cache at every token: more bytes than a
  small model's weights.
  """
  return x + dependency.ravel()[:1].astype(x.dtype).reshape((1,) * x.ndim) * 0


def embedding_lookup(table: jax.Array, ids: jax.Array) -> jax.Array:
  """table[ids]: [V, H] rows at [B, S] ids, as [B, S, H] activations (HIDDEN).

  The table's hidden axis is split over fsdp, the activations' rows over data and fsdp.
  Asked for that change in one step, XLA's partitioner found no efficient way when data > 1
  and gathered every row of the batch on every device ("involuntary full
  rematerialization"). In two steps it does not: first the rows split over data alone (a
  slice of what each device holds), then hidden traded for rows within each fsdp group.
  BLOOM-560m planned on cpu-8 (8 rows of 2048 tokens) asked 7.43 GiB of temporaries per
  device in one step and 6.72 GiB in two with data=2, fsdp=4; 7.12 and 6.47 with fsdp=8.
  """
  rows = constrain(jnp.take(table, ids, axis=0), ('lookup_batch', 'length', 'embed'))
  return constrain(rows, HIDDEN)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
  """Inverted dropout; a `key` of None means evaluation (identity)."""
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def _normal(rngs: nnx.Rngs, shape, std: float, dtype) -> jax.Array:
  return std * jax.random.normal(rngs.params(), shape, dtype)


class Attention(nnx.Module):
  """Multi-head self-attention with a fused, head-interleaved QKV projection.

  The fused kernel is stored as [hidden, heads, 3, head_dim]: HF's [3H, H] weight viewed
  as [heads, 3, head_dim, H]. Keeping the head axis explicit lets tensor parallelism
  split heads without ever separating a head's q, k and v.
  """

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    h, n, d = cfg.hidden_size, cfg.n_head, cfg.head_dim
    self.n_head, self.head_dim, self.dtype = n, d, cfg.dtype
    self.alibi_fp32, self.kernel = cfg.alibi_fp32, cfg.attention_kernel
    self.qkv_kernel = param(
        _normal(rngs, (h, n, 3, d), cfg.init_std, cfg.param_dtype), ('embed', 'heads', None, 'kv'))
    self.qkv_bias = param(jnp.zeros((n, 3, d), cfg.param_dtype), ('heads', None, 'kv'))
    self.out_kernel = param(
        _normal(rngs, (n, d, h), cfg.init_std, cfg.param_dtype), ('heads', 'kv', 'embed'))
    self.out_bias = param(jnp.zeros((h,), cfg.param_dtype), ('embed',))
    self.attention_dropout = cfg.attention_dropout

  def __call__(self, x, alibi, allowed, kv=None, cache_index=None, dropout_key=None):
    """x [B, Q, H]; alibi: None or the float32 ALiBi bias, [B, n, 1, K] or [B, n, Q, K];
    allowed [B, 1, Q, K].

    With `kv` (this layer's cache: 'k' [B, n, d, T], 'v' [B, n, T, d]) the new keys and values
    are written at `cache_index` and attention runs over the whole cache.
    """
    dt = self.dtype
    qkv = project(x, self.qkv_kernel[...].astype(dt)) + self.qkv_bias[...].astype(dt)
    q, k, v = (constrain(qkv[..., t, :], HEADS) for t in range(3))
    if kv is not None:
      context, kv = self._cached_attention(q, k, v, kv, cache_index, alibi, allowed, dropout_key)
    elif self.kernel == 'cudnn' and (dropout_key is None or not self.attention_dropout):
      # Fused: the [B, n, Q, K] scores never reach memory (bias and mask are summed
      # once per call).
      bias = None if alibi is None else alibi.astype(dt)
      context = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=allowed,
                                             implementation='cudnn')
    else:
      context = self._einsum_attention(q, [(k, 'bknd', v, 'bknd')], alibi, allowed, dropout_key)
    out = project(context, self.out_kernel[...].astype(dt), in_axes=2)
    return out + self.out_bias[...].astype(dt), kv

  def _cached_attention(self, q, k, v, kv, cache_index, alibi, allowed, dropout_key):
    """Attention of Q new tokens over the cache's T slots, the new ones at `cache_index`.

    The cache holds keys as [B, n, d, T] and values as [B, n, T, d], the layouts the
    score and context products read, so no cache is transposed per token. Each cache is
    updated in place once per call, which XLA only does (rather than copy it, at every
    token, more bytes than a small model's weights) when nothing reads the updated cache
    and the write provably comes after the reads: so the products read the cache as it
    was plus the new keys and values as a block of their own, and the write comes `after`
    their result.
    """
    new_k, new_v = k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3)
    length, slot = q.shape[1], jnp.arange(kv['k'].shape[-1])
    fresh = (slot >= cache_index) & (slot < cache_index + length)  # not yet in the old cache
    new = lambda x: jax.lax.dynamic_slice_in_dim(x, cache_index, length, x.ndim - 1)
    allowed = jnp.concatenate([allowed & ~fresh, new(allowed)], axis=-1)
    if alibi is not None:
      alibi = jnp.concatenate([alibi, new(alibi)], axis=-1)
    dt = self.dtype
    blocks = [(kv['k'].astype(dt), 'bndk', kv['v'].astype(dt), 'bnkd'),
              (new_k, 'bndk', new_v, 'bnkd')]
    context = self._einsum_attention(q, blocks, alibi, allowed, dropout_key)
    new_k, new_v = after(new_k, context), after(new_v, context)
    updated = {
        'k': jax.lax.dynamic_update_slice_in_dim(
            kv['k'], new_k.astype(kv['k'].dtype), cache_index, 3),
        'v': jax.lax.dynamic_update_slice_in_dim(
            kv['v'], new_v.astype(kv['v'].dtype), cache_index, 2),
    }
    return context, updated

  def _einsum_attention(self, q, blocks, alibi, allowed, dropout_key):
    """Softmax attention over keys given in blocks along the key axis.

    `blocks`: [(keys, their axes, values, their axes), ...], e.g. axes 'bknd'; `alibi`
    and `allowed` cover the blocks' keys in order.
    """
    dt = self.dtype
    scores = jnp.concatenate([jnp.einsum(f'bqnd,{k_axes}->bnqk', q, k)
                              for k, k_axes, _, _ in blocks], axis=-1)
    scores = scores * (1.0 / math.sqrt(self.head_dim))
    if alibi is not None:
      # HF adds the bias in the activation dtype, which is coarse in bf16 at long
      # positions; `alibi_fp32` keeps it exact at no real cost.
      scores = scores.astype(jnp.float32) + alibi if self.alibi_fp32 else scores + alibi.astype(dt)
    # Softmax in float32 with a finite fill: fully masked rows (left padding) stay finite.
    scores = jnp.where(allowed, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dt)
    probs = dropout(probs, self.attention_dropout, dropout_key)
    sizes = [k.shape[k_axes.index('k')] for k, k_axes, _, _ in blocks]
    parts = jnp.split(probs, np.cumsum(sizes)[:-1], axis=-1)
    context = [jnp.einsum(f'bnqk,{v_axes}->bqnd', p, v)
               for p, (_, _, v, v_axes) in zip(parts, blocks, strict=True)]
    return functools.reduce(jnp.add, context)


class MLP(nnx.Module):
  """h -> 4h -> h with BLOOM's tanh-approximated GeLU."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    h, f = cfg.hidden_size, 4 * cfg.hidden_size
    self.dtype = cfg.dtype
    self.up_kernel = param(_normal(rngs, (h, f), cfg.init_std, cfg.param_dtype), ('embed', 'mlp'))
    self.up_bias = param(jnp.zeros((f,), cfg.param_dtype), ('mlp',))
    self.down_kernel = param(_normal(rngs, (f, h), cfg.init_std, cfg.param_dtype), ('mlp', 'embed'))
    self.down_bias = param(jnp.zeros((h,), cfg.param_dtype), ('embed',))

  def __call__(self, x):
    dt = self.dtype
    y = project(x, self.up_kernel[...].astype(dt)) + self.up_bias[...].astype(dt)
    y = jax.nn.gelu(constrain(y, MLP_FEATURES), approximate=True)
    return project(y, self.down_kernel[...].astype(dt)) + self.down_bias[...].astype(dt)


class Block(nnx.Module):
  """x + Dropout(Attn(LN(x))), then x + Dropout(MLP(LN(x)))."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    self.input_layernorm = LayerNorm(cfg.hidden_size, cfg.layer_norm_epsilon, cfg.param_dtype)
    self.attention = Attention(cfg, rngs=rngs)
    self.post_attention_layernorm = LayerNorm(
        cfg.hidden_size, cfg.layer_norm_epsilon, cfg.param_dtype)
    self.mlp = MLP(cfg, rngs=rngs)
    self.dropout = cfg.dropout

  def __call__(self, x, alibi, allowed, kv=None, cache_index=None, dropout_key=None):
    keys = [None] * 3 if dropout_key is None else list(jax.random.split(dropout_key, 3))
    x = constrain(x, HIDDEN)
    attn, kv = self.attention(self.input_layernorm(x), alibi, allowed, kv, cache_index, keys[0])
    x = x + dropout(attn, self.dropout, keys[1])
    x = x + dropout(self.mlp(self.post_attention_layernorm(x)), self.dropout, keys[2])
    return constrain(x, HIDDEN), kv
