"""Config checks that run before anything is compiled, and config -> model settings.

Every error names the offending key, e.g. `model.n_head: hidden_size (64) must be
divisible by n_head (6)`, so a typo costs seconds, not a compile.
"""

import dataclasses
import os

import jax
import ml_collections

from bloom_jax import optim, sharding
from bloom_jax.errors import ConfigError, DataError
from bloom_jax.model import BloomConfig
from bloom_jax.steps import GRADNORM_SCOPES, LOSS_BALANCING

REQUIRED = ('seed', 'total_steps', 'log_every', 'eval_every', 'checkpoint_every',
            'mesh.data', 'mesh.fsdp', 'mesh.tensor', 'data.dir', 'model', 'optimizer', 'tasks')
POSITIVE = ('total_steps', 'log_every', 'eval_every', 'checkpoint_every', 'keep_checkpoints',
            'data.batch_size', 'optimizer.grad_accum')


def _lookup(config, dotted: str):
  node = config
  for part in dotted.split('.'):
    if part not in node:
      raise ConfigError(f'{dotted}: required key is missing')
    node = node[part]
  return node


SHAPE_KEYS = ('vocab_size', 'hidden_size', 'n_layer', 'n_head')


def model_config(config: ml_collections.ConfigDict, vocab_size: int) -> BloomConfig:
  """BloomConfig from `config.model`; unknown model keys are errors, not silently ignored.

  The vocabulary is the tokenizer's, or `model.vocab_size` when that is larger (BLOOM
  pads its 250,680 tokens to 250,880 rows). With `model.init_from_hf` the shape comes
  from the checkpoint's config.json and `config.model` sets only dtypes, remat, dropout.
  """
  fields = {f.name for f in dataclasses.fields(BloomConfig)}
  values = dict(config.model)
  unknown = sorted(set(values) - fields - {'init_from_hf'})
  if unknown:
    raise ConfigError(f'model.{unknown[0]}: unknown key (known: {", ".join(sorted(fields))})')
  hf_dir = values.pop('init_from_hf', '')
  if hf_dir:
    from bloom_jax import hf  # noqa: PLC0415 - only fine-tuning runs read HF configs
    try:
      hf_shape = hf.read_config(hf_dir)
    except hf.CheckpointError as e:
      raise ConfigError(f'model.init_from_hf: {e}') from None
    values.update({k: getattr(hf_shape, k) for k in SHAPE_KEYS})
  if values.get('vocab_size', 0) and values['vocab_size'] < vocab_size:
    if hf_dir:
      raise ConfigError(_vocabulary_mismatch(hf_dir, values['vocab_size'], config, vocab_size))
    raise ConfigError(f'model.vocab_size: {values["vocab_size"]} is smaller than the '
                      f'tokenizer vocabulary ({vocab_size})')
  values['vocab_size'] = max(vocab_size, values.get('vocab_size', 0))
  try:
    return BloomConfig(**values)
  except ValueError as e:
    raise ConfigError(str(e)) from None


# Megatron pads the embedding table to a multiple of 128 x its tensor-parallel ways; BLOOM's
# 250,680 tokens take 250,880 rows (a multiple of 512), rows no token id ever reaches.
VOCAB_PADDING = 512


def tokenizer_size(config: ml_collections.ConfigDict) -> int:
  """The vocabulary as far as it is known before any data is read.

  Fine-tuning a Hugging Face checkpoint (`model.init_from_hf`) needs the checkpoint's own
  tokenizer.json at `tokenizer.path`: a BPE trained here would give every id another
  meaning than the one the checkpoint's embedding learned, so its absence is an error
  (never a silently trained tokenizer), and its size is read from the file. Otherwise the
  size is `tokenizer.vocab_size`, the size a trained BPE gets.
  """
  hf_dir, path = config.model.get('init_from_hf', ''), config.tokenizer.get('path', '')
  if not hf_dir:
    return max(config.tokenizer.get('vocab_size', 1), 1)
  if not path:
    own = os.path.join(hf_dir, 'tokenizer.json')
    hint = (f'--config.tokenizer.path={own}' if os.path.isfile(own)
            else f"the checkpoint's tokenizer.json (there is none in {hf_dir})")
    raise ConfigError(f'tokenizer.path: model.init_from_hf needs the tokenizer the checkpoint '
                      f'was trained with, not one trained here; give {hint}')
  from bloom_jax import tokenizer  # noqa: PLC0415 - only fine-tuning runs read it this early
  try:  # a tokenizers JSON file, parsed (never executed); the library raises bare Exception
    return tokenizer.Tokenizer.load(path).vocab_size
  except Exception as e:  # noqa: BLE001
    raise DataError(f'tokenizer.path: {path} is not a usable tokenizer.json '
                    f'({" ".join(str(e).split())[:200]})') from None


