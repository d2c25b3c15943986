"""With BLOOM_JAX_KEEP_FREED_MEMORY=1, importing bloom_jax keeps the host memory XLA frees,
so a step does not page-fault its scratch space in again (bloom_jax.host_memory)."""

import os
import platform
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Counts the page faults of 30 calls of a function with a 96 MiB temporary, in a
# process that starts as the programs do: bloom_jax, then everything the trainer imports
# (TensorFlow, Orbax, ...), then JAX's backend.
PROGRAM = r'''
import resource
import bloom_jax
from bloom_jax import host_memory, train
import jax, jax.numpy as jnp

f = jax.jit(lambda a, b: jnp.tanh(a @ b) @ b.T)  # keeps a [2048, 12288] float32 temporary
a, b = jnp.ones((2048, 64)), jnp.ones((64, 12288))
assert f.lower(a, b).compile().memory_analysis().temp_size_in_bytes >= 96 * 2**20
f(a, b).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(30):
  f(a, b).block_until_ready()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print('kept', host_memory.KEPT, 'faults', faults)
'''


def _run(keep: bool) -> tuple[bool, int]:
  env = {**os.environ, 'PYTHONPATH': ROOT, 'BLOOM_JAX_KEEP_FREED_MEMORY': '1' if keep else ''}
  out = subprocess.run([sys.executable, '-c', PROGRAM], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  words = out.stdout.split()
  return words[-3] == 'True', int(words[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='tunes glibc malloc only')
def test_keeping_freed_host_memory_stops_faulting_it_in_at_every_call():
  system_kept, system_faults = _run(keep=False)
  kept, faults = _run(keep=True)
  assert (system_kept, kept) == (False, True)
  # By default every call faults the 96 MiB temporary in (24,576 pages). Kept, a call
  # faults only while the heap is still growing to its working size (4-5 calls here).
  assert system_faults > 30 * 20_000, system_faults
  assert faults < 0.5 * system_faults, (faults, system_faults)
