"""Shared entry-point plumbing: a bad config, data file, checkpoint or argument ends the
program with one line naming what is wrong, not a traceback."""

import os
import sys

from absl import app, flags, logging

from bloom_jax import errors, host_memory

USER_ERRORS = (errors.ConfigError, errors.DataError, errors.CheckpointError,
               errors.WorkdirLockedError, OSError, app.UsageError)


def inside_workdir(workdir: str, path: str, flag: str) -> str:
  """`path` taken relative to `workdir`, symlinks resolved; an error if that leads outside it.

  Every file the programs write lands under the run's workdir, so a mistyped or hostile
  argument (`../..`, an absolute path, a symlink out) cannot overwrite anything else.
  """
  root = os.path.realpath(workdir)
  target = os.path.realpath(os.path.join(root, path))
  if os.path.commonpath([root, target]) != root or target == root:
    raise errors.ConfigError(f'{flag}: {path!r} is not inside the workdir {workdir} '
                             '(outputs are written there; give a path relative to it)')
  return target


def _fail(message: str) -> None:
  program = sys.argv[0].rsplit('/', 1)[-1]
  # One write, so a library thread logging at the same moment cannot split the line.
  sys.stderr.write(f'{program}: error: ' + ' '.join(message.split()) + '\n')
  sys.stderr.flush()
  sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with config overrides that name unknown keys or carry values
  of the wrong type reported in one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(str(e))
  except (AttributeError, KeyError) as e:  # ml_collections: an override of a missing key
    _fail(f'--config: no key {str(e).strip(chr(34) + chr(39))!r} in the config (overrides '
          'must name keys it defines)')


def set_up_process() -> None:
  """What a program does first, and a library import never does: TensorFlow's environment
  defaults, then the restart with huge pages for XLA's large host buffers
  (bloom_jax/host_memory.py)."""
  # TensorFlow only reads data here: keep its C++ start-up chatter off the terminal. Set
  # before the restart, so that the new process has them from its first line.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  host_memory.restart_with_huge_pages()


def run(main) -> None:
  """set_up_process(), then app.run(main) with user errors reported as
  `<program>: error: <message>`.

  Library INFO logs (Orbax writes several lines per checkpoint) are hidden unless
  --verbosity=0 asks for them; warnings and errors always show.
  """
  set_up_process()

  def guarded(argv):
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)
    try:
      main(argv)
    except USER_ERRORS as e:
      _fail(str(e))

  app.run(guarded, flags_parser=_parse_flags)
