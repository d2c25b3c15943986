"""The BLOOM (176B) shape (hidden 14336, 70 layers, 112 heads, 250,880-row vocabulary):
the 560m config's settings (bf16 compute, fp32 parameters, full remat) with BLOOM's
width, depth, batch and learning rate, FSDP across the slice and 4-way tensor parallelism
within it. Plans, and how they compare with BLOOM's own 384-GPU run: docs/scaling.md.

  python -m bloom_jax.plan --config configs/bloom_176b.py --topology v5p-512 \
      --mesh data=1,fsdp=64,tensor=4 --batch 128 --seq 2048  # fits: 23 GiB of 95 per chip
  python -m bloom_jax.train --config configs/bloom_176b.py --workdir /path/to/b176 \
      --config.tokenizer.path=/path/to/bloom/tokenizer.json \
      --config.data.dir=/path/to/shared/data
"""

from configs import bloom_560m


def get_config(arg=None):
  c = bloom_560m.get_config(arg)
  c.model.hidden_size = 14336
  c.model.n_layer = 70
  c.model.n_head = 112
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 4   # 112 heads split 4 ways: 28 each
  c.data.batch_size = 2048           # BLOOM's global batch, in rows
  c.optimizer.learning_rate = 6e-5   # BLOOM's peak learning rate
  return c
