"""Host memory: transparent huge pages for the large blocks XLA's CPU backend mallocs.

XLA:CPU mallocs an executable's scratch space (one buffer: 286 MB for the benchmark's
train step) on every call. glibc serves requests that large with fresh mmap'd pages and
unmaps them on free, so every step faults its whole scratch space in again, 4 KiB at a
time: 70,000 page faults and about 0.2 s of kernel time per step on two cores.

glibc's `glibc.malloc.hugetlb=1` tunable advises the kernel to back those blocks with
2 MiB transparent huge pages: about 280 faults per step, and the step 4-11% faster, with
the same peak resident memory and compile time. glibc reads tunables only when a process
starts, so our programs start themselves again with it set: `python -m bloom_jax.PROGRAM`
in `cli.run` (`cli.set_up_process`) before it parses flags, and `scripts/benchmark.py`
before its own imports. A `GLIBC_TUNABLES` that already names `glibc.malloc.hugetlb` (`=0`
turns it off) is left as it is.

Importing bloom_jax restarts nothing; the cost is that `cli.run` restarts after the
program's module has imported JAX, Flax and Orbax, and the new process imports them again:
`python -m bloom_jax.evaluate --help` (or `train`) took 5.4 against 3.0 s of CPU with and
without the restart on two cores (medians of 5-7 alternating runs), where restarting
before those imports cost 0.05-0.25 s. That is the time the huge pages save in 12-33 of
the benchmark's train steps.
"""

import os
import sys

TUNABLE = 'glibc.malloc.hugetlb'
_THP_MODE = '/sys/kernel/mm/transparent_hugepage/enabled'


def huge_pages_requested() -> bool:
  """Whether this process started with glibc's huge-page tunable on."""
  return f'{TUNABLE}=1' in os.environ.get('GLIBC_TUNABLES', '').split(':')


def huge_pages_available() -> bool:
  """Whether glibc (2.35 or newer) can ask this kernel for transparent huge pages."""
  return _glibc_with_hugetlb() and _kernel_gives_huge_pages_when_advised()


def _glibc_with_hugetlb() -> bool:
  try:
    name, version = os.confstr('CS_GNU_LIBC_VERSION').split()
  except (ValueError, OSError, AttributeError):  # not glibc
    return False
  return name == 'glibc' and tuple(map(int, version.split('.')[:2])) >= (2, 35)


def _kernel_gives_huge_pages_when_advised() -> bool:
  try:
    with open(_THP_MODE) as f:
      mode = f.read()
  except OSError:
    return False
  return '[always]' in mode or '[madvise]' in mode


def restart_with_huge_pages() -> None:
  """Replace this process with the same command line, glibc's huge-page tunable on.

  Returns without restarting where the tunable is already named in GLIBC_TUNABLES, the
  C library is not glibc 2.35 or newer, or the kernel's transparent huge pages are off.
  Call it before the program does work or opens a resource that exec would drop.
  """
  tunables = os.environ.get('GLIBC_TUNABLES', '')
  if TUNABLE in tunables or not sys.executable or not huge_pages_available():
    return
  env = {**os.environ, 'GLIBC_TUNABLES': ':'.join(filter(None, (tunables, f'{TUNABLE}=1')))}
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
