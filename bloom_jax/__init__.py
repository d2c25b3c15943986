"""Multi-task training of BLOOM-style transformers in JAX and Flax NNX."""

import os
import sys

from bloom_jax import host_memory

# TensorFlow only reads data here: keep its C++ start-up chatter off the terminal.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

# `python -m bloom_jax.PROGRAM` imports this package to find PROGRAM, with sys.argv[0] set
# to '-m' meanwhile: start the program again with huge pages for XLA's large host buffers
# before anything else is imported (bloom_jax/host_memory.py).
if sys.argv[:1] == ['-m']:
  host_memory.restart_with_huge_pages()
