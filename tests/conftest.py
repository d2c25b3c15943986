"""Test-wide setup: 8 simulated CPU devices for sharding tests, TF kept off accelerators."""

import os

# Must happen before jax is imported anywhere. The suite compiles hundreds of small
# programs and runs each for a few steps: at XLA's default backend optimisation level,
# LLVM's passes take most of that time and speed up nothing that matters at these sizes.
# (Results can differ in the last bits from a default build, e.g. in FMA contraction; every
# comparison in the suite is between runs under the same flags, or within a tolerance.)
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8 '
                                   '--xla_backend_optimization_level=0')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
# The programs restart themselves once with glibc's huge-page tunable (cli.run); children
# started with it set skip that second start-up (seconds per subprocess, dozens of them).
# tests/test_host_memory.py clears it to test the restart itself.
os.environ.setdefault('GLIBC_TUNABLES', 'glibc.malloc.hugetlb=1')

import atexit  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

# One persistent compilation cache for the session, inherited by the training subprocesses:
# most tests compile the same tiny programs, and compiling is most of a tiny run's time.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _cache = tempfile.mkdtemp(prefix='bloom_jax_tests_xla_cache_')
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def shared_data_dir() -> pathlib.Path | None:
  """The shared public datasets: $BLOOM_JAX_DATA, else ../shared/data beside the repo."""
  for candidate in (os.environ.get('BLOOM_JAX_DATA'), REPO.parent / 'shared' / 'data'):
    if candidate and (pathlib.Path(candidate) / 'README.md').exists():
      return pathlib.Path(candidate)
  return None


@pytest.fixture
def real_data_dir():
  path = shared_data_dir()
  if path is None:
    pytest.skip('shared datasets not found: set BLOOM_JAX_DATA or place them in ../shared/data')
  return path
