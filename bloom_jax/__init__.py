"""Multi-task training of BLOOM-style transformers in JAX and Flax NNX."""

import os

# TensorFlow only reads data here: keep its C++ start-up chatter off the terminal.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

# Before TensorFlow or XLA start a thread: a thread that has malloc'd keeps its arena.
from bloom_jax import host_memory  # noqa: E402

if os.environ.get('BLOOM_JAX_KEEP_FREED_MEMORY') == '1':
  host_memory.keep_freed_memory()
