"""The sharded train step, exact resume, resharding restore and config errors."""

import json

import jax
import numpy as np
import pytest

from bloom_jax import checkpointing, config_lib, sharding, train
from bloom_jax import data as data_lib
from tests.tiny import tiny_config

MESHES = [dict(data=8, fsdp=1, tensor=1), dict(data=2, fsdp=4, tensor=1),
          dict(data=2, fsdp=2, tensor=2)]


@pytest.fixture(scope='module')
def pipe(tmp_path_factory):
  return data_lib.Pipeline(tiny_config(), workdir=str(tmp_path_factory.mktemp('pipe')),
                           multiple=8)


@pytest.fixture(scope='module')
def single_device_run(pipe):
  single = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  return _two_steps(tiny_config(), pipe, single)


def _two_steps(config, pipe, mesh):
  setup = train.build(config, pipe, mesh)
  state = setup.init_train_state()
  it = pipe.train_iterator()
  losses = []
  for _ in range(2):
    state, metrics = setup.train_step(state, sharding.global_batch(next(it), mesh))
    losses.append(float(metrics['loss']))
  return losses, jax.device_get(state['params'])


@pytest.mark.parametrize('mesh_axes', MESHES, ids=lambda m: 'x'.join(map(str, m.values())))
def test_sharded_step_matches_single_device(pipe, single_device_run, mesh_axes):
  ref_losses, ref_params = single_device_run
  losses, params = _two_steps(tiny_config(), pipe, sharding.make_mesh(mesh_axes))
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), params, ref_params)


def test_params_are_sharded_by_the_rules(pipe):
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  setup = train.build(tiny_config(), pipe, mesh)
  specs = jax.tree.map(lambda s: s.spec, setup.state_shardings['params'])
  assert specs['bloom']['word_embeddings'] == jax.sharding.PartitionSpec('tensor', 'fsdp')
  assert specs['bloom']['h']['attention']['qkv_kernel'] == jax.sharding.PartitionSpec(
      None, 'fsdp', 'tensor', None, None)
  assert specs['bloom']['h']['mlp']['down_kernel'] == jax.sharding.PartitionSpec(
      None, 'tensor', 'fsdp')
  # Adam's moments follow their parameters instead of landing on one device.
  adam = setup.state_shardings['opt_state'][1][0]
  assert adam.mu['bloom']['word_embeddings'].spec == specs['bloom']['word_embeddings']
  assert adam.nu['bloom']['h']['mlp']['down_kernel'].spec == specs['bloom']['h']['mlp'][
      'down_kernel']
  assert adam.count.spec == jax.sharding.PartitionSpec()


def _final_params(workdir, config, pipe):
  mesh = sharding.make_mesh(config.mesh)
  setup = train.build(config, pipe, mesh)
  ckpt = checkpointing.Checkpointer(workdir, keep=2)
  state, _ = ckpt.restore(ckpt.latest_step(), setup.abstract_train_state())
  ckpt.close()
  return jax.device_get(state['params'])


def _untimed(line):
  return {k: v for k, v in line.items() if k not in ('steps_per_s', 'tokens_per_s')}


def test_stop_and_resume_is_bitwise_exact(tmp_path, pipe, monkeypatch):
  config = tiny_config()
  full = train.train_and_evaluate(config, str(tmp_path / 'full'))

  # Preempted right after the step-4 checkpoint, then the same command again.
  calls = {'n': 0}

  def preempt_at_4(self):
    calls['n'] += 1
    return calls['n'] == 4

  with monkeypatch.context() as m:
    m.setattr(train._PreemptionFlag, 'is_set', preempt_at_4)
    train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  assert checkpointing.Checkpointer(str(tmp_path / 'resumed'), keep=2).latest_step() == 4
  resumed = train.train_and_evaluate(config, str(tmp_path / 'resumed'))

  assert _untimed(resumed) == _untimed(full)
  a = _final_params(str(tmp_path / 'full'), config, pipe)
  b = _final_params(str(tmp_path / 'resumed'), config, pipe)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  lines = [json.loads(x) for x in (tmp_path / 'resumed' / 'metrics.jsonl').read_text().splitlines()]
  assert {'train/sentiment/loss', 'train/lm/loss', 'grad_norm', 'learning_rate',
          'tokens_per_s'} <= set(lines[0])
  assert any('eval/tagging/word_accuracy' in line for line in lines)


def test_checkpoint_restores_on_another_mesh(tmp_path, pipe):
  config = tiny_config(data=8, fsdp=1, tensor=1)
  config.total_steps = 4
  train.train_and_evaluate(config, str(tmp_path))
  saved = _final_params(str(tmp_path), config, pipe)
  other = tiny_config(data=2, fsdp=2, tensor=2)
  other.total_steps = 4
  restored = _final_params(str(tmp_path), other, pipe)
  jax.tree.map(np.testing.assert_array_equal, saved, restored)


@pytest.mark.parametrize('key, value, message', [
    ('model.n_head', 5, 'model.hidden_size'),
    ('mesh.data', 16, 'mesh'),
    ('total_steps', 0, 'total_steps'),
    ('optimizer.schedule', 'step', 'optimizer.schedule'),
    ('model.remat', 'sometimes', 'model.remat'),
])
def test_bad_configs_fail_before_compiling(key, value, message):
  config = tiny_config()
  section, _, field = key.rpartition('.')
  (config[section] if section else config)[field] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(config)


def test_unknown_model_key_is_named():
  config = tiny_config()
  config.model.n_heads = 4
  with pytest.raises(config_lib.ConfigError, match='model.n_heads'):
    config_lib.validate(config)
