.venv/bin/python -m bloom_jax.train --config configs/real_multitask.py:single=shakespeare,seed=0 --workdir /work/runs/r10/shakespeare-equal-seed0 --config.best_metric=eval/shakespeare/bits_per_byte --config.best_mode=min --config.total_steps=9329
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r10/shakespeare-equal-seed0 --split validation --step 1600
