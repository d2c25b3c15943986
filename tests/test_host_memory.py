"""Our programs start again with glibc's huge-page tunable, so a step does not fault its
scratch space in 4 KiB at a time (bloom_jax.host_memory)."""

import os
import subprocess
import sys

import pytest

from bloom_jax import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(not host_memory.huge_pages_available(),
                                reason='needs glibc >= 2.35 and transparent huge pages')

# Counts the page faults of 30 calls of a function with a 96 MiB temporary, in a
# process that starts as the benchmark does: restart, then everything the trainer imports
# (TensorFlow, Orbax, ...), then JAX's backend.
PROGRAM = r'''
from bloom_jax import host_memory
host_memory.restart_with_huge_pages()

import resource
from bloom_jax import train
import jax, jax.numpy as jnp

f = jax.jit(lambda a, b: jnp.tanh(a @ b) @ b.T)  # keeps a [2048, 12288] float32 temporary
a, b = jnp.ones((2048, 64)), jnp.ones((64, 12288))
assert f.lower(a, b).compile().memory_analysis().temp_size_in_bytes >= 96 * 2**20
f(a, b).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(30):
  f(a, b).block_until_ready()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print('huge_pages', host_memory.huge_pages_requested(), 'faults', faults)
'''


def _env(**extra: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  return {**env, 'PYTHONPATH': ROOT, **extra}


def _faults(env: dict[str, str]) -> tuple[bool, int]:
  out = subprocess.run([sys.executable, '-c', PROGRAM], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  words = out.stdout.split()
  return words[-3] == 'True', int(words[-1])


def test_huge_pages_stop_faulting_the_scratch_space_in_page_by_page():
  opted_out = _faults(_env(GLIBC_TUNABLES=f'{host_memory.TUNABLE}=0'))
  restarted = _faults(_env())
  assert (opted_out[0], restarted[0]) == (False, True)
  # With 4 KiB pages every call faults the 96 MiB temporary in (24,576 pages); with
  # 2 MiB pages, 48.
  assert opted_out[1] > 30 * 20_000, opted_out
  assert restarted[1] < 0.05 * opted_out[1], (restarted, opted_out)


def test_train_program_restarts_with_huge_pages_and_keeps_other_tunables(tmp_path):
  # The config file runs inside the program: it reports the environment it sees.
  config = tmp_path / 'probe.py'
  config.write_text('import os, sys\n\n\ndef get_config():\n'
                    "  print('GLIBC_TUNABLES=' + os.environ['GLIBC_TUNABLES'], sys.argv[1:])\n"
                    '  raise SystemExit(0)\n')
  args = ['--config', str(config), '--workdir', str(tmp_path / 'run')]
  out = subprocess.run([sys.executable, '-m', 'bloom_jax.train', *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=300,
                       env=_env(GLIBC_TUNABLES='glibc.malloc.arena_max=4'))
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.split('\n')[0] == (
      f'GLIBC_TUNABLES=glibc.malloc.arena_max=4:{host_memory.TUNABLE}=1 {args}')
