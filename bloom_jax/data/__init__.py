"""Data side of bloom_jax: sources, tokenized arrays and batches (see docs/data.md)."""

from bloom_jax.data.pipeline import Pipeline, TrainIterator, eval_batches
from bloom_jax.data.readers import DataError, Problems

__all__ = ['DataError', 'Pipeline', 'Problems', 'TrainIterator', 'eval_batches']
