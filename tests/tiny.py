"""The tiny run every training test starts from: the built-in data, a 2-layer trunk."""

import os
import re

from configs import default

# Generation rows whose subjects reuse words of the body (tests of copying and decoding).
SUBJECT_ROWS = [
    {'source': 'please sign the Service Agreement today', 'targets': ['Service Agreement']},
    {'source': 'we moved the Meeting to Friday morning', 'targets': ['Meeting moved']},
    {'source': 'the gas Report for May is attached here', 'targets': ['May gas Report']},
    {'source': 'call me', 'targets': ['Call']},
    {'source': 'Thanks for the notes from the Board meeting', 'targets': ['Board notes']},
]


def tiny_config(**mesh):
  c = default.get_config()
  c.total_steps = 8
  c.tensorboard = False  # TensorFlow's import is a third of a tiny run's start-up
  c.log_every = 2
  c.eval_every = 4
  c.checkpoint_every = 4
  c.data.batch_size = 32
  c.data.eval_batch_size = 16
  c.data.eval_examples = 16
  c.tokenizer.vocab_size = 300
  c.model.hidden_size = 32
  c.model.n_layer = 2
  c.model.n_head = 4
  c.model.dropout = 0.1
  c.optimizer.warmup_steps = 2
  for name in c.tasks:
    c.tasks[name].max_length = 24
  c.mesh.update(mesh)
  return c


def get_config(arg=None):
  """So the command line can run it: --config tests/tiny.py."""
  del arg
  return tiny_config()


def child_env(devices: int, **extra: str) -> dict:
  """The environment of a test's child process: `devices` CPU devices, the suite's XLA flags."""
  flags = re.sub(r'--xla_force_host_platform_device_count=\d+', '',
                 os.environ.get('XLA_FLAGS', ''))
  return dict(os.environ, **extra,
              XLA_FLAGS=f'{flags.strip()} --xla_force_host_platform_device_count={devices}')
