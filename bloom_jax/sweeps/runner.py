"""Runs a sweep's trials as `bloom_jax.train` processes, a few at a time, and records how
each exited in DIR/<trial>/status.json."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

from bloom_jax.sweeps.definitions import Trial

POLL_S = 0.5                # how often running trials are checked for exit
KEPT_LINES = 10             # log lines of a failed attempt kept in its status.json


def split_spec(spec: str) -> tuple[str, str | None]:
  """`configs/x.py:arg` -> (absolute path, 'arg'), as `bloom_jax.train --config` reads it."""
  path, sep, arg = spec.partition(':')
  return os.path.abspath(path), (arg if sep else None)


def train_command(config_spec: str, workdir: str, trial: Trial) -> list[str]:
  """The `bloom_jax.train` command of a trial; dry runs print exactly this."""
  path, arg = split_spec(config_spec)
  return [sys.executable, '-m', 'bloom_jax.train',
          '--config', path if arg is None else f'{path}:{arg}',
          '--workdir', os.path.join(workdir, trial.name),
          *(f'--config.{key}={value}' for key, value in trial.overrides.items())]


def read_status(trial_dir: str) -> dict | None:
  """What the trial's last attempt left in status.json; None while none has exited."""
  try:
    with open(os.path.join(trial_dir, 'status.json')) as f:
      return json.load(f)
  except FileNotFoundError:
    return None


def _exit_text(returncode: int) -> str:
  if returncode < 0:
    return f'killed by {signal.Signals(-returncode).name}'
  return f'exit code {returncode}'


def _tail(path: str, offset: int) -> list[str]:
  """The last lines the current attempt wrote to its log (it starts at `offset`)."""
  with open(path, errors='replace') as f:
    f.seek(offset)
    return [line for line in f.read().splitlines() if line.strip()][-KEPT_LINES:]


def run_trials(trials: Iterator[Trial], parallel: int, config_spec: str, workdir: str,
               on_exit: Callable[[Trial], None]) -> None:
  """Runs the trials as `bloom_jax.train` processes, `parallel` at a time.

  Each writes its log to DIR/<trial>/train.log and, when it exits by itself, its return
  code and last log lines to status.json; `on_exit` then sees the trial. On Ctrl-C or
  SIGTERM the running trainers get SIGTERM (they save a checkpoint first) and are waited for.
  """
  running = {}   # Popen -> (trial, where its log starts, start time)
  try:
    while True:
      while len(running) < parallel and (trial := next(trials, None)) is not None:
        proc, offset = _launch(trial, config_spec, workdir)
        running[proc] = (trial, offset, time.time())
      if not running:
        return
      time.sleep(POLL_S)
      for proc in [p for p in running if p.poll() is not None]:
        trial, offset, started = running.pop(proc)
        _record_exit(workdir, trial, proc.returncode, offset, time.time() - started)
        on_exit(trial)
  except KeyboardInterrupt:
    print(f'stopping {len(running)} running trial(s); they save a checkpoint first', flush=True)
    for proc in running:
      proc.send_signal(signal.SIGTERM)
    for proc in running:
      proc.wait()
    raise


def _launch(trial: Trial, config_spec: str, workdir: str) -> tuple[subprocess.Popen, int]:
  trial_dir = os.path.join(workdir, trial.name)
  os.makedirs(trial_dir, exist_ok=True)
  if os.path.exists(os.path.join(trial_dir, 'status.json')):
    os.remove(os.path.join(trial_dir, 'status.json'))   # a retry: the old failure is stale
  command = train_command(config_spec, workdir, trial)
  with open(os.path.join(trial_dir, 'train.log'), 'a') as log:
    log.write(f'==> {time.strftime("%Y-%m-%d %H:%M:%S")} {shlex.join(command)}\n')
    log.flush()
    print(f'start  {trial.name}', flush=True)
    # stdout only carries the trainer's progress line, which metrics.jsonl already holds.
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log), log.tell()


def _record_exit(workdir: str, trial: Trial, returncode: int, offset: int,
                 seconds: float) -> None:
  trial_dir = os.path.join(workdir, trial.name)
  lines = _tail(os.path.join(trial_dir, 'train.log'), offset) if returncode else []
  error = f'{_exit_text(returncode)}: {lines[-1] if lines else "(no output)"}' if returncode else ''
  status = {'returncode': returncode, 'seconds': round(seconds, 1), 'error': error,
            'last_lines': lines}
  tmp = os.path.join(trial_dir, 'status.json.tmp')
  with open(tmp, 'w') as f:
    json.dump(status, f, indent=1)
  os.replace(tmp, os.path.join(trial_dir, 'status.json'))   # whole even if the sweep is killed
  print(f'FAILED {trial.name} after {seconds:.0f}s: {error}' if returncode
        else f'exit   {trial.name} after {seconds:.0f}s', flush=True)
