"""The BLOOM language model (BigScience, 2022) as a Flax NNX module.

    h_0   = LayerNorm(E[ids] + A)                   (+ a sin/cos table if position='sinusoidal')
    h_l   = Block_l(h_{l-1}),  l = 1..L             (scanned: compile time does not grow with L)
    logits = LayerNorm(h_L) @ E^T                   (the LM head is tied to the embeddings)

A is 0 or further input embeddings the caller adds (a task's part-of-speech tags).

The attention mode is chosen per call: `causal` (generation), `bidirectional`
(encoders for classification and tagging) or `prefix` (bidirectional over a source,
causal over what follows). Causal attention uses BLOOM's ALiBi exactly; the other modes
use its symmetric form -slope*|i - j|, since BLOOM's form carries no relative position
for keys that follow the query (`split_heads` makes bidirectional heads one-sided, so that
an encoder can tell left from right). Parameter names mirror Hugging Face's so `bloom_jax.hf`
is a table, not a puzzle.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bloom_jax import layers
from bloom_jax.compat import SCAN_METADATA, param

POSITIONS = ('alibi', 'sinusoidal', 'none')
ATTENTION_KERNELS = ('einsum', 'cudnn')

# Which activations the backward pass may keep instead of recomputing.
REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class BloomConfig:
  vocab_size: int = 250880
  hidden_size: int = 64
  n_layer: int = 2
  n_head: int = 8
  layer_norm_epsilon: float = 1e-5
  position: str = 'alibi'
  dropout: float = 0.0            # on each residual branch, as HF's hidden_dropout
  attention_dropout: float = 0.0  # on the attention probabilities
  init_std: float = 0.02
  dtype: str = 'float32'          # compute dtype
  param_dtype: str = 'float32'
  remat: str = 'none'
  alibi_fp32: bool = False        # keep the ALiBi bias in float32 (HF casts it to `dtype`)
  # Bidirectional calls only: even heads read leftward, odd heads rightward, so that an
  # encoder sees direction, which symmetric ALiBi hides. Causal and prefix calls unchanged.
  split_heads: bool = False
  # 'einsum': scores materialised, as HF computes them (any backend, dtype, cache, dropout).
  # 'cudnn': cuDNN's fused flash attention on NVIDIA GPUs for cache-free calls without
  # attention dropout; the other calls keep the einsum path.
  attention_kernel: str = 'einsum'

  def __post_init__(self):
    errors = []
    if self.hidden_size % self.n_head:
      errors.append(f'hidden_size ({self.hidden_size}) must be divisible by n_head ({self.n_head})')
    for name in ('vocab_size', 'hidden_size', 'n_layer', 'n_head'):
      if getattr(self, name) < 1:
        errors.append(f'{name} must be positive, got {getattr(self, name)}')
    if self.position not in POSITIONS:
      errors.append(f'position must be one of {POSITIONS}, got {self.position!r}')
    if self.remat not in REMAT_POLICIES:
      errors.append(f'remat must be one of {tuple(REMAT_POLICIES)}, got {self.remat!r}')
    if self.attention_kernel not in ATTENTION_KERNELS:
      errors.append(f'attention_kernel must be one of {ATTENTION_KERNELS}, '
                    f'got {self.attention_kernel!r}')
    if self.attention_kernel == 'cudnn' and self.dtype == 'float32':
      errors.append("attention_kernel 'cudnn' needs dtype bfloat16 or float16")
    for name in ('dtype', 'param_dtype'):
      if getattr(self, name) not in ('float32', 'bfloat16', 'float16'):
        errors.append(f'{name} must be float32, bfloat16 or float16, got {getattr(self, name)!r}')
    for name in ('dropout', 'attention_dropout'):
      if not 0.0 <= getattr(self, name) < 1.0:
        errors.append(f'{name} must be in [0, 1), got {getattr(self, name)}')
    if errors:
      raise ValueError('model.' + '; model.'.join(errors))

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.n_head

  @property
  def num_params(self) -> int:
    h, v = self.hidden_size, self.vocab_size
    return v * h + 2 * h + self.n_layer * (12 * h * h + 13 * h) + 2 * h


def init_cache(cfg: BloomConfig, batch_size: int, max_length: int, dtype=None,
               per_layer: bool = False) -> dict[str, Any]:
  """An empty key/value cache for `max_length` tokens (prompt and generated together).

  Keys are [B, n, d, T] and values [B, n, T, d] per layer (see layers.Attention), stacked
  along a leading layer axis for the scanned model, or one array per layer in a list
  (`per_layer`) for a model whose layers were unstacked (`unstack_layers`).
  """
  n, d, dtype = cfg.n_head, cfg.head_dim, dtype or cfg.dtype
  k, v = (batch_size, n, d, max_length), (batch_size, n, max_length, d)
  if per_layer:
    kv = {'k': [jnp.zeros(k, dtype) for _ in range(cfg.n_layer)],
          'v': [jnp.zeros(v, dtype) for _ in range(cfg.n_layer)]}
  else:
    kv = {'k': jnp.zeros((cfg.n_layer, *k), dtype), 'v': jnp.zeros((cfg.n_layer, *v), dtype)}
  return {
      **kv,
      'mask': jnp.zeros((batch_size, max_length), jnp.int32),  # which cache slots hold tokens
      'index': jnp.zeros((), jnp.int32),                        # next free slot
  }


class Bloom(nnx.Module):
  """BLOOM trunk plus the tied LM head."""

  def __init__(self, cfg: BloomConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.word_embeddings = param(
        cfg.init_std * jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.hidden_size),
                                         cfg.param_dtype), ('vocab', 'embed'))
    self.word_embeddings_layernorm = layers.LayerNorm(
        cfg.hidden_size, cfg.layer_norm_epsilon, cfg.param_dtype)

    @nnx.split_rngs(splits=cfg.n_layer)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata=SCAN_METADATA)
    def make_blocks(rngs):
      return layers.Block(cfg, rngs=rngs)

    self.h = make_blocks(rngs)
    self.ln_f = layers.LayerNorm(cfg.hidden_size, cfg.layer_norm_epsilon, cfg.param_dtype)

  def __call__(self, input_ids, attention_mask=None, *, mode='causal', prefix_mask=None,
               cache=None, dropout_key=None):
    """Float32 logits [B, S, V]; with a `cache`, returns (logits, updated cache)."""
    hidden, cache = self.hidden_states(input_ids, attention_mask, mode=mode,
                                       prefix_mask=prefix_mask, cache=cache,
                                       dropout_key=dropout_key)
    logits = self.logits(hidden)
    return logits if cache is None else (logits, cache)

  def logits(self, hidden: jax.Array) -> jax.Array:
    embeddings = self.word_embeddings[...].astype(self.cfg.dtype)
    return tied_projection(hidden, embeddings).astype(jnp.float32)

  def hidden_states(self, input_ids, attention_mask=None, *, mode='causal', prefix_mask=None,
                    segment_ids=None, added_embeddings=None, keep_tokens=None, cache=None,
                    dropout_key=None):
    """Final-LayerNorm hidden states [B, S, H] (and the updated cache, or None).

    `attention_mask` [B, S] marks real tokens (1) and padding (0), left or right.
    `segment_ids` [B, S] instead numbers the examples packed into each row (1, 2, ...;
    0 is padding): every example attends only to itself, its positions start at 0, and
    the mode applies inside it, so its hidden states are those it would have alone.
    `prefix_mask` [B, S] marks the bidirectional prefix (of each segment) in mode
    'prefix'. `added_embeddings` [B, S, H] are added to the word embeddings before their
    LayerNorm: further input embeddings, such as a task's part-of-speech tag embeddings.
    `keep_tokens` [B, S] (bool) zeroes the word embeddings where it is False (token dropout).
    With a cache, the S new tokens follow the ones already cached. `dropout_key` turns
    dropout on (training); without it the model is deterministic.
    """
    cfg = self.cfg
    batch, length = input_ids.shape
    if segment_ids is not None:
      if cache is not None:
        raise ValueError('packed rows (segment_ids) are for cache-free calls')
      attention_mask = segment_ids > 0
    if attention_mask is None:
      attention_mask = jnp.ones((batch, length), jnp.int32)
    attention_mask = attention_mask.astype(jnp.int32)
    if cache is None:
      offset, key_mask, key_prefix = 0, attention_mask, prefix_mask
    else:
      offset = cache['index']
      key_mask = jax.lax.dynamic_update_slice_in_dim(cache['mask'], attention_mask, offset, 1)
      key_prefix = None if prefix_mask is None else jax.lax.dynamic_update_slice_in_dim(
          jnp.zeros_like(key_mask), prefix_mask.astype(jnp.int32), offset, 1)
    positions = (layers.token_positions(key_mask) if segment_ids is None
                 else layers.segment_positions(segment_ids))
    query_positions = jax.lax.dynamic_slice_in_dim(positions, offset, length, 1)

    x = layers.embedding_lookup(self.word_embeddings[...], input_ids).astype(cfg.dtype)
    if keep_tokens is not None:
      x = x * keep_tokens[..., None].astype(cfg.dtype)
    if added_embeddings is not None:
      x = x + added_embeddings.astype(cfg.dtype)
    if cfg.position == 'sinusoidal':
      x = x + layers.sinusoidal_embedding(query_positions, cfg.hidden_size).astype(cfg.dtype)
    x = self.word_embeddings_layernorm(x)

    alibi = None
    if cfg.position == 'alibi' and mode == 'causal' and cfg.attention_kernel == 'einsum':
      alibi = layers.alibi_bias(positions, cfg.n_head)
    elif cfg.position == 'alibi':
      # Also the causal bias for cuDNN: on allowed keys it is BLOOM's up to a row constant,
      # and its values stay small near the diagonal, where a bf16 bias must be exact.
      alibi = layers.symmetric_alibi_bias(query_positions, positions, cfg.n_head,
                                          split=cfg.split_heads and mode == 'bidirectional')
    allowed = layers.attention_allowed(key_mask, offset, length, mode, key_prefix, segment_ids)
    kv = None if cache is None else {'k': cache['k'], 'v': cache['v']}
    layer_keys = None if dropout_key is None else jax.random.split(dropout_key, cfg.n_layer)
    if isinstance(self.h, nnx.List):  # per-layer blocks, see `unstack_layers`
      x, kv = _loop_blocks(self.h, x, alibi, allowed, kv, offset, layer_keys)
    else:
      x, kv = _scan_blocks(self.h, x, alibi, allowed, kv, offset, layer_keys, cfg.remat)
    x = self.ln_f(x)
    if cache is not None:
      cache = {**kv, 'mask': key_mask, 'index': cache['index'] + length}
    return x, cache


@jax.custom_vjp
def tied_projection(hidden: jax.Array, embeddings: jax.Array) -> jax.Array:
  """[..., H] hidden states onto the [V, H] embedding matrix: [..., V] logits."""
  return jnp.einsum('...h,vh->...v', hidden, embeddings)


def _tied_projection_fwd(hidden, embeddings):
  return tied_projection(hidden, embeddings), (hidden, embeddings)


def _tied_projection_bwd(residuals, dlogits):
  # The embedding gradient is dlogits^T @ hidden, contracted over the flattened tokens.
  # Left to autodiff, XLA first writes the [tokens, V] logits gradient out transposed
  # (the largest array of the step) and then multiplies; contracting it along its
  # leading axis in place is a plain GEMM with a transposed operand.
  hidden, embeddings = residuals
  dhidden = jnp.einsum('...v,vh->...h', dlogits, embeddings)
  dembeddings = jax.lax.dot_general(layers.flat_tokens(dlogits), layers.flat_tokens(hidden),
                                    (((0,), (0,)), ((), ())))
  return dhidden, dembeddings


tied_projection.defvjp(_tied_projection_fwd, _tied_projection_bwd)


def _scan_blocks(blocks, x, alibi, allowed, kv, cache_index, layer_keys, remat):
  def apply(block, x, alibi, allowed, kv, cache_index, key):
    return block(x, alibi, allowed, kv, cache_index, key)

  if remat != 'none':
    apply = nnx.remat(apply, policy=REMAT_POLICIES[remat])

  @nnx.scan(in_axes=(nnx.Carry, 0, None, None, 0, None, 0), out_axes=(nnx.Carry, 0),
            transform_metadata=SCAN_METADATA)
  def step(x, block, alibi, allowed, kv, cache_index, key):
    return apply(block, x, alibi, allowed, kv, cache_index, key)

  return step(x, blocks, alibi, allowed, kv, cache_index, layer_keys)


def _loop_blocks(blocks, x, alibi, allowed, kv, cache_index, layer_keys):
  if kv is not None and not isinstance(kv['k'], list):
    raise ValueError('a model with unstacked layers takes a per-layer cache: '
                     'init_cache(..., per_layer=True)')
  new_kv = {'k': [], 'v': []}
  for i, block in enumerate(blocks):
    layer_kv = None if kv is None else {'k': kv['k'][i], 'v': kv['v'][i]}
    key = None if layer_keys is None else layer_keys[i]
    x, layer_kv = block(x, alibi, allowed, layer_kv, cache_index, key)
    if layer_kv is not None:
      new_kv['k'].append(layer_kv['k'])
      new_kv['v'].append(layer_kv['v'])
  return x, None if kv is None else new_kv


def unstack_layers(model: Bloom) -> Bloom:
  """The same model with its blocks as a list of per-layer modules, for inference.

  Inside a decoding loop, a scan over stacked weights copies each layer's slice out of
  the stack at every token: as many bytes again as the matmuls read (on CPU it took as
  long as they did). Unstacked once before the loop, every weight is read in place. The
  price: one copy of the weights, and a step whose compile time grows with depth. A model
  already unstacked is returned as it is, so weights that do not change between calls
  (serving, benchmarks) are unstacked once rather than by every `decoding.generate`.
  """
  if isinstance(model.h, nnx.List):
    return model
  graphdef, state = nnx.split(model.h)
  blocks = [nnx.merge(graphdef, jax.tree.map(lambda x, i=i: x[i], state))
            for i in range(model.cfg.n_layer)]
  unstacked = nnx.merge(*nnx.split(model))
  unstacked.h = nnx.List(blocks)
  return unstacked
