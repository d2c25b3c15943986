"""The BLOOM-7b1 shape (hidden 4096, 30 layers, 32 heads, 250,880-row vocabulary): the
560m config's settings (bf16 compute, fp32 parameters, full remat, FSDP over all devices)
with BLOOM-7b1's width, depth, batch and learning rate. Plans: docs/scaling.md.

  python -m bloom_jax.plan --config configs/bloom_7b1.py --topology v5p-32 \
      --mesh data=1,fsdp=16,tensor=1 --batch 64 --seq 2048   # fits: 19 GiB of 95 per chip
  python -m bloom_jax.train --config configs/bloom_7b1.py --workdir /tmp/b7b1 \
      --config.tokenizer.path=/path/to/bloom-7b1/tokenizer.json \
      --config.data.dir=/path/to/shared/data
"""

from configs import bloom_560m


def get_config(arg=None):
  c = bloom_560m.get_config(arg)
  c.model.hidden_size = 4096
  c.model.n_layer = 30
  c.model.n_head = 32
  c.data.batch_size = 512            # BLOOM-7b1's global batch, in rows
  c.optimizer.learning_rate = 1.2e-4  # BLOOM-7b1's peak learning rate
  return c