def _vocabulary_mismatch(hf_dir: str, rows: int, config, tokens: int) -> str:
  return (f'model.init_from_hf: {hf_dir} has {rows:,} embedding rows, but '
          f'tokenizer.path: {config.tokenizer.get("path") or "(trained)"} has {tokens:,} tokens; '
          f'fine-tuning needs the checkpoint\'s own tokenizer (its rows may exceed the tokens '
          f'only by padding, fewer than {VOCAB_PADDING})')


def keeps_average(config) -> bool:
  """Whether a run's train state holds the parameters' moving average (`ema_params`,
  optimizer.ema_decay > 0); `config` a ConfigDict or a saved config's dict."""
  return bool((config.get('optimizer') or {}).get('ema_decay', 0.0))


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises ConfigError naming the first key that cannot work."""
  for key in REQUIRED:
    _lookup(config, key)
  for key in POSITIVE:
    value = _lookup(config, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ConfigError(f'{key}: must be a positive integer, got {value!r}')
  try:
    sharding.mesh_shape(config.mesh, num_devices or jax.device_count())
  except ValueError as e:
    raise ConfigError(str(e)) from None
  tokens = tokenizer_size(config)
  model = model_config(config, vocab_size=tokens)
  if config.model.get('init_from_hf') and model.vocab_size - tokens >= VOCAB_PADDING:
    raise ConfigError(_vocabulary_mismatch(config.model.init_from_hf, model.vocab_size, config,
                                           tokens))
  if config.optimizer.schedule not in ('cosine', 'linear', 'constant'):
    raise ConfigError(f'optimizer.schedule: must be cosine, linear or constant, '
                      f'got {config.optimizer.schedule!r}')
  if config.optimizer.warmup_steps < 0:
    raise ConfigError('optimizer.warmup_steps: must be >= 0')
  if not config.optimizer.clip_norm > 0:  # 0 would zero every update
    raise ConfigError(f'optimizer.clip_norm: must be > 0 (a large value turns clipping off), '
                      f'got {config.optimizer.clip_norm!r}')
  ema_decay = config.optimizer.get('ema_decay', 0.0)
  if (isinstance(ema_decay, bool) or not isinstance(ema_decay, int | float)
      or not 0 <= ema_decay < 1):
    raise ConfigError(f'optimizer.ema_decay: must be in [0, 1) (0: no moving average), '
                      f'got {ema_decay!r}')
  bag_optimizer = config.optimizer.get('ngram_optimizer', 'adamw')
  if bag_optimizer not in optim.NGRAM_OPTIMIZERS:
    raise ConfigError(f'optimizer.ngram_optimizer: must be one of '
                      f'{", ".join(optim.NGRAM_OPTIMIZERS)}, got {bag_optimizer!r}')
  if bag_optimizer != 'adamw' and not config.optimizer.get('ngram_learning_rate', 0.0) > 0:
    raise ConfigError(f'optimizer.ngram_learning_rate: must be > 0 with ngram_optimizer='
                      f'{bag_optimizer!r}, got {config.optimizer.get("ngram_learning_rate")!r}')
  balancing = config.get('loss_balancing', 'static')
  if balancing not in LOSS_BALANCING:
    raise ConfigError(f'loss_balancing: must be one of {", ".join(LOSS_BALANCING)}, '
                      f'got {balancing!r}')
  if not config.get('gradnorm_max_gain', 0.0) >= 0:
    raise ConfigError(f'gradnorm_max_gain: must be >= 0 (0: no cap), '
                      f'got {config.gradnorm_max_gain!r}')
  if config.get('gradnorm_scope', 'all') not in GRADNORM_SCOPES:
    raise ConfigError(f'gradnorm_scope: must be one of {", ".join(GRADNORM_SCOPES)}, '
                      f'got {config.gradnorm_scope!r}')
  if config.get('best_mode', 'max') not in ('max', 'min'):
    raise ConfigError(f"best_mode: must be 'max' or 'min', got {config.best_mode!r}")
  if not config.tasks:
    raise ConfigError('tasks: the mixture has no task')
