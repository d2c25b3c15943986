"""Shared entry-point plumbing: a bad config, data file, checkpoint or argument ends the
program with one line naming what is wrong, not a traceback."""

import sys

from absl import app, flags

from bloom_jax import config_lib, hf, workdir_lock
from bloom_jax.data import DataError

USER_ERRORS = (config_lib.ConfigError, DataError, hf.CheckpointError,
               workdir_lock.WorkdirLockedError, FileNotFoundError, app.UsageError)


def run(main) -> None:
  """app.run(main), with user errors reported as `<program>: error: <message>`.

  Library INFO logs (Orbax writes several lines per checkpoint) are hidden unless
  --verbosity=0 asks for them; warnings and errors always show.
  """
  flags.FLAGS.set_default('verbosity', -1)

  def guarded(argv):
    try:
      main(argv)
    except USER_ERRORS as e:
      program = sys.argv[0].rsplit('/', 1)[-1]
      print(f'{program}: error: {e}'.replace('\n', ' '), file=sys.stderr)
      sys.exit(2)

  app.run(guarded)
