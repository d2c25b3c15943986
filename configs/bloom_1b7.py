"""The BLOOM-1b7 shape (hidden 2048, 24 layers, 16 heads, 250,880-row vocabulary): the
560m config's settings (bf16 compute, fp32 parameters, full remat, FSDP over all devices)
with BLOOM-1b7's width, batch and learning rate. Plans: docs/scaling.md.

  python -m bloom_jax.plan --config configs/bloom_1b7.py --topology v5e-16 \
      --mesh data=1,fsdp=4,tensor=4 --batch 4 --seq 2048    # fits: 2.4 GiB of 16 per chip
  python -m bloom_jax.train --config configs/bloom_1b7.py --workdir /tmp/b1b7 \
      --config.tokenizer.path=/path/to/bloom-1b7/tokenizer.json \
      --config.data.dir=/path/to/shared/data
"""

from configs import bloom_560m


def get_config(arg=None):
  c = bloom_560m.get_config(arg)
  c.model.hidden_size = 2048
  c.model.n_layer = 24
  c.model.n_head = 16
  c.data.batch_size = 512            # BLOOM-1b7's global batch, in rows
  c.optimizer.learning_rate = 2e-4   # BLOOM-1b7's peak learning rate
  return c
