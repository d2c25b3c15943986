"""Hugging Face BLOOM checkpoints in and out, through safetensors only (never pickle).

    model = bloom_jax.hf.load('path/to/bloom-560m')      # config.json + *.safetensors
    logits = model(input_ids, attention_mask=mask)         # float32 [B, S, V]
    bloom_jax.hf.save(model, 'out/')      # BloomForCausalLM.from_pretrained('out/') reads it

The conversion is a name table plus one transform per tensor: torch Linear weights are
[out, in] and ours [in, out]; the fused QKV keeps HF's head-interleaved order with the
head axis made explicit ([3H, H] -> [H, heads, 3, head_dim]).

Command line, between HF checkpoints and `bloom_jax.train` runs (see __main__.py):
    python -m bloom_jax.hf import --hf_dir DIR --config CONFIG \
        --config.tokenizer.path=DIR/tokenizer.json --workdir WORKDIR  # step 0
    python -m bloom_jax.hf export --workdir WORKDIR --hf_dir DIR [--step N]
"""

import json
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from bloom_jax.errors import CheckpointError
from bloom_jax.model import Bloom, BloomConfig

# --------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------


def config_from_hf(hf: dict, source: str = 'config.json', **overrides) -> BloomConfig:
  """BloomConfig from a transformers config.json dict (legacy keys are ignored)."""
  model_type = hf.get('model_type')
  if model_type != 'bloom':
    raise CheckpointError(f'{source}: model_type {model_type!r} is not a BLOOM checkpoint')
  if hf.get('apply_residual_connection_post_layernorm', False):
    raise CheckpointError(
        f'{source}: apply_residual_connection_post_layernorm=true is not supported')
  try:
    return BloomConfig(
        vocab_size=int(hf['vocab_size']),
        hidden_size=int(hf.get('hidden_size', hf.get('n_embed'))),
        n_layer=int(hf.get('n_layer', hf.get('num_hidden_layers'))),
        n_head=int(hf.get('n_head', hf.get('num_attention_heads'))),
        layer_norm_epsilon=float(hf.get('layer_norm_epsilon', 1e-5)),
        dropout=float(hf.get('hidden_dropout', 0.0)),
        attention_dropout=float(hf.get('attention_dropout', 0.0)),
        init_std=float(hf.get('initializer_range', 0.02)),
        **overrides)
  except (KeyError, TypeError, ValueError) as e:
    raise CheckpointError(f'{source}: not a usable BLOOM config ({e})') from None


def config_to_hf(cfg: BloomConfig) -> dict:
  return {
      'architectures': ['BloomForCausalLM'],
      'model_type': 'bloom',
      'vocab_size': cfg.vocab_size,
      'hidden_size': cfg.hidden_size,
      'n_layer': cfg.n_layer,
      'n_head': cfg.n_head,
      'layer_norm_epsilon': cfg.layer_norm_epsilon,
      'hidden_dropout': cfg.dropout,
      'attention_dropout': cfg.attention_dropout,
      'initializer_range': cfg.init_std,
      'apply_residual_connection_post_layernorm': False,
      'tie_word_embeddings': True,
      'bos_token_id': 1,
      'eos_token_id': 2,
      'pad_token_id': 3,
      'unk_token_id': 0,
      'use_cache': True,
  }


# --------------------------------------------------------------------------------------
# The name table: (HF name, our path, HF -> ours, ours -> HF)
# --------------------------------------------------------------------------------------


def _tables(cfg: BloomConfig):
  h, n, d = cfg.hidden_size, cfg.n_head, cfg.head_dim
  same = (lambda x: x, lambda x: x)
  linear = (lambda w: w.T, lambda k: k.T)
  qkv_kernel = (lambda w: w.reshape(n, 3, d, h).transpose(3, 0, 1, 2),
                lambda k: k.transpose(1, 2, 3, 0).reshape(3 * h, h))
  qkv_bias = (lambda b: b.reshape(n, 3, d), lambda b: b.reshape(3 * h))
  out_kernel = (lambda w: w.T.reshape(n, d, h), lambda k: k.reshape(h, h).T)

  def norm(hf, ours):
    return [(f'{hf}.weight', (*ours, 'scale'), *same), (f'{hf}.bias', (*ours, 'bias'), *same)]

  top = [('word_embeddings.weight', ('word_embeddings',), *same),
         *norm('word_embeddings_layernorm', ('word_embeddings_layernorm',)),
         *norm('ln_f', ('ln_f',))]
  per_layer = [
      *norm('input_layernorm', ('input_layernorm',)),
      ('self_attention.query_key_value.weight', ('attention', 'qkv_kernel'), *qkv_kernel),
      ('self_attention.query_key_value.bias', ('attention', 'qkv_bias'), *qkv_bias),
      ('self_attention.dense.weight', ('attention', 'out_kernel'), *out_kernel),
      ('self_attention.dense.bias', ('attention', 'out_bias'), *same),
      *norm('post_attention_layernorm', ('post_attention_layernorm',)),
      ('mlp.dense_h_to_4h.weight', ('mlp', 'up_kernel'), *linear),
      ('mlp.dense_h_to_4h.bias', ('mlp', 'up_bias'), *same),
      ('mlp.dense_4h_to_h.weight', ('mlp', 'down_kernel'), *linear),
      ('mlp.dense_4h_to_h.bias', ('mlp', 'down_bias'), *same),
  ]
  return top, per_layer


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def state_from_hf(tensors: Callable[[str], np.ndarray], cfg: BloomConfig) -> dict:
  """Our nested parameter dict from HF tensors, fetched by bare name via `tensors`."""
  top, per_layer = _tables(cfg)
  state = {}
  for name, path, to_ours, _ in top:
    _set(state, path, to_ours(tensors(name)))
  for name, path, to_ours, _ in per_layer:
    stacked = [to_ours(tensors(f'h.{i}.{name}')) for i in range(cfg.n_layer)]
    _set(state, ('h', *path), np.stack(stacked))
  return state


