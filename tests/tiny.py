"""The tiny run every training test starts from: the built-in data, a 2-layer trunk."""

from configs import default


def tiny_config(**mesh):
  c = default.get_config()
  c.total_steps = 8
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
