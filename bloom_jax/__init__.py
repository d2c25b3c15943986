"""Multi-task training of BLOOM-style transformers in JAX and Flax NNX."""
