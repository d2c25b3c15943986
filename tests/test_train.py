"""The sharded train step, exact resume, resharding restore and config errors."""

import hashlib
import json
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from bloom_jax import checkpointing, config_lib, flops, runs, sharding, train
from bloom_jax.data import pipeline
from bloom_jax.errors import NonFiniteError
from tests.multiprocess import (
  REPO,
  assert_running,
  distributed_envs,
  metrics,
  start_processes,
  start_training,
  untimed,
  wait_for,
)
from tests.tiny import child_env, tiny_config

MESHES = [dict(data=8, fsdp=1, tensor=1), dict(data=2, fsdp=4, tensor=1),
          dict(data=2, fsdp=2, tensor=2)]


@pytest.fixture(scope='module')
def pipe(tmp_path_factory):
  return pipeline.Pipeline(tiny_config(), workdir=str(tmp_path_factory.mktemp('pipe')),
                           multiple=8)


@pytest.fixture(scope='module')
def single_device_run(pipe):
  single = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  return _two_steps(tiny_config(), pipe, single)


def _build(config, pipe, mesh):
  return runs.build(config, pipe.tasks, pipe.tokenizer.vocab_size, mesh)


def _two_steps(config, pipe, mesh):
  setup = _build(config, pipe, mesh)
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
  setup = _build(tiny_config(), pipe, mesh)
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
  setup = _build(config, pipe, mesh)
  ckpt = checkpointing.Checkpointer(workdir, keep=2)
  state, _ = ckpt.restore(ckpt.latest_step(), setup.abstract_train_state())
  ckpt.close()
  return jax.device_get(state['params'])


def test_stop_and_resume_is_bitwise_exact(tmp_path, pipe, monkeypatch):
  config = tiny_config()
  full = train.train_and_evaluate(config, str(tmp_path / 'full'))

  # Preempted right after the step-4 checkpoint, then the same command again.
  calls = {'n': 0}

  def preempt_at_4(self, step):
    del step
    calls['n'] += 1
    return calls['n'] == 4

  with monkeypatch.context() as m:
    m.setattr(train._PreemptionFlag, 'is_set', preempt_at_4)
    train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  assert checkpointing.Checkpointer(str(tmp_path / 'resumed'), keep=2).latest_step() == 4
  resumed = train.train_and_evaluate(config, str(tmp_path / 'resumed'))

  assert untimed(resumed) == untimed(full)
  a = _final_params(str(tmp_path / 'full'), config, pipe)
  b = _final_params(str(tmp_path / 'resumed'), config, pipe)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  lines = metrics(tmp_path / 'resumed')
  assert {'train/sentiment/loss', 'train/lm/loss', 'grad_norm', 'learning_rate',
          'tokens_per_s', 'nonpad_tokens_per_s'} <= set(lines[0])
  train_lines = [line for line in lines if 'loss' in line]
  assert train_lines
  for line in train_lines:  # every task's packed rows carry examples in every window
    for task in config.tasks:
      assert line[f'train/{task}/examples'] > 0, (task, line)
    assert 0 < line['nonpad_tokens_per_s'] <= line['tokens_per_s']
    # MFU: the model FLOPs of a step (flops.multitask_flops_per_step) per device-second.
    step_flops = line['model_tflops_per_s_per_device'] * 1e12 * jax.device_count() \
        / line['steps_per_s']
    model_cfg = config_lib.model_config(config, vocab_size=pipe.tokenizer.vocab_size)
    assert step_flops == pytest.approx(
        flops.multitask_flops_per_step(model_cfg, pipe.tasks.values()))
    assert 0 < line['mfu'] < 1
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
    ('optimizer.clip_norm', 0.0, 'optimizer.clip_norm'),
    ('model.remat', 'sometimes', 'model.remat'),
])
def test_bad_configs_fail_before_compiling(key, value, message):
  config = tiny_config()
  section, _, field = key.rpartition('.')
  (config[section] if section else config)[field] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(config)


