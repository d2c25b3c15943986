"""Parity with transformers' BloomForCausalLM, checkpoint import/export, and bad checkpoints."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from safetensors.numpy import load_file, save_file  # noqa: E402
from transformers.models.bloom.modeling_bloom import build_alibi_tensor  # noqa: E402

from bloom_jax import hf, layers  # noqa: E402
from bloom_jax.model import Bloom, BloomConfig  # noqa: E402
from tests.hf_fixtures import hf_logits, padded_batch, random_hf_bloom, save_hf  # noqa: E402

TOL = 1e-4

# (vocab, hidden, heads, layers): heads cover 1, powers of two, and 5, 6, 12, whose
# ALiBi slopes take the extra-slope branch.
CONFIGS = [
    (100, 24, 6, 2),
    (64, 48, 12, 3),
    (37, 8, 1, 1),
    (211, 40, 5, 4),
    (50, 64, 16, 2),
]


@nnx.jit
def _forward(model, ids, mask):
  return model(ids, mask)


def _jax_logits(model, ids, mask):
  return np.asarray(_forward(model, jnp.asarray(ids), jnp.asarray(mask)))


def _max_real_diff(a, b, mask):
  return float(np.abs(a - b)[np.asarray(mask) > 0].max())


@pytest.fixture(scope='module', params=CONFIGS, ids=lambda c: 'v{}-h{}-n{}-l{}'.format(*c))
def converted(request, tmp_path_factory):
  vocab, hidden, heads, n_layer = request.param
  model = random_hf_bloom(vocab, hidden, heads, n_layer, seed=sum(request.param))
  directory = save_hf(model, str(tmp_path_factory.mktemp('hf')))
  return model, hf.load(directory)


@pytest.mark.parametrize('side', ['left', 'right'])
def test_logits_match_transformers(converted, side):
  hf_model, model = converted
  vocab = hf_model.config.vocab_size
  assert model.cfg.n_head == hf_model.config.n_head
  assert model.cfg.n_layer == hf_model.config.n_layer
  ids, mask = padded_batch(np.random.default_rng(0), vocab, [9, 5, 1, 7], 9, side)
  ref = hf_logits(hf_model, ids, mask)
  assert _max_real_diff(_jax_logits(model, ids, mask), ref, mask) <= TOL
  # Random weights make logits O(1): a tolerance of 1e-4 is then a real check.
  assert np.abs(ref).max() > 0.5


@pytest.fixture(scope='module')
def small_hf():
  return random_hf_bloom(100, 24, 6, 2, seed=7)


@pytest.fixture()
def batch():
  ids, mask = padded_batch(np.random.default_rng(1), 100, [6, 3, 6], 6, 'left')
  mask[2, -2:] = 0  # a right-padded row in the same batch
  return ids, mask


def test_sharded_checkpoint_loads(small_hf, batch, tmp_path):
  directory = save_hf(small_hf, str(tmp_path / 'sharded'), max_shard_size='20KB')
  index = json.loads((tmp_path / 'sharded' / 'model.safetensors.index.json').read_text())
  assert len(set(index['weight_map'].values())) > 1
  assert not (tmp_path / 'sharded' / 'model.safetensors').exists()
  ids, mask = batch
  diff = _max_real_diff(_jax_logits(hf.load(directory), ids, mask),
                        hf_logits(small_hf, ids, mask), mask)
  assert diff <= TOL


def _bare_checkpoint(small_hf, tmp_path, extra=None):
  source = save_hf(small_hf, str(tmp_path / 'prefixed'))
  tensors = {k.removeprefix('transformer.'): v
             for k, v in load_file(os.path.join(source, 'model.safetensors')).items()}
  tensors.update(extra or {})
  target = tmp_path / 'bare'
  target.mkdir()
  shutil.copy(os.path.join(source, 'config.json'), target / 'config.json')
  save_file(tensors, str(target / 'model.safetensors'), metadata={'format': 'pt'})
  return str(target), tensors


def test_checkpoint_without_transformer_prefix_loads(small_hf, batch, tmp_path):
  directory, tensors = _bare_checkpoint(small_hf, tmp_path)
  assert not any(k.startswith('transformer.') for k in tensors)
  ids, mask = batch
  diff = _max_real_diff(_jax_logits(hf.load(directory), ids, mask),
                        hf_logits(small_hf, ids, mask), mask)
  assert diff <= TOL


def test_explicit_lm_head_must_equal_embeddings(small_hf, batch, tmp_path):
  embeddings = small_hf.transformer.word_embeddings.weight.detach().numpy().copy()
  tied, _ = _bare_checkpoint(small_hf, tmp_path / 'tied', {'lm_head.weight': embeddings})
  ids, mask = batch
  assert _max_real_diff(_jax_logits(hf.load(tied), ids, mask),
                        hf_logits(small_hf, ids, mask), mask) <= TOL
  untied, _ = _bare_checkpoint(small_hf, tmp_path / 'untied',
                               {'lm_head.weight': embeddings + 1.0})
  with pytest.raises(hf.CheckpointError, match='lm_head.weight'):
    hf.load(untied)


def _random_model(cfg: BloomConfig, seed: int) -> Bloom:
  """Every parameter random, so LayerNorms and biases are exported with real content."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Bloom(cfg, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(seed)
  state = jax.tree.map(lambda x: jnp.asarray(0.3 * rng.standard_normal(x.shape), x.dtype), state)
  return nnx.merge(graphdef, state)


