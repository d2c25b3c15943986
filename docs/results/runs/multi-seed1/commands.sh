.venv/bin/python -m bloom_jax.train --config configs/real_multitask.py:seed=1 --workdir /work/runs/attn/multi-seed1 --config.tasks.sst2.pooling=attention --config.keep_checkpoints=1000
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/attn/multi-seed1 --split validation --step 1600
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/attn/multi-seed1 --split test --step 1600
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/attn/multi-seed1 --split validation --step 2000
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/attn/multi-seed1 --split test --step 2000
