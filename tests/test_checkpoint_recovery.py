"""A corrupt or partial newest checkpoint: the restart falls back to the newest intact one."""

import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bloom_jax import checkpointing
from tests.tiny import child_env

STEPS = (2, 4, 6)
CONFIG_JSON = '{"model": "tiny"}'


def _state(step, scale=1.0):
  return {'params': {'w': jnp.arange(6, dtype=jnp.float32).reshape(2, 3) * step * scale,
                     'b': jnp.full((3,), step * scale, jnp.float32)},
          'step': jnp.asarray(step, jnp.int32)}


def _abstract():
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      _state(1))


def _save(workdir, steps, *, keep=3, scale=1.0):
  ckpt = checkpointing.Checkpointer(str(workdir), keep=keep)
  for step in steps:
    ckpt.save(step, _state(step, scale), {'position': step * 10}, CONFIG_JSON)
  ckpt.wait()
  ckpt.close()


def _restore_latest(workdir, keep=3):
  ckpt = checkpointing.Checkpointer(str(workdir), keep=keep)
  try:
    return ckpt.restore_latest(_abstract())
  finally:
    ckpt.close()


def _assert_state(state, step, scale=1.0):
  jax.tree.map(lambda got, want: np.testing.assert_array_equal(np.asarray(got), np.asarray(want)),
               state, _state(step, scale))