@pytest.mark.parametrize('field, value, message', [
    ('attention', 'sideways', r"tasks\.lm\.attention: 'sideways'"),
    ('attention', 'prefix', r"tasks\.lm\.attention: 'prefix' needs rows"),  # LM rows: none
    ('max_length', 2, r'tasks\.lm\.max_length'),
])
def test_bad_task_settings_fail_before_compiling(tmp_path, monkeypatch, field, value, message):
  config = tiny_config()
  config.tasks.lm[field] = value
  monkeypatch.setattr(runs, 'build', lambda *a, **k: pytest.fail('built a model'))
  with pytest.raises(config_lib.ConfigError, match=message):
    train.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / 'metrics.jsonl').exists()


def test_unknown_model_key_is_named():
  config = tiny_config()
  config.model.n_heads = 4
  with pytest.raises(config_lib.ConfigError, match='model.n_heads'):
    config_lib.validate(config)


WORKER = """
import json, sys
from bloom_jax import train
from tests.tiny import tiny_config
train.initialize_distributed()
config = tiny_config()
config.total_steps = 4
config.eval_every = 4
config.data.input_shards = 2  # the same global batches whether one process reads them or two
line = train.train_and_evaluate(config, sys.argv[1])
print('RESULT ' + json.dumps(line))
"""


def _launch(workdir, env):
  return subprocess.Popen([sys.executable, '-c', WORKER, workdir], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc):
  out, err = proc.communicate(timeout=900)
  assert proc.returncode == 0, err[-2000:]
  return json.loads(next(x for x in out.splitlines() if x.startswith('RESULT '))[7:])


@pytest.mark.slow
def test_two_processes_agree_with_one(tmp_path):
  """Two processes on localhost (gloo CPU collectives, 2 devices each) train the same
  4-device run as one process with 4 devices."""
  procs = [_launch(str(tmp_path / 'multi'), env) for env in distributed_envs()]
  single = _launch(str(tmp_path / 'single'), child_env(4))  # alongside: most of each run is startup
  multi = [_result(p) for p in procs]
  single = _result(single)
  assert multi[0]['step'] == single['step'] == 4
  for key, value in single.items():
    if key.startswith('eval/'):
      assert multi[0][key] == pytest.approx(value, rel=1e-4, abs=1e-5), key


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(tmp_path):
  """A pod's scheduler may signal only some hosts: all of them must save the same step and
  exit 0, or the others would hang in the next collective."""
  procs = start_processes(str(tmp_path), '--config.total_steps=100000',
                          '--config.checkpoint_every=100000', '--config.eval_every=100000',
                          envs=distributed_envs())
  while not (tmp_path / 'metrics.jsonl').exists():  # training is under way on both
    assert_running(str(tmp_path), procs)
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)  # the non-chief alone: process 0 must learn of it
  saved = [int(m) for stderr in wait_for(str(tmp_path), procs, timeout=300)
           for m in re.findall(r'SIGTERM received: saving step (\d+)', stderr)]
  assert len(saved) == 2 and saved[0] == saved[1], saved
  latest = checkpointing.Checkpointer(str(tmp_path), keep=2, create=False).latest_step()
  assert latest == saved[0] < 100000


def test_gradient_accumulation_equals_one_big_batch(pipe):
  mesh = sharding.make_mesh(dict(data=8, fsdp=1, tensor=1))
  results = []
  for accum in (1, 2):
    config = tiny_config()
    config.model.dropout = 0.0
    config.optimizer.grad_accum = accum
    results.append(_two_steps(config, pipe, mesh))
  (loss_1, params_1), (loss_2, params_2) = results
  np.testing.assert_allclose(loss_2, loss_1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), params_2, params_1)


def test_nonfinite_loss_stops_without_poisoning_checkpoints(tmp_path):
  config = tiny_config()
  config.optimizer.learning_rate = 1e30   # the first update blows the parameters up
  config.optimizer.warmup_steps = 0
  config.optimizer.clip_norm = 1e30
  with pytest.raises(NonFiniteError, match=r'at step \d+ \(task'):
    train.train_and_evaluate(config, str(tmp_path / 'stop'))
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'stop'), keep=2)
  assert ckpt.latest_step() is None
  ckpt.close()

  config.skip_nonfinite = True
  line = train.train_and_evaluate(config, str(tmp_path / 'skip'))
  assert line['step'] == config.total_steps
  lines = metrics(tmp_path / 'skip')
  assert sum(x.get('skipped', 0) for x in lines) > 0


