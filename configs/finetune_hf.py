"""Fine-tune a Hugging Face BLOOM checkpoint: the trunk starts from the checkpoint (its
shape, vocabulary rows included, comes from its config.json), the task heads are fresh.

  # The real multi-task mixture (variants as in configs/real_multitask.py: :single=TASK...):
  python -m bloom_jax.train --config configs/finetune_hf.py --workdir /tmp/ft \
      --config.model.init_from_hf=/path/to/bloom-560m \
      --config.tokenizer.path=/path/to/bloom-560m/tokenizer.json \
      --config.data.dir=/path/to/shared/data
  # The built-in synthetic sentiment and lm tasks instead (no download):
  python -m bloom_jax.train --config configs/finetune_hf.py:synthetic --workdir /tmp/ft ...

`tokenizer.path` must be the checkpoint's own tokenizer.json: without it the run stops
at start-up (a BPE trained here would give the checkpoint's embedding rows other
meanings), and so does a tokenizer whose size differs from the checkpoint's embedding
rows by more than BLOOM's padding (250,680 tokens in 250,880 rows). The README's
"Fine-tuning BLOOM-560m" gives memory, learning rates and speed.
"""

import os

import ml_collections

from configs import default, real_multitask


def get_config(arg=None):
  if arg == 'synthetic':
    c = default.get_config()
    c.tasks = ml_collections.ConfigDict({name: c.tasks[name].to_dict()
                                         for name in ('sentiment', 'lm')})
  else:
    c = real_multitask.get_config(arg)
  c.model.init_from_hf = os.environ.get('BLOOM_JAX_HF_CHECKPOINT', '')  # a transformers dir
  c.tokenizer.path = os.environ.get('BLOOM_JAX_TOKENIZER', '')          # its tokenizer.json
  c.model.dtype = 'bfloat16'       # compute; parameters and Adam moments stay float32
  c.optimizer.learning_rate = 5e-5  # full fine-tuning: 2e-5 to 5e-5
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 0.0
  return c