def _truncate_arrays(step_dir):
  data_files = [p for p in (step_dir / 'state').rglob('*') if p.is_file() and p.parent.name == 'd']
  assert data_files, 'no array data files found: the on-disk layout changed'
  for path in data_files:
    with open(path, 'r+b') as f:
      f.truncate(path.stat().st_size // 3)


CORRUPTIONS = {
    'truncated_arrays': _truncate_arrays,
    'no_checkpoint_metadata': lambda d: (d / '_CHECKPOINT_METADATA').unlink(),
    'no_state_metadata': lambda d: (d / 'state' / '_METADATA').unlink(),
    'no_data_item': lambda d: shutil.rmtree(d / 'data'),
}


# A restore that fails on a truncated array file leaves tensorstore reads in flight; when
# they finish, their callbacks find Orbax's event loop already closed. Harmless (the failed
# restore has been handled by then), but Python reports it as an unraisable exception.
LATE_READS_AFTER_A_FAILED_RESTORE = pytest.mark.filterwarnings(
    r'ignore:(?s)Exception ignored.*Event loop is closed:pytest.PytestUnraisableExceptionWarning')


def _warnings_about(caplog, step):
  return [r for r in caplog.records
          if r.levelno == logging.WARNING and f'Checkpoint {step} ' in r.getMessage()]


@LATE_READS_AFTER_A_FAILED_RESTORE
@pytest.mark.parametrize('corrupt', sorted(CORRUPTIONS))
def test_falls_back_to_newest_intact_and_saves_over_corrupt_step(tmp_path, caplog, corrupt):
  _save(tmp_path, STEPS)
  checkpoints = tmp_path / 'checkpoints'
  CORRUPTIONS[corrupt](checkpoints / '6')

  with caplog.at_level(logging.WARNING):
    step, state, data_state = _restore_latest(tmp_path)
  assert step == 4
  _assert_state(state, 4)
  assert data_state == {'position': 40}
  warnings = _warnings_about(caplog, 6)
  assert len(warnings) == 1 and '\n' not in warnings[0].getMessage()
  assert (checkpoints / '2').is_dir() and (checkpoints / '4').is_dir()
  assert not (checkpoints / '6').exists()
  assert (checkpoints / 'corrupt-6-0').is_dir()  # kept for inspection, not deleted

  # The resumed run reaches step 6 again; that save must succeed and win.
  _save(tmp_path, [6], scale=-1.0)
  step, state, data_state = _restore_latest(tmp_path)
  assert step == 6
  _assert_state(state, 6, scale=-1.0)
  assert data_state == {'position': 60}
  assert (checkpoints / '2').is_dir() and (checkpoints / '4').is_dir()


@LATE_READS_AFTER_A_FAILED_RESTORE
def test_keep_newest_policy_does_not_collect_the_intact_fallback(tmp_path):
  # With keep=2 a leftover corrupt step 6 would count as one of the two newest, and the
  # first save after resuming would garbage-collect step 4, the only intact checkpoint.
  _save(tmp_path, STEPS, keep=2)
  checkpoints = tmp_path / 'checkpoints'
  _truncate_arrays(checkpoints / '6')
  assert _restore_latest(tmp_path, keep=2)[0] == 4
  _save(tmp_path, [5], keep=2)
  assert (checkpoints / '4').is_dir() and (checkpoints / '5').is_dir()
  step, state, _ = _restore_latest(tmp_path, keep=2)
  assert step == 5
  _assert_state(state, 5)


def test_repeated_corruption_of_a_step_keeps_every_copy(tmp_path):
  _save(tmp_path, STEPS)
  checkpoints = tmp_path / 'checkpoints'
  for _ in range(2):
    (checkpoints / '6' / 'state' / '_METADATA').unlink()
    assert _restore_latest(tmp_path)[0] == 4
    _save(tmp_path, [6])
  assert (checkpoints / 'corrupt-6-0').is_dir() and (checkpoints / 'corrupt-6-1').is_dir()


def test_no_checkpoints_returns_none(tmp_path):
  assert _restore_latest(tmp_path) is None


def test_all_corrupt_raises_and_moves_nothing(tmp_path, caplog):
  _save(tmp_path, STEPS)
  checkpoints = tmp_path / 'checkpoints'
  for step in STEPS:
    (checkpoints / str(step) / 'state' / '_METADATA').unlink()
  before = sorted(os.listdir(checkpoints))
  with caplog.at_level(logging.WARNING), pytest.raises(checkpointing.CheckpointCorruptError) as e:
    _restore_latest(tmp_path)
  assert str(checkpoints) in str(e.value) and '6, 4, 2' in str(e.value)
  for step in STEPS:
    assert _warnings_about(caplog, step)
  assert sorted(os.listdir(checkpoints)) == before


# A full disk or an unwritable directory during a save. The soft RLIMIT_FSIZE makes every
# write past 16 KiB fail with EFBIG, through the same tensorstore path a full disk's
# ENOSPC takes; it works for root too, where permission bits do not stop writes.
FAILING_SAVE = '''
import hashlib, json, pathlib, resource, signal, sys
import jax
from bloom_jax import checkpointing

workdir = pathlib.Path(sys.argv[1])
def state(step):  # 64 KiB that compression cannot shrink below the limit
  return {'w': jax.random.normal(jax.random.key(step), (128, 128))}
ckpt = checkpointing.Checkpointer(str(workdir), keep=2)
for step in (2, 4):
  ckpt.save(step, state(step), {'position': step}, '{}')
ckpt.wait()
digests = {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
           for p in sorted(workdir.rglob('*')) if p.is_file()}
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (16384, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
  ckpt.save(6, state(6), {'position': 6}, '{}')
  ckpt.wait()
  error = None
except checkpointing.CheckpointWriteError as e:
  error = str(e)
ckpt.close()
print(json.dumps({'error': error, 'digests': digests}))
'''


def test_failed_save_raises_clearly_and_keeps_earlier_checkpoints(tmp_path):
  import hashlib
  import json
  import subprocess
  import sys
  proc = subprocess.run([sys.executable, '-c', FAILING_SAVE, str(tmp_path)], capture_output=True,
                        text=True, timeout=300,
                        env=child_env(1))
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out['error'] is not None, 'the save past the file-size limit did not fail'
  assert 'checkpoint 6 could not be written' in out['error']
  assert 'File too large' in out['error'] and 'intact steps: 2, 4' in out['error']
  for path, digest in out['digests'].items():
    assert hashlib.sha256(open(path, 'rb').read()).hexdigest() == digest, path

  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=2)
  abstract = {'w': jax.ShapeDtypeStruct((128, 128), jnp.float32,
                                        sharding=jax.sharding.SingleDeviceSharding(
                                            jax.devices()[0]))}
  step, state, data_state = ckpt.restore_latest(abstract)
  assert step == 4 and data_state == {'position': 4}
  np.testing.assert_array_equal(state['w'], jax.random.normal(jax.random.key(4), (128, 128)))
  ckpt.save(6, {'w': jnp.zeros((128, 128))}, {'position': 6}, '{}')  # the disk has room again
  ckpt.wait()
  assert ckpt.all_steps() == [4, 6]
  ckpt.close()


def test_best_checkpoint_is_kept_beside_the_newest(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=1, best_metric='eval/acc', best_mode='max')
  for step, acc in [(2, 0.5), (4, 0.9), (6, 0.7), (8, 0.6)]:
    ckpt.save(step, _state(step), {'position': step}, CONFIG_JSON, metrics={'eval/acc': acc})
  ckpt.save(10, _state(10), {'position': 10}, CONFIG_JSON)  # no eval at this step
  ckpt.wait()
  assert ckpt.all_steps() == [4, 10]  # the best (0.9 at step 4) and the newest
  ckpt.close()
