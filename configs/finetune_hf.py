"""Fine-tune a Hugging Face BLOOM checkpoint on the real multi-task mixture: the trunk
starts from the checkpoint (its shape comes from its config.json), task heads are fresh.

  python -m bloom_jax.train --config configs/finetune_hf.py --workdir /tmp/ft \
      --config.model.init_from_hf=/path/to/bloom-560m \
      --config.tokenizer.path=/path/to/bloom-560m/tokenizer.json \
      --config.data.dir=/path/to/shared/data
"""

import os

from configs import real_multitask


def get_config(arg=None):
  c = real_multitask.get_config(arg)
  c.model.init_from_hf = os.environ.get('BLOOM_JAX_HF_CHECKPOINT', '')  # a transformers dir
  c.tokenizer.path = os.environ.get('BLOOM_JAX_TOKENIZER', '')          # its tokenizer.json
  c.optimizer.learning_rate = 5e-5
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 0.0
  return c
