"""bloom_jax.plan: a tiny model planned on 8 simulated CPU devices under data and under fsdp
parallelism, its JSON checked for consistency, topology names, and one-line errors."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from bloom_jax import config_lib, flops, plan
from bloom_jax.model import BloomConfig
from scripts.bench import probes
from tests.tiny import child_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ('--config', 'configs/seed.py', '--config.model.hidden_size=64',
        '--config.model.n_layer=2', '--config.model.n_head=4', '--config.tokenizer.vocab_size=512',
        '--batch', '16', '--seq', '32')
HAVE_LIBTPU = importlib.util.find_spec('libtpu') is not None


def _plan(*args):
  # One simulated device in the environment: the plan sets its own device count.
  return subprocess.run([sys.executable, '-m', 'bloom_jax.plan', *TINY, *args], cwd=REPO,
                        env=child_env(1), capture_output=True, text=True, timeout=600)


def _planned(tmp_path, name: str, *args) -> tuple[dict, str]:
  path = tmp_path / f'{name}.json'
  out = _plan(*args, '--json', str(path))
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(path.read_text()), out.stdout


@pytest.fixture(scope='module')
def plans(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('plans')
  return {mesh: _planned(tmp, mesh, '--topology', 'cpu-8', '--chip', 'v5e', '--mfu', '0.5',
                         '--mesh', f'data={8 if mesh == "data" else 1},'
                                   f'fsdp={8 if mesh == "fsdp" else 1},tensor=1')
          for mesh in ('data', 'fsdp')} | {
      'ema': _planned(tmp, 'ema', '--topology', 'cpu-8', '--mesh', 'data=1,fsdp=8,tensor=1',
                      '--config.optimizer.ema_decay=0.99')}


def test_a_plan_reports_every_field_consistently(plans):
  p, stdout = plans['fsdp']
  assert p['num_devices'] == 8 and p['platform'] == 'cpu'
  assert p['mesh'] == {'data': 1, 'fsdp': 8, 'tensor': 1}
  assert p['tokens_per_step'] == 16 * 32
  b = p['bytes_per_device']
  assert b['peak'] == b['xla_argument'] + b['xla_output'] - b['xla_alias'] + b['xla_temp']
  # The step's arguments are the state (parameters, moments, counters) and the batch.
  assert b['params'] + b['opt_state'] + b['batch'] <= b['xla_argument']
  assert b['xla_argument'] - (b['params'] + b['opt_state'] + b['batch']) < 1024
  assert b['temp'] > 0 and b['batch'] == 16 * 32 * 4 * 4 // 8
  assert p['xla_flops_per_device'] > 0
  # A tiny model fits a v5e chip, and the projection is the model FLOPs at the stated MFU.
  assert p['fits'] is True and 0 < p['hbm_fraction'] < 0.1
  assert p['chip']['name'] == 'v5e' and p['mfu'] == 0.5
  assert p['step_s'] == pytest.approx(p['model_flops_per_step'] / (0.5 * 197e12 * 8))
  assert p['tokens_per_s'] * p['step_s'] == pytest.approx(16 * 32)
  assert 'VERDICT: FITS' in stdout and 'simulated CPU devices' in stdout


def test_the_parameters_moving_average_is_counted_with_the_optimizer_state(plans):
  plain, ema = plans['fsdp'][0]['bytes_per_device'], plans['ema'][0]['bytes_per_device']
  assert ema['params'] == plain['params']
  assert ema['opt_state'] == plain['opt_state'] + plain['params']
  # ...and it is in the step's arguments: nothing the step holds goes uncounted.
  assert ema['xla_argument'] - (ema['params'] + ema['opt_state'] + ema['batch']) < 1024


def test_fsdp_shards_parameters_and_moments_that_data_parallelism_replicates(plans):
  data, fsdp = plans['data'][0], plans['fsdp'][0]
  assert data['bytes_per_device']['params'] == data['total_bytes']['params']
  assert data['bytes_per_device']['opt_state'] == data['total_bytes']['opt_state']
  # Every matrix splits 8 ways; only a few small vectors (biases, norms) stay whole.
  assert fsdp['bytes_per_device']['params'] < data['bytes_per_device']['params'] / 6
  assert fsdp['bytes_per_device']['opt_state'] < data['bytes_per_device']['opt_state'] / 6
  assert fsdp['total_bytes'] == data['total_bytes']


def test_model_flops_are_the_benchmarks_formula(plans):
  p = plans['data'][0]
  cfg = BloomConfig(vocab_size=512, hidden_size=64, n_layer=2, n_head=4)
  assert p['model']['num_params'] == cfg.num_params
  tokens = 16 * 32
  by_hand = 6 * cfg.num_params * tokens + 12 * 2 * 64 * 32 * tokens
  assert p['model_flops_per_step'] == by_hand == flops.train_flops_per_step(cfg, 16, 32)
  assert probes.train_flops_per_step(cfg, 16, 32) == by_hand


@pytest.mark.parametrize('args, message', [
    (('--topology', 'v9-8'), '--topology: expected cpu-N'),
    (('--topology', 'cpu-8', '--mesh', 'data=3,fsdp=1,tensor=1'),
     '--mesh: data*fsdp*tensor = 3 but 8 devices'),
    (('--topology', 'cpu-8', '--batch', '12'), '--batch: 12 rows'),
    (('--topology', 'cpu-8', '--chip', 'v7'), "--chip: 'v7' is not one of"),
])
def test_plans_that_cannot_work_fail_in_one_line(args, message):
  out = _plan(*args)
  assert out.returncode == 2, out.stderr[-3000:]
  assert out.stderr.count('\n') == 1 and message in out.stderr, out.stderr


def test_cloud_tpu_names_map_to_libtpu_slices():
  cases = {'v5e-256': ('v5e:16x16', 256), 'v5litepod-16': ('v5e:4x4', 16),
           'v6e-8': ('v6e:2x4', 8), 'v5e-1': ('v5e:1x1', 1), 'v4-8': ('v4:2x2x1', 4),
           'v4-32': ('v4:2x2x4', 16), 'v5p-128': ('v5p:4x4x4', 64),
           'v5p-1024': ('v5p:8x8x8', 512), 'v5e:2x2': ('v5e:2x2', 4),
           'v5p:4x4x12': ('v5p:4x4x12', 192)}
  for name, (libtpu_name, devices) in cases.items():
    t = plan.parse_topology(name)
    assert (t.libtpu_name, t.num_devices, t.platform) == (libtpu_name, devices, 'tpu'), name
  assert dict(plan.parse_topology('v4-8').options)['chip_config_name'] == 'megacore'
  assert plan.parse_topology('cpu-3') == plan.Topology('cpu-3', 'cpu', 3)
  for bad in ('v4-6', 'v5e-2', 'v5e-6', 'v5e-512', 'v4:2x2', 'tpu-8', 'cpu-0'):
    with pytest.raises(config_lib.ConfigError, match='--topology'):
      plan.parse_topology(bad)


def test_mesh_flags_name_axes_and_fill_from_the_config():
  default = {'data': -1, 'fsdp': 1, 'tensor': 1}
  assert plan.parse_mesh('fsdp=4,tensor=2', default) == {'data': -1, 'fsdp': 4, 'tensor': 2}
  for bad in ('pipeline=2', 'data=two', 'data'):
    with pytest.raises(config_lib.ConfigError, match='--mesh: expected comma-separated'):
      plan.parse_mesh(bad, default)


@pytest.mark.skipif(HAVE_LIBTPU, reason='libtpu is installed: the TPU compile test runs instead')
def test_a_tpu_topology_without_libtpu_says_how_to_install_it():
  out = _plan('--topology', 'v5e-4')
  assert out.returncode == 2
  assert out.stderr.count('\n') == 1 and "pip install -e '.[tpu]'" in out.stderr, out.stderr


@pytest.mark.skipif(not HAVE_LIBTPU, reason="libtpu not installed (pip install -e '.[tpu]')")
def test_a_tpu_topology_compiles_with_libtpu(tmp_path):
  p, stdout = _planned(tmp_path, 'tpu', '--topology', 'v5e-4', '--mesh', 'data=1,fsdp=4,tensor=1')
  assert p['platform'] == 'tpu' and p['num_devices'] == 4 and 'TPU v5' in p['device_kind']
  assert p['libtpu_topology'] == 'v5e:2x2' and p['chip']['name'] == 'v5e'
  assert p['fits'] is True and p['bytes_per_device']['temp'] > 0
  assert 'VERDICT: FITS' in stdout
