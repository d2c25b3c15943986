"""Host memory: keep the pages XLA's CPU backend frees, for its next step to reuse.

XLA:CPU mallocs an executable's scratch space (one buffer: 286 MB for the benchmark's
train step) and its outputs on every call. glibc serves requests that large with fresh
mmap'd pages and unmaps them on free; a thread's own arena does so for anything that
outgrows its 64 MB heap, whatever M_MMAP_MAX says. So every step page-faults its whole
scratch space in again: 70,000 faults and about 0.2 s of kernel time per step on two
cores, mostly inside the fusions that zero the scanned layers' stacked buffers.

One arena that neither maps nor trims keeps freed pages for the next request: a step
faults only while the heap still grows to its working size (2 steps of 90). It is opt-in
(BLOOM_JAX_KEEP_FREED_MEMORY=1, read when `bloom_jax` is imported) because it has two
prices. Resident memory: the heap settles at about two steps' scratch space and keeps it
(1.70 GB peak against 1.25 GB for that step). And every thread now shares one arena's
lock, which slows XLA's many-threaded compilation (a compile-bound test file, run back
to back: 102 against 88 s).
"""

import ctypes
import platform

# mallopt(3) parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))

KEPT = False  # whether this process keeps freed memory


def keep_freed_memory() -> bool:
  """Switch glibc's malloc to one arena that keeps what it frees; True if it applied.

  It must run before any other thread allocates: a thread that has malloc'd keeps its
  arena, and new threads may be handed one of the existing arenas. Without glibc (macOS,
  musl) it does nothing and returns False.
  """
  global KEPT
  if platform.libc_ver()[0] != 'glibc':
    return False
  libc = ctypes.CDLL(None)
  KEPT = all(libc.mallopt(option, value) == 1 for option, value in _SETTINGS)
  return KEPT
