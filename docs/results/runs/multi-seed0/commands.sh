.venv/bin/python -m bloom_jax.train --config configs/real_multitask.py:seed=0 --workdir /work/runs/r10/multi-seed0 --config.keep_checkpoints=1000
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r10/multi-seed0 --split validation --step 1200
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r10/multi-seed0 --split test --step 1200
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r10/multi-seed0 --split validation --step 1600
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r10/multi-seed0 --split test --step 1600
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r10/multi-seed0 --split validation --step 2000
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r10/multi-seed0 --split test --step 2000
