"""Training runs as child processes: one process, or several joined by jax.distributed on
localhost (gloo CPU collectives), and what a run leaves in its workdir."""

import json
import os
import pathlib
import socket
import subprocess
import sys

from bloom_jax import checkpointing
from tests.tiny import child_env

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMED_KEYS = ('steps_per_s', 'tokens_per_s', 'nonpad_tokens_per_s',
              'model_tflops_per_s_per_device', 'mfu')


def start_training(workdir: str, *overrides: str, prefix=(), env=None,
                   stderr=subprocess.PIPE) -> subprocess.Popen:
  """`python -m bloom_jax.train` of tests/tiny.py for 12 steps, a checkpoint every 3 (the
  overrides come after those and win), on one process with one device unless `env` says."""
  return subprocess.Popen(
      [*prefix, sys.executable, '-m', 'bloom_jax.train', '--config', 'tests/tiny.py',
       '--workdir', workdir, '--config.total_steps=12', '--config.checkpoint_every=3',
       *overrides],
      cwd=REPO, env=env or child_env(1), stdout=subprocess.DEVNULL, stderr=stderr, text=True)


def distributed_envs(processes: int = 2, devices: int = 2) -> list[dict]:
  """The environments of the processes of one run on localhost, `devices` CPU devices each;
  the same environments again are the same command again (the coordinator's port too)."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  return [child_env(devices, JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
                    JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i))
          for i in range(processes)]


def start_processes(workdir: str, *overrides: str, envs: list[dict]) -> list[subprocess.Popen]:
  """The processes of one run (`start_training`, one per environment). Each appends its
  stderr to DIR/stderr.<process>.log, not to a pipe: a pipe nobody reads while the test
  waits for another process fills up and stalls its writer, and then every process."""
  os.makedirs(workdir, exist_ok=True)
  procs = []
  for i, env in enumerate(envs):
    with open(_log_path(workdir, i), 'a') as log:
      procs.append(start_training(workdir, *overrides, env=env, stderr=log))
  return procs


def _log_path(workdir: str, process: int) -> str:
  return os.path.join(workdir, f'stderr.{process}.log')


def logs(workdir: str, procs) -> list[str]:
  """What each process of a run started by `start_processes` has written to stderr."""
  return [pathlib.Path(_log_path(workdir, i)).read_text() for i in range(len(procs))]


def _report(workdir: str, procs) -> str:
  return '\n'.join(f'process {i} (exit status {p.returncode}):\n{log[-2000:]}'
                   for i, (p, log) in enumerate(zip(procs, logs(workdir, procs), strict=True)))


def assert_running(workdir: str, procs) -> None:
  assert all(p.poll() is None for p in procs), _report(workdir, procs)


def wait_for(workdir: str, procs, timeout: float = 600) -> list[str]:
  """Waits for every process of a run, which must all succeed; their stderr."""
  for proc in procs:
    proc.wait(timeout=timeout)
  assert all(p.returncode == 0 for p in procs), _report(workdir, procs)
  return logs(workdir, procs)


def metrics(workdir) -> list[dict]:
  """The lines of DIR/metrics.jsonl so far, oldest first; not one still being written."""
  path = pathlib.Path(workdir, 'metrics.jsonl')
  text = path.read_text() if path.exists() else ''
  return [json.loads(line) for line in text[:text.rfind('\n') + 1].splitlines()]


def untimed(line: dict) -> dict:
  """A metrics line without its speeds, which differ between equal runs."""
  return {k: v for k, v in line.items() if k not in TIMED_KEYS}


def committed_steps(workdir) -> list[int]:
  """The steps whose checkpoints are complete on disk, oldest first."""
  try:
    ckpt = checkpointing.Checkpointer(str(workdir), keep=1_000_000, create=False)
  except FileNotFoundError:
    return []
  try:
    return sorted(ckpt.all_steps())
  finally:
    ckpt.close()
