"""Nothing a run loads can execute code: no pickle for checkpoints, HF weights or tokenizers."""

import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bloom_jax import checkpointing, hf, tokenizer
from bloom_jax.data.pipeline import Pipeline
from bloom_jax.errors import DataError
from tests.tiny import tiny_config


class _Payload:
  """Unpickling this runs a shell command that leaves a marker file."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f'touch {self.marker}',)


def _refuse_pickle(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError('pickle was used')

  class RefusingUnpickler(pickle.Unpickler):
    def __init__(self, *args, **kwargs):
      refuse()

  for name in ('load', 'loads'):
    monkeypatch.setattr(pickle, name, refuse)
  monkeypatch.setattr(pickle, 'Unpickler', RefusingUnpickler)


def test_checkpoints_restore_without_pickle(tmp_path, monkeypatch):
  _refuse_pickle(monkeypatch)
  state = {'w': jnp.arange(6.0).reshape(2, 3), 'step': jnp.asarray(3)}
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=1)
  ckpt.save(3, state, {'position': 3}, '{"model": "tiny"}')
  ckpt.wait()
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          state)
  step, restored, data_state = ckpt.restore_latest(abstract)
  ckpt.close()
  assert step == 3 and data_state == {'position': 3}
  np.testing.assert_array_equal(restored['w'], state['w'])


def test_hf_weights_load_without_pickle(tmp_path, monkeypatch):
  fixtures = pytest.importorskip('tests.hf_fixtures')
  directory = fixtures.save_hf(fixtures.random_hf_bloom(40, 16, 4, 2), str(tmp_path / 'hf'))
  _refuse_pickle(monkeypatch)
  hf.load(directory)


def test_pickled_hf_weights_never_run(tmp_path):
  torch = pytest.importorskip('torch')
  fixtures = pytest.importorskip('tests.hf_fixtures')
  directory = fixtures.save_hf(fixtures.random_hf_bloom(40, 16, 4, 2), str(tmp_path / 'hf'))
  for name in os.listdir(directory):
    if name.endswith('.safetensors'):
      os.remove(os.path.join(directory, name))
  marker = tmp_path / 'executed'
  torch.save({'transformer.word_embeddings.weight': _Payload(marker)},
             os.path.join(directory, 'pytorch_model.bin'))
  with pytest.raises(hf.CheckpointError):
    hf.load(directory)
  assert not marker.exists()


@pytest.mark.parametrize('content', [
    pickle.dumps(_Payload('MARKER')),                 # a pickle where JSON belongs
    b'{"version": "1.0", "model": {"type": "Python", "code": "import os"}}',
    b'\xff\xfe not json at all',
])
def test_tokenizer_files_are_parsed_never_executed(tmp_path, content):
  marker = tmp_path / 'executed'
  path = tmp_path / 'tokenizer.json'
  path.write_bytes(content.replace(b'MARKER', str(marker).encode()))
  with pytest.raises(Exception):  # noqa: B017 - the tokenizers library raises bare Exception
    tokenizer.Tokenizer.load(str(path))
  config = tiny_config()
  config.tokenizer.path = str(path)
  with pytest.raises(DataError, match='tokenizer.path: .* is not a usable tokenizer.json'):
    Pipeline(config)
  assert not marker.exists()
