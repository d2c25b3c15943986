"""The task types: one object per kind of example (see `base.TaskType`).

To add a type, write a module with a `TaskType` subclass and add its instance here.
"""

from bloom_jax.errors import ConfigError
from bloom_jax.task_types.base import TaskType
from bloom_jax.task_types.classification import CLASSIFICATION
from bloom_jax.task_types.generation import GENERATION
from bloom_jax.task_types.lm import LM
from bloom_jax.task_types.regression import REGRESSION
from bloom_jax.task_types.tagging import TAGGING

TYPES: dict[str, TaskType] = {
    t.name: t for t in (CLASSIFICATION, TAGGING, GENERATION, LM, REGRESSION)}


def get(name: str, key: str = 'type') -> TaskType:
  """The registered type called `name`; a config error naming `key` otherwise."""
  if name not in TYPES:
    raise ConfigError(f'{key}: unknown task type {name!r}; known: {", ".join(TYPES)}')
  return TYPES[name]