@pytest.mark.parametrize('n_head,hidden,n_layer', [(6, 24, 2), (5, 20, 3)])
def test_export_loads_in_transformers(tmp_path, n_head, hidden, n_layer):
  cfg = BloomConfig(vocab_size=90, hidden_size=hidden, n_head=n_head, n_layer=n_layer)
  model = _random_model(cfg, seed=4)
  hf.save(model, str(tmp_path))
  hf_model, info = transformers.BloomForCausalLM.from_pretrained(
      str(tmp_path), output_loading_info=True)
  hf_model.eval()
  assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys']
  ids, mask = padded_batch(np.random.default_rng(2), 90, [8, 4], 8, 'left')
  ref = hf_logits(hf_model, ids, mask)
  assert _max_real_diff(_jax_logits(model, ids, mask), ref, mask) <= TOL
  assert np.abs(ref).max() > 0.5
  reloaded = nnx.to_pure_dict(nnx.state(hf.load(str(tmp_path)), nnx.Param))
  original = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  jax.tree.map(np.testing.assert_array_equal, reloaded, original)


# --------------------------------------------------------------------------------------
# ALiBi against HF's own builder
# --------------------------------------------------------------------------------------


def _hf_slopes_elementwise(hf_slopes: np.ndarray) -> np.ndarray:
  """HF's recipe (float32 base ** int32 power) evaluated one element at a time.

  A one-element torch.pow runs libm's powf; the vectorized call inside HF runs SLEEF on
  full SIMD blocks, which may be 1 ulp off, so HF's own output depends on the CPU.
  """
  n = len(hf_slopes)
  p = 2 ** int(np.floor(np.log2(n)))
  exponents = list(range(1, p + 1)) + list(range(1, 2 * (n - p), 2))
  # pow(b, 1) == b exactly, so the bases can be read off HF's output.
  bases = [hf_slopes[0]] * p + [hf_slopes[p] if n > p else None] * (n - p)
  return np.array([torch.pow(torch.tensor(b), torch.tensor(e, dtype=torch.int32)).item()
                   for b, e in zip(bases, exponents, strict=True)], np.float32)


@pytest.mark.parametrize('n_head', [1, 5, 6, 8, 12, 16, 32, 112])
def test_alibi_slopes_equal_hf_exactly(n_head):
  alibi = build_alibi_tensor(torch.ones(1, 2, dtype=torch.long), n_head, torch.float32)
  hf_slopes = alibi[:, 0, 1].numpy()  # bias at key position 1 is the slope itself
  ours = layers.alibi_slopes(n_head)
  assert ours.dtype == np.float32 and ours.shape == (n_head,)
  np.testing.assert_array_equal(ours, _hf_slopes_elementwise(hf_slopes))
  simd = ours != hf_slopes
  ulps = np.abs(ours.view(np.int32).astype(np.int64) - hf_slopes.view(np.int32))
  assert ulps.max() <= 1
  # SLEEF blocks hold at least 16 floats; shorter lists must match bit for bit.
  assert n_head >= 16 or not simd.any()


def test_alibi_bias_with_padding_equals_hf():
  mask = np.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [0, 1, 1, 0, 1, 1]])
  n_head = 12
  ref = build_alibi_tensor(torch.as_tensor(mask), n_head, torch.float32).numpy()
  ours = layers.alibi_bias(layers.token_positions(jnp.asarray(mask)), n_head)
  real = np.broadcast_to(mask[:, None, None, :] > 0, ours.shape)
  # HF's value on pad keys is irrelevant (they are masked); compare where it counts.
  np.testing.assert_array_equal(np.asarray(ours)[real],
                                ref.reshape(3, n_head, 1, 6)[real])


