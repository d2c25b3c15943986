"""Data side of bloom_jax: sources, readers, tokenized examples, packed rows and batches
(see docs/data.md). Import the modules themselves (`bloom_jax.data.pipeline`, ...)."""