def state_to_hf(state: dict, cfg: BloomConfig) -> dict[str, np.ndarray]:
  """HF tensors (bare names, torch layouts) from our nested parameter dict."""
  top, per_layer = _tables(cfg)
  tensors = {name: to_hf(np.asarray(_get(state, path))) for name, path, _, to_hf in top}
  for name, path, _, to_hf in per_layer:
    stacked = np.asarray(_get(state, ('h', *path)))
    for i in range(cfg.n_layer):
      tensors[f'h.{i}.{name}'] = to_hf(stacked[i])
  return {k: np.ascontiguousarray(v) for k, v in tensors.items()}


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------


def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    raise CheckpointError(f'{path}: not found')
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f'{path}: not valid JSON ({e})') from None


def _weight_files(directory: str) -> list[str]:
  index = os.path.join(directory, 'model.safetensors.index.json')
  if os.path.isfile(index):
    weight_map = _read_json(index).get('weight_map')
    if not isinstance(weight_map, dict):
      raise CheckpointError(f'{index}: has no weight_map')
    return [os.path.join(directory, f) for f in sorted(set(weight_map.values()))]
  single = os.path.join(directory, 'model.safetensors')
  if os.path.isfile(single):
    return [single]
  legacy = os.path.join(directory, 'pytorch_model.bin')
  if os.path.isfile(legacy):
    return [legacy]
  raise CheckpointError(f'{directory}: no model.safetensors, model.safetensors.index.json '
                        'or pytorch_model.bin')


def _load_tensors(path: str) -> dict[str, np.ndarray]:
  if not os.path.isfile(path):
    raise CheckpointError(f'{path}: not found (listed in the safetensors index)')
  if path.endswith('.bin'):
    # Legacy torch files are zip+pickle; weights_only refuses anything but tensors.
    import torch
    try:
      state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many unrelated types here
      raise CheckpointError(f'{path}: cannot be read as a weights-only torch file ({e})') from None
    return {k: v.float().numpy() for k, v in state.items()}
  try:
    return load_file(path)
  except Exception as e:  # noqa: BLE001 - safetensors raises its own and OS errors
    raise CheckpointError(f'{path}: not a readable safetensors file ({e})') from None


def _strip(name: str) -> str:
  return name.removeprefix('transformer.')


def read_config(path: str, **overrides) -> BloomConfig:
  """The BloomConfig of a checkpoint directory's config.json."""
  source = os.path.join(path, 'config.json')
  return config_from_hf(_read_json(source), source=source, **overrides)


def load(path: str, *, dtype: str = 'float32', param_dtype: str = 'float32',
         **config_overrides) -> Bloom:
  """A `Bloom` model with the weights of a transformers BLOOM checkpoint directory."""
  cfg = read_config(path, dtype=dtype, param_dtype=param_dtype, **config_overrides)
  return from_params(cfg, load_params(path, cfg))


def load_params(path: str, cfg: BloomConfig) -> dict:
  """The nested parameter dict (numpy, param_dtype) of a checkpoint directory."""
  tensors, origin = {}, {}
  for file in _weight_files(path):
    for name, value in _load_tensors(file).items():
      tensors[_strip(name)] = value
      origin[_strip(name)] = file
  expected = _expected_shapes(cfg)

  def fetch(name):
    if name not in tensors:
      raise CheckpointError(f'{path}: missing tensor {name!r}')
    value = tensors[name]
    if tuple(value.shape) != expected[name]:
      raise CheckpointError(f'{origin[name]}: tensor {name!r} has shape {tuple(value.shape)}, '
                            f'expected {expected[name]} from config.json')
    return value.astype(np.float32).astype(cfg.param_dtype)

  if 'lm_head.weight' in tensors:
    fetch('word_embeddings.weight')
    if not np.array_equal(tensors['lm_head.weight'], tensors['word_embeddings.weight']):
      raise CheckpointError(f"{origin['lm_head.weight']}: lm_head.weight differs from "
                            'word_embeddings.weight, but BLOOM ties them')
  return state_from_hf(fetch, cfg)


def _expected_shapes(cfg: BloomConfig) -> dict[str, tuple[int, ...]]:
  abstract = nnx.to_pure_dict(nnx.state(abstract_model(cfg), nnx.Param))
  abstract = jax.tree.map(lambda s: np.zeros(s.shape, np.int8), abstract)
  return {k: v.shape for k, v in state_to_hf(abstract, cfg).items()}


def abstract_model(cfg: BloomConfig) -> Bloom:
  """The model's structure with shapes only: nothing is allocated."""
  return nnx.eval_shape(lambda: Bloom(cfg, rngs=nnx.Rngs(0)))


def from_params(cfg: BloomConfig, params: dict) -> Bloom:
  graphdef, state = nnx.split(abstract_model(cfg))
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


def save(model: Bloom, path: str) -> None:
  """Writes config.json and model.safetensors that `BloomForCausalLM.from_pretrained` reads."""
  os.makedirs(path, exist_ok=True)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  params = jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), params)
  tensors = {f'transformer.{k}': v for k, v in state_to_hf(params, model.cfg).items()}
  save_file(tensors, os.path.join(path, 'model.safetensors'), metadata={'format': 'pt'})
  with open(os.path.join(path, 'config.json'), 'w', encoding='utf-8') as f:
    json.dump(config_to_hf(model.cfg), f, indent=2)