# Every write past 32 KiB fails (EFBIG, as ENOSPC would on a full disk): metrics lines and
# the lock fit, a checkpoint's arrays do not. Permission bits would not stop root.
SMALL_FILES_ONLY = ('bash', '-c', 'ulimit -f 32 && trap "" XFSZ && exec "$@"', 'bash')


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_matches(tmp_path):
  steps = '--config.total_steps=30'  # room to kill mid-run after training is under way
  full = start_training(str(tmp_path / 'full'), steps)  # alongside: most of each run is start-up
  rng = np.random.default_rng(0)
  killed = tmp_path / 'killed'
  for _ in range(2):
    proc = start_training(str(killed), steps)
    # Once this process has trained (a new metrics line), kill it at a random moment, often
    # mid-checkpoint (one every 3 steps), and make sure it really was still running.
    seen = len(metrics(killed))
    while len(metrics(killed)) <= seen:
      assert proc.poll() is None, proc.stderr.read()[-2000:]
      time.sleep(0.05)
    time.sleep(rng.uniform(0, 0.5))
    assert proc.poll() is None, 'the run ended before it could be killed mid-run'
    proc.kill()
    proc.wait()
    committed = checkpointing.Checkpointer(str(killed), keep=2, create=False).all_steps()
    assert not committed or max(committed) < 30, committed
  final = start_training(str(killed), steps)
  assert final.wait(timeout=600) == 0, final.stderr.read()[-2000:]
  _, stderr = full.communicate(timeout=600)
  assert full.returncode == 0, stderr[-2000:]
  assert untimed(metrics(killed)[-1]) == untimed(metrics(tmp_path / 'full')[-1])


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tmp_path):
  proc = start_training(str(tmp_path), '--config.total_steps=100000',
                        '--config.checkpoint_every=1000')
  while not (tmp_path / 'metrics.jsonl').exists():
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 0
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=2)
  assert ckpt.latest_step() is not None and ckpt.latest_step() < 100000
  ckpt.close()
  assert not list(tmp_path.glob('events.out.tfevents*'))  # config.tensorboard=False


def test_second_trainer_on_the_same_workdir_is_refused(tmp_path):
  from bloom_jax import workdir_lock
  lock = workdir_lock.acquire(str(tmp_path))
  proc = start_training(str(tmp_path))
  assert proc.wait(timeout=300) == 2
  assert 'already in use by a trainer' in proc.stderr.read().strip().splitlines()[-1]
  lock.release()


def _digests(directory):
  return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(directory.rglob('*')) if p.is_file()}


@pytest.mark.slow
def test_disk_full_during_save_fails_clearly_and_keeps_earlier_checkpoints(tmp_path):
  first = start_training(str(tmp_path), '--config.total_steps=3')
  assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
  before = _digests(tmp_path / 'checkpoints')

  full = start_training(str(tmp_path), '--config.total_steps=6', prefix=SMALL_FILES_ONLY)
  _, stderr = full.communicate(timeout=300)  # Orbax logs long tracebacks: drain the pipe
  assert full.returncode == 2, stderr[-2000:]
  # Orbax's writer thread logs its own traceback too, interleaved anywhere with ours.
  [error] = re.findall(r'train\.py: error: .*', stderr)
  assert 'checkpoint 6 could not be written' in error
  assert 'File too large' in error and 'intact steps: 3' in error
  assert {p: d for p, d in _digests(tmp_path / 'checkpoints').items() if p in before} == before


def test_unusable_workdir_fails_before_anything_is_written(tmp_path):
  (tmp_path / 'file').write_text('not a directory')
  with pytest.raises(NotADirectoryError, match='file'):
    train.train_and_evaluate(tiny_config(), str(tmp_path / 'file' / 'run'))
  (tmp_path / 'run').mkdir()
  (tmp_path / 'run' / 'checkpoints').write_text('not a directory')
  with pytest.raises(OSError, match='checkpoints'):
    train.train_and_evaluate(tiny_config(), str(tmp_path / 'run'))
