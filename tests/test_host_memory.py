"""The programs keep the host memory XLA frees, so a step does not page-fault its scratch
space in again (bloom_jax.host_memory)."""

import os
import platform
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Counts the page faults of five calls of a function with a 96 MiB temporary, run as a
# program through cli.run (as train, evaluate, predict and sweep are) or as a bare script.
PROGRAM = r'''
import resource, sys
import jax, jax.numpy as jnp

def main(argv):
  f = jax.jit(lambda a, b: jnp.tanh(a @ b) @ b.T)  # keeps a [2048, 12288] float32 temporary
  a, b = jnp.ones((2048, 64)), jnp.ones((64, 12288))
  assert f.lower(a, b).compile().memory_analysis().temp_size_in_bytes >= 96 * 2**20
  f(a, b).block_until_ready()
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(5):
    f(a, b).block_until_ready()
  print('faults', resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

if sys.argv[1] == 'cli':
  from bloom_jax import cli
  cli.run(main)
else:
  main(sys.argv)
'''


def _faults(how: str) -> int:
  out = subprocess.run([sys.executable, '-c', PROGRAM, how], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env={**os.environ, 'PYTHONPATH': ROOT})
  assert out.returncode == 0, out.stderr[-3000:]
  return int(out.stdout.split('faults')[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='tunes glibc malloc only')
def test_programs_reuse_freed_host_memory_instead_of_faulting_it_in():
  default = _faults('script')
  kept = _faults('cli')
  # Five calls fault the 96 MiB temporary in five times (24,576 pages each) by default.
  assert default > 5 * 20_000, default
  assert kept < 0.01 * default, (kept, default)

