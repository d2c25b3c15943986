"""One trainer per workdir: a second one on the same directory would interleave
checkpoints and metrics, so it is refused while the first holds the lock."""

import fcntl
import os

from bloom_jax.errors import WorkdirLockedError


class WorkdirLock:

  def __init__(self, handle):
    self._handle = handle

  def release(self) -> None:
    fcntl.flock(self._handle, fcntl.LOCK_UN)
    self._handle.close()


def acquire(workdir: str) -> WorkdirLock:
  path = os.path.join(workdir, '.lock')
  try:
    handle = open(path, 'a+')
  except OSError as e:
    raise WorkdirLockedError(f'{workdir}: cannot write in the workdir ({e.strerror})') from None
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    handle.seek(0)
    owner = handle.read().strip() or 'another process'
    handle.close()
    raise WorkdirLockedError(
        f'{workdir}: already in use by a trainer ({owner}); wait for it or use another '
        '--workdir') from None
  handle.seek(0)
  handle.truncate()
  handle.write(f'pid {os.getpid()} on {os.uname().nodename}')
  handle.flush()
  return WorkdirLock(handle)
