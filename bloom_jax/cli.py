"""Shared entry-point plumbing: a bad config, data file, checkpoint or argument ends the
program with one line naming what is wrong, not a traceback."""

import sys

from absl import app

from bloom_jax import config_lib, hf, workdir_lock
from bloom_jax.data import DataError

USER_ERRORS = (config_lib.ConfigError, DataError, hf.CheckpointError,
               workdir_lock.WorkdirLockedError, FileNotFoundError, app.UsageError)


def run(main) -> None:
  """app.run(main), with user errors reported as `<program>: error: <message>`."""
  def guarded(argv):
    try:
      main(argv)
    except USER_ERRORS as e:
      program = sys.argv[0].rsplit('/', 1)[-1]
      print(f'{program}: error: {e}'.replace('\n', ' '), file=sys.stderr)
      sys.exit(2)

  app.run(guarded)