# --------------------------------------------------------------------------------------
# Bad checkpoints: one line, naming the file or tensor
# --------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def good_dirs(tmp_path_factory):
  model = random_hf_bloom(40, 16, 4, 2, seed=11)
  single = save_hf(model, str(tmp_path_factory.mktemp('single')))
  sharded = save_hf(model, str(tmp_path_factory.mktemp('sharded')), max_shard_size='8KB')
  return single, sharded


@pytest.fixture()
def single(good_dirs, tmp_path):
  return shutil.copytree(good_dirs[0], tmp_path / 'single')


@pytest.fixture()
def sharded(good_dirs, tmp_path):
  return shutil.copytree(good_dirs[1], tmp_path / 'sharded')


def _expect_error(directory, *fragments):
  with pytest.raises(hf.CheckpointError) as info:
    hf.load(str(directory))
  message = str(info.value)
  assert '\n' not in message, message
  for fragment in fragments:
    assert fragment in message, message
  return message


def _rewrite(directory, edit):
  path = str(directory / 'model.safetensors')
  tensors = load_file(path)
  edit(tensors)
  save_file(tensors, path, metadata={'format': 'pt'})


def test_good_copies_load(single, sharded):
  # The corruptions below are the only thing wrong with these directories.
  hf.load(str(single))
  hf.load(str(sharded))


def test_missing_config(single):
  os.remove(single / 'config.json')
  _expect_error(single, 'config.json')


def test_config_not_json(single):
  (single / 'config.json').write_text('{"model_type": "bloom",')
  _expect_error(single, 'config.json')


def test_config_of_another_architecture(single):
  config = json.loads((single / 'config.json').read_text())
  config['model_type'] = 'gpt2'
  (single / 'config.json').write_text(json.dumps(config))
  _expect_error(single, 'config.json', 'gpt2')


def test_config_with_heads_not_dividing_hidden(single):
  config = json.loads((single / 'config.json').read_text())
  config['n_head'] = 3
  (single / 'config.json').write_text(json.dumps(config))
  _expect_error(single, 'config.json', 'n_head')


def test_no_weight_files(single):
  os.remove(single / 'model.safetensors')
  _expect_error(single, str(single), 'model.safetensors')


def test_missing_tensor(single):
  _rewrite(single, lambda t: t.pop('transformer.h.1.mlp.dense_4h_to_h.bias'))
  _expect_error(single, 'h.1.mlp.dense_4h_to_h.bias')


def test_tensor_of_wrong_shape(single):
  name = 'transformer.h.0.self_attention.query_key_value.weight'

  def transpose(tensors):
    tensors[name] = np.ascontiguousarray(tensors[name].T)

  _rewrite(single, transpose)
  _expect_error(single, 'h.0.self_attention.query_key_value.weight', 'model.safetensors',
                '(16, 48)', '(48, 16)')


def test_truncated_safetensors(single):
  path = single / 'model.safetensors'
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  _expect_error(single, str(path))


def test_garbage_safetensors_header(single):
  (single / 'model.safetensors').write_bytes(b'\xff' * 64)
  _expect_error(single, 'model.safetensors')


def test_index_naming_missing_shard(sharded):
  index = json.loads((sharded / 'model.safetensors.index.json').read_text())
  shards = sorted(set(index['weight_map'].values()))
  assert len(shards) > 1
  os.remove(sharded / shards[-1])
  _expect_error(sharded, shards[-1])


def test_index_without_weight_map(sharded):
  (sharded / 'model.safetensors.index.json').write_text('{"metadata": {}}')
  _expect_error(sharded, 'model.safetensors.index.json')


# --------------------------------------------------------------------------------------
# Randomized acceptance
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_random_configs_match_transformers(seed, tmp_path):
  rng = np.random.default_rng(1000 + seed)
  n_head = int(rng.integers(1, 17))
  hidden = n_head * int(rng.integers(1, 9))
  n_layer = int(rng.integers(1, 5))
  vocab = int(rng.integers(10, 501))
  hf_model = random_hf_bloom(vocab, hidden, n_head, n_layer, seed=seed)
  model = hf.load(save_hf(hf_model, str(tmp_path)))

  batch, total = 4, int(rng.integers(2, 13))
  ids = rng.integers(0, vocab, (batch, total))
  mask = np.zeros((batch, total), np.int64)
  for row in range(batch):
    n = int(rng.integers(1, total + 1))
    if rng.random() < 0.5:
      mask[row, total - n:] = 1
    else:
      mask[row, :n] = 1
  diff = _max_real_diff(_jax_logits(model, ids, mask), hf_logits(hf_model, ids, mask), mask)
  assert diff <= TOL, (n_head, hidden, n_layer, vocab, diff)
