"""The real BLOOM-560m shape (hidden 1024, 24 layers, 16 heads, 250,880-row vocabulary),
for accelerators: bf16 compute, fp32 parameters, full remat, FSDP over all devices.

  python -m bloom_jax.train --config configs/bloom_560m.py --workdir /tmp/b560 \
      --config.tokenizer.path=/path/to/bloom-560m/tokenizer.json \
      --config.data.dir=/path/to/shared/data
"""

import os

from configs import real_multitask


def get_config(arg=None):
  c = real_multitask.get_config(arg)
  c.model.hidden_size = 1024
  c.model.n_layer = 24
  c.model.n_head = 16
  c.model.vocab_size = 250_880   # BLOOM's padded table; the tokenizer has 250,680 tokens
  c.model.dtype = 'bfloat16'
  c.model.param_dtype = 'float32'
  c.model.remat = 'full'
  c.model.init_std = 0.0048      # BigScience's 560m init
  c.tokenizer.path = os.environ.get('BLOOM_JAX_TOKENIZER', '')
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
  c.data.batch_size = 64
  c.optimizer.learning_rate = 3e-4
  c.optimizer.warmup_steps = 500
  return c
