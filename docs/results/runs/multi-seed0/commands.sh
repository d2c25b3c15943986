.venv/bin/python -m bloom_jax.train --config configs/real_multitask.py:seed=0 --workdir /work/runs/attn/multi-seed0 --config.tasks.sst2.pooling=attention --config.keep_checkpoints=1000
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/attn/multi-seed0 --split validation --step 2000
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/attn/multi-seed0 --split test --step 2000
