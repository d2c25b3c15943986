"""Both processes of a 2-process run killed (SIGKILL) mid-run, then started again with the
same command: the run finishes exactly as an uninterrupted 2-process run does."""

import signal
import time

import jax
import numpy as np
import pytest

from bloom_jax import runs
from tests.multiprocess import (
  assert_running,
  committed_steps,
  distributed_envs,
  metrics,
  start_processes,
  untimed,
  wait_for,
)

STEPS = 10
# Short examples packed several to a row, in groups of a few examples: each process packs
# its own share, so by the first checkpoint the processes stand at different positions in
# their streams, and a resumed run must restore each process's own.
OVERRIDES = (f'--config.total_steps={STEPS}', '--config.checkpoint_every=2',
             f'--config.eval_every={STEPS}', '--config.data.pack_group=3',
             '--config.tasks.sentiment.max_length=48', '--config.tasks.tagging.max_length=48')


def _at_last_step(lines):
  return [untimed(line) for line in lines if line['step'] == STEPS]


@pytest.mark.slow
def test_sigkill_of_both_processes_then_restart_matches_an_uninterrupted_run(tmp_path):
  full, killed = str(tmp_path / 'full'), str(tmp_path / 'killed')
  # The uninterrupted run trains beside the first start of the other: most of a run is start-up.
  full_procs = start_processes(full, *OVERRIDES, envs=distributed_envs())
  envs = distributed_envs()
  procs = start_processes(killed, *OVERRIDES, envs=envs)
  while not committed_steps(killed):
    assert_running(killed, procs)
    time.sleep(0.1)
  for proc in procs:  # frozen first, so that what is checked here is what the kill interrupts
    proc.send_signal(signal.SIGSTOP)
  assert_running(killed, procs)
  committed, logged = committed_steps(killed), metrics(killed)
  for proc in procs:
    proc.kill()
    proc.wait()
  assert max(committed) < STEPS and max(line['step'] for line in logged) < STEPS

  wait_for(killed, start_processes(killed, *OVERRIDES, envs=envs))
  wait_for(full, full_procs)
  resumed = metrics(killed)[len(logged):]
  assert resumed[0]['step'] > max(committed)  # from the newest checkpoint, not from scratch
  assert len(_at_last_step(resumed)) == 2  # the training line and the evaluation
  assert _at_last_step(resumed) == _at_last_step(metrics(full))
  want, got = runs.load_run(full), runs.load_run(killed)
  assert want.step == got.step == STEPS
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(want.params),
               jax.device_get(got.params))
