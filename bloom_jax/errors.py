"""The errors a user can cause, each reported by the programs as one line (bloom_jax.cli).

Only the standard library is imported here, so catching these loads neither JAX nor
TensorFlow.
"""


class ConfigError(ValueError):
  """A config value that cannot work; the message starts with the key."""


class DataError(ValueError):
  """A data file or split that cannot be used at all."""


class CheckpointError(ValueError):
  """A Hugging Face checkpoint that cannot be read; the message names the file or tensor."""


class WorkdirLockedError(RuntimeError):
  """A workdir that another trainer holds, or that cannot be written."""


class NonFiniteError(FloatingPointError):
  """A NaN/inf loss or gradient with skip_nonfinite=False."""
