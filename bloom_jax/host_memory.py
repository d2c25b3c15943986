"""Host memory: keep the pages XLA's CPU backend frees, for its next step to reuse.

XLA:CPU mallocs an executable's scratch space (one buffer: 286 MB for the benchmark's
train step) and its outputs on every call. glibc serves requests that large with fresh
mmap'd pages and unmaps them on free; a worker thread's arena does so for anything that
outgrows its 64 MB heap, whatever M_MMAP_MAX says. So every step page-faulted its whole
scratch space in again: 70,000 faults and about 0.2 s of kernel time per step on two
cores, mostly inside the fusions that zero the scanned layers' stacked buffers.

One arena that neither maps nor trims keeps freed pages for the next request. The price
is the one any caching allocator pays: the process's resident memory stays at its peak.
"""

import ctypes
import platform

# mallopt(3) parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))


def keep_freed_memory() -> bool:
  """Switch glibc's malloc to one arena that keeps what it frees; True if it applied.

  Call it before JAX starts its backend: a thread that already owns an arena keeps it.
  Elsewhere than glibc (macOS, musl) it does nothing and returns False.
  """
  if platform.libc_ver()[0] != 'glibc':
    return False
  libc = ctypes.CDLL(None)
  return all(libc.mallopt(option, value) == 1 for option, value in _SETTINGS)
